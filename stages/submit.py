"""Send artifacts/submission.csv to Kaggle (a command, not a DVC stage): checks it, uploads it once, records the
leaderboard's scores beside the CV score.

Checked first, before anything is sent: the CSV against sampleSubmission.csv, and its record (it is the file the
submission stage wrote, from the ensemble output now in artifacts/, made with params.yaml's settings, from
Kaggle's images rather than the offline sample). A file already among your submissions is not sent again
without `--again`. `--scores` uploads nothing and fetches the scores of the file sent before.
"""

import argparse
from pathlib import Path

from pipeline import cli, config, kaggle_io, leaderboard, submission
from pipeline.provenance import made_by


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", type=Path, default=Path("artifacts/submission.csv"))
    parser.add_argument("--sample-submission", type=Path, default=Path("artifacts/raw/sampleSubmission.csv"))
    parser.add_argument("--probs", type=Path, default=Path("artifacts/ensemble/test_probs.npz"),
                        help="the ensemble output submission.csv must have been made from")  # fmt: skip
    parser.add_argument("--scores-out", type=Path, default=Path("artifacts/metrics/leaderboard.json"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--dry-run", action="store_true", help="check everything, upload nothing")
    parser.add_argument("--again", action="store_true", help="send the file even if it was submitted before")
    parser.add_argument("--scores", action="store_true", help="upload nothing; fetch the scores of this file")
    args = parser.parse_args(argv)

    cfg = config.load_config(args.params)
    probs = made_by(args.probs, cfg, "ensemble")
    made = made_by(args.file, cfg, "submission", probs=probs)
    n_rows = submission.check_submission(args.file, args.sample_submission)
    digest = submission.check_submittable(args.file, made)
    message = submission.submission_message(made, digest)
    print(f"{args.file}: {n_rows} rows match {args.sample_submission}, made from {args.probs}; message: {message!r}")
    if args.dry_run:
        print("dry run: nothing uploaded")
        return
    api = kaggle_io.connect()
    if args.scores:
        found = leaderboard.find_submission(api, digest)
        if found is None:
            raise leaderboard.LeaderboardError(f"{args.file} ({submission.digest_tag(digest)}) is not among your"
                                               " submissions; send it with `python -m stages.submit`.")  # fmt: skip
    else:
        reply = leaderboard.send_once(api, args.file, message, digest, again=args.again)
        print(f"submitted {args.file}; Kaggle says: {reply}")  # before the listing, which can fail on its own
        found = leaderboard.wait_for_scores(api, digest)
    if found is not None:  # written pending too: `--scores` later fills in the scores
        scores = leaderboard.write_scores(args.scores_out, found, digest, made.record.facts["nested_cv_accuracy"])
        print(f"{found.status}: public {scores['public_score']}, private {scores['private_score']}, nested-CV"
              f" {scores['cv_accuracy']:.4f} -> {args.scores_out} (keep it with this run: `dvc exp save -I"
              f" {args.scores_out}`)")  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
