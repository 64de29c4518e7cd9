"""Whole batches of packed uint8 images -> model input on the device: augment, upscale, normalise.

Images stay uint8 until they reach the device (as airbench keeps CIFAR-10 on the GPU as uint8); the crop,
flip, resize and normalisation then run once per batch in torch, never per image in Python.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def pick_device() -> torch.device:
    """CUDA when present, else the CPU: the one place the device is chosen."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision for `device`: bf16 on GPUs that have it, else fp16 on CUDA; none on the CPU.

    bf16 on this project's CPUs runs ~4x slower than fp32 (FACTS.md), so the CPU stays in fp32.
    """
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """`(B, 32, 32, 3)` uint8 numpy -> uint8 tensor on `device` (pinned, non-blocking copy on CUDA)."""
    batch = torch.from_numpy(np.array(images, dtype=np.uint8))  # a writable copy: memmaps are read-only
    if device.type == "cuda":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def random_crop_flip(batch: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop after reflect-padding by `padding` pixels, and a random horizontal flip, per image.

    `batch` is `(B, H, W, C)` uint8 on any device; `generator` lives on the CPU so a seed gives the same
    augmentations on every device.
    """
    n, h, w, _ = batch.shape
    if padding > 0:
        padded = F.pad(batch.permute(0, 3, 1, 2).float(), (padding,) * 4, mode="reflect")
        padded = padded.to(torch.uint8).permute(0, 2, 3, 1)
        dy, dx = torch.randint(0, 2 * padding + 1, (2, n, 1), generator=generator).to(batch.device)
        rows = (dy + torch.arange(h, device=batch.device))[:, :, None]  # (B, H, 1)
        cols = (dx + torch.arange(w, device=batch.device))[:, None, :]  # (B, 1, W)
        batch = padded[torch.arange(n, device=batch.device)[:, None, None], rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).to(batch.device)
    return torch.where(flip[:, None, None, None], batch.flip(2), batch)


def to_model_input(batch: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """`(B, H, W, 3)` uint8 -> `(B, 3, size, size)` normalised floats, channels_last in memory."""
    x = batch.permute(0, 3, 1, 2).to(torch.float32).div_(255)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    mean_t = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    x = (x - mean_t) / std_t
    return x.contiguous(memory_format=torch.channels_last)  # fp32: autocast, where on, lowers precision
