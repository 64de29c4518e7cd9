"""Predict every test image with every fold's model of one backbone (hflip TTA), averaged over folds."""

import argparse
from pathlib import Path

import numpy as np

from pipeline import batches, cli, config, dataset, inference, scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--models", type=Path, required=True, help="folder of the backbone's fold<k>.safetensors")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help=".npz of test ids and fold-averaged logits")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)

    cfg = config.load_config(args.params)
    data = dataset.load_dataset(args.data)
    logits = inference.predict_with_checkpoints(
        [args.models / f"fold{k}.safetensors" for k in cfg.cv.folds], args.backbone, data.test_images,
        batch_size=cfg.predict.batch_size, hflip=cfg.predict.hflip, shift=cfg.predict.shift,
        device=batches.pick_device(),
    )  # fmt: skip
    scores.save_scores(args.out, data.test_ids, logits, dtype=np.float16)  # 300,000 x 10 logits: 6 MB


if __name__ == "__main__":
    cli.run(main)
