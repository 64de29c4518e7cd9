"""Fetch Kaggle's four cifar-10 files (from Kaggle, a local copy, or the embedded sample) into one folder."""

import argparse
from pathlib import Path

from pipeline import cli, config, download


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for train.7z, test.7z and the two CSVs")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)

    cfg = config.load_config(args.params)
    download.fetch_competition(cfg.data, args.out)


if __name__ == "__main__":
    cli.run(main)
