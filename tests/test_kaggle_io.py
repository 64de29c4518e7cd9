"""Kaggle at its boundary: sign-in failures, submit results, and credentials that never reach the output.

Most tests use the fake kaggle of tests/test_download.py. The `real kaggle` tests run the stages in a subprocess
with the installed kaggle package, VERBOSE=1 and fake credentials, its requests sent through an HTTP proxy on
127.0.0.1 (requests honours HTTP_PROXY): a closed port, or a local server that answers as Kaggle does (or never
answers on a stalled route). Those that call `python -m stages.submit` depend on its arguments; the same cases
through `kaggle_io` itself run in a `python -c` of their own (SUBMIT_CODE, LIST_CODE).
"""

from __future__ import annotations

import http.server
import importlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from kagglesdk.competitions.types.competition_api_service import ApiSubmission
from kagglesdk.competitions.types.submission_status import SubmissionStatus

from pipeline import kaggle_io
from tests import artifacts
from tests.test_download import (
    DAILY_LIMIT,
    FAKE_BASIC,
    FAKE_KEY,
    http_error,
    install_fake_kaggle,
    network_error,
    upload_failed,
    use_fake_credentials,
)

REPO = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "KGAT_fake0123456789abcdef0123456789"
SECRETS = (FAKE_KEY, FAKE_BASIC, FAKE_TOKEN, "Authorization")

# --- sign-in: three causes, three messages ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("credentials", "kaggle_answers", "message"),
    [
        ({}, None, "No Kaggle credentials found. Provide Kaggle credentials"),
        ({"KAGGLE_API_TOKEN": FAKE_TOKEN}, http_error(403, "Permission denied"),
         "Kaggle rejected the access token in $KAGGLE_API_TOKEN (it is revoked, expired or mistyped)."
         " Create a new token at https://www.kaggle.com/settings/api"),
        ({"KAGGLE_API_TOKEN": FAKE_TOKEN}, http_error(401), "Kaggle rejected the access token in $KAGGLE_API_TOKEN"
         " (HTTP 401)"),
        ({"KAGGLE_API_TOKEN": FAKE_TOKEN}, network_error(), "Could not reach Kaggle to sign in (ConnectionError"
         " contacting api.kaggle.com, 3 attempts): check your network connection"),
    ],
    ids=["missing", "token-rejected-403", "token-rejected-401", "network"],
)  # fmt: skip
def test_sign_in_failures_say_which_cause_and_never_show_the_token(
    monkeypatch, tmp_path, capfd, credentials, kaggle_answers, message
):
    use_fake_credentials(monkeypatch, tmp_path / "home", KAGGLE_CONFIG_DIR=str(tmp_path / "none"), **credentials)
    monkeypatch.setenv("VERBOSE", "1")

    def answer():
        raise kaggle_answers

    install_fake_kaggle(monkeypatch, authenticate=answer if kaggle_answers else None)
    with pytest.raises(kaggle_io.KaggleError) as excinfo:
        kaggle_io.connect()
    assert str(excinfo.value).startswith(message) and "\n" not in str(excinfo.value)
    output = "".join(capfd.readouterr())
    assert not [s for s in SECRETS if s in output + str(excinfo.value)]
    assert "Authentication required" not in output  # kaggle's help text is swallowed


def test_a_valid_token_signs_in(monkeypatch, tmp_path):
    use_fake_credentials(monkeypatch, tmp_path / "home", KAGGLE_API_TOKEN=FAKE_TOKEN)
    calls = install_fake_kaggle(monkeypatch)
    assert kaggle_io.connect().config_values["token"] == FAKE_TOKEN and calls == ["authenticate"]


# --- submit: kaggle 2.x reports a failed upload only in its return value -------------------------------------


@pytest.fixture
def api(monkeypatch, tmp_path):
    """A fake kaggle, signed in with a username and key; returns a function that installs it with `submit`."""
    use_fake_credentials(monkeypatch, tmp_path / "home")

    def signed_in(**fake):
        install_fake_kaggle(monkeypatch, **fake)
        return kaggle_io.connect()

    return signed_in


