"""Cached frozen-trunk features: the frozen lower part of a backbone run once per image, not once per epoch.

With `train.cached_features` (and `train.freeze_blocks` = N > 0), the stem and the first N blocks never
change while training, so the `features@<name>` stage runs them once over every labelled and test image (and
its mirror, the TTA view) and saves their outputs; the train stages then train only the part above
(`UpperPart`) for as many epochs as they like, and the predict stage runs that part on the test images'
features. On a CPU this is what makes 128 px affordable: the frozen part is most of the compute.

Folder `<features>/<name>/`: `manifest.json` (what the features were made from) and, when cached,
`train.npy` `(n_train, 2, C, H, W)` and `test.npy` float16 (axis 1: the image, its mirror). A backbone
without `cached_features` gets a manifest saying so and no arrays. Readers check the manifest against their
own settings, the images and the frozen weights, and refuse stale features naming the stage to re-run.

Random crops cannot be cached (a crop changes every feature), so training on features sees the image and its
mirror only; test-time `tta.shift` views cannot be either.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timm.models.efficientnet import EfficientNet
from torch import nn
from tqdm import tqdm

from pipeline.atomic import atomic_dir
from pipeline.batches import to_device, to_model_input
from pipeline.config import TrainConfig
from pipeline.errors import PipelineError
from pipeline.folds import arrays_digest
from pipeline.models import create_backbone, normalisation

MANIFEST = "manifest.json"
VIEWS = 2  # the image and its mirror: the flip augmentation while training, the hflip TTA view after


class FeaturesError(PipelineError):
    """Cached features are missing, stale, or made for other settings."""


class UpperPart(nn.Module):
    """The blocks above the first `n_blocks` of a timm EfficientNet, its head conv and classifier (or, with
    `pre_logits`, the pooled features before it): what a batch of cached features goes through. Holds the model
    itself, so training it trains the model's own tensors."""

    def __init__(self, model: nn.Module, n_blocks: int, pre_logits: bool = False) -> None:
        super().__init__()
        check_splittable(model, n_blocks)
        self.model, self.n_blocks, self.pre_logits = model, n_blocks, pre_logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        for block in model.blocks[self.n_blocks :]:
            x = block(x)
        return model.forward_head(model.bn2(model.conv_head(x)), pre_logits=self.pre_logits)


def lower_part(model: nn.Module, n_blocks: int) -> nn.Module:
    """The stem and the first `n_blocks` blocks: what `train.freeze_blocks` = `n_blocks` freezes."""
    check_splittable(model, n_blocks)
    return nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:n_blocks])


def check_splittable(model: nn.Module, n_blocks: int) -> None:
    if not isinstance(model, EfficientNet):
        raise FeaturesError(
            f"train.cached_features supports timm's EfficientNet family (tf_efficientnet_lite*, efficientnetv2...),"
            f" not {type(model).__name__}: set train.cached_features to false for this backbone."
        )
    if not 0 < n_blocks <= len(model.blocks):
        raise FeaturesError(
            f"train.cached_features needs train.freeze_blocks between 1 and {len(model.blocks)} (the blocks of"
            f" {type(model).__name__}), got {n_blocks}."
        )


def frozen_digest(model: nn.Module, n_blocks: int) -> str:
    """A hash of the lower part's weights and batch norm statistics: features of other weights differ."""
    digest = hashlib.blake2b(digest_size=16)
    for key, tensor in lower_part(model, n_blocks).state_dict().items():
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{key}{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def settings_manifest(model_name: str, n_blocks: int, image_size: int, train_images: np.ndarray,
                      test_images: np.ndarray) -> dict:  # fmt: skip
    """What features of these images at these settings are; the manifest adds the frozen weights' digest."""
    return {
        "cached": True, "model": model_name, "freeze_blocks": n_blocks, "image_size": image_size,
        "images": arrays_digest(train_images, test_images), "n_train": len(train_images), "n_test": len(test_images),
    }  # fmt: skip


def check_model_fits(model: nn.Module, image_size: int, n_blocks: int, features: Features, where: Path) -> None:
    """Refuse a trained model whose frozen blocks or image size are not those the features were made with."""
    if (
        image_size != features.manifest["image_size"]
        or frozen_digest(model, n_blocks) != features.manifest["frozen_weights"]
    ):
        raise FeaturesError(
            f"{where}: its frozen blocks or image size differ from those the cached features were made with;"
            " re-run `dvc repro` (this backbone's features@ and train@ stages)."
        )


@torch.inference_mode()
def compute_features(
    lower: nn.Module, images: np.ndarray, out: np.ndarray, *, image_size: int, mean, std, batch_size: int,
    device: torch.device, desc: str,
) -> None:  # fmt: skip
    """Write `lower`'s outputs for `images` and their mirrors into `out` (n, 2, C, H, W)."""
    lower.eval()
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False, mininterval=1):
        batch = to_device(images[start : start + batch_size], device)
        for view, pixels in enumerate([batch, batch.flip(2)]):
            x = lower(to_model_input(pixels, image_size, mean, std)).to(torch.float16)
            if not torch.isfinite(x).all():
                raise FeaturesError(
                    f"{desc}: the frozen blocks give features that are not finite in float16 for images"
                    f" {start + 1}..{start + len(batch)}; set train.cached_features to false for this backbone."
                )
            out[start : start + len(batch), view] = x.cpu().numpy()


