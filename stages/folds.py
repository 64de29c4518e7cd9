"""Assign every training image to one of k stratified folds."""

import argparse
from pathlib import Path

from pipeline import cli, config, dataset, folds
from pipeline.provenance import record_of


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folds.csv (id,label,fold) and its record beside it")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)

    cfg = config.load_config(args.params)
    data = dataset.load_dataset(args.data)
    fold_of_image = folds.make_folds(data.train_labels, cfg.cv.n_folds, cfg.cv.seed)
    folds.write_folds(
        args.out, data.train_ids, data.train_labels, fold_of_image, record_of(cfg, "folds", data=data.made)
    )


if __name__ == "__main__":
    cli.run(main)