@pytest.fixture
def csv(tmp_path) -> Path:
    """A submission.csv to send (kaggle reads its size and mtime before anything else)."""
    path = tmp_path / "submission.csv"
    path.write_text("id,label\n1,cat\n")
    return path


def test_submit_returns_kaggles_reply(api, csv):
    reply = kaggle_io.submit(api(), csv, "m")
    assert reply == "Successfully submitted to CIFAR-10 - Object Recognition in Images"


def test_a_failed_upload_raises_with_what_kaggle_printed(api, csv, capsys):
    printed = (
        "HTTPSConnectionPool(host='storage.googleapis.com', port=443): Max retries exceeded with url:"
        " /upload/storage/v1/b/kaggle/o?uploadType=resumable&upload_id=SECRET-UPLOAD-ID (Caused by ReadTimeoutError)"
    )
    with pytest.raises(kaggle_io.KaggleError) as excinfo:
        kaggle_io.submit(api(submit=upload_failed(printed)), csv, "m")
    assert str(excinfo.value).startswith(
        f"While submitting {csv}: Kaggle's upload failed, so nothing was submitted"
        " (kaggle: HTTPSConnectionPool(host='storage.googleapis.com', port=443): Max retries exceeded with url:"
        " /upload/storage/v1/b/kaggle/o?[hidden] (Caused by ReadTimeoutError)). Re-run `python -m stages.submit`"
    )
    out = capsys.readouterr().out
    assert "SECRET-UPLOAD-ID" not in str(excinfo.value) + out
    assert "storage.googleapis.com" in out and "/kaggle/o?[hidden] (Caused" in out  # kaggle's output: visible, masked


def test_a_failed_upload_without_a_printed_reason_says_so(api, csv):
    with pytest.raises(kaggle_io.KaggleError, match=r"Kaggle's upload failed, .*\(kaggle: kaggle gave no reason\)"):
        kaggle_io.submit(api(submit=upload_failed("")), csv, "m")


def test_the_daily_submission_limit_says_so_and_when_it_resets(api, csv):
    def refuse(file_name, message, competition):
        raise http_error(400, DAILY_LIMIT)

    with pytest.raises(kaggle_io.KaggleError) as excinfo:
        kaggle_io.submit(api(submit=refuse), csv, "m")
    assert re.fullmatch(
        rf"While submitting .*: Kaggle refused it because your team has used today's submissions \(Kaggle: "
        rf"{re.escape(DAILY_LIMIT)}\)\. Kaggle allows a fixed number of submissions per day; the count resets at"
        r" 00:00 UTC, in \d+ h \d+ min\. Re-run `python -m stages.submit` then\.",
        str(excinfo.value),
    )


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (http_error(400, "Submission not allowed: This competition only accepts Submissions from Notebooks."),
         "Kaggle refused the request (HTTP 400: Submission not allowed: This competition only accepts Submissions"
         " from Notebooks.); fix what it names, then re-run."),
        (http_error(429), "Kaggle is limiting how often you call it (HTTP 429: 429 Client Error: Too Many Requests"),
        (http_error(503), "Kaggle answered HTTP 503 (503 Server Error: Service Unavailable for url:"),
    ],
)  # fmt: skip
def test_other_refusals_carry_kaggles_reason(api, csv, error, message):
    def refuse(file_name, message, competition):
        raise error

    with pytest.raises(kaggle_io.KaggleError) as excinfo:
        kaggle_io.submit(api(submit=refuse), csv, "m")
    assert message in str(excinfo.value) and "used today's submissions" not in str(excinfo.value)


def test_the_wait_until_the_daily_limit_resets_counts_to_utc_midnight():
    assert kaggle_io._until_utc_midnight(datetime(2025, 3, 1, 20, 47, 30, tzinfo=UTC)) == "3 h 12 min"


# --- credentials never reach the output ---------------------------------------------------------------------


