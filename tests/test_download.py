"""The download stage against local copies and a fake kaggle API at its boundary."""

import base64
import http
import importlib.abc
import importlib.util
import json
import os
import shutil
import socket
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import requests
from kagglesdk.competitions.types.competition_api_service import (
    ApiCreateSubmissionRequest,
    ApiCreateSubmissionResponse,
    ApiDownloadDataFilesRequest,
    ApiListSubmissionsRequest,
    ApiStartSubmissionUploadRequest,
)
from kagglesdk.kaggle_env import get_access_token_from_env
from kagglesdk.kaggle_http_client import KaggleHttpClient
from kagglesdk.security.types.oauth_service import IntrospectTokenRequest
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from pipeline import kaggle_bounds, kaggle_io
from pipeline.competition import FILES
from pipeline.config import DataConfig, SampleConfig
from pipeline.download import DownloadError, fetch_competition, unpack_competition


def test_local_zip_and_local_folder_give_the_same_four_files(sample_zip, tmp_path):
    fetch_competition(DataConfig(source="local", path=str(sample_zip)), tmp_path / "from_zip")
    folder = tmp_path / "folder"
    with zipfile.ZipFile(sample_zip) as z:
        z.extractall(folder)
    fetch_competition(DataConfig(source="local", path=str(folder)), tmp_path / "from_folder")
    for name in FILES:
        assert (tmp_path / "from_zip" / name).read_bytes() == (folder / name).read_bytes()
        assert (tmp_path / "from_folder" / name).read_bytes() == (folder / name).read_bytes()


