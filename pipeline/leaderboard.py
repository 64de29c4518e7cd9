"""Sending a checked submission.csv to Kaggle once, and its leaderboard scores beside the CV score.

A submission's Kaggle description ends with the file's short digest (`pipeline.submission.digest_tag`), so the
list of your submissions says whether this very file went up already: `send_once` refuses to spend another of
the day's 5 submissions on it unless asked (`again`). Creating a submission is never retried (a repeated create
is another submission); after Kaggle took the file, a failed listing is only a warning. Once Kaggle has scored it,
`write_scores` puts its public and private scores beside the ensemble's nested-CV accuracy in a metrics file
(dvc.yaml lists it under `metrics`; git ignores it, and `dvc exp save` keeps it with an experiment).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline import kaggle_io
from pipeline.atomic import write_json
from pipeline.errors import PipelineError
from pipeline.submission import digest_tag

log = logging.getLogger(__name__)
SCORED_WAIT_SECONDS = 60  # how long `send_once` waits for Kaggle to score a new submission
_POLL_SECONDS = 5
_sleep = time.sleep  # tests replace it


class LeaderboardError(PipelineError):
    """A submission was refused before upload, or its scores cannot be found."""


def find_submission(api, digest: str) -> kaggle_io.Submission | None:
    """Your most recent submission of the file with this digest (by its description's tag), or None."""
    tag = digest_tag(digest)
    return next((s for s in kaggle_io.list_submissions(api) if tag in (s.description or "")), None)


def send_once(api, csv_path: Path, message: str, digest: str, *, again: bool = False) -> str:
    """Upload `csv_path` unless it was submitted already (or `again`); returns Kaggle's reply."""
    if not again:
        previous = find_submission(api, digest)
        if previous is not None:
            raise LeaderboardError(
                f"{csv_path}: this very file ({digest_tag(digest)}) went to Kaggle already on {previous.date}"
                f" ({previous.status}, public score {previous.public_score or '-'}), so nothing was uploaded. Send it"
                " again with `python -m stages.submit --again`, or fetch its scores with `--scores`."
            )
    return kaggle_io.submit(api, csv_path, message)  # never retried: a repeated create is another submission


def wait_for_scores(api, digest: str, seconds: float = SCORED_WAIT_SECONDS):
    """The submission of `digest` once Kaggle has scored it, or as it stands after `seconds`; None when listing
    fails after the upload, which is a warning: Kaggle has the file, `--scores` fetches them later."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            found = find_submission(api, digest)
        except kaggle_io.KaggleError as exc:
            log.warning("submitted, but listing your submissions failed (%s); fetch the scores later with"
                        " `python -m stages.submit --scores`", exc)  # fmt: skip
            return None
        if found is None or found.status != "PENDING" or time.monotonic() >= deadline:
            return found
        _sleep(_POLL_SECONDS)


def write_scores(path: Path, submission: kaggle_io.Submission, digest: str, cv_accuracy: float) -> dict:
    """`path` (metrics JSON): the nested-CV accuracy beside Kaggle's public and private scores of this file."""
    metrics = {
        "cv_accuracy": cv_accuracy,
        "public_score": _number(submission.public_score),
        "private_score": _number(submission.private_score),
        "status": submission.status,
        "submitted": submission.date,
        "csv": digest_tag(digest),
    }
    write_json(path, metrics)
    return metrics


def _number(score: str | None) -> float | None:
    try:
        return float(score) if score not in (None, "") else None
    except ValueError:
        return None