@pytest.mark.parametrize("credentials", [{"KAGGLE_USERNAME": "someone", "KAGGLE_KEY": FAKE_KEY},
                                         {"KAGGLE_API_TOKEN": FAKE_TOKEN}], ids=["key", "token"])  # fmt: skip
def test_a_verbose_clients_output_is_shown_with_its_credentials_hidden(monkeypatch, tmp_path, capfd, credentials):
    use_fake_credentials(monkeypatch, tmp_path / "home", **credentials)
    monkeypatch.setenv("VERBOSE", "1")
    install_fake_kaggle(monkeypatch, download=lambda competition, path: None)
    api = importlib.import_module("kaggle.api.kaggle_api_extended").KaggleApi()  # verbose: not made quiet by connect()
    api.authenticate()
    capfd.readouterr()
    kaggle_io.download_competition(api, tmp_path)
    out = capfd.readouterr().out
    assert "--Request--" in out and "Authorization: [hidden]" in out  # the client did print its request
    assert not [s for s in (FAKE_KEY, FAKE_BASIC, FAKE_TOKEN) if s in out]


class Kaggle:
    """Answers as Kaggle would, as the HTTP proxy of a subprocess's requests; `routes` maps a path's end to
    `(status, JSON body)` (or a function returning them, called per request); a route in `stalled` reads the
    request and never answers; `requests` records (method, path, headers, body)."""

    def __init__(self):
        self.routes: dict = {}
        self.stalled: set[str] = set()
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self._closing = threading.Event()
        kaggle = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kaggle.requests.append((self.command, self.path, dict(self.headers), body))
                route = urlsplit(self.path).path.rsplit("/", 1)[-1]
                if route in kaggle.stalled:
                    kaggle._closing.wait()
                    self.close_connection = True
                    return
                answer = kaggle.routes.get(route, (404, {"code": 404, "message": "?"}))
                status, body = answer() if callable(answer) else answer
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_PUT = answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, route: str) -> int:
        """How many requests went to `route` (a path's end, e.g. CreateSubmission)."""
        return sum(urlsplit(request[1]).path.endswith(f"/{route}") for request in self.requests)

    def bodies(self, route: str) -> list[dict]:
        """The JSON bodies of the requests to `route` so far."""
        return [json.loads(r[3]) for r in self.requests if urlsplit(r[1]).path.endswith("/" + route)]

    def close(self):
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kaggle():
    server = Kaggle()
    yield server
    server.close()


@pytest.fixture
def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        yield sock.getsockname()[1]


def run_real_kaggle(stage: str, args: list, tmp_path: Path, proxy_port: int, timeout: float = 120, **env):
    """Run `python -m stages.<stage>` (or, for a stage `-c`, the code in `args[0]`) with the installed kaggle
    package, VERBOSE=1, its requests sent to the port; `env`: credentials and other variables."""
    proxies = ("no_proxy", "http_proxy", "https_proxy", "all_proxy")
    base = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and k.lower() not in proxies}
    base |= {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config"), "VERBOSE": "1",
             "KAGGLE_API_ENVIRONMENT": "LOCALHOST",  # http://localhost/api/v1/..., so the proxy sees each request
             "HTTP_PROXY": f"http://127.0.0.1:{proxy_port}", "http_proxy": f"http://127.0.0.1:{proxy_port}",
             **env}  # fmt: skip
    command = ["-c"] if stage == "-c" else ["-m", f"stages.{stage}"]
    result = subprocess.run([sys.executable, *command, *map(str, args)], capture_output=True, text=True, env=base,
                            cwd=REPO, timeout=timeout)  # fmt: skip
    output = result.stdout + result.stderr
    assert not [s for s in SECRETS if s in output], output
    assert "--Request--" not in output
    return result


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


KEY = {"KAGGLE_USERNAME": "someone", "KAGGLE_KEY": FAKE_KEY}
TOKEN = {"KAGGLE_API_TOKEN": FAKE_TOKEN}


