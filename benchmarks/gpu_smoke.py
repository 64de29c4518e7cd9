"""Run this first on a GPU box: one short fold per backbone, checked for what costs GPU hours silently.

For each backbone: the training loop's host-device synchronisations per update (torch's sync debug mode on
CUDA; on the CPU its twin, `pipeline.host_sync`), its img/s against the bare model step measured in the same
run, peak memory, and the held-out accuracy after a few updates on an easy separable set (far above chance,
or the recipe is broken).

  python benchmarks/gpu_smoke.py                  # on a GPU: params.yaml's backbones at 224 px, hub weights
  python benchmarks/gpu_smoke.py --tiny           # anywhere (the default without a GPU): tiny timm models, 32 px
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from train_throughput import bare

from pipeline.config import TrainConfig, load_config
from pipeline.distributed import World
from pipeline.folds import Split
from pipeline.host import describe_host
from pipeline.host_sync import count_host_syncs
from pipeline.inference import predict_logits
from pipeline.models import input_spec
from pipeline.recipe import build_recipe
from pipeline.training import train_epoch

TINY_BACKBONES = ("test_efficientnet", "test_convnext")


def separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`(n, 32, 32, 3)` uint8 images whose class is their colour, with noise: any working recipe learns them."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    palette = np.random.default_rng(0).integers(0, 256, size=(10, 3))
    images = palette[labels][:, None, None, :] + rng.normal(0, 20, size=(n, 32, 32, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def smoke(backbone: str, cfg: TrainConfig, updates: int, world: World) -> dict[str, float]:
    images, labels = separable(cfg.batch_size * updates, seed=1)
    valid_images, valid_labels = separable(500, seed=2)
    split = Split(images, labels, valid_images, valid_labels, np.arange(1, 501))
    recipe = build_recipe(backbone, cfg, len(images), world)
    spec = input_spec(recipe.model)
    train_epoch(recipe, split, cfg, world, 0, spec, name=f"{backbone} warm-up", max_updates=2)
    if world.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with count_host_syncs(world.device) as syncs:
        start = time.perf_counter()
        train_epoch(recipe, split, cfg, world, 0, spec, name=backbone, max_updates=updates)
        if world.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    logits = predict_logits(recipe.model, valid_images, image_size=cfg.image_size, spec=spec,
                            batch_size=cfg.batch_size * 2, device=world.device)  # fmt: skip
    if world.device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "syncs_per_update": len(syncs) / updates,
        "img_per_s": updates * cfg.batch_size / seconds,
        "bare_img_per_s": bare(backbone, cfg.image_size, cfg.batch_size, max(3, updates // 4), world),
        "peak_mib": peak_mib,
        "accuracy": float((logits.argmax(1) == valid_labels).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models at 32 px (the default without a GPU)")
    parser.add_argument("--updates", type=int, default=None, help="timed updates per backbone (GPU 200, tiny 40)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type != "cuda"
    world = World(device=device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    params = load_config()
    tiny_cfg = TrainConfig(epochs=1, batch_size=16, lr=3.0e-3, warmup_epochs=0, image_size=32, weights="scratch")
    # the real recipe, one short fold
    runs = [(model, tiny_cfg) for model in TINY_BACKBONES] if tiny else [
        (bb.model, TrainConfig(**{**bb.train.__dict__, "epochs": 1, "warmup_epochs": 0, "mixup_off_epoch": 0,
                                   "cached_features": False}))  # on images: the smoke has no cached features
        for bb in params.backbones.values()
    ]  # fmt: skip
    updates = args.updates or (40 if tiny else 200)
    print(describe_host())
    print(f"{'backbone':<36} {'px':>4} {'syncs/update':>12} {'img/s':>8} {'x bare':>7} {'peak MiB':>9} {'accuracy':>8}")
    for backbone, cfg in runs:
        r = smoke(backbone, cfg, updates, world)
        print(f"{backbone:<36} {cfg.image_size:>4} {r['syncs_per_update']:>12.2f} {r['img_per_s']:>8.1f}"
              f" {r['img_per_s'] / r['bare_img_per_s']:>7.2f} {r['peak_mib']:>9.0f} {r['accuracy']:>8.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
