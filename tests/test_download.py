"""The download stage against local copies and a fake kaggle API at its boundary."""

import shutil
import sys
import types
import zipfile

import pytest

from pipeline import kaggle_io
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


class FakeResponse:
    def __init__(self, status_code):
        self.status_code = status_code


class FakeHTTPError(Exception):
    def __init__(self, status_code):
        super().__init__(f"{status_code} Client Error for url https://www.kaggle.com/api/v1/...")
        self.response = FakeResponse(status_code)


def install_fake_kaggle(monkeypatch, *, authenticate=None, download=None):
    """Replace `kaggle.api.kaggle_api_extended.KaggleApi` with a fake; returns the list of calls."""
    calls = []

    class KaggleApi:
        def authenticate(self):
            calls.append("authenticate")
            print("kaggle says hello on stdout")
            if authenticate:
                authenticate()

        def competition_download_files(self, competition, path=None, quiet=True):
            calls.append(("download", competition))
            download(competition, path)

    module = types.ModuleType("kaggle.api.kaggle_api_extended")
    module.KaggleApi = KaggleApi
    for name in ("kaggle", "kaggle.api"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", module)
    return calls


def test_kaggle_download_success(monkeypatch, sample_zip, tmp_path, capsys):
    calls = install_fake_kaggle(monkeypatch, download=lambda c, path: shutil.copy(sample_zip, f"{path}/{c}.zip"))
    fetch_competition(DataConfig(source="kaggle"), tmp_path / "raw")
    assert calls == ["authenticate", ("download", "cifar-10")]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted([*FILES, "source.json"])
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # the temporary download folder is gone
    assert "hello" not in capsys.readouterr().out  # the kaggle package's chatter is swallowed


def test_a_rerun_with_intact_files_does_nothing_and_a_damaged_folder_is_fetched_again(
    monkeypatch, sample_zip, tmp_path
):
    calls = install_fake_kaggle(monkeypatch, download=lambda c, path: shutil.copy(sample_zip, f"{path}/{c}.zip"))
    fetch_competition(DataConfig(source="kaggle"), tmp_path / "raw")
    fetch_competition(DataConfig(source="kaggle"), tmp_path / "raw")
    assert calls == ["authenticate", ("download", "cifar-10")]  # the second run asked Kaggle nothing
    (tmp_path / "raw" / "test.7z").write_bytes(b"")
    fetch_competition(DataConfig(source="kaggle"), tmp_path / "raw")
    assert len(calls) == 4 and (tmp_path / "raw" / "test.7z").stat().st_size > 0


def test_another_source_replaces_the_folder(sample_zip, tmp_path):
    fetch_competition(DataConfig(source="local", path=str(sample_zip)), tmp_path / "raw")
    fetch_competition(DataConfig(source="sample", sample=SampleConfig(n_train=30, n_test=10)), tmp_path / "raw")
    assert (tmp_path / "raw" / "trainLabels.csv").read_text().count("\n") == 31


def test_kaggle_without_credentials_says_how_to_provide_them(monkeypatch, tmp_path):
    install_fake_kaggle(monkeypatch, authenticate=lambda: sys.exit(1))
    with pytest.raises(kaggle_io.KaggleError, match="No Kaggle credentials found.*KAGGLE_API_TOKEN.*kaggle.json"):
        fetch_competition(DataConfig(source="kaggle"), tmp_path / "artifacts" / "raw")
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "rejected your credentials"),
        (403, "accept the competition's rules at https://www.kaggle.com/competitions/cifar-10/rules"),
        (404, "did not find the competition"),
    ],
)
def test_kaggle_http_errors_become_one_actionable_message(monkeypatch, tmp_path, status, message):
    def refuse(competition, path):
        raise FakeHTTPError(status)

    install_fake_kaggle(monkeypatch, download=refuse)
    with pytest.raises(kaggle_io.KaggleError, match=message):
        fetch_competition(DataConfig(source="kaggle"), tmp_path / "raw")
    assert [p.name for p in tmp_path.iterdir()] == []


def test_interrupted_kaggle_download_leaves_nothing_behind_and_a_rerun_succeeds(monkeypatch, sample_zip, tmp_path):
    def half_then_fail(competition, path):
        with open(f"{path}/{competition}.zip", "wb") as f:
            f.write(sample_zip.read_bytes()[:5000])
        raise ConnectionError("connection reset")

    install_fake_kaggle(monkeypatch, download=half_then_fail)
    with pytest.raises(kaggle_io.KaggleError, match="check your network connection"):
        fetch_competition(DataConfig(source="kaggle"), tmp_path / "raw")
    assert [p.name for p in tmp_path.iterdir()] == []
    install_fake_kaggle(monkeypatch, download=lambda c, path: shutil.copy(sample_zip, f"{path}/{c}.zip"))
    fetch_competition(DataConfig(source="kaggle"), tmp_path / "raw")
    with zipfile.ZipFile(sample_zip) as z:
        assert (tmp_path / "raw" / "train.7z").read_bytes() == z.read("train.7z")