def download_args(tmp_path: Path) -> list:
    (tmp_path / "params.yaml").write_text("backbones: {test_resnet: {model: test_resnet}}\ndata: {source: kaggle}\n")
    return ["--out", tmp_path / "raw", "--params", tmp_path / "params.yaml"]


@pytest.mark.parametrize(
    ("credentials", "message"),
    [(KEY, "error: While downloading the cifar-10 files: the request to localhost failed (ProxyError, 3 attempts);"
           " check your network connection"),
     (TOKEN, "error: Could not reach Kaggle to sign in (ProxyError contacting localhost, 3 attempts): check your"
             " network")],
    ids=["key", "token"],
)  # fmt: skip
def test_real_kaggle_unreachable_is_a_network_error_and_prints_no_credential(
    tmp_path, closed_port, credentials, message
):
    result = run_real_kaggle("download", download_args(tmp_path), tmp_path, closed_port, **credentials)
    assert one_error_line(result).startswith(message)
    assert not (tmp_path / "raw").exists()


def test_real_kaggle_with_a_line_break_in_the_token_says_so_without_quoting_it(tmp_path, closed_port):
    # kagglesdk sends KAGGLE_API_TOKEN unstripped; http.client then raises ValueError quoting the header, token and all
    token = FAKE_TOKEN + "\n"
    result = run_real_kaggle("download", download_args(tmp_path), tmp_path, closed_port, KAGGLE_API_TOKEN=token)
    assert one_error_line(result).startswith(
        "error: Your Kaggle credentials in $KAGGLE_API_TOKEN contain a line break, space or other character"
    )


@pytest.mark.parametrize("status", [401, 403])
def test_real_kaggle_rejecting_the_token_says_so(tmp_path, kaggle, status):
    kaggle.routes["IntrospectToken"] = (status, {"code": status, "message": "Unauthenticated"})
    result = run_real_kaggle("download", download_args(tmp_path), tmp_path, kaggle.port, **TOKEN)
    assert one_error_line(result).startswith("error: Kaggle rejected the access token in $KAGGLE_API_TOKEN (")
    assert kaggle.requests[-1][2]["Authorization"] == f"Bearer {FAKE_TOKEN}"  # it was sent, never printed


@pytest.fixture
def submit_args(tmp_path):
    return artifacts.finished_run(tmp_path / "run")  # what `dvc repro` leaves: the CSV, its records, params.yaml


REFUSALS = pytest.mark.parametrize(
    ("routes", "message"),
    [
        ({"upload": (500, {})}, "Kaggle's upload failed, so nothing was submitted (kaggle: kaggle gave no reason)"),
        ({"StartSubmissionUpload": (200, {"token": "blob", "createUrl": "ftp://localhost/upload"})},
         "Kaggle's upload failed, so nothing was submitted (kaggle: No connection adapters were found for"
         " 'ftp://localhost/upload')"),
        ({"CreateSubmission": (400, {"code": 400, "message": DAILY_LIMIT})},
         f"Kaggle refused it because your team has used today's submissions (Kaggle: {DAILY_LIMIT})."),
    ],
    ids=["upload-http-500", "upload-raises", "daily-limit"],
)  # fmt: skip
# kaggle_io's calls in a subprocess of their own, whatever the submit command's arguments are
SUBMIT_CODE = (
    "import sys; from pathlib import Path; from pipeline import cli, kaggle_io;"
    " cli.run(lambda argv: print('reply:', kaggle_io.submit(kaggle_io.connect(), Path(sys.argv[1]), 'm')))"
)
LIST_CODE = (
    "from pipeline import cli, kaggle_io;"
    " cli.run(lambda argv: print(kaggle_io.latest_submissions(kaggle_io.connect())))"
)


@REFUSALS
def test_real_kaggle_refusing_a_submission_fails_and_never_says_submitted(
    tmp_path, kaggle, submit_args, routes, message
):
    kaggle.routes |= {"StartSubmissionUpload": (200, {"token": "blob", "createUrl": "http://localhost/upload"}),
                      "upload": (200, {}), "ListSubmissions": (200, {"submissions": []}), **routes}  # fmt: skip
    result = run_real_kaggle("submit", submit_args, tmp_path, kaggle.port, **KEY)
    assert message in one_error_line(result)
    assert "submitted" not in result.stdout
    assert kaggle.requests[0][2]["Authorization"] == f"Basic {FAKE_BASIC}"