def test_zip_missing_a_member_is_rejected_and_nothing_written(sample_zip, tmp_path):
    broken = tmp_path / "cifar-10.zip"
    with zipfile.ZipFile(sample_zip) as src, zipfile.ZipFile(broken, "w") as dst:
        for name in FILES[:-1]:
            dst.writestr(name, src.read(name))
    with pytest.raises(DownloadError, match="lacks sampleSubmission.csv"):
        unpack_competition(broken, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_truncated_zip_is_rejected(sample_zip, tmp_path):
    broken = tmp_path / "cifar-10.zip"
    broken.write_bytes(sample_zip.read_bytes()[:1000])
    with pytest.raises(DownloadError, match="not a valid zip file"):
        unpack_competition(broken, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_folder_missing_a_file_is_rejected(sample_zip, tmp_path):
    with zipfile.ZipFile(sample_zip) as z:
        z.extractall(tmp_path / "folder")
    (tmp_path / "folder" / "test.7z").unlink()
    with pytest.raises(DownloadError, match="lacks test.7z"):
        unpack_competition(tmp_path / "folder", tmp_path / "raw")


FAKE_KEY = "fake-kaggle-key-0123456789abcdef"
FAKE_BASIC = base64.b64encode(f"someone:{FAKE_KEY}".encode()).decode()  # what HTTP Basic auth sends
# kaggle 2.2.5: KaggleApi.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE and the first line of print_auth_help()
UPLOAD_FAILED = "Could not submit to competition"
AUTH_HELP = "Authentication required to call the Kaggle API."
UPLOAD_ID = "SECRET-UPLOAD-ID"  # the capability in a resumable upload URL's query
# Kaggle's words (HTTP 400 from CreateSubmission) when a team has used up the day's submissions
DAILY_LIMIT = (
    "Submission not allowed: Your team has used its daily Submission allowance (5) today, please try again"
    " tomorrow UTC (3.2 hours from now)."
)


def use_fake_credentials(monkeypatch, home: Path, **env):
    """Hide every real Kaggle credential (KAGGLE_*, a HOME of `home`); set `env`, by default a fake username and key."""
    for name in [n for n in os.environ if n.startswith("KAGGLE_") or n in ("VERBOSE", "VERBOSE_OUTPUT")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for name, value in (env or {"KAGGLE_USERNAME": "someone", "KAGGLE_KEY": FAKE_KEY}).items():
        monkeypatch.setenv(name, value)


def http_error(status: int, message: str | None = None) -> requests.HTTPError:
    """The HTTPError kagglesdk raises: with Kaggle's JSON error `message`, or else requests' own status line."""
    response = requests.Response()
    response.status_code = status
    response.reason = http.HTTPStatus(status).phrase
    response.url = "https://api.kaggle.com/v1/competitions.CompetitionApiService/DownloadDataFiles"
    if message is None:
        try:
            response.raise_for_status()
        except requests.HTTPError as exc:
            return exc
    response.headers["Content-Type"] = "application/json"
    response._content = json.dumps({"code": status, "message": message}).encode()
    return requests.HTTPError(message, response=response)  # as kagglesdk's KaggleHttpClient._prepare_response


FakeHTTPError = http_error  # the name tests/faults/test_fault_matrix.py imports


def network_error(host: str = "api.kaggle.com") -> requests.ConnectionError:
    """What requests raises when `host` cannot be reached."""
    request = requests.Request("POST", f"https://{host}/v1/competitions.CompetitionApiService/X").prepare()
    return requests.ConnectionError(
        f"HTTPSConnectionPool(host='{host}', port=443): Max retries exceeded (Caused by NameResolutionError)",
        request=request,
    )


def submission_response(message: str, ref: int = 0) -> ApiCreateSubmissionResponse:
    response = ApiCreateSubmissionResponse()
    response.message, response.ref = message, ref
    return response


def upload_failed(printed: str):
    """A `submit` that fails like kaggle 2.x's upload: prints the error, returns the failure message, raises nothing."""

    def submit(file_name, message, competition):
        print(printed)  # upload_complete's `print(error)`
        return submission_response(UPLOAD_FAILED)

    return submit


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never sends a byte: a Kaggle that never answers.
    `accepted` counts the connections (each request that times out opens a new one)."""

    def __init__(self):
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                self._connections.append(self._sock.accept()[0])
            except TimeoutError:
                continue

    @property
    def accepted(self) -> int:
        time.sleep(0.2)  # a connection the kernel completed may wait for accept() a moment
        return len(self._connections)

    def close(self):
        self._stop.set()
        self._thread.join()
        self._sock.close()
        for connection in self._connections:  # a client still waiting (a fix reverted) gets EOF and ends
            connection.close()


class Calls(list):
    """The fake kaggle's calls, in order; `sleeps` holds the seconds kaggle_io's retries would have waited."""

    sleeps: list[float]


def install_fake_kaggle(monkeypatch, *, authenticate=None, download=None, submit=None, submissions=(),
                        never_answer=None):  # fmt: skip
    """Make `kaggle.api.kaggle_api_extended.KaggleApi` a fake; returns its Calls.

    At its boundary it behaves as kaggle 2.2.5 does: importing it (anything under `kaggle`) runs the package's own
    `api = KaggleApi(); api.authenticate()`, which prints the help text without credentials and ends in
    SystemExit(1), caught by kaggle/__init__.py (`except (Exception, SystemExit): pass`); once per fresh import.
    Credentials come from KAGGLE_API_TOKEN (checked with Kaggle), KAGGLE_USERNAME + KAGGLE_KEY or kaggle.json;
    without any, authenticate() prints kaggle's help and raises SystemExit(1). If VERBOSE or VERBOSE_OUTPUT is
    set at import, every request is printed by kagglesdk's own code, Authorization header included.
    competition_submit reads the file's size and mtime first (a missing file raises FileNotFoundError), then asks
    to start the upload, uploads, and creates the submission.

    `authenticate()` (each sign-in with a token, not the package's), `download(competition, path)` and
    `submit(file_name, message, competition)` (the upload and create, after the start) run where kaggle talks to
    Kaggle and may raise `http_error(...)` or `network_error()`; `submit` returns what competition_submit returns
    (by default success); competition_submissions returns `submissions` (ApiSubmission objects; or a function
    of the calls so far that returns them, e.g. one that lists what was submitted).
    `never_answer` maps steps ("sign-in", "download", "start", "upload", "create", "listing") to the address of a
    server that never answers (SilentServer.url): that step's request really goes there through `requests`, as
    kaggle sends it (kagglesdk: `session.send(request, **merge_environment_settings(...))`, no timeout; the
    upload: its own Session with `HTTPAdapter(max_retries=Retry(total=10, backoff_factor=0.5))`, every error
    printed and swallowed), so only kaggle_io's bounds end the wait.
    """
    calls = Calls()
    calls.sleeps = []
    monkeypatch.setattr(kaggle_bounds, "_sleep", calls.sleeps.append)
    never_answer = never_answer or {}
    for name in [n for n in os.environ if n.lower() in ("http_proxy", "https_proxy", "all_proxy")]:
        monkeypatch.delenv(name)  # the never-answering server is on 127.0.0.1, reached directly

    class KaggleApi:
        COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE = UPLOAD_FAILED
        args: list[str] = []  # set when the module is imported, from VERBOSE and VERBOSE_OUTPUT

        def __init__(self):
            self.config_values = {}

        def authenticate(self, _package_level=False):
            if not _package_level:
                calls.append("authenticate")
            token, _ = get_access_token_from_env()
            if token:
                try:
                    request = IntrospectTokenRequest()
                    request.token = token
                    self._send("security.OAuthService", "IntrospectToken", request, api_token=token, step="sign-in")
                    if authenticate and not _package_level:
                        authenticate()
                    self.config_values = {"username": "someone", "token": token}
                    return
                except requests.HTTPError as exc:
                    if exc.response.status_code not in (400, 403, 404):
                        raise  # kaggle ignores a token Kaggle calls invalid, and raises on anything else
            elif authenticate and not _package_level:
                authenticate()
            self.config_values = _legacy_credentials()
            if not self.config_values:
                print(AUTH_HELP)
                sys.exit(1)

        def competition_download_files(self, competition, path=None, force=False, quiet=True):
            calls.append(("download", competition))
            request = ApiDownloadDataFilesRequest()
            request.competition_name = competition
            self._send("competitions.CompetitionApiService", "DownloadDataFiles", request, step="download")
            download(competition, path)

        def competition_submit(self, file_name, message, competition, quiet=False, sandbox=False):
            calls.append(("submit", Path(file_name).name, message, competition))
            request = ApiStartSubmissionUploadRequest()
            request.competition_name, request.file_name = competition, os.path.basename(file_name)
            request.content_length = os.path.getsize(file_name)  # as kaggle: before anything is sent
            request.last_modified_epoch_seconds = int(os.path.getmtime(file_name))
            self._send("competitions.CompetitionApiService", "StartSubmissionUpload", request, step="start")
            if submit:
                return submit(file_name, message, competition)
            if not self._upload(file_name):
                return submission_response(UPLOAD_FAILED)  # kaggle printed the upload's error
            create = ApiCreateSubmissionRequest()
            create.competition_name, create.blob_file_tokens, create.submission_description = competition, "b", message
            self._send("competitions.CompetitionApiService", "CreateSubmission", create, step="create")
            return submission_response("Successfully submitted to CIFAR-10 - Object Recognition in Images", ref=1)

        def competition_submissions(self, competition, **paging):
            calls.append(("submissions", competition))
            request = ApiListSubmissionsRequest()
            request.competition_name = competition
            self._send("competitions.CompetitionApiService", "ListSubmissions", request, step="listing")
            return list(submissions(calls) if callable(submissions) else submissions)

        def _send(self, service, method, request, api_token=None, step=None):
            """Print the request as the real client does (verbose or not); sent only to a never-answering server."""
            client = KaggleHttpClient(
                verbose="--verbose" in self.args or "-v" in self.args,
                username=self.config_values.get("username"),
                password=self.config_values.get("key"),
                api_token=api_token or self.config_values.get("token"),
            )
            with client:
                prepared = client._prepare_request(service, method, request)
                if step in never_answer:
                    prepared.prepare_url(f"{never_answer[step]}/v1/{service}/{method}", None)
                    settings = client._session.merge_environment_settings(prepared.url, {}, None, None, None)
                    client._session.send(prepared, **settings)  # KaggleHttpClient.call's send: no timeout

        def _upload(self, file_name) -> bool:
            """kaggle 2.2.5's upload_complete, to a never-answering server when asked: True if it went up."""
            if "upload" not in never_answer:
                return True
            url = f"{never_answer['upload']}/upload/storage/v1/b/kaggle/o?uploadType=resumable&upload_id={UPLOAD_ID}"
            try:
                with open(file_name, "rb", buffering=0) as fp:
                    session = requests.Session()
                    adapter = HTTPAdapter(max_retries=Retry(total=10, backoff_factor=0.5))
                    session.mount("http://", adapter)
                    session.mount("https://", adapter)
                    return session.put(url, data=fp).status_code in (200, 201)
            except Exception as error:
                print(error)
                return False

    contents = {"kaggle": {}, "kaggle.api": {}, "kaggle.api.kaggle_api_extended": {"KaggleApi": KaggleApi}}

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        """Imports the three fake modules; `kaggle` runs its package-level sign-in, as kaggle/__init__.py does."""

        def find_spec(self, name, path=None, target=None):
            if name in contents:
                return importlib.util.spec_from_loader(name, self, is_package=name != "kaggle.api.kaggle_api_extended")
            return None

        def exec_module(self, module):
            module.__dict__.update(contents[module.__name__])
            if module.__name__ == "kaggle.api.kaggle_api_extended":
                verbose = (os.environ.get("VERBOSE") or os.environ.get("VERBOSE_OUTPUT") or "false").lower()
                KaggleApi.args = ["--verbose"] if verbose in ("1", "true", "yes") else []
            if module.__name__ == "kaggle":
                from kaggle.api.kaggle_api_extended import KaggleApi as api_class  # noqa: PLC0415

                module.api = api_class()
                try:
                    module.api.authenticate(_package_level=True)
                except (Exception, SystemExit):
                    pass

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    for name in contents:  # a fresh import each time; the real modules (if loaded) come back after the test
        monkeypatch.setitem(sys.modules, name, None)
        del sys.modules[name]
    return calls


def _legacy_credentials() -> dict[str, str]:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return {"username": os.environ["KAGGLE_USERNAME"], "key": os.environ["KAGGLE_KEY"]}
    home = Path.home()
    folders = [os.environ.get("KAGGLE_CONFIG_DIR"), home / ".kaggle",
               Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]  # fmt: skip
    for path in [Path(folder) / "kaggle.json" for folder in folders if folder]:
        if path.is_file():
            return {k: v for k, v in json.loads(path.read_text()).items() if k in ("username", "key")}
    return {}


@pytest.fixture
def fake_credentials(monkeypatch, tmp_path_factory):
    use_fake_credentials(monkeypatch, tmp_path_factory.mktemp("home"))


def copy_of(sample_zip):
    return lambda competition, path: shutil.copy(sample_zip, f"{path}/{competition}.zip")


def test_kaggle_download_success(fake_credentials, monkeypatch, sample_zip, tmp_path):
    calls = install_fake_kaggle(monkeypatch, download=copy_of(sample_zip))
    fetch_competition(DataConfig(source="kaggle"), tmp_path / "raw")
    assert calls == ["authenticate", ("download", "cifar-10")]
    assert set(FILES) <= {p.name for p in (tmp_path / "raw").iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # the temporary download folder is gone


@pytest.mark.parametrize("variable", ["VERBOSE", "VERBOSE_OUTPUT"])
def test_a_verbose_kaggle_client_prints_no_request_and_no_key(
    fake_credentials, monkeypatch, sample_zip, tmp_path, capfd, variable
):
    monkeypatch.setenv(variable, "1")  # before kaggle's import, which reads it
    install_fake_kaggle(monkeypatch, download=copy_of(sample_zip))
    fetch_competition(DataConfig(source="kaggle"), tmp_path / "raw")
    output = "".join(capfd.readouterr())
    assert FAKE_KEY not in output
    assert FAKE_BASIC not in output
    assert "Authorization" not in output and "--Request--" not in output  # made quiet, not merely masked


def test_a_rerun_with_intact_files_does_nothing_and_a_damaged_folder_is_fetched_again(
    fake_credentials, monkeypatch, sample_zip, tmp_path
):
    calls = install_fake_kaggle(monkeypatch, download=copy_of(sample_zip))
    fetch_competition(DataConfig(source="kaggle"), tmp_path / "raw")
    fetch_competition(DataConfig(source="kaggle", sample=SampleConfig(seed=7)), tmp_path / "raw")  # the sample's
    assert calls == ["authenticate", ("download", "cifar-10")]  # the second run asked Kaggle nothing
    (tmp_path / "raw" / "test.7z").write_bytes(b"")
    fetch_competition(DataConfig(source="kaggle"), tmp_path / "raw")
    assert len(calls) == 4 and (tmp_path / "raw" / "test.7z").stat().st_size > 0


def test_another_source_replaces_the_folder(sample_zip, tmp_path):
    fetch_competition(DataConfig(source="local", path=str(sample_zip)), tmp_path / "raw")
    fetch_competition(DataConfig(source="sample", sample=SampleConfig(n_train=30, n_test=10)), tmp_path / "raw")
    assert (tmp_path / "raw" / "trainLabels.csv").read_text().count("\n") == 31


def test_kaggle_without_credentials_says_how_to_provide_them(monkeypatch, tmp_path, capfd):
    use_fake_credentials(monkeypatch, tmp_path / "home", KAGGLE_CONFIG_DIR=str(tmp_path / "no-such-dir"))
    install_fake_kaggle(monkeypatch)
    with pytest.raises(kaggle_io.KaggleError, match="No Kaggle credentials found.*KAGGLE_API_TOKEN.*kaggle.json"):
        fetch_competition(DataConfig(source="kaggle"), tmp_path / "artifacts" / "raw")
    assert not (tmp_path / "artifacts").exists()
    assert AUTH_HELP not in capfd.readouterr().out  # kaggle's own help text is swallowed


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "rejected your credentials"),
        (403, "accept the competition's rules at https://www.kaggle.com/competitions/cifar-10/rules"),
        (404, "did not find the competition"),
    ],
)
def test_kaggle_http_errors_become_one_actionable_message(fake_credentials, monkeypatch, tmp_path, status, message):
    def refuse(competition, path):
        raise http_error(status)

    install_fake_kaggle(monkeypatch, download=refuse)
    with pytest.raises(kaggle_io.KaggleError, match=message):
        fetch_competition(DataConfig(source="kaggle"), tmp_path / "raw")
    assert [p.name for p in tmp_path.iterdir()] == []


def test_interrupted_kaggle_download_leaves_nothing_behind_and_a_rerun_succeeds(
    fake_credentials, monkeypatch, sample_zip, tmp_path
):
    def half_then_fail(competition, path):
        with open(f"{path}/{competition}.zip", "wb") as f:
            f.write(sample_zip.read_bytes()[:5000])
        raise network_error("storage.googleapis.com")

    install_fake_kaggle(monkeypatch, download=half_then_fail)
    with pytest.raises(kaggle_io.KaggleError, match="storage.googleapis.com failed .*check your network connection"):
        fetch_competition(DataConfig(source="kaggle"), tmp_path / "raw")
    assert [p.name for p in tmp_path.iterdir()] == []
    install_fake_kaggle(monkeypatch, download=copy_of(sample_zip))
    fetch_competition(DataConfig(source="kaggle"), tmp_path / "raw")
    with zipfile.ZipFile(sample_zip) as z:
        assert (tmp_path / "raw" / "train.7z").read_bytes() == z.read("train.7z")


def test_a_local_zip_is_read_on_every_run_and_its_record_holds_nothing_of_the_machine(sample_zip, tmp_path):
    """data.source local: a corrected download at the same data.path (params.yaml unchanged) is unpacked again; the
    settings stage's download.json, which DVC watches, holds the zip's size and mtime; the folder itself does not,
    so two machines with the same zip write the same bytes (and share DVC's run-cache for the stages after)."""
    from pipeline.download import source_identity
    from pipeline.provenance import read_record
    from pipeline.sample import write_sample_competition

    zip_path = tmp_path / "cifar-10.zip"
    shutil.copy(sample_zip, zip_path)
    data = DataConfig(source="local", path=str(zip_path))
    fetch_competition(data, tmp_path / "raw")
    first = {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()}
    identity = source_identity(data)
    os.utime(zip_path, ns=(0, 10**18))  # the same zip copied onto another machine: another mtime
    assert source_identity(data) != identity  # what DVC sees: download.json changes, download runs
    fetch_competition(data, tmp_path / "raw")
    assert {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()} == first  # and writes the same bytes
    write_sample_competition(zip_path, 50, 10, seed=3)  # Kaggle's corrected files, downloaded to the same path
    fetch_competition(data, tmp_path / "raw")
    assert (tmp_path / "raw" / "trainLabels.csv").read_text().count("\n") == 51
    record = read_record(tmp_path / "raw")
    assert record.settings == {"data.source": "local", "data.path": str(zip_path)}
    assert record.facts["files"]["trainLabels.csv"]["size"] == (tmp_path / "raw" / "trainLabels.csv").stat().st_size
