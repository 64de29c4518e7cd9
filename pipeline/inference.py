"""THE inference path: batched logits with horizontal-flip TTA, for out-of-fold and test images alike."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.batches import autocast_dtype, to_device, to_model_input
from pipeline.models import load_checkpoint

log = logging.getLogger(__name__)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    *,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int,
    device: torch.device,
    hflip: bool = True,
    desc: str = "predict",
) -> np.ndarray:
    """Logits `(n_images, n_classes)` float32 for `(n_images, 32, 32, 3)` uint8 images (a memmap is fine).

    With `hflip`, the logits are the mean over the image and its mirror. Puts `model` in eval mode.
    """
    model.eval()
    amp = autocast_dtype(device)
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False, mininterval=1):
        batch = to_device(images[start : start + batch_size], device)
        views = [batch, batch.flip(2)] if hflip else [batch]
        with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
            logits = sum(model(to_model_input(v, image_size, mean, std, torch.float32)).float() for v in views)
        chunks.append((logits / len(views)).cpu().numpy())
    return np.concatenate(chunks).astype(np.float32, copy=False)


def predict_with_checkpoints(
    checkpoints: list[Path], backbone: str, images: np.ndarray, *, batch_size: int, hflip: bool, device: torch.device
) -> np.ndarray:
    """Mean logits `(n_images, n_classes)` of every fold's model of one backbone."""
    total = None
    for path in checkpoints:
        model, meta = load_checkpoint(path, backbone)
        model.to(device).to(memory_format=torch.channels_last)
        start = time.perf_counter()
        logits = predict_logits(
            model, images, image_size=meta["image_size"], mean=meta["mean"], std=meta["std"],
            batch_size=batch_size, device=device, hflip=hflip, desc=f"{backbone} {path.stem}",
        )  # fmt: skip
        total = logits if total is None else total + logits
        seconds = time.perf_counter() - start
        log.info("%s %s: %d images in %.1f s (%.0f img/s%s) on %s", backbone, path.name, len(images), seconds,
                 len(images) / seconds, ", x2 views with hflip" if hflip else "", device)  # fmt: skip
    return total / len(checkpoints)
