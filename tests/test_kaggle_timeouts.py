"""Kaggle calls never wait forever: every request is bounded, the calls safe to repeat are retried, a submission
is created at most once.

The in-process tests send the fake kaggle's requests (tests/test_download.py) to a server that accepts and never
answers, with retries' sleeps recorded instead of waited. The `real kaggle` tests run the installed package in a
subprocess (tests/test_kaggle_io.py's `run_real_kaggle`), that server or a Kaggle that stalls one route being its
HTTP proxy, with KAGGLE_TIMEOUT_SECONDS=1 and the real 2 s and 4 s between attempts.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import requests
from kagglesdk.competitions.types.competition_api_service import ApiSubmission
from kagglesdk.competitions.types.submission_status import SubmissionStatus

from pipeline import kaggle_bounds, kaggle_io, kaggle_output
from pipeline.config import DataConfig
from pipeline.download import fetch_competition
from tests.test_download import (
    AUTH_HELP,
    UPLOAD_ID,
    SilentServer,
    http_error,
    install_fake_kaggle,
    network_error,
    use_fake_credentials,
)
from tests.test_kaggle_io import (
    FAKE_TOKEN,
    KEY,
    LIST_CODE,
    SECRETS,
    SUBMIT_CODE,
    TOKEN,
    Kaggle,
    download_args,
    one_error_line,
    run_real_kaggle,
)

SUBMISSIONS_URL = "https://www.kaggle.com/competitions/cifar-10/submissions"


@pytest.fixture
def kaggle():
    server = Kaggle()
    yield server
    server.close()


@pytest.fixture
def silent():
    server = SilentServer()
    yield server
    server.close()


def outcome(call, within: float = 30):
    """What `call()` raised (or returned), failing the test if it still waits after `within` s: the bounds gone."""
    result = {}

    def run():
        try:
            result["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["value"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    assert not thread.is_alive(), f"still waiting for Kaggle after {within} s"
    return result["value"]


def signed_in(monkeypatch, tmp_path, credentials=None, timeout="0.3", **fake):
    """Install the fake kaggle (`fake`: install_fake_kaggle's options) with fake credentials; returns its Calls."""
    use_fake_credentials(monkeypatch, tmp_path / "home", KAGGLE_TIMEOUT_SECONDS=timeout, **(credentials or KEY))
    return install_fake_kaggle(monkeypatch, **fake)


def a_csv(tmp_path: Path) -> Path:
    path = tmp_path / "submission.csv"
    path.write_text("id,label\n1,cat\n")
    return path


# --- a Kaggle that never answers: bounded, retried where that is safe, one line ------------------------------

STEPS = {  # step: (credentials, what runs after sign-in, the message's start)
    "sign-in": (TOKEN, lambda api, tmp: None, "Could not reach Kaggle to sign in: "),
    "download": (KEY, lambda api, tmp: kaggle_io.download_competition(api, tmp), "While downloading the cifar-10"
                 " files: "),
    "listing": (KEY, lambda api, tmp: kaggle_io.latest_submissions(api), "While listing your submissions: "),
}  # fmt: skip


@pytest.mark.parametrize("step", STEPS)
def test_a_call_safe_to_repeat_that_never_gets_an_answer_is_tried_3_times_then_fails_in_one_line(
    monkeypatch, tmp_path, capfd, silent, step
):
    credentials, then, start = STEPS[step]
    calls = signed_in(monkeypatch, tmp_path, credentials, never_answer={step: silent.url})
    error = outcome(lambda: then(kaggle_io.connect(), tmp_path))
    assert isinstance(error, kaggle_io.KaggleError)
    assert str(error) == (
        f"{start}Kaggle did not answer within 0.3 s (ReadTimeout contacting 127.0.0.1, 3 attempts); check your"
        " network or proxy (HTTPS_PROXY) and re-run."
    )
    # 3 requests: kaggle's package-level sign-in at import is refused, not waited for
    assert silent.accepted == 3 and calls.sleeps == [2.0, 4.0]
    assert not [s for s in SECRETS if s in "".join(capfd.readouterr())]


def test_a_submission_whose_create_call_gets_no_answer_is_created_once_and_says_check_the_list(
    monkeypatch, tmp_path, silent
):
    calls = signed_in(monkeypatch, tmp_path, never_answer={"create": silent.url})
    csv = a_csv(tmp_path)
    error = outcome(lambda: kaggle_io.submit(kaggle_io.connect(), csv, "m"))
    assert str(error) == (
        f"While submitting {csv}: the request that creates the submission failed (no answer within 0.3 s,"
        " ReadTimeout contacting 127.0.0.1), so Kaggle may have taken it all the same: look at"
        f" {SUBMISSIONS_URL} before re-running, since each submission counts against the day's allowance."
    )
    assert silent.accepted == 1 and calls.sleeps == []
    assert [c for c in calls if c[0] == "submit"] == [("submit", "submission.csv", "m", "cifar-10")]


def test_a_submission_whose_start_call_gets_no_answer_is_tried_once(monkeypatch, tmp_path, silent):
    calls = signed_in(monkeypatch, tmp_path, never_answer={"start": silent.url})
    csv = a_csv(tmp_path)
    error = outcome(lambda: kaggle_io.submit(kaggle_io.connect(), csv, "m"))
    assert str(error) == (
        f"While submitting {csv}: Kaggle did not answer within 0.3 s (ReadTimeout contacting 127.0.0.1); check your"
        " network or proxy (HTTPS_PROXY) and re-run."
    )
    assert silent.accepted == 1 and calls.sleeps == []


def test_an_upload_that_gets_no_answer_is_bounded_with_kaggles_10_retries_cut_to_2(
    monkeypatch, tmp_path, capsys, silent
):
    signed_in(monkeypatch, tmp_path, never_answer={"upload": silent.url})
    csv = a_csv(tmp_path)
    started = time.monotonic()
    error = outcome(lambda: kaggle_io.submit(kaggle_io.connect(), csv, "m"))
    # 3 tries of 0.3 s and urllib3's backoff of 0 s and 1 s; uncapped: 11 tries and 367 s of backoff
    assert time.monotonic() - started < 10 and silent.accepted == 3
    assert str(error).startswith(
        f"While submitting {csv}: Kaggle's upload failed, so nothing was submitted (127.0.0.1 did not answer within"
        f" 0.3 s; kaggle: HTTPConnectionPool(host='127.0.0.1', port={silent.port}): Max retries exceeded with url:"
        " /upload/storage/v1/b/kaggle/o?[hidden] (Caused by ReadTimeoutError("
    )
    out = capsys.readouterr().out
    assert "/upload/storage/v1/b/kaggle/o?[hidden] (Caused by ReadTimeoutError" in out  # kaggle's print, masked
    assert UPLOAD_ID not in out + str(error)


def test_the_bounds_hold_only_inside_our_calls(monkeypatch, tmp_path, silent):
    monkeypatch.setenv(kaggle_bounds.TIMEOUT_ENV, "0.3")
    original = requests.adapters.HTTPAdapter.send
    with kaggle_bounds.bounded():
        started = time.monotonic()
        error = outcome(lambda: requests.get(silent.url, timeout=300))  # download_file's own retries pass 300
        assert isinstance(error, requests.ReadTimeout) and time.monotonic() - started < 5
        assert requests.adapters.HTTPAdapter.send is not original
    assert requests.adapters.HTTPAdapter.send is original
    signed_in(monkeypatch, tmp_path, never_answer={"download": silent.url})
    outcome(lambda: kaggle_io.download_competition(kaggle_io.connect(), tmp_path))
    assert requests.adapters.HTTPAdapter.send is original  # restored after a failed call too


# --- retries: only what may pass, and only for the calls that are safe to repeat ----------------------------


def fails(error):
    def download(competition, path):
        raise error

    return download


@pytest.mark.parametrize(
    ("error", "attempts", "message"),
    [
        (network_error("storage.googleapis.com"), 3, "the request to storage.googleapis.com failed (ConnectionError,"
         " 3 attempts); check your network connection and re-run."),
        (http_error(503), 3, "Kaggle answered HTTP 503 (503 Server Error: Service Unavailable for url:"
         " https://api.kaggle.com/v1/competitions.CompetitionApiService/DownloadDataFiles, 3 attempts); try again"
         " later."),
        (http_error(429), 3, "Kaggle is limiting how often you call it (HTTP 429: 429 Client Error: Too Many"
         " Requests for url: https://api.kaggle.com/v1/competitions.CompetitionApiService/DownloadDataFiles,"
         " 3 attempts); wait a few minutes, then re-run."),
        (http_error(404), 1, "Kaggle did not find the competition 'cifar-10' (HTTP 404); check"
         " https://www.kaggle.com/competitions/cifar-10."),
        (ValueError("Downloaded file size (5000) does not match expected size (715000000)"), 1,
         "the kaggle package failed (ValueError: Downloaded file size (5000) does not match expected size"
         " (715000000)); re-run, and if it fails again, fix what it names."),
    ],
    ids=["network", "503", "429", "404", "size-mismatch"],
)  # fmt: skip
def test_a_download_is_retried_only_when_the_failure_may_pass(monkeypatch, tmp_path, error, attempts, message):
    calls = signed_in(monkeypatch, tmp_path, download=fails(error))
    with pytest.raises(kaggle_io.KaggleError) as excinfo:
        fetch_competition(DataConfig(source="kaggle"), tmp_path / "raw")
    assert str(excinfo.value) == f"While downloading the cifar-10 files: {message}"
    assert calls.count(("download", "cifar-10")) == attempts
    assert calls.sleeps == [2.0, 4.0][: attempts - 1]


def test_a_sign_in_that_fails_twice_with_http_503_succeeds_on_the_third_attempt(monkeypatch, tmp_path):
    answers = [http_error(503), http_error(503)]

    def introspect():
        if answers:
            raise answers.pop()

    calls = signed_in(monkeypatch, tmp_path, TOKEN, authenticate=introspect)
    assert kaggle_io.connect().config_values["token"] == FAKE_TOKEN
    assert calls == ["authenticate"] * 3 and calls.sleeps == [2.0, 4.0]


def test_a_listing_that_fails_with_a_network_error_is_tried_3_times(monkeypatch, tmp_path):
    calls = signed_in(monkeypatch, tmp_path)
    api = kaggle_io.connect()

    def unreachable(competition):
        calls.append("list")
        raise network_error()

    monkeypatch.setattr(api, "competition_submissions", unreachable)
    with pytest.raises(kaggle_io.KaggleError, match=r"^While listing your submissions: the request to api.kaggle"
                       r"\.com failed \(ConnectionError, 3 attempts\); check your network connection"):  # fmt: skip
        kaggle_io.list_submissions(api)
    assert calls.count("list") == 3


def test_submit_is_never_retried_even_when_kaggle_answers_503(monkeypatch, tmp_path):
    def unavailable(file_name, message, competition):
        raise http_error(503)

    calls = signed_in(monkeypatch, tmp_path, submit=unavailable)
    with pytest.raises(
        kaggle_io.KaggleError, match=r"Kaggle answered HTTP 503 \(503 Server Error.*/DownloadDataFiles\)"
    ):
        kaggle_io.submit(kaggle_io.connect(), a_csv(tmp_path), "m")
    assert [c[0] for c in calls if isinstance(c, tuple)] == ["submit"] and calls.sleeps == []


# --- the fake behaves as kaggle 2.x does ----------------------------------------------------------------------


def test_submitting_a_file_that_does_not_exist_fails_as_kaggle_does(monkeypatch, tmp_path):
    signed_in(monkeypatch, tmp_path)
    missing = tmp_path / "no-such.csv"
    with pytest.raises(kaggle_io.KaggleError) as excinfo:
        kaggle_io.submit(kaggle_io.connect(), missing, "m")
    assert str(excinfo.value) == (
        f"While submitting {missing}: the kaggle package failed (FileNotFoundError: [Errno 2] No such file or"
        f" directory: '{missing}'); re-run, and if it fails again, fix what it names."
    )


def test_importing_the_fake_kaggle_signs_in_once_per_fresh_import(monkeypatch, tmp_path, capsys):
    use_fake_credentials(monkeypatch, tmp_path / "home", KAGGLE_CONFIG_DIR=str(tmp_path / "none"))
    for _ in range(2):
        install_fake_kaggle(monkeypatch)
        importlib.import_module("kaggle.api.kaggle_api_extended")  # the SystemExit stays inside, as in kaggle 2.2.5
        importlib.import_module("kaggle")
        assert capsys.readouterr().out.count(AUTH_HELP) == 1


# --- what Kaggle lists, and what kaggle prints ----------------------------------------------------------------


def test_listed_submissions_carry_both_scores_as_kaggle_gives_them(monkeypatch, tmp_path):
    scored, pending = ApiSubmission(), ApiSubmission()
    scored.ref, scored.public_score, scored.private_score, scored.description = 7, "0.95", "0.94", "fitted"
    scored.status = SubmissionStatus.COMPLETE
    scored.date = datetime(2025, 3, 1, 12, 0, 0)  # kagglesdk's: naive, in UTC
    signed_in(monkeypatch, tmp_path, submissions=[scored, pending])
    api = kaggle_io.connect()
    assert kaggle_io.list_submissions(api) == [
        kaggle_io.Submission(7, "2025-03-01T12:00:00Z", "fitted", "COMPLETE", "0.95", "0.94"),
        kaggle_io.Submission(0, None, "", "PENDING", None, None),
    ]
    assert kaggle_io.latest_submissions(api) == ["2025-03-01T12:00:00Z  COMPLETE  public=0.95  private=0.94  fitted",
                                                 "-  PENDING  public=-  private=-"]  # fmt: skip


@pytest.mark.parametrize(
    ("printed", "shown"),
    [
        ("Downloading cifar-10.zip to /tmp/x\n", "Downloading cifar-10.zip to /tmp/x\n"),
        ('{"url": "https://storage.googleapis.com/kaggle-data/cifar-10.zip?X-Goog-Signature=SIG&X-Goog-Expires=1"}',
         '{"url": "https://storage.googleapis.com/kaggle-data/cifar-10.zip?[hidden]"}'),
        ("Connection error: ConnectionError: ...: Max retries exceeded with url: /o?upload_id=SIG (Caused by X)",
         "Connection error: ConnectionError: ...: Max retries exceeded with url: /o?[hidden] (Caused by X)"),
        ("Location: https://www.kaggle.com/api/v1/upload?token=SIG\n",
         "Location: https://www.kaggle.com/api/v1/upload?[hidden]\n"),
        ("Is that right? Yes: /tmp/a b\n", "Is that right? Yes: /tmp/a b\n"),
    ],
)  # fmt: skip
def test_what_kaggle_prints_shows_urls_without_their_query(printed, shown):
    target = type("Out", (), {"text": "", "write": lambda self, t: setattr(self, "text", self.text + t)})()
    stream = kaggle_output.MaskedStream(target, [])
    assert stream.write(printed) == len(printed)
    assert target.text == shown and stream.written == [shown]


def test_an_error_quoting_a_signed_url_shows_it_without_its_query(monkeypatch, tmp_path):
    response = requests.Response()
    response.status_code, response.reason = 500, "Internal Server Error"
    response.url = "https://storage.googleapis.com/kaggle-data/cifar-10.zip?X-Goog-Signature=SIG"
    error = requests.HTTPError(f"500 Server Error: Internal Server Error for url: {response.url}", response=response)
    signed_in(monkeypatch, tmp_path, download=fails(error))
    with pytest.raises(kaggle_io.KaggleError) as excinfo:
        kaggle_io.download_competition(kaggle_io.connect(), tmp_path)
    assert "for url: https://storage.googleapis.com/kaggle-data/cifar-10.zip?[hidden], 3 attempts)" in str(
        excinfo.value
    )


# --- the setting ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "timeouts"), [(None, (10, 60)), ("1", (1, 1)), ("30", (10, 30)), ("10,300", (10, 300)), (" 5 ", (5, 5))]
)
def test_kaggle_timeout_seconds_sets_the_read_or_both_timeouts(monkeypatch, value, timeouts):
    if value is None:
        monkeypatch.delenv(kaggle_bounds.TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(kaggle_bounds.TIMEOUT_ENV, value)
    assert kaggle_bounds.timeouts() == timeouts


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1,2,3", "inf", "10,"])
def test_a_bad_kaggle_timeout_seconds_is_refused_before_anything_is_sent(monkeypatch, tmp_path, value):
    calls = signed_in(monkeypatch, tmp_path, timeout=value)
    refused = rf"^KAGGLE_TIMEOUT_SECONDS='{value}' is not a timeout: give"
    with pytest.raises(kaggle_bounds.TimeoutSettingError, match=refused):
        kaggle_io.connect()
    assert calls == []


# --- the real kaggle package, a Kaggle that never answers ---------------------------------------------------

SECOND = {"KAGGLE_TIMEOUT_SECONDS": "1"}
# 3 attempts of 1 s, 2 s and 4 s between them, Python and kaggle starting: ~12 s. The bound is about "never
# waits forever", not speed: 60 s.
BOUND = 60


def timed(*args, **kwargs):
    started = time.monotonic()
    result = run_real_kaggle(*args, timeout=BOUND * 2, **kwargs)
    return result, time.monotonic() - started


@pytest.mark.parametrize(
    ("credentials", "message"),
    [(KEY, "error: While downloading the cifar-10 files: Kaggle did not answer within 1 s"),
     (TOKEN, "error: Could not reach Kaggle to sign in: Kaggle did not answer within 1 s")],
    ids=["download", "sign-in"],
)  # fmt: skip
def test_real_kaggle_that_never_answers_fails_in_one_line_after_3_attempts(tmp_path, silent, credentials, message):
    result, seconds = timed("download", download_args(tmp_path), tmp_path, silent.port, **credentials, **SECOND)
    assert one_error_line(result) == (
        f"{message} (ReadTimeout contacting localhost, 3 attempts); check your network or proxy (HTTPS_PROXY) and"
        " re-run."
    )
    assert seconds < BOUND and silent.accepted == 3  # the sign-in at kaggle's import is refused, not waited for
    assert not (tmp_path / "raw").exists()


def test_real_kaggle_listing_that_never_answers_fails_in_one_line_after_3_attempts(tmp_path, silent):
    result, seconds = timed("-c", [LIST_CODE], tmp_path, silent.port, **KEY, **SECOND)
    assert one_error_line(result) == (
        "error: While listing your submissions: Kaggle did not answer within 1 s (ReadTimeout contacting localhost,"
        " 3 attempts); check your network or proxy (HTTPS_PROXY) and re-run."
    )
    assert seconds < BOUND and silent.accepted == 3


@pytest.fixture
def submitting(kaggle):
    """A Kaggle that starts uploads to a signed URL and takes them; stall a route to make it never answer."""
    kaggle.routes |= {
        "StartSubmissionUpload": (200, {"token": "blob", "createUrl": f"http://localhost/upload?upload_id={UPLOAD_ID}"}),
        "upload": (200, {}),
        "CreateSubmission": (200, {"message": "Successfully submitted to CIFAR-10", "ref": 7}),
    }  # fmt: skip
    return kaggle


def test_real_kaggle_create_call_that_never_answers_is_sent_once(tmp_path, submitting):
    submitting.stalled.add("CreateSubmission")
    csv = a_csv(tmp_path)
    result, seconds = timed("-c", [SUBMIT_CODE, csv], tmp_path, submitting.port, **KEY, **SECOND)
    assert one_error_line(result) == (
        f"error: While submitting {csv}: the request that creates the submission failed (no answer within 1 s,"
        " ReadTimeout contacting localhost), so Kaggle may have taken it all the same: look at"
        f" {SUBMISSIONS_URL} before re-running, since each submission counts against the day's allowance."
    )
    assert submitting.count("CreateSubmission") == 1 and seconds < BOUND


def test_real_kaggle_upload_that_never_answers_is_tried_3_times_and_its_signed_url_never_shown(tmp_path, submitting):
    submitting.stalled.add("upload")
    csv = a_csv(tmp_path)
    result, seconds = timed("-c", [SUBMIT_CODE, csv], tmp_path, submitting.port, **KEY, **SECOND)
    assert one_error_line(result).startswith(
        f"error: While submitting {csv}: Kaggle's upload failed, so nothing was submitted (localhost did not answer"
        " within 1 s; kaggle: HTTPConnectionPool(host='127.0.0.1', port="
    )
    assert "Max retries exceeded with url: http://localhost/upload?[hidden] (Caused by ReadTimeoutError" in (
        result.stdout  # kaggle's own `print(error)`, masked
    )
    assert UPLOAD_ID not in result.stdout + result.stderr
    assert submitting.count("upload") == 3 and submitting.count("CreateSubmission") == 0 and seconds < BOUND


def test_what_kaggle_prints_to_stderr_during_a_download_is_masked_too(monkeypatch, tmp_path, capfd):
    def noisy(competition, path):
        print(
            "Request failed: 500 Server Error for url: https://storage.googleapis.com/o?X-Goog-Signature=SIG. Will"
            " retry in 0.9 seconds",
            file=sys.stderr,
        )  # kaggle's with_retry, as it prints
        shutil.copy(sample, f"{path}/{competition}.zip")

    sample = tmp_path / "sample.zip"
    sample.write_bytes(b"PK")
    signed_in(monkeypatch, tmp_path, download=noisy)
    kaggle_io.download_competition(kaggle_io.connect(), tmp_path)
    err = capfd.readouterr().err
    assert "https://storage.googleapis.com/o?[hidden]. Will retry" in err and "SIG" not in err
