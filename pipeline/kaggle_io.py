"""The Kaggle API at its boundary: authenticate, download the competition, submit, list submissions.

The kaggle package prints a help text or authenticates when imported, so it is imported only inside
`connect()`, with its output captured; its failures become one KaggleError that says what to do.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import stat
from pathlib import Path

from pipeline.competition import SLUG
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

COMPETITION_URL = f"https://www.kaggle.com/competitions/{SLUG}"
CREDENTIALS_HELP = (
    "Provide Kaggle credentials in one of the ways the kaggle package documents: set KAGGLE_API_TOKEN"
    " (or save the token to ~/.kaggle/access_token), set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json"
    " (Kaggle > Settings > API > Create New Token) in ~/.kaggle/ with `chmod 600`."
    " Without a token, run the offline demo: `make demo`."
)


class KaggleError(PipelineError):
    """A Kaggle API call failed; the message says how to fix it."""


def connect():
    """Return an authenticated `KaggleApi`; raises KaggleError if no credentials are found."""
    _warn_if_readable_by_others()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except (SystemExit, OSError) as exc:  # kaggle exits (or, in older releases, raises OSError) without credentials
        raise KaggleError(f"No Kaggle credentials found. {CREDENTIALS_HELP}") from exc
    return api


def _warn_if_readable_by_others() -> None:
    config_dirs = [os.environ.get("KAGGLE_CONFIG_DIR"), Path.home() / ".kaggle",
                   Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "kaggle"]  # fmt: skip
    for folder in filter(None, config_dirs):
        path = Path(folder) / "kaggle.json"
        if path.is_file() and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("%s is readable by other users of this machine; run `chmod 600 %s`", path, path)


def download_competition(api, dest: Path) -> Path:
    """Download `cifar-10.zip` into the folder `dest`; returns its path."""
    with _explained(f"downloading the {SLUG} files"):
        api.competition_download_files(SLUG, path=str(dest), quiet=False)
    return Path(dest) / f"{SLUG}.zip"


def submit(api, csv_path: Path, message: str) -> None:
    """Upload `csv_path` as a submission with `message`."""
    with _explained(f"submitting {csv_path}"):
        api.competition_submit(str(csv_path), message, SLUG, quiet=False)


def latest_submissions(api, n: int = 5) -> list[str]:
    """One line per recent submission: date, status, public score, description."""
    with _explained("listing your submissions"):
        submissions = api.competition_submissions(SLUG) or []
    lines = []
    for s in submissions[:n]:
        lines.append(
            f"{getattr(s, 'date', '')}  {getattr(s, 'status', '')}  public={getattr(s, 'public_score', '')}"
            f"  {getattr(s, 'description', '')}"
        )
    return lines


@contextlib.contextmanager
def _explained(action: str):
    """Turn the API's HTTP and network errors into one KaggleError per cause."""
    try:
        yield
    except KaggleError:
        raise
    except Exception as exc:  # the API raises requests' HTTPError and ConnectionError, among others
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            fix = f"Kaggle rejected your credentials (HTTP 401). Create a new token and try again. {CREDENTIALS_HELP}"
        elif status == 403:
            fix = (
                f"Kaggle refused access (HTTP 403): accept the competition's rules at {COMPETITION_URL}/rules"
                " while signed in, then re-run."
            )
        elif status == 404:
            fix = f"Kaggle did not find the competition {SLUG!r} (HTTP 404); check {COMPETITION_URL}."
        elif status is not None:
            fix = f"Kaggle answered HTTP {status}; try again later."
        else:
            fix = f"the request failed ({type(exc).__name__}); check your network connection and re-run."
        raise KaggleError(f"While {action}: {fix}") from exc
