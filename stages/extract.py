"""Decode the 7z archives into packed uint8 image arrays and label ids, checked against the two CSVs."""

import argparse
from pathlib import Path

from pipeline import cli, dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="folder written by the download stage")
    parser.add_argument("--out", type=Path, required=True, help="folder for the .npy arrays")
    args = parser.parse_args(argv)

    dataset.extract_competition(args.raw, args.out)


if __name__ == "__main__":
    cli.run(main)