def write_features(folder: Path, model_name: str, model: nn.Module, n_blocks: int, image_size: int,
                   train_images: np.ndarray, test_images: np.ndarray, *, batch_size: int,
                   device: torch.device) -> None:  # fmt: skip
    """`folder`/{manifest.json, train.npy, test.npy}: written whole or not at all."""
    model.to(device).to(memory_format=torch.channels_last)
    lower = lower_part(model, n_blocks).eval()  # before any forward: train mode would update its BN statistics
    mean, std = normalisation(model)
    manifest = settings_manifest(model_name, n_blocks, image_size, train_images, test_images)
    manifest["frozen_weights"] = frozen_digest(model, n_blocks)
    with torch.inference_mode():
        probe = lower(to_model_input(to_device(train_images[:1], device), image_size, mean, std))
    with atomic_dir(folder) as tmp:
        for part, images in (("train", train_images), ("test", test_images)):
            out = np.lib.format.open_memmap(tmp / f"{part}.npy", mode="w+", dtype=np.float16,
                                            shape=(len(images), VIEWS, *probe.shape[1:]))  # fmt: skip
            compute_features(lower, images, out, image_size=image_size, mean=mean, std=std,
                             batch_size=batch_size, device=device, desc=f"{model_name} {part} features")  # fmt: skip
            out.flush()
            del out
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def write_not_cached(folder: Path) -> None:
    """The manifest of a backbone that trains on images: its train and predict stages read no features."""
    with atomic_dir(folder) as tmp:
        (tmp / MANIFEST).write_text(json.dumps({"cached": False}) + "\n")


@dataclass(frozen=True)
class Features:
    train: np.ndarray  # (n_train, 2, C, H, W) float16, memory-mapped; axis 1: the image, its mirror
    test: np.ndarray
    manifest: dict


def initial_model(model_name: str, cfg: TrainConfig) -> nn.Module:
    """The model a train stage starts from (`build_recipe` seeds the same way), whose lower blocks are cached."""
    torch.manual_seed(cfg.seed)
    return create_backbone(model_name, cfg.weights)


def load_backbone_features(folder: Path, model_name: str, cfg: TrainConfig, train_images: np.ndarray,
                           test_images: np.ndarray, *, pretrained_frozen: bool) -> Features:  # fmt: skip
    """The features features@<backbone> made for these settings and images. With `pretrained_frozen` (a train
    stage, about to build the model from `cfg.weights`), also for the frozen weights it will start from."""
    expected = settings_manifest(model_name, cfg.freeze_blocks, cfg.image_size, train_images, test_images)
    if pretrained_frozen:
        expected["frozen_weights"] = frozen_digest(initial_model(model_name, cfg), cfg.freeze_blocks)
    return load_features(folder, expected)


def load_features(folder: Path, expected: dict) -> Features:
    """The features in `folder` if its manifest holds `expected` (`settings_manifest` of the reader's settings
    and images, optionally with `frozen_weights`); FeaturesError naming the difference and the stage to re-run."""
    rerun = f"re-run `dvc repro features@{folder.name}`"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise FeaturesError(f"{folder / MANIFEST}: unreadable ({type(exc).__name__}); {rerun}.") from exc
    if not isinstance(manifest, dict) or not manifest.get("cached"):
        raise FeaturesError(f"{folder / MANIFEST}: holds no features (made without train.cached_features); {rerun}.")
    differ = sorted(key for key in expected if manifest.get(key) != expected[key])
    if differ:
        found = ", ".join(f"{key}={manifest.get(key)!r}" for key in differ)
        wanted = ", ".join(f"{key}={expected[key]!r}" for key in differ)
        raise FeaturesError(f"{folder / MANIFEST}: made with {found}, this stage has {wanted}; {rerun}.")
    arrays = {}
    for part in ("train", "test"):
        path, n = folder / f"{part}.npy", manifest[f"n_{part}"]
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise FeaturesError(f"{path}: unreadable ({type(exc).__name__}); {rerun}.") from exc
        if array.dtype != np.float16 or array.ndim != 5 or array.shape[:2] != (n, VIEWS):
            raise FeaturesError(
                f"{path}: shape {array.shape} {array.dtype}, expected ({n}, {VIEWS}, C, H, W) float16; {rerun}."
            )
        arrays[part] = array
    return Features(arrays["train"], arrays["test"], manifest)
