"""Credentials and signed URLs never reach the output: what the kaggle package prints, and our messages.

The kaggle client prints every request, `Authorization` header included, when VERBOSE or VERBOSE_OUTPUT is set,
and its upload and download errors quote signed URLs (capabilities: anyone holding one can fetch or write the
file). While `masked_output(api)` is active, stdout, stderr and log records pass through `mask`, which hides the
credentials, Authorization values and every URL's query.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import sys

_AUTH_HEADER = re.compile(r"(?im)^([ \t]*(?:proxy-)?authorization[ \t]*:[ \t]*).*$")
# The query of a URL or path (`https://storage.googleapis.com/b/o?X-Goog-Signature=...`, `/upload?upload_id=...`):
# anything with a `/` before the `?`, up to a space, quote, bracket or `)`, and a sentence's last `.` or `,` left.
_URL_QUERY = re.compile(r"""([^\s?'"()<>]*/[^\s?'"()<>]*)\?[^\s'"()<>\[\]]*[^\s'"()<>\[\].,;:]""")
_HIDDEN = "[hidden]"


@contextlib.contextmanager
def masked_output(api):
    """Show the kaggle client's stdout, stderr and log records with credentials and URL queries hidden; yields the
    list of what it printed to stdout (masked)."""
    secrets = secrets_of(api)
    out, err = MaskedStream(sys.stdout, secrets), MaskedStream(sys.stderr, secrets)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), masked_logs(secrets):
        yield out.written


@contextlib.contextmanager
def masked_logs(secrets: list[str]):
    """Mask every record the root logger's handlers write, e.g. urllib3's "Retrying (Retry(total=1, ...)) after
    connection broken by ...: <the signed upload URL>" warning (connectionpool.py), which goes to the handler's
    own stderr, not through sys.stderr."""

    def masked(record: logging.LogRecord) -> bool:
        record.msg, record.args = mask(record.getMessage(), secrets), None
        return True

    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(masked)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(masked)


class MaskedStream:
    """A stand-in for stdout that hides credentials, Authorization header values and URL queries, and keeps what
    was written."""

    def __init__(self, target, secrets: list[str]):
        self._target = target
        self._secrets = secrets
        self.written: list[str] = []

    def write(self, text: str) -> int:
        masked = mask(text, self._secrets)
        self.written.append(masked)
        self._target.write(masked)
        return len(text)  # what the caller handed over: tqdm and print count on it

    def __getattr__(self, name):  # flush, encoding, isatty, fileno: those of the real stream
        return getattr(self._target, name)


def secrets_of(api=None) -> list[str]:
    """Every credential the client may print: key, token, and the base64 user:key of HTTP Basic auth."""
    values = getattr(api, "config_values", None) or {}
    user, key = values.get("username"), values.get("key")
    secrets = [key, values.get("token"), os.environ.get("KAGGLE_KEY"), os.environ.get("KAGGLE_API_TOKEN")]
    for name, password in [(user, key), (os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY"))]:
        if name and password:
            secrets.append(base64.b64encode(f"{name}:{password}".encode("latin-1", "replace")).decode())
    secrets += [s.strip() for s in secrets if s]  # a token with a stray line break is quoted without it
    return sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)  # longest first


def mask(text: str, secrets: list[str]) -> str:
    """`text` with Authorization values, the given secrets and every URL's query (`?[hidden]`) hidden."""
    text = _AUTH_HEADER.sub(rf"\g<1>{_HIDDEN}", text)
    for secret in secrets:
        text = text.replace(secret, _HIDDEN)
    # signed download and upload URLs (X-Goog-Signature=..., upload_id=...) are capabilities: anyone holding one
    # can fetch or write the file
    return _URL_QUERY.sub(rf"\1?{_HIDDEN}", text)


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(mask(text, secrets_of()).split())  # masked before it is cut, so no secret is cut in half
    return text if len(text) <= limit else text[: limit - 3] + "..."
