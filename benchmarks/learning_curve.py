"""Accuracy against the number of labelled images on real CIFAR-10, and what the recipe would reach on 50,000.

Runs benchmarks/real_accuracy.py's pipeline (`make demo DATA=<zip>`'s recipe, the Makefile its one home) once per
size: a stratified subset of the benchmark's train part, the same held-out images scored every time. Then fits

  error = a * n ** -b        n = the images each fold model trains on, (k - 1) / k of the subset

to the submission's OOF and held-out accuracy (scipy's curve_fit, each point weighted by its binomial standard
error), and extrapolates to Kaggle's 50,000 labelled images, with a 68% interval from the fit's covariance. Three
points and two parameters leave one degree of freedom, and a power law has no floor while frozen blocks do: the
extrapolation is an upper reference, not a promise.

  python benchmarks/learning_curve.py                          # 1,000, 2,000 and all 3,760 train images
  python benchmarks/learning_curve.py --sizes 500,1000 --set train.epochs=5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from real_accuracy import DEFAULT_NPZ, build_competition, pipeline_results, run_pipeline
from scipy.optimize import curve_fit

from pipeline.competition import ZIP_NAME
from pipeline.config import load_config
from pipeline.host import describe_host

KAGGLE_TRAIN_IMAGES = 50_000


def _error(n: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * np.power(n, -b)


@dataclass(frozen=True)
class PowerLaw:
    """error(n) = a * n ** -b, fitted; `cov` is the covariance of (a, b)."""

    a: float
    b: float
    cov: np.ndarray

    def accuracy(self, n: float) -> float:
        return float(1 - _error(np.asarray(n, dtype=float), self.a, self.b))

    def interval(self, n: float) -> tuple[float, float]:
        """The accuracy at `n` one standard error either side, from the fit's covariance by the delta method on
        log(error) = log(a) - b log(n), the scale on which the law is linear (an error that stays positive)."""
        gradient = np.array([1 / self.a, -np.log(n)])
        sd = float(np.sqrt(gradient @ self.cov @ gradient))
        error = 1 - self.accuracy(n)
        return 1 - error * np.exp(sd), 1 - error * np.exp(-sd)


def fit_power_law(n: np.ndarray, accuracy: np.ndarray, n_scored: np.ndarray | int) -> PowerLaw:
    """The law through measured accuracies, each the mean of its `n_scored` right/wrong answers."""
    accuracy = np.asarray(accuracy, dtype=float)
    sigma = np.sqrt(np.clip(accuracy * (1 - accuracy), 1e-6, None) / np.asarray(n_scored, dtype=float))
    (a, b), cov = curve_fit(_error, np.asarray(n, dtype=float), 1 - accuracy, p0=(1.0, 0.3), sigma=sigma,
                            absolute_sigma=True, bounds=([0, 0], [np.inf, 2]))  # fmt: skip
    return PowerLaw(float(a), float(b), cov)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ, help="the real images (never copied into the repo)")
    parser.add_argument("--sizes", default="1000,2000,0", help="train images per run; 0: all of the train part")
    parser.add_argument("--heldout", type=int, default=900, help="real images held out as scored test images")
    parser.add_argument("--junk", type=int, default=900, help="junk test images among them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra -S, after the recipe's")
    parser.add_argument("--target", type=int, default=KAGGLE_TRAIN_IMAGES, help="labelled images to extrapolate to")
    args = parser.parse_args()

    print(describe_host(), flush=True)
    points = []
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="learning-curve-") as tmp:
            zip_path = Path(tmp) / ZIP_NAME
            data = build_competition(args.npz, zip_path, args.heldout, args.junk, args.seed, n_train=size)
            n_images = len(data["train_labels"])
            print(f"{n_images} train images", flush=True)
            start = time.perf_counter()
            repo, _ = run_pipeline(zip_path, Path(tmp), args.set)
            seconds = time.perf_counter() - start
            rows, _ = pipeline_results(repo, data)
            n_folds = load_config(repo / "params.yaml").cv.n_folds
        submission = next(row for name, row in rows.items() if name.startswith("ensemble"))
        points.append({"images": n_images, "per_fold_model": n_images * (n_folds - 1) / n_folds,
                       "oof": submission["oof"], "heldout": submission["heldout"], "min": seconds / 60})  # fmt: skip
        print("  " + ", ".join(f"{name} OOF {r['oof']:.4f} held-out {r['heldout']:.4f}" for name, r in rows.items()))

    n = np.array([p["per_fold_model"] for p in points])
    target = args.target * (n_folds - 1) / n_folds
    laws = {"oof": fit_power_law(n, [p["oof"] for p in points], [p["images"] for p in points]),
            "heldout": fit_power_law(n, [p["heldout"] for p in points], args.heldout)}  # fmt: skip
    print(f"\n{describe_host()}")
    print(f"submission (make demo DATA=<zip>'s recipe {' '.join(args.set)}), {n_folds} folds, {args.heldout} held out")
    header = ("train images", "per fold model", "OOF", "(fit)", "held-out", "(fit)", "min")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (12, 14, 7, 7, 8, 7, 5), strict=True)))
    for p, x in zip(points, n, strict=True):
        print(f"{p['images']:12,} {x:14,.0f} {p['oof']:7.4f} {laws['oof'].accuracy(x):7.4f}"
              f" {p['heldout']:8.4f} {laws['heldout'].accuracy(x):7.4f} {p['min']:5.1f}")  # fmt: skip
    for key, law in laws.items():
        low, high = law.interval(target)
        sd_a, sd_b = np.sqrt(np.diag(law.cov))
        print(f"{key:>8}: error = {law.a:.3f} (± {sd_a:.3f}) * n^-{law.b:.3f} (± {sd_b:.3f});"
              f" at {args.target:,} images ({target:,.0f} per fold model) {law.accuracy(target):.4f}"
              f" (68%: {low:.4f} to {high:.4f})")  # fmt: skip


if __name__ == "__main__":
    main()
