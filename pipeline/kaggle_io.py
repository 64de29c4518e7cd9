"""The Kaggle API at its boundary: sign in, download the competition, submit, list submissions.

The kaggle package prints a help text or authenticates when imported, so it is imported only inside
`connect()`, with its output swallowed. Its client prints every request, `Authorization` header included, when
VERBOSE or VERBOSE_OUTPUT is set, so `connect()` turns that off, and every later call's output is masked
(`pipeline.kaggle_output`). Every request is bounded (`pipeline.kaggle_bounds`); sign-in, the download and the
listing are tried up to 3 times, creating a submission once, since each one spends one of the day's 5. Their
failures become one KaggleError per cause that says what to do.

Worst cases with the defaults, when Kaggle never answers (a request: at most 10 s to connect, then 60 s for the
first byte): sign-in with a token, the download and the listing 3 x 70 s + 6 s = 216 s each (a username and key
sign in without a request); submit 70 s to start the upload, 3 x 70 s + 1 s to upload (urllib3's backoff), 70 s
to create: 351 s. A download that keeps stalling after its bytes started also goes through kaggle's own 5
resumed retries (2 to 32 s apart, each printed) inside each of our attempts: at most ~10 min per attempt.
Not bounded here: DNS look-ups (the system resolver's own timeouts), and a peer that trickles a byte a minute.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from pipeline.competition import SLUG
from pipeline.errors import PipelineError
from pipeline.kaggle_bounds import (
    GaveUp,
    attempts_said,
    bounded,
    briefly,
    host,
    http_status,
    is_network_error,
    retried,
    timed_out,
    timeout_seconds,
    timeouts,
)
from pipeline.kaggle_output import mask, masked_logs, masked_output, one_line, secrets_of

log = logging.getLogger(__name__)

COMPETITION_URL = f"https://www.kaggle.com/competitions/{SLUG}"
TOKEN_URL = "https://www.kaggle.com/settings/api"
CREDENTIALS_HELP = (
    "Provide Kaggle credentials in one of the ways the kaggle package documents: set KAGGLE_API_TOKEN"
    " (or save the token to ~/.kaggle/access_token), set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json"
    " (Kaggle > Settings > API > Create New Token) in ~/.kaggle/ with `chmod 600`."
    " Without a token, run the offline demo: `make demo`."
)
# kaggle 2.x returns a response with this message instead of raising when the upload fails
# (KaggleApi.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE); read from the API object when it has it.
_UPLOAD_FAILED = "Could not submit to competition"
# Kaggle answers HTTP 400 "Submission not allowed: Your team has used its daily Submission allowance (5) today,
# please try again tomorrow UTC (3.2 hours from now)."; kagglesdk counts the day in UTC (ApiSubmissionLimits).
_DAILY_LIMIT = re.compile(r"daily submission (allowance|limit)", re.IGNORECASE)
_AUTH_HEADER = re.compile(r"(?im)^([ \t]*(?:proxy-)?authorization[ \t]*:[ \t]*).*$")
# The query of a URL or path (`https://storage.googleapis.com/b/o?X-Goog-Signature=...`, `/upload?upload_id=...`):
# anything with a `/` before the `?`, up to a space, quote, bracket or `)`, and a sentence's last `.` or `,` left.
_URL_QUERY = re.compile(r"""([^\s?'"()<>]*/[^\s?'"()<>]*)\?[^\s'"()<>\[\]]*[^\s'"()<>\[\].,;:]""")
_HIDDEN = "[hidden]"

TIMEOUT_ENV = "KAGGLE_TIMEOUT_SECONDS"
_TIMEOUTS = (10.0, 60.0)  # connect, read (seconds)
_ATTEMPTS = 3  # of a call that is safe to repeat
_FIRST_BACKOFF = 2.0  # seconds before the 2nd attempt; doubled before each later one
# kaggle's upload_complete mounts HTTPAdapter(max_retries=Retry(total=10, backoff_factor=0.5)) on its own Session:
# 11 reads of up to 60 s each, with 367 s of backoff between. While our calls run it gets at most this many retries.
_URLLIB3_RETRIES = 2
_sleep = time.sleep  # tests replace it, so retries do not wait
T = TypeVar("T")


class KaggleError(PipelineError):
    """A Kaggle API call failed; the message says how to fix it."""


@dataclass(frozen=True)
class Submission:
    """One of your submissions as Kaggle lists it (kagglesdk's ApiSubmission); scores are Kaggle's strings, None
    until it scored them; `date` is ISO 8601 in UTC (`2025-03-01T12:00:00Z`); `status` e.g. PENDING, COMPLETE."""

    ref: int
    date: str | None
    description: str
    status: str
    public_score: str | None
    private_score: str | None

    @classmethod
    def from_kaggle(cls, s) -> Submission:
        status = getattr(s, "status", None)
        date = getattr(s, "date", None)  # a naive datetime in UTC (kagglesdk's DateTimeSerializer drops the Z)
        return cls(
            ref=getattr(s, "ref", 0) or 0,
            date=f"{date:%Y-%m-%dT%H:%M:%S}Z" if isinstance(date, datetime) else (date or None),
            description=getattr(s, "description", None) or "",
            status=getattr(status, "name", None) or str(status or "PENDING"),
            public_score=getattr(s, "public_score", None) or None,  # kagglesdk's getters say "" for "not yet"
            private_score=getattr(s, "private_score", None) or None,
        )


def connect():
    """Return a signed-in `KaggleApi` that never prints its requests; raises KaggleError saying why sign-in failed.

    With a token, sign-in asks Kaggle over the network: bounded, and tried up to 3 times.
    """
    _warn_if_readable_by_others()
    timeouts()  # a bad KAGGLE_TIMEOUT_SECONDS fails here, before anything is sent
    try:
        # Swallowed: kaggle's help text, and the requests (token included) that importing kaggle sends when
        # VERBOSE is set, before `api.args` below can be changed.
        with contextlib.redirect_stdout(io.StringIO()):
            # kaggle/__init__.py signs in with its own `api = KaggleApi(); api.authenticate()` and throws the result
            # away (`except (Exception, SystemExit): pass`): its requests are refused rather than waited for.
            with bounded(refuse=True):
                from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            # VERBOSE=1 at import puts "--verbose" in KaggleApi.args; the client then prints request headers.
            api.args = [arg for arg in getattr(api, "args", []) if arg not in ("--verbose", "-v")]
            with bounded(), masked_logs(secrets_of()):
                retried(api.authenticate, "signing in")
    except SystemExit as exc:  # kaggle 2.x exits when it has no credentials it accepts
        raise KaggleError(_no_sign_in_message()) from exc
    except GaveUp as exc:
        raise KaggleError(mask(_sign_in_failure(exc.error, exc.attempts), secrets_of())) from exc.error
    except (OSError, ValueError) as exc:  # requests' errors are OSErrors; so was kaggle < 1.6's "no credentials"
        raise KaggleError(mask(_sign_in_failure(exc), secrets_of())) from exc
    return api


def _no_sign_in_message() -> str:
    source = _access_token_source()
    if source is None:
        return f"No Kaggle credentials found. {CREDENTIALS_HELP}"
    # Kaggle answered the token check with 400/403/404 or "inactive": kaggle ignores the token and exits.
    return _token_rejected(source, detail="it is revoked, expired or mistyped")


def _sign_in_failure(exc: OSError | ValueError, attempts: int = 1) -> str:
    if _is_bad_header(exc):
        return _unsendable_credentials()
    if isinstance(exc, ValueError):
        return f"The kaggle package failed while signing in ({type(exc).__name__}: {one_line(str(exc))})."
    status = http_status(exc)
    if status in (401, 403):
        source = _access_token_source()
        if source is None:  # the OAuth credentials that `kaggle auth login` saved
            return (
                f"Kaggle rejected the access token from `kaggle auth login` (HTTP {status}); run `kaggle auth login`"
                " again, or set KAGGLE_API_TOKEN."
            )
        return _token_rejected(source, detail=f"HTTP {status}")
    if status is not None:
        return (
            f"Kaggle answered HTTP {status} while checking your access token"
            f" ({_server_says(exc)}{attempts_said(attempts)}); try again later."
        )
    if timeout_seconds(exc) is not None:
        return f"Could not reach Kaggle to sign in: {timed_out(exc, attempts)}"
    if is_network_error(exc):
        return (
            f"Could not reach Kaggle to sign in ({type(exc).__name__} contacting {host(exc)}{attempts_said(attempts)}):"
            " check your network connection (and HTTPS_PROXY, if you use a proxy), then re-run."
        )
    if type(exc) is OSError:  # kaggle < 1.6: "Could not find kaggle.json. Make sure it's located in ..."
        return f"No Kaggle credentials found ({exc}). {CREDENTIALS_HELP}"
    return f"The kaggle package could not start ({type(exc).__name__}: {exc}); fix the file or folder it names."


def _token_rejected(source: str, detail: str) -> str:
    where = _token_place(source)
    return (
        f"Kaggle rejected the access token in {where} ({detail}). Create a new token at {TOKEN_URL}"
        f" (API > Generate New Token) and put it in {where}."
    )


def _is_bad_header(exc: BaseException) -> bool:
    # http.client raises ValueError("Invalid header value b'Bearer <token>\\n'"), quoting the credential, when a
    # token has a line break or space in it (kagglesdk takes KAGGLE_API_TOKEN as it is, unstripped).
    return isinstance(exc, ValueError) and "Invalid header value" in str(exc)


def _unsendable_credentials() -> str:
    where = _token_place(_access_token_source())
    return (
        f"Your Kaggle credentials{f' in {where}' if where else ''} contain a line break, space or other character"
        " that cannot be sent in an HTTP header; save them again without it and re-run."
    )


def _token_place(source: str | None) -> str | None:
    return {"KAGGLE_API_TOKEN": "$KAGGLE_API_TOKEN", "access_token": "~/.kaggle/access_token"}.get(source, source)


def _access_token_source() -> str | None:
    """Where kagglesdk finds an access token (`KAGGLE_API_TOKEN`, `access_token`, ...), or None if nowhere."""
    from kagglesdk.kaggle_env import get_access_token_from_env  # kaggle >= 1.8's own client

    return get_access_token_from_env()[1]


def _warn_if_readable_by_others() -> None:
    config_dirs = [os.environ.get("KAGGLE_CONFIG_DIR"), Path.home() / ".kaggle",
                   Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "kaggle"]  # fmt: skip
    for folder in filter(None, config_dirs):
        path = Path(folder) / "kaggle.json"
        if path.is_file() and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("%s is readable by other users of this machine; run `chmod 600 %s`", path, path)


def download_competition(api, dest: Path) -> Path:
    """Download `cifar-10.zip` into the folder `dest`; returns its path. Tried up to 3 times; a retry resumes
    the partial file kaggle left in `dest` (its `.kaggle-partial` marker says it is the same object)."""
    action = f"downloading the {SLUG} files"
    with _explained(api, action), bounded(), masked_output(api):
        retried(lambda: api.competition_download_files(SLUG, path=str(dest), quiet=False), action)
    return Path(dest) / f"{SLUG}.zip"


def submit(api, csv_path: Path, message: str) -> str:
    """Upload `csv_path` as a submission described by `message`; returns Kaggle's reply ("Successfully submitted ...").

    Tried once, never again: a repeated create spends another of the day's submissions. Raises KaggleError when
    Kaggle did not take it: kaggle 2.x reports a failed upload only in its return value.
    """
    with _explained(api, f"submitting {csv_path}"), bounded() as bounds, masked_output(api) as printed:
        response = api.competition_submit(str(csv_path), message, SLUG, quiet=False)
    reply = getattr(response, "message", None)
    if reply is None or reply == getattr(api, "COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE", _UPLOAD_FAILED):
        # kaggle prints the upload's exception and returns only this message (it prints nothing on an HTTP error)
        reason = one_line(_last_line(printed)) or "kaggle gave no reason"
        if bounds.timeouts:  # the upload's own Session timed out, and kaggle caught it
            late = bounds.timeouts[-1]
            reason = f"{host(late)} did not answer within {timeout_seconds(late, bounds):g} s; kaggle: {reason}"
        else:
            reason = f"kaggle: {reason}"
        raise KaggleError(mask(
            f"While submitting {csv_path}: Kaggle's upload failed, so nothing was submitted ({reason})."
            f" Re-run `python -m stages.submit`; if it fails again, upload the file with 'Submit Prediction'"
            f" on {COMPETITION_URL}.", secrets_of(api)))  # fmt: skip
    return reply


def list_submissions(api) -> list[Submission]:
    """Your submissions to the competition, newest first (Kaggle's first page, 20). Tried up to 3 times."""
    action = "listing your submissions"
    with _explained(api, action), bounded(), masked_output(api):
        submissions = retried(lambda: api.competition_submissions(SLUG), action) or []
    return [Submission.from_kaggle(s) for s in submissions if s is not None]


def latest_submissions(api, n: int = 5) -> list[str]:
    """One line per recent submission: date, status, public and private score, description."""
    return [
        f"{s.date or '-'}  {s.status}  public={s.public_score or '-'}  private={s.private_score or '-'}"
        f"  {s.description}".rstrip()
        for s in list_submissions(api)[:n]
    ]


# --- one message per cause ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _explained(api, action: str):
    """Turn the API's errors into one KaggleError per cause, credentials and URL queries masked."""
    try:
        yield
    except KaggleError:
        raise
    except GaveUp as exc:
        raise KaggleError(mask(f"While {action}: {_failure(exc.error, exc.attempts)}", secrets_of(api))) from exc.error
    except Exception as exc:  # the API raises requests' HTTPError and ConnectionError, among others
        raise KaggleError(mask(f"While {action}: {_failure(exc)}", secrets_of(api))) from exc


def _failure(exc: Exception, attempts: int = 1) -> str:
    if _is_bad_header(exc):
        return _unsendable_credentials()
    status = http_status(exc)
    says = _server_says(exc)
    tries = attempts_said(attempts)
    if _DAILY_LIMIT.search(says):
        return (
            f"Kaggle refused it because your team has used today's submissions (Kaggle: {says})."
            f" Kaggle allows a fixed number of submissions per day; the count resets at 00:00 UTC,"
            f" in {_until_utc_midnight(datetime.now(UTC))}. Re-run `python -m stages.submit` then."
        )
    if status == 401:
        return f"Kaggle rejected your credentials (HTTP 401). Create a new token and try again. {CREDENTIALS_HELP}"
    if status == 403:
        return (
            f"Kaggle refused access (HTTP 403): accept the competition's rules at {COMPETITION_URL}/rules"
            " while signed in, then re-run."
        )
    if status == 404:
        return f"Kaggle did not find the competition {SLUG!r} (HTTP 404); check {COMPETITION_URL}."
    if status == 429:
        return f"Kaggle is limiting how often you call it (HTTP 429: {says}{tries}); wait a few minutes, then re-run."
    if status is not None and status >= 500:
        return f"Kaggle answered HTTP {status} ({says}{tries}); try again later."
    if status is not None:
        return f"Kaggle refused the request (HTTP {status}: {says}); fix what it names, then re-run."
    if is_network_error(exc) and _is_create(exc):
        return (
            f"the request that creates the submission failed ({briefly(exc)}), so Kaggle may have taken it all the"
            f" same: look at {COMPETITION_URL}/submissions before re-running, since each submission counts against"
            " the day's allowance."
        )
    if timeout_seconds(exc) is not None:
        return timed_out(exc, attempts)
    if is_network_error(exc):
        return (
            f"the request to {host(exc)} failed ({type(exc).__name__}{tries}); check your network connection"
            " and re-run."
        )
    # not the network: kaggle's own check (e.g. download_file's "Downloaded file size (...) does not match
    # expected size (...)"), or a file it could not read: its words say what
    return (
        f"the kaggle package failed ({type(exc).__name__}: {says}); re-run, and if it fails again, fix what it names."
    )


def _is_create(exc: BaseException) -> bool:
    """Whether `exc` came from kagglesdk's CreateSubmission request, which Kaggle may have acted on."""
    url = getattr(getattr(exc, "request", None), "url", None) or ""
    return urlsplit(url).path.endswith("/CreateSubmission")


def _until_utc_midnight(now: datetime) -> str:
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    minutes = int((midnight - now).total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min"


def _server_says(exc: BaseException) -> str:
    """Kaggle's own words: kagglesdk raises HTTPError(<the JSON error's message>), else requests' status line."""
    return one_line(str(exc)) or "no reason given"


def _last_line(printed: list[str]) -> str:
    lines = [line.strip() for line in "".join(printed).splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Using competition:", "Warning: "))]
    return lines[-1] if lines else ""
