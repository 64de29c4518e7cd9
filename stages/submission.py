"""Write submission.csv (id,label) in sampleSubmission.csv's order, checked against it before it lands."""

import argparse
from pathlib import Path

from pipeline import cli, scores, submission


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--probs", type=Path, required=True, help=".npz of test ids and ensemble probabilities")
    parser.add_argument("--sample-submission", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    test_ids, test_probs = scores.load_scores(args.probs)
    submission.write_submission(args.out, test_ids, test_probs, args.sample_submission)


if __name__ == "__main__":
    cli.run(main)
