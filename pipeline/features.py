"""Cached frozen-trunk features: the frozen lower part of a backbone run once per image, not once per epoch.

With `train.cached_features` (and `train.freeze_blocks` = N > 0), the stem and the first N blocks never
change while training, so the `features@<name>` stage runs them once over every labelled and test image (and
its mirror, the TTA view) and saves their outputs; the train stages then train only the part above
(`UpperPart`) for as many epochs as they like, and the predict stage runs that part on the test images'
features. On a CPU this is what makes 128 px affordable: the frozen part is most of the compute.

Folder `<features>/<name>/`: its record (`provenance.json`: the settings, the data, the counts and a digest of
the frozen weights) and, when cached, `train.npy` `(n_train, 2, C, H, W)` and `test.npy` float16 (axis 1: the
image, its mirror). A backbone without `cached_features` gets a record saying so and no arrays. Readers check
the record (`pipeline.provenance.expect`), and the frozen weights they start from or hold, and refuse stale
features naming the stage to re-run.

Random crops cannot be cached (a crop changes every feature), so training on features sees the image and its
mirror only; test-time `tta.shift` views cannot be either.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timm.models.efficientnet import EfficientNet
from torch import nn
from tqdm import tqdm

from pipeline.atomic import atomic_dir, check_free_space
from pipeline.batches import InputSpec, for_inference, full_batch, to_device, to_model_input
from pipeline.config import TrainConfig
from pipeline.errors import PipelineError
from pipeline.models import create_backbone, input_spec, weights_digest
from pipeline.provenance import Made, Record, write_record

log = logging.getLogger(__name__)
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
    return weights_digest(lower_part(model, n_blocks))


def check_model_fits(model: nn.Module, image_size: int, n_blocks: int, features: Features, where: Path) -> None:
    """Refuse a trained model whose frozen blocks or image size are not those the features were made with."""
    facts, settings = features.made.record.facts, features.made.record.settings
    if image_size != settings["train.image_size"] or frozen_digest(model, n_blocks) != facts["frozen_weights"]:
        raise FeaturesError(
            f"{where}: its frozen blocks or image size differ from those the cached features were made with;"
            " re-run `dvc repro` (this backbone's features@ and train@ stages)."
        )


@torch.inference_mode()
def compute_features(
    lower: nn.Module, images: np.ndarray, out: np.ndarray, *, image_size: int, spec: InputSpec, batch_size: int,
    device: torch.device, desc: str, compile: bool = False,
) -> None:  # fmt: skip
    """Write `lower`'s outputs for `images` and their mirrors into `out` (n, 2, C, H, W); with `compile`, through
    `torch.compile` (`pipeline.batches.for_inference`)."""
    lower.eval()
    forward = for_inference(lower, compile)
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False, mininterval=1):
        batch, n = full_batch(to_device(images[start : start + batch_size], device), batch_size, compile)
        for view, pixels in enumerate([batch, batch.flip(2)]):
            x = forward(to_model_input(pixels, image_size, spec))[:n].to(torch.float16)
            if not torch.isfinite(x).all():
                raise FeaturesError(
                    f"{desc}: the frozen blocks give features that are not finite in float16 for images"
                    f" {start + 1}..{start + n}; set train.cached_features to false for this backbone."
                )
            out[start : start + n, view] = x.cpu().numpy()


def write_features(folder: Path, model: nn.Module, n_blocks: int, image_size: int, train_images: np.ndarray,
                   test_images: np.ndarray, *, record: Record, batch_size: int, device: torch.device,
                   compile: bool = False) -> None:  # fmt: skip
    """`folder`/{provenance.json, train.npy, test.npy}: written whole or not at all. `record` (stage, settings,
    inputs) gets the facts: the counts and the frozen weights' digest."""
    model.to(device).to(memory_format=torch.channels_last)
    lower = lower_part(model, n_blocks).eval()  # before any forward: train mode would update its BN statistics
    spec = input_spec(model)
    facts = {"cached": True, "n_train": len(train_images), "n_test": len(test_images),
             "frozen_weights": frozen_digest(model, n_blocks)}  # fmt: skip
    with torch.inference_mode():
        probe = lower(to_model_input(to_device(train_images[:1], device), image_size, spec))
    per_image = VIEWS * int(np.prod(probe.shape[1:])) * np.dtype(np.float16).itemsize
    n_bytes = (len(train_images) + len(test_images)) * per_image
    log.info("%s: %d + %d images x %d views of %s float16: %.2f GB to write", record.stage, len(train_images),
             len(test_images), VIEWS, tuple(probe.shape[1:]), n_bytes / 1e9)  # fmt: skip
    check_free_space(Path(folder).parent, n_bytes, f"{record.stage}'s features", f"`dvc repro {record.stage}`")
    with atomic_dir(folder) as tmp:
        for part, images in (("train", train_images), ("test", test_images)):
            out = np.lib.format.open_memmap(tmp / f"{part}.npy", mode="w+", dtype=np.float16,
                                            shape=(len(images), VIEWS, *probe.shape[1:]))  # fmt: skip
            compute_features(lower, images, out, image_size=image_size, spec=spec, batch_size=batch_size,
                             device=device, desc=f"{record.stage} {part} features", compile=compile)  # fmt: skip
            out.flush()
            del out
        write_record(tmp, dataclasses.replace(record, facts=facts))


def write_not_cached(folder: Path, record: Record) -> None:
    """The record of a backbone that trains on images: its train and predict stages read no features."""
    with atomic_dir(folder) as tmp:
        write_record(tmp, dataclasses.replace(record, facts={"cached": False}))


@dataclass(frozen=True)
class Features:
    train: np.ndarray  # (n_train, 2, C, H, W) float16, memory-mapped; axis 1: the image, its mirror
    test: np.ndarray
    made: Made  # the folder and its record


def initial_model(model_name: str, cfg: TrainConfig) -> nn.Module:
    """The model a train stage starts from (`build_recipe` seeds the same way), whose lower blocks are cached."""
    torch.manual_seed(cfg.seed)
    return create_backbone(model_name, cfg.weights)


def load_features(made: Made, frozen_weights: str | None = None) -> Features:
    """The arrays of the features folder whose checked record is `made` (`pipeline.provenance.expect`); with
    `frozen_weights` (a train stage: the digest of the frozen blocks it starts from), made from those weights."""
    folder, facts = made.path, made.record.facts
    rerun = f"re-run `dvc repro {made.record.stage}`"
    if not facts.get("cached"):
        raise FeaturesError(f"{folder}: holds no features (made without train.cached_features); {rerun}.")
    if frozen_weights is not None and facts.get("frozen_weights") != frozen_weights:
        raise FeaturesError(f"{folder}: made from other frozen weights (frozen_weights={facts.get('frozen_weights')!r},"
                            f" this stage starts from {frozen_weights!r}); {rerun}.")  # fmt: skip
    arrays = {}
    for part in ("train", "test"):
        path, n = folder / f"{part}.npy", facts[f"n_{part}"]
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise FeaturesError(f"{path}: unreadable ({type(exc).__name__}); {rerun}.") from exc
        if array.dtype != np.float16 or array.ndim != 5 or array.shape[:2] != (n, VIEWS):
            raise FeaturesError(
                f"{path}: shape {array.shape} {array.dtype}, expected ({n}, {VIEWS}, C, H, W) float16; {rerun}."
            )
        arrays[part] = array
    return Features(arrays["train"], arrays["test"], made)
