"""Training-loop throughput against the bare model's forward + backward + optimizer step, in one run.

bare      a ready (B, 3, S, S) channels_last float batch through model -> loss -> backward -> AdamW step
ours      `training.train_epoch`: uint8 batches from the packed array, crop/flip + upscale + normalise on the
          device, label-smoothed loss, scheduler step (the same model, size, batch, dtype and optimizer)
ours+     the same with mixup/cutmix and EMA on
frozen    `ours` with the stem and the first N blocks frozen (--freeze-blocks N, as the demo's train.freeze_blocks)
cached    `frozen` on cached outputs of those blocks (--cached-features, as train.cached_features): the upper
          blocks only; the frozen pass is paid once per image by stage features@<name>, not per update

  python benchmarks/train_throughput.py                       # tf_efficientnet_lite0, 64 px, batch 64
  python benchmarks/train_throughput.py --model resnet18 --size 96 --batch 64 --updates 20
  python benchmarks/train_throughput.py --size 48 --freeze-blocks 6 --cached-features    # `make demo`'s lite0
  python benchmarks/train_throughput.py --model tf_efficientnet_lite2 --size 128 --freeze-blocks 6 \
      --cached-features                                      # `make demo DATA=...`'s lite2
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.batches import autocast_dtype, synchronize
from pipeline.config import TrainConfig
from pipeline.distributed import World, join_world
from pipeline.features import VIEWS, lower_part
from pipeline.folds import Split
from pipeline.host import describe_host
from pipeline.models import input_spec
from pipeline.recipe import build_recipe
from pipeline.training import train_epoch


def bare(model_name: str, size: int, batch: int, updates: int, world: World) -> float:
    """img/s of the model's own step as the loop takes it, on one ready batch already on the device: the recipe's
    optimizer (fused AdamW on CUDA), autocast dtype and GradScaler, and the device synchronised before each clock
    read. What `train_epoch` adds (data to the device, augmentation, the schedule, the loss's bookkeeping) is what
    its img/s lacks against this."""
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=1e-3, image_size=size, weights="scratch", warmup_epochs=0)
    recipe = build_recipe(model_name, cfg, batch * updates, world)
    recipe.train_mode()
    device, amp = world.device, autocast_dtype(world.device)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        recipe.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
            loss = F.cross_entropy(recipe.forward(x).float(), y, label_smoothing=cfg.label_smoothing)
        recipe.scaler.scale(loss).backward()
        recipe.scaler.step(recipe.optimizer)
        recipe.scaler.update()

    step()  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(updates):
        step()
    synchronize(device)
    return updates * batch / (time.perf_counter() - start)


def ours(model_name: str, size: int, batch: int, updates: int, extras: bool, freeze_blocks: int = 0,
         cached: bool = False) -> float:  # fmt: skip
    world = join_world()
    rng = np.random.default_rng(0)
    n = batch * (updates + 1)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=1e-3, image_size=size, weights="scratch", warmup_epochs=0,
                         mixup=0.8 if extras else 0.0, cutmix=1.0 if extras else 0.0,
                         ema_decay=0.999 if extras else 0.0, freeze_blocks=freeze_blocks,
                         cached_features=cached)  # fmt: skip
    recipe = build_recipe(model_name, cfg, n, world)
    features = None
    if cached:  # what features@<name> would cache: random values of the frozen blocks' output shape
        with torch.no_grad():
            shape = lower_part(recipe.model, freeze_blocks)(torch.zeros(1, 3, size, size, device=world.device)).shape
        features = rng.normal(size=(n, VIEWS, *shape[1:])).astype(np.float16)
    split = Split(images, labels, images[:1], labels[:1], np.array([1]), features, None if features is None else
                  features[:1])  # fmt: skip
    spec = input_spec(recipe.model)
    train_epoch(recipe, split, cfg, world, 0, spec, name="warm-up", max_updates=1)
    start = time.perf_counter()
    train_epoch(recipe, split, cfg, world, 0, spec, name="timed", max_updates=updates)
    return updates * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--updates", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3, help="alternate the runs; report medians")
    parser.add_argument("--freeze-blocks", type=int, default=0, help="> 0: also time train_epoch with them frozen")
    parser.add_argument("--cached-features", action="store_true", help="and on their cached outputs")
    args = parser.parse_args()

    world = join_world()
    device = world.device
    if args.cached_features and not args.freeze_blocks:
        parser.error("--cached-features needs --freeze-blocks N")
    runs = {"bare": [], "ours": [], "ours+": []} | ({"frozen": []} if args.freeze_blocks else {})
    runs |= {"cached": []} if args.cached_features else {}
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits all three alike
        runs["bare"].append(bare(args.model, args.size, args.batch, args.updates, world))
        runs["ours"].append(ours(args.model, args.size, args.batch, args.updates, extras=False))
        runs["ours+"].append(ours(args.model, args.size, args.batch, args.updates, extras=True))
        if args.freeze_blocks:
            runs["frozen"].append(ours(args.model, args.size, args.batch, args.updates, False, args.freeze_blocks))
        if args.cached_features:
            runs["cached"].append(ours(args.model, args.size, args.batch, args.updates, False, args.freeze_blocks,
                                       cached=True))  # fmt: skip
    base = float(np.median(runs["bare"]))
    print(f"\n{describe_host()}")
    precision = autocast_dtype(device) or "fp32"
    print(f"\n{args.model} @ {args.size}px, batch {args.batch}, {precision}, channels_last, {device}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} x {args.updates} updates")  # fmt: skip
    print(f"{'loop':<40} {'img/s':>8} {'x bare':>7}")
    labels = {"bare": "bare step (the recipe's optimizer, amp)", "ours": "train_epoch",
              "ours+": "train_epoch + mixup/cutmix + EMA",
              "frozen": f"train_epoch, stem + {args.freeze_blocks} blocks frozen",
              "cached": "train_epoch on their cached outputs"}  # fmt: skip
    for key, values in runs.items():
        print(f"{labels[key]:<40} {np.median(values):8.1f} {np.median(values) / base:7.2f}")


if __name__ == "__main__":
    main()
