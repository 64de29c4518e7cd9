"""THE inference path: batched logits with horizontal-flip TTA, for out-of-fold and test images alike."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline.batches import InputSpec, autocast_dtype, for_inference, full_batch, to_device, to_model_input
from pipeline.features import Features, UpperPart, check_model_fits
from pipeline.models import load_checkpoint

log = logging.getLogger(__name__)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    *,
    image_size: int,
    spec: InputSpec,
    batch_size: int,
    device: torch.device,
    hflip: bool = True,
    shift: int = 0,
    compile: bool = False,
    desc: str = "predict",
) -> np.ndarray:
    """Logits `(n_images, n_classes)` float32 for `(n_images, 32, 32, 3)` uint8 images (a memmap is fine).

    The logits are the mean over test-time views: the image, its mirror with `hflip`, and with `shift` > 0
    four more copies moved by `shift` pixels up, down, left and right (edges reflected). Puts `model` in
    eval mode; with `compile`, runs it through `torch.compile` (`for_inference`).
    """
    model.eval()
    forward, amp = for_inference(model, compile), autocast_dtype(device)
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False, mininterval=1):
        batch, n = full_batch(to_device(images[start : start + batch_size], device), batch_size, compile)
        views = [batch, batch.flip(2)] if hflip else [batch]
        if shift > 0:
            views += [shifted(batch, dy, dx) for dy, dx in ((shift, 0), (-shift, 0), (0, shift), (0, -shift))]
        with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
            logits = sum(forward(to_model_input(v, image_size, spec)).float() for v in views)
        chunks.append((logits[:n] / len(views)).cpu().numpy())
    return np.concatenate(chunks).astype(np.float32, copy=False)


@torch.inference_mode()
def predict_feature_logits(
    upper: nn.Module, features: np.ndarray, *, batch_size: int, device: torch.device, hflip: bool = True,
    compile: bool = False, desc: str = "predict",
) -> np.ndarray:  # fmt: skip
    """`predict_logits` from cached features `(n_images, 2, C, H, W)` (the image, its mirror) through `upper`,
    the part of the model above them (`pipeline.features.UpperPart`): the mean over both views with `hflip`."""
    upper.eval()
    forward, amp = for_inference(upper, compile), autocast_dtype(device)
    views = 2 if hflip else 1
    chunks = []
    for start in tqdm(range(0, len(features), batch_size), desc=desc, unit="batch", leave=False, mininterval=1):
        batch, n = full_batch(
            to_device(features[start : start + batch_size, :views], device).float(), batch_size, compile
        )
        with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
            logits = sum(
                forward(batch[:, v].contiguous(memory_format=torch.channels_last)).float() for v in range(views)
            )
        chunks.append((logits[:n] / views).cpu().numpy())
    return np.concatenate(chunks).astype(np.float32, copy=False)


def shifted(batch: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`(B, H, W, C)` images moved by (dy, dx) pixels, the uncovered edge filled by reflection."""
    pad = max(abs(dy), abs(dx))
    padded = F.pad(batch.permute(0, 3, 1, 2).float(), (pad,) * 4, mode="reflect").to(batch.dtype)
    h, w = batch.shape[1:3]
    return padded[:, :, pad - dy : pad - dy + h, pad - dx : pad - dx + w].permute(0, 2, 3, 1)


def predict_with_checkpoints(
    checkpoints: list[Path], backbone: str, images: np.ndarray, *, batch_size: int, hflip: bool, shift: int,
    device: torch.device, features: Features | None = None, freeze_blocks: int = 0, compile: bool = False,
) -> np.ndarray:  # fmt: skip
    """Mean logits `(n_images, n_classes)` of every fold's model of one backbone.

    With `features` (cached by features@<backbone> for its first `freeze_blocks` blocks), each model runs only
    the blocks above them, on `features.test`, once its frozen blocks are checked to be the features'.
    """
    total = None
    for path in checkpoints:
        model, meta = load_checkpoint(path, backbone)
        model.to(device).to(memory_format=torch.channels_last)
        start = time.perf_counter()
        if features is None:
            logits = predict_logits(
                model, images, image_size=meta["image_size"], spec=InputSpec.of(meta),
                batch_size=batch_size, device=device, hflip=hflip, shift=shift, compile=compile,
                desc=f"{backbone} {path.stem}",
            )  # fmt: skip
        else:
            check_model_fits(model, meta["image_size"], freeze_blocks, features, path)
            logits = predict_feature_logits(UpperPart(model, freeze_blocks), features.test, batch_size=batch_size,
                                            device=device, hflip=hflip, compile=compile,
                                            desc=f"{backbone} {path.stem}")  # fmt: skip
        total = logits if total is None else total + logits
        seconds = time.perf_counter() - start
        n_views = (2 if hflip else 1) + (4 if shift > 0 else 0)
        log.info("%s %s: %d images in %.1f s (%.0f img/s, %d views each) on %s", backbone, path.name, len(images),
                 seconds, len(images) / seconds, n_views, device)  # fmt: skip
    return total / len(checkpoints)
