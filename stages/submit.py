"""Send artifacts/submission.csv to Kaggle (a command, not a DVC stage): checks it, uploads, lists your scores."""

import argparse
from pathlib import Path

from pipeline import cli, kaggle_io, submission


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", type=Path, default=Path("artifacts/submission.csv"))
    parser.add_argument("--sample-submission", type=Path, default=Path("artifacts/raw/sampleSubmission.csv"))
    parser.add_argument("--metrics", type=Path, default=Path("artifacts/metrics/ensemble.json"))
    parser.add_argument("--dry-run", action="store_true", help="check everything, upload nothing")
    args = parser.parse_args(argv)

    n_rows = submission.check_submission(args.file, args.sample_submission)
    message = submission.submission_message(args.metrics)
    print(f"{args.file}: {n_rows} rows match {args.sample_submission}; message: {message!r}")
    if args.dry_run:
        print("dry run: nothing uploaded")
        return
    api = kaggle_io.connect()
    reply = kaggle_io.submit(api, args.file, message)
    print(f"submitted {args.file}; Kaggle says: {reply}")  # before the listing, which can fail on its own
    print("\n".join(["your latest submissions:", *kaggle_io.latest_submissions(api)]))


if __name__ == "__main__":
    cli.run(main)
