"""Whole batches of packed uint8 images -> model input on the device: augment, upscale, normalise.

Images stay uint8 until they reach the device (as airbench keeps CIFAR-10 on the GPU as uint8); the crop,
flip, resize and normalisation then run once per batch in torch, never per image in Python.
"""

from __future__ import annotations

import functools
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def pick_device() -> torch.device:
    """CUDA when present (with cuDNN's autotuner on), else the CPU: the one place the device is chosen.

    A torch built with CUDA that finds no usable GPU (most often a driver older than that CUDA build) would
    otherwise train on the CPU in silence, for days: it says so, once per process.
    """
    if torch.cuda.is_available():
        # every CUDA process (train, features, predict): one input size per run, so let cuDNN pick its fastest kernels
        torch.backends.cudnn.benchmark = True
        return torch.device("cuda")
    if torch.version.cuda is not None and nvidia_driver_present():  # a CPU machine: nothing to warn about
        _warn_no_gpu(torch.__version__, torch.version.cuda)
    return torch.device("cpu")


# what an NVIDIA driver leaves on a machine: its /proc entry and control device, and nvidia-smi
DRIVER_SIGNS = ("/proc/driver/nvidia/version", "/dev/nvidiactl")


def nvidia_driver_present() -> bool:
    return any(Path(sign).exists() for sign in DRIVER_SIGNS) or shutil.which("nvidia-smi") is not None


@functools.cache
def _warn_no_gpu(torch_version: str, cuda_version: str) -> None:
    log.warning(
        "torch %s is built for CUDA %s but finds no usable GPU, so this runs on the CPU. On a GPU machine, check"
        " `nvidia-smi`: a driver older than CUDA %s needs a torch built for an older CUDA (pytorch.org/get-started).",
        torch_version, cuda_version, cuda_version,
    )  # fmt: skip


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision for `device`: bf16 on GPUs that compute in it natively (compute capability 8.0 and up:
    A100, L4, A10G, H100), fp16 with a GradScaler on older ones (T4 7.5, V100 7.0, P100 6.0); none on the CPU.

    Not `torch.cuda.is_bf16_supported()`: it defaults to `including_emulation=True` and says yes below sm_80
    whenever a bf16 tensor can be made, and emulated bf16 is slow. bf16 on this project's CPUs runs ~4x slower
    than fp32 (FACTS.md), so the CPU stays in fp32.
    """
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a clock read after it then measures it); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A numpy array (uint8 images, int64 labels, a memmap) -> tensor on `device` (pinned, non-blocking on CUDA)."""
    tensor = torch.from_numpy(np.array(array))  # a writable copy: memmaps are read-only
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def random_crop_flip(batch: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop after reflect-padding by `padding` pixels, and a random horizontal flip, per image.

    `batch` is `(B, H, W, C)` uint8; `generator` lives on the batch's device, so the offsets are drawn there
    and never copied from the host (on CUDA a host-made tensor would be one more copy per step).
    """
    n, h, w, _ = batch.shape
    if padding > 0:
        padded = F.pad(batch.permute(0, 3, 1, 2).float(), (padding,) * 4, mode="reflect")
        padded = padded.to(torch.uint8).permute(0, 2, 3, 1)
        dy, dx = torch.randint(0, 2 * padding + 1, (2, n, 1), generator=generator, device=batch.device)
        rows = (dy + torch.arange(h, device=batch.device))[:, :, None]  # (B, H, 1)
        cols = (dx + torch.arange(w, device=batch.device))[:, None, :]  # (B, 1, W)
        batch = padded[torch.arange(n, device=batch.device)[:, None, None], rows, cols]
    flip = torch.rand(n, generator=generator, device=batch.device) < 0.5
    return torch.where(flip[:, None, None, None], batch.flip(2), batch)


@dataclass(frozen=True)
class InputSpec:
    """What a backbone's pretrained weights expect of its input: the per-channel mean and std (RGB, [0, 1] units),
    and the interpolation their images were resized with (timm's pretrained config: bicubic for most)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    @classmethod
    def of(cls, meta: dict) -> InputSpec:
        """The spec a checkpoint's metadata holds (`pipeline.models.save_checkpoint`)."""
        return cls(tuple(meta["mean"]), tuple(meta["std"]), meta.get("interpolation", "bilinear"))


INTERPOLATIONS = ("bilinear", "bicubic", "nearest")  # what F.interpolate does of timm's names


def to_model_input(batch: torch.Tensor, size: int, spec: InputSpec) -> torch.Tensor:
    """`(B, H, W, 3)` uint8 -> `(B, 3, size, size)` normalised floats, channels_last in memory."""
    x = batch.permute(0, 3, 1, 2).to(torch.float32).div_(255)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode=spec.interpolation, align_corners=False, antialias=False)
    mean_t, std_t = _channel_constants(tuple(spec.mean), tuple(spec.std), x.device)
    x = (x - mean_t) / std_t
    return x.contiguous(memory_format=torch.channels_last)  # fp32: autocast, where on, lowers precision


@functools.lru_cache(maxsize=16)
def _channel_constants(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
    """(mean, std) as `(1, 3, 1, 1)` tensors on `device`, made once: a new one per batch is a host-to-device copy."""
    return torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1)


def for_inference(module: nn.Module, compile: bool) -> nn.Module:
    """`module`, or with `compile` its `torch.compile` with static shapes: inference batches all have one size
    (`full_batch` pads the last), so it compiles once per module, not once more for the last batch of every pass."""
    return torch.compile(module, dynamic=False) if compile else module


def full_batch(batch: torch.Tensor, batch_size: int, pad: bool) -> tuple[torch.Tensor, int]:
    """(`batch` padded to `batch_size` rows by repeating its last row, when `pad`; its own row count)."""
    n = len(batch)
    if not pad or n == batch_size:
        return batch, n
    return torch.cat([batch, batch[-1:].expand(batch_size - n, *batch.shape[1:])]), n
