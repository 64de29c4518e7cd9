"""The Kaggle API at its boundary: sign in, download the competition, submit, list submissions.

The kaggle package prints a help text or authenticates when imported, so it is imported only inside
`connect()`, with its output swallowed. Its client prints every request, `Authorization` header included, when
VERBOSE or VERBOSE_OUTPUT is set, so `connect()` turns that off and every later call's stdout passes through
`_masked_stdout`, which hides credentials (the download's and upload's progress bars go to stderr, untouched).
Its failures become one KaggleError per cause that says what to do.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import re
import stat
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.competition import SLUG
from pipeline.errors import PipelineError

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
_HIDDEN = "[hidden]"


class KaggleError(PipelineError):
    """A Kaggle API call failed; the message says how to fix it."""


def connect():
    """Return a signed-in `KaggleApi` that never prints its requests; raises KaggleError saying why sign-in failed."""
    _warn_if_readable_by_others()
    try:
        # Swallowed: kaggle's help text, and the requests (token included) that importing kaggle sends when
        # VERBOSE is set, before `api.args` below can be changed.
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            # VERBOSE=1 at import puts "--verbose" in KaggleApi.args; the client then prints request headers.
            api.args = [arg for arg in getattr(api, "args", []) if arg not in ("--verbose", "-v")]
            api.authenticate()
    except SystemExit as exc:  # kaggle 2.x exits when it has no credentials it accepts
        raise KaggleError(_no_sign_in_message()) from exc
    except (OSError, ValueError) as exc:  # requests' errors are OSErrors; so was kaggle < 1.6's "no credentials"
        raise KaggleError(_mask(_sign_in_failure(exc), _secrets())) from exc
    return api


def _no_sign_in_message() -> str:
    source = _access_token_source()
    if source is None:
        return f"No Kaggle credentials found. {CREDENTIALS_HELP}"
    # Kaggle answered the token check with 400/403/404 or "inactive": kaggle ignores the token and exits.
    return _token_rejected(source, detail="it is revoked, expired or mistyped")


def _sign_in_failure(exc: OSError | ValueError) -> str:
    if _is_bad_header(exc):
        return _unsendable_credentials()
    if isinstance(exc, ValueError):
        return f"The kaggle package failed while signing in ({type(exc).__name__}: {_one_line(str(exc))})."
    status = _status(exc)
    if status in (401, 403):
        source = _access_token_source()
        if source is None:  # the OAuth credentials that `kaggle auth login` saved
            return (
                f"Kaggle rejected the access token from `kaggle auth login` (HTTP {status}); run `kaggle auth login`"
                " again, or set KAGGLE_API_TOKEN."
            )
        return _token_rejected(source, detail=f"HTTP {status}")
    if status is not None:
        return f"Kaggle answered HTTP {status} while checking your access token ({_server_says(exc)}); try again later."
    if _is_network_error(exc):
        return (
            f"Could not reach Kaggle to sign in ({type(exc).__name__} contacting {_host(exc)}): check your network"
            " connection (and HTTPS_PROXY, if you use a proxy), then re-run."
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
    """Download `cifar-10.zip` into the folder `dest`; returns its path."""
    with _explained(api, f"downloading the {SLUG} files"), _masked_stdout(api):
        api.competition_download_files(SLUG, path=str(dest), quiet=False)
    return Path(dest) / f"{SLUG}.zip"


def submit(api, csv_path: Path, message: str) -> str:
    """Upload `csv_path` as a submission described by `message`; returns Kaggle's reply ("Successfully submitted ...").

    Raises KaggleError when Kaggle did not take it: kaggle 2.x reports a failed upload only in its return value.
    """
    with _explained(api, f"submitting {csv_path}"), _masked_stdout(api) as printed:
        response = api.competition_submit(str(csv_path), message, SLUG, quiet=False)
    reply = getattr(response, "message", None)
    if reply is None or reply == getattr(api, "COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE", _UPLOAD_FAILED):
        # kaggle prints the upload's exception and returns only this message (it prints nothing on an HTTP error)
        reason = _one_line(_last_line(printed)) or "kaggle gave no reason"
        raise KaggleError(
            f"While submitting {csv_path}: Kaggle's upload failed, so nothing was submitted (kaggle: {reason})."
            f" Re-run `python -m stages.submit`; if it fails again, upload the file with 'Submit Prediction'"
            f" on {COMPETITION_URL}."
        )
    return reply


def latest_submissions(api, n: int = 5) -> list[str]:
    """One line per recent submission: date, status, public score, description."""
    with _explained(api, "listing your submissions"), _masked_stdout(api):
        submissions = api.competition_submissions(SLUG) or []
    lines = []
    for s in submissions[:n]:
        status = getattr(s, "status", "")
        lines.append(
            f"{getattr(s, 'date', None) or '-'}  {getattr(status, 'name', status)}"
            f"  public={getattr(s, 'public_score', None) or '-'}  {getattr(s, 'description', None) or ''}"
        )
    return lines


@contextlib.contextmanager
def _explained(api, action: str):
    """Turn the API's HTTP and network errors into one KaggleError per cause, credentials masked."""
    try:
        yield
    except KaggleError:
        raise
    except Exception as exc:  # the API raises requests' HTTPError and ConnectionError, among others
        raise KaggleError(_mask(f"While {action}: {_failure(exc)}", _secrets(api))) from exc


