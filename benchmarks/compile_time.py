"""What `train.compile` costs before it saves anything: torch.compile's first call against eager, per backbone.

For each backbone of params.yaml (the real job's: convnext_tiny, tf_efficientnetv2_s) at its image size, on this
machine's device: the eager time of a batch, the compiled first call (compilation included: what every train,
features and predict process pays once per module it compiles), and the compiled steady-state batch; for
inference (`for_inference`, the held-out scoring, features and predict) and for the training step. The saving per
image and the compile time give the images after which compiling pays off (on a GPU use the saving timm's
tables report, about 1.5x for inference: the break-even is printed for that too).

  python benchmarks/compile_time.py                 # params.yaml's backbones, batch 8
  python benchmarks/compile_time.py --models test_resnet --size 32
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from pipeline.batches import pick_device, synchronize
from pipeline.config import load_config
from pipeline.host import describe_host
from pipeline.models import create_backbone

GPU_INFERENCE_SPEEDUP = 1.5  # timm's results/ tables: compiled inference of both default backbones, 1.5-1.6x eager


def timed(call, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def measure(name: str, size: int, batch: int, device: torch.device, repeats: int = 3) -> dict[str, float]:
    torch.manual_seed(0)
    model = create_backbone(name, "scratch").to(device).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    result = {}
    model.eval()
    with torch.inference_mode():
        model(x)  # eager warm-up
        result["infer_eager"] = min(timed(lambda: model(x), device) for _ in range(repeats))
        compiled = torch.compile(model, dynamic=False)
        result["infer_first"] = timed(lambda: compiled(x), device)
        result["infer_compiled"] = min(timed(lambda: compiled(x), device) for _ in range(repeats))
    model.train()

    def step(forward):
        loss = F.cross_entropy(forward(x).float(), y)
        loss.backward()

    step(model)
    result["train_eager"] = min(timed(lambda: step(model), device) for _ in range(repeats))
    compiled = torch.compile(model, dynamic=False)
    result["train_first"] = timed(lambda: step(compiled), device)
    result["train_compiled"] = min(timed(lambda: step(compiled), device) for _ in range(repeats))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="timm names (default: params.yaml's backbones)")
    parser.add_argument("--size", type=int, help="image size (default: each backbone's train.image_size)")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    device = pick_device()
    cfg = load_config()
    runs = [(m, args.size or 224) for m in args.models] if args.models else [
        (b.model, args.size or b.train.image_size) for b in cfg.backbones.values()]  # fmt: skip
    print(describe_host())
    print(f"batch {args.batch}, {device}, {torch.get_num_threads()} threads; seconds")
    print(f"{'model':<36} {'px':>4} {'':>6} {'eager':>8} {'1st compiled':>13} {'compiled':>9} {'compile s':>10}"
          f" {'pays off after (images)':>24}")  # fmt: skip
    for name, size in runs:
        r = measure(name, size, args.batch, device)
        for kind in ("infer", "train"):
            eager, first, compiled = r[f"{kind}_eager"], r[f"{kind}_first"], r[f"{kind}_compiled"]
            compile_s = first - compiled
            saved = (eager - compiled) / args.batch  # seconds per image on this device
            here = f"{compile_s / saved:,.0f} here" if saved > 0 else "never here"
            gpu = ""
            if kind == "infer":  # the same compile time against timm's GPU saving, at this device's eager speed
                gpu_saved = eager / args.batch * (1 - 1 / GPU_INFERENCE_SPEEDUP)
                gpu = f", {compile_s / gpu_saved:,.0f} at {GPU_INFERENCE_SPEEDUP}x"
            print(f"{name:<36} {size:>4} {kind:>6} {eager:>8.3f} {first:>13.1f} {compiled:>9.3f} {compile_s:>10.1f}"
                  f" {here + gpu:>24}")  # fmt: skip


if __name__ == "__main__":
    main()