def test_real_kaggle_accepting_a_submission_shows_its_reply_and_the_scores(tmp_path, kaggle, submit_args):
    kaggle.routes |= {
        "StartSubmissionUpload": (200, {"token": "blob", "createUrl": "http://localhost/upload"}),
        "upload": (200, {}),
        "CreateSubmission": (200, {"message": "Successfully submitted to CIFAR-10", "ref": 7}),
        # Kaggle lists what was created, scored: the description the create request carried
        "ListSubmissions": lambda: (200, {"submissions": [
            {"ref": 7, "publicScore": "0.95", "privateScore": "0.94", "status": "COMPLETE",
             "date": "2025-03-01T12:00:00Z", "description": body["submissionDescription"]}
            for body in kaggle.bodies("CreateSubmission")]}),
    }  # fmt: skip
    result = run_real_kaggle("submit", submit_args, tmp_path, kaggle.port, **KEY)
    assert result.returncode == 0, result.stderr
    assert f"submitted {submit_args[1]}; Kaggle says: Successfully submitted to CIFAR-10" in result.stdout
    assert "[csv " in kaggle.bodies("CreateSubmission")[0]["submissionDescription"]  # the file's digest
    assert "COMPLETE: public 0.95, private 0.94, nested-CV 0.9123" in result.stdout
    assert json.loads(Path(submit_args[-1]).read_text())["private_score"] == 0.94


def test_listed_submissions_show_status_names(api):
    submission = ApiSubmission()
    submission.public_score, submission.description, submission.status = "0.9", "x", SubmissionStatus.COMPLETE
    assert kaggle_io.latest_submissions(api(submissions=[submission])) == ["-  COMPLETE  public=0.9  private=-  x"]


@REFUSALS
def test_real_kaggle_refusing_a_submission_raises_from_kaggle_io(tmp_path, kaggle, routes, message):
    kaggle.routes |= {"StartSubmissionUpload": (200, {"token": "blob", "createUrl": "http://localhost/upload"}),
                      "upload": (200, {}), **routes}  # fmt: skip
    csv = tmp_path / "submission.csv"
    csv.write_text("id,label\n1,frog\n")
    result = run_real_kaggle("-c", [SUBMIT_CODE, csv], tmp_path, kaggle.port, **KEY)
    assert message in one_error_line(result) and "reply:" not in result.stdout


def test_real_kaggle_accepting_a_submission_returns_its_reply_and_lists_both_scores(tmp_path, kaggle):
    kaggle.routes |= {
        "StartSubmissionUpload": (200, {"token": "blob", "createUrl": "http://localhost/upload"}),
        "upload": (200, {}),
        "CreateSubmission": (200, {"message": "Successfully submitted to CIFAR-10", "ref": 7}),
        "ListSubmissions": (200, {"submissions": [{"ref": 7, "publicScore": "0.95", "privateScore": "0.94",
                                                   "status": "COMPLETE", "description": "fitted",
                                                   "date": "2025-03-01T12:00:00.123Z"}]}),
    }  # fmt: skip
    csv = tmp_path / "submission.csv"
    csv.write_text("id,label\n1,frog\n")
    result = run_real_kaggle("-c", [SUBMIT_CODE, csv], tmp_path, kaggle.port, **KEY)
    assert result.returncode == 0 and "reply: Successfully submitted to CIFAR-10" in result.stdout, result.stderr
    result = run_real_kaggle("-c", [LIST_CODE], tmp_path, kaggle.port, **KEY)
    assert result.returncode == 0, result.stderr
    assert "['2025-03-01T12:00:00Z  COMPLETE  public=0.95  private=0.94  fitted']" in result.stdout
