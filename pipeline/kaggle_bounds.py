"""Every HTTP request the kaggle package makes, bounded; the calls that are safe to repeat, retried.

kagglesdk sends its requests with no timeout, so a peer that accepts a connection and never answers would block
forever. While `bounded()` is active, each request gets a connect and a read timeout: 10 s and 60 s, or what
`KAGGLE_TIMEOUT_SECONDS` says, either `READ` (connect is then the smaller of 10 and READ) or `CONNECT,READ`, e.g.
`KAGGLE_TIMEOUT_SECONDS=10,300` on a slow link. The read timeout bounds each wait for bytes, not a whole
transfer: a 715 MB download takes as long as it takes while bytes arrive. `retried()` repeats a call that is safe
to repeat (sign-in, download, listing) up to 3 times, 2 s then 4 s apart, when its failure may pass (a network
error, a timeout, HTTP 429 or 5xx). `pipeline.kaggle_io` says which calls those are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

TIMEOUT_ENV = "KAGGLE_TIMEOUT_SECONDS"
_TIMEOUTS = (10.0, 60.0)  # connect, read (seconds)
_ATTEMPTS = 3  # of a call that is safe to repeat
_FIRST_BACKOFF = 2.0  # seconds before the 2nd attempt; doubled before each later one
# kaggle's upload_complete mounts HTTPAdapter(max_retries=Retry(total=10, backoff_factor=0.5)) on its own Session:
# 11 reads of up to 60 s each, with 367 s of backoff between. While our calls run it gets at most this many retries.
_URLLIB3_RETRIES = 2
_sleep = time.sleep  # tests replace it, so retries do not wait
T = TypeVar("T")


class TimeoutSettingError(PipelineError):
    """KAGGLE_TIMEOUT_SECONDS does not say a timeout."""


def timeouts() -> tuple[float, float]:
    """(connect, read) seconds: the defaults, or KAGGLE_TIMEOUT_SECONDS (`READ` or `CONNECT,READ`)."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return _TIMEOUTS
    try:
        numbers = [float(part) for part in value.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or not all(0 < n < float("inf") for n in numbers):
        raise TimeoutSettingError(
            f"{TIMEOUT_ENV}={value!r} is not a timeout: give seconds to wait for Kaggle's answer (e.g. 120), or"
            f" connect and read seconds (e.g. 10,120); unset it for {_TIMEOUTS[0]:g},{_TIMEOUTS[1]:g}."
        )
    return (min(_TIMEOUTS[0], numbers[0]), numbers[0]) if len(numbers) == 1 else (numbers[0], numbers[1])


class Bounds:
    """The timeouts of one bounded call, and the timeouts that expired during it (kaggle swallows some)."""

    def __init__(self, connect: float, read: float):
        self.connect, self.read = connect, read
        self.timeouts: list[BaseException] = []

    def cap(self, timeout):
        """`timeout` as requests takes it (None, seconds, or (connect, read)), capped at ours."""
        if timeout is None:
            return self.connect, self.read
        if isinstance(timeout, (int, float)):
            return min(timeout, self.connect), min(timeout, self.read)
        if isinstance(timeout, tuple) and len(timeout) == 2:
            connect, read = timeout
            return min(connect or self.connect, self.connect), min(read or self.read, self.read)
        return timeout  # a urllib3 Timeout object: nothing in kaggle passes one


class Refused(ConnectionError):
    """A request sent while we import kaggle: its package-level sign-in, which it discards."""


@contextlib.contextmanager
def bounded(refuse: bool = False):
    """While active, every request `requests` sends in this process has our connect and read timeouts (a smaller
    one it was given stays), and urllib3 retries at most twice; with `refuse`, nothing is sent. Yields the Bounds.

    Why requests' HTTPAdapter.send: every request of our calls passes through it, whoever built the Session.
    kagglesdk's KaggleHttpClient.call does `self._session.send(http_request, **settings)` with settings from
    `merge_environment_settings` (proxies, stream, verify, cert: no timeout), and kagglesdk has no hook for one;
    kaggle's upload_complete makes its own `requests.Session()` with `HTTPAdapter(max_retries=Retry(total=10,
    backoff_factor=0.5))` and calls `session.put(url, data=reader)`, no timeout; download_file's own retries call
    `requests.request(..., timeout=300)`, capped here to our read timeout. It is process-wide while active: other
    threads' requests (the stages have none) would get the same bounds.
    """
    import requests
    from urllib3.util.retry import Retry

    bounds = Bounds(*timeouts())
    original = requests.adapters.HTTPAdapter.send

    def send(adapter, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        if refuse:
            raise Refused(f"not sent while kaggle is imported: {request.method} {urlsplit(request.url).path}")
        retries = adapter.max_retries
        if isinstance(retries, Retry) and isinstance(retries.total, int) and retries.total > _URLLIB3_RETRIES:
            adapter.max_retries = retries.new(total=_URLLIB3_RETRIES)
        try:
            return original(adapter, request, stream=stream, timeout=bounds.cap(timeout), verify=verify, cert=cert,
                            proxies=proxies)  # fmt: skip
        except requests.RequestException as exc:
            if timeout_seconds(exc, bounds) is not None:
                bounds.timeouts.append(exc)
            raise
        finally:
            adapter.max_retries = retries

    requests.adapters.HTTPAdapter.send = send
    try:
        yield bounds
    finally:
        requests.adapters.HTTPAdapter.send = original


def timeout_seconds(exc: BaseException, bounds: Bounds | None = None) -> float | None:
    """The timeout that expired, if `exc` is one: requests' ConnectTimeout/ReadTimeout, or a ConnectionError
    wrapping urllib3's (after urllib3's retries, or while a streamed body was read); else None."""
    import requests
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

    connect, read = (bounds.connect, bounds.read) if bounds else timeouts()
    seen, todo = set(), [exc]
    while todo:
        error = todo.pop()
        if id(error) in seen or not isinstance(error, BaseException):
            continue
        seen.add(id(error))
        if isinstance(error, NewConnectionError):  # urllib3 2 makes it a ConnectTimeoutError: a refused connection
            continue
        if isinstance(error, (requests.ConnectTimeout, ConnectTimeoutError)):
            return connect
        if isinstance(error, (requests.ReadTimeout, ReadTimeoutError, TimeoutError)):
            return read
        todo += [*error.args, getattr(error, "reason", None), error.__cause__]  # how requests and urllib3 wrap them
    return None


def timed_out(exc: BaseException, attempts: int = 1) -> str:
    return (
        f"Kaggle did not answer within {timeout_seconds(exc):g} s ({type(exc).__name__} contacting {host(exc)}"
        f"{attempts_said(attempts)}); check your network or proxy (HTTPS_PROXY) and re-run."
    )


def attempts_said(attempts: int) -> str:
    return f", {attempts} attempts" if attempts > 1 else ""


class GaveUp(Exception):
    """A failure that may pass, still there after every attempt: `error` is the last one."""

    def __init__(self, error: Exception, attempts: int):
        super().__init__(error)
        self.error, self.attempts = error, attempts


def retried(call: Callable[[], T], action: str) -> T:
    """`call()`, repeated after 2 s and 4 s while it fails in a way that may pass; raises GaveUp after the last."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return call()
        except Exception as exc:
            if not may_pass(exc):
                raise
            if attempt == _ATTEMPTS:
                raise GaveUp(exc, attempt) from exc
            delay = _FIRST_BACKOFF * 2 ** (attempt - 1)
            log.warning("%s: %s; trying again in %g s (attempt %d of %d)", action, briefly(exc), delay,
                        attempt + 1, _ATTEMPTS)  # fmt: skip
            _sleep(delay)
    raise AssertionError("unreachable")


def may_pass(exc: BaseException) -> bool:
    """A network error, a timeout, HTTP 429 or 5xx; not a refusal, a certificate problem or a malformed URL."""
    import requests

    status = http_status(exc)
    if status is not None:
        return status == 429 or status >= 500
    lasting = (requests.exceptions.SSLError, requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
               requests.exceptions.MissingSchema, Refused)  # fmt: skip
    return is_network_error(exc) and not isinstance(exc, lasting)


def briefly(exc: BaseException) -> str:
    status = http_status(exc)
    if status is not None:
        return f"Kaggle answered HTTP {status}"
    seconds = timeout_seconds(exc)
    waited = f"no answer within {seconds:g} s, " if seconds is not None else ""
    return f"{waited}{type(exc).__name__} contacting {host(exc)}"


def http_status(exc: BaseException) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def is_network_error(exc: BaseException) -> bool:
    import requests  # a dependency of kaggle, loaded by now

    return isinstance(exc, (requests.RequestException, ConnectionError, TimeoutError)) and http_status(exc) is None


def host(exc: BaseException) -> str:
    url = getattr(getattr(exc, "request", None), "url", None)
    return (urlsplit(url).hostname or url) if url else "Kaggle"