def _failure(exc: Exception) -> str:
    if _is_bad_header(exc):
        return _unsendable_credentials()
    status = _status(exc)
    says = _server_says(exc)
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
        return f"Kaggle is limiting how often you call it (HTTP 429: {says}); wait a few minutes, then re-run."
    if status is not None and status >= 500:
        return f"Kaggle answered HTTP {status} ({says}); try again later."
    if status is not None:
        return f"Kaggle refused the request (HTTP {status}: {says}); fix what it names, then re-run."
    return f"the request to {_host(exc)} failed ({type(exc).__name__}); check your network connection and re-run."


def _until_utc_midnight(now: datetime) -> str:
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    minutes = int((midnight - now).total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min"


def _status(exc: BaseException) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def _server_says(exc: BaseException) -> str:
    """Kaggle's own words: kagglesdk raises HTTPError(<the JSON error's message>), else requests' status line."""
    return _one_line(str(exc)) or "no reason given"


def _is_network_error(exc: BaseException) -> bool:
    import requests  # a dependency of kaggle, loaded by now

    return isinstance(exc, (requests.RequestException, ConnectionError, TimeoutError)) and _status(exc) is None


def _host(exc: BaseException) -> str:
    url = getattr(getattr(exc, "request", None), "url", None)
    return (urlsplit(url).hostname or url) if url else "Kaggle"


def _last_line(printed: list[str]) -> str:
    lines = [line.strip() for line in "".join(printed).splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Using competition:", "Warning: "))]
    return lines[-1] if lines else ""


def _one_line(text: str, limit: int = 300) -> str:
    text = re.sub(r"(/[^\s?]*)\?[^\s'\")]+", r"\1", text)  # signed upload URLs carry tokens in their query
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _masked_stdout(api):
    """Show the kaggle client's stdout with credentials hidden; yields the list of what it printed (masked)."""
    stream = _MaskedStream(sys.stdout, _secrets(api))
    with contextlib.redirect_stdout(stream):
        yield stream.written


class _MaskedStream:
    """A stand-in for stdout that hides credentials and Authorization header values, and keeps what was written."""

    def __init__(self, target, secrets: list[str]):
        self._target = target
        self._secrets = secrets
        self.written: list[str] = []

    def write(self, text: str) -> int:
        text = _mask(text, self._secrets)
        self.written.append(text)
        self._target.write(text)
        return len(text)

    def __getattr__(self, name):  # flush, encoding, isatty, fileno: those of the real stdout
        return getattr(self._target, name)


def _secrets(api=None) -> list[str]:
    """Every credential the client may print: key, token, and the base64 user:key of HTTP Basic auth."""
    values = getattr(api, "config_values", None) or {}
    user, key = values.get("username"), values.get("key")
    secrets = [key, values.get("token"), os.environ.get("KAGGLE_KEY"), os.environ.get("KAGGLE_API_TOKEN")]
    for name, password in [(user, key), (os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY"))]:
        if name and password:
            secrets.append(base64.b64encode(f"{name}:{password}".encode("latin-1", "replace")).decode())
    secrets += [s.strip() for s in secrets if s]  # a token with a stray line break is quoted without it
    return sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)  # longest first


def _mask(text: str, secrets: list[str]) -> str:
    text = _AUTH_HEADER.sub(rf"\g<1>{_HIDDEN}", text)
    for secret in secrets:
        text = text.replace(secret, _HIDDEN)
    return text
