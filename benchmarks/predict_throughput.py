"""Predict throughput: `predict_logits` against the bare model's forward pass, in one run.

  bare          a ready (B, 3, S, S) channels_last float batch through the model under inference_mode
  ours          `predict_logits` without TTA: uint8 memmap rows -> device -> upscale + normalise -> model
  ours + hflip  the same with hflip TTA (two views per image, so about half the images/s)
Prints images/s, the ratio to bare, and the projected time for Kaggle's 300,000 test images per fold model.

    python benchmarks/predict_throughput.py                      # tf_efficientnet_lite0, 64 px, batch 256
    python benchmarks/predict_throughput.py --model resnet18 --size 96
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch

from pipeline.batches import pick_device
from pipeline.host import describe_host
from pipeline.inference import predict_logits
from pipeline.models import input_spec


def bare(model: torch.nn.Module, size: int, batch: int, n_images: int, device: torch.device) -> float:
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)  # warm-up
        start = time.perf_counter()
        for _ in range(n_images // batch):
            model(x)
    return (n_images // batch) * batch / (time.perf_counter() - start)


def ours(model: torch.nn.Module, images: np.ndarray, size: int, batch: int, device: torch.device, hflip: bool) -> float:
    kwargs = {"image_size": size, "spec": input_spec(model), "batch_size": batch, "device": device}
    predict_logits(model, images[:batch], hflip=hflip, **kwargs)  # warm-up
    start = time.perf_counter()
    predict_logits(model, images, hflip=hflip, **kwargs)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = pick_device()
    model = timm.create_model(args.model, num_classes=10).to(device).to(memory_format=torch.channels_last).eval()
    with tempfile.TemporaryDirectory() as tmp:  # a memmap, as the predict stage reads test_images.npy
        path = Path(tmp) / "images.npy"
        np.save(path, np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8))
        images = np.load(path, mmap_mode="r")
        runs = {"bare": [], "ours": [], "ours + hflip": []}
        for _ in range(args.repeats):  # interleaved, so drifting machine load hits all alike
            runs["bare"].append(bare(model, args.size, args.batch, args.images, device))
            runs["ours"].append(ours(model, images, args.size, args.batch, device, hflip=False))
            runs["ours + hflip"].append(ours(model, images, args.size, args.batch, device, hflip=True))
    base = float(np.median(runs["bare"]))
    print(f"\n{describe_host()}")
    print(f"\n{args.model} @ {args.size}px, batch {args.batch}, fp32, channels_last, {device}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} runs of {args.images} images")  # fmt: skip
    print(f"{'loop':<16} {'img/s':>8} {'x bare':>7} {'300,000 images':>15}")
    for name, values in runs.items():
        speed = float(np.median(values))
        print(f"{name:<16} {speed:8.1f} {speed / base:7.2f} {300_000 / speed / 60:11.1f} min")


if __name__ == "__main__":
    main()
