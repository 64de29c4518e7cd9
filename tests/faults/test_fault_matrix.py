"""The fault matrix: each row is a bad input or interruption a competitor meets, run through the real stage.

Every failing row asserts exit status 1, one `error: ...` line naming the problem, and that the stage's
declared output does not exist. FAULTS also generates README.md's "When something goes wrong" table
(`test_readme_table_matches_the_fault_matrix` fails if they drift apart).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import py7zr
import pytest
import torch
import yaml

from pipeline import cli
from pipeline.sample import encode_png
from stages import download, extract, folds, predict, submit, train
from tests.test_download import FakeHTTPError, install_fake_kaggle

REPO = Path(__file__).resolve().parents[2]
FAKE_KEY = "fake-kaggle-key-0123456789abcdef"


@dataclass(frozen=True)
class Fault:
    id: str
    message: str  # what the one-line error says (a part of it)
    cause: str
    fix: str


FAULTS = [
    Fault("params-unknown-key", "is not a known setting", "a typo in params.yaml", "use one of the listed keys"),
    Fault("params-wrong-type", "must be float, got '3e-4'", "PyYAML reads 3e-4 as a string", "write 3.0e-4"),
    Fault("params-unknown-model", "is not a timm model name", "a backbone name timm does not know",
          "pick a name from `timm.list_models('<pattern>')`"),
    Fault("params-one-fold", "cv:folds must be [0, 1, ..., k-1] with k >= 2", "cv.folds lists fewer than 2 folds",
          "use [0, 1, ..., k-1] with k >= 2"),
    Fault("params-folds-exceed-class", "folds but a class has only", "more folds than images of some class",
          "use fewer folds or more data"),
    Fault("params-ensemble-method", "ensemble:method must be one of", "an ensemble method that does not exist",
          "fitted, caruana, equal or best"),
    Fault("kaggle-no-credentials", "No Kaggle credentials found", "no token, env vars or kaggle.json",
          "set KAGGLE_API_TOKEN or KAGGLE_USERNAME/KAGGLE_KEY, or add ~/.kaggle/kaggle.json"),
    Fault("kaggle-401", "rejected your credentials (HTTP 401)", "a wrong or revoked token", "create a new token"),
    Fault("kaggle-403", "accept the competition's rules", "competition rules not accepted",
          "accept them on kaggle.com/competitions/cifar-10/rules"),
    Fault("kaggle-404", "did not find the competition", "wrong competition or no access", "check the competition page"),
    Fault("kaggle-network", "check your network connection", "the download broke off",
          "re-run; nothing partial is kept"),
    Fault("zip-truncated", "not a valid zip file", "a truncated or damaged cifar-10.zip", "download it again"),
    Fault("7z-truncated", "corrupt or truncated 7z archive", "a truncated or damaged train.7z/test.7z",
          "delete it, re-run the download stage"),
    Fault("7z-not-png", "is not a readable PNG", "an archive member that is not a PNG", "use Kaggle's archive"),
    Fault("7z-wrong-size", "expected 32x32", "an image that is not 32x32", "use Kaggle's archive"),
    Fault("7z-hostile-name", "is not named 'train/<id>.png'", "a member named ../x.png or similar",
          "use Kaggle's archive; nothing is ever written from member names"),
    Fault("7z-missing-id", "is missing", "ids not exactly 1..N", "use Kaggle's archive"),
    Fault("7z-duplicate-id", "appears in more than one member", "two members with one id", "use Kaggle's archive"),
    Fault("csv-unknown-label", "is not one of the ten classes", "a label outside Kaggle's ten", "fix trainLabels.csv"),
    Fault("csv-empty", "got an empty file", "an empty CSV", "download the competition files again"),
    Fault("csv-id-without-image", "have no image in train.7z", "a trainLabels.csv id with no PNG",
          "download the competition files again"),
    Fault("train-diverged", "the training loss is", "NaN/inf loss (lr too high)", "lower train.lr or the override"),
    Fault("checkpoint-other-backbone", "holds 'test_efficientnet' with 10 classes", "a checkpoint of another backbone",
          "re-run its train stage"),
    Fault("submission-missing-id", "has 1 rows,", "a row missing", "re-run `dvc repro submission`"),
    Fault("submission-extra-id", "has 3 rows,", "an extra row", "re-run `dvc repro submission`"),
    Fault("submission-wrong-order", "(sampleSubmission.csv's order)", "rows out of order",
          "re-run `dvc repro submission`"),
    Fault("submission-unknown-label", "label 'lion' is not one of", "a label outside the ten classes",
          "re-run `dvc repro submission`"),
    Fault("submission-empty-label", "label '' is not one of", "an empty label", "re-run `dvc repro submission`"),
]  # fmt: skip
BY_ID = {fault.id: fault for fault in FAULTS}


def fails(capsys, fault_id: str, main, argv: list) -> str:
    """Run a stage; assert exit 1 and one `error:` line with the fault's message; return that line."""
    with pytest.raises(SystemExit) as excinfo:
        cli.run(main, [str(a) for a in argv])
    assert excinfo.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and BY_ID[fault_id].message in lines[0], lines
    return lines[0]


def write_params(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def seven_zip(path: Path, members: list[tuple[str, bytes]]) -> None:
    path.unlink(missing_ok=True)
    with py7zr.SevenZipFile(path, "w") as archive:
        for name, data in members:
            archive.writestr(data, name)


IMAGE = encode_png(np.full((32, 32, 3), 128, np.uint8))

# --- params.yaml: rejected before any data is read or model trained ------------------------------------------


@pytest.mark.parametrize(
    ("fault_id", "text"),
    [
        ("params-unknown-key", "backbones: [a]\ncv: {folds: [0, 1], sed: 1}\n"),
        ("params-wrong-type", "backbones: [a]\ntrain: {lr: 3e-4}\n"),
        ("params-one-fold", "backbones: [a]\ncv: {folds: [0]}\n"),
        ("params-ensemble-method", "backbones: [a]\nensemble: {method: median}\n"),
    ],
)
def test_bad_params_stop_the_stage_before_it_reads_data(capsys, tmp_path, fault_id, text):
    fails(capsys, fault_id, folds.main, ["--data", tmp_path / "no-data-needed", "--out", tmp_path / "folds.csv",
                                         "--params", write_params(tmp_path, text)])  # fmt: skip
    assert not (tmp_path / "folds.csv").exists()


def test_unknown_timm_model_stops_training_before_data_is_read(capsys, tmp_path):
    params = write_params(tmp_path, "backbones: [resnet_99]\n")
    fails(capsys, "params-unknown-model", train.main, [
        "--backbone", "resnet_99", "--fold", 0, "--data", tmp_path / "absent", "--folds", tmp_path / "absent.csv",
        "--model-out", tmp_path / "m.safetensors", "--oof-out", tmp_path / "o.npz", "--metrics-out",
        tmp_path / "m.json", "--curves-out", tmp_path / "c.json", "--params", params,
    ])  # fmt: skip
    assert list(tmp_path.iterdir()) == [params]


def test_more_folds_than_a_class_has_images(capsys, tmp_path, data_dir):
    params = write_params(tmp_path, "backbones: [a]\ncv: {folds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]}\n")
    fails(capsys, "params-folds-exceed-class", folds.main, ["--data", data_dir, "--out", tmp_path / "folds.csv",
                                                            "--params", params])  # fmt: skip
    assert not (tmp_path / "folds.csv").exists()


# --- Kaggle ------------------------------------------------------------------------------------------------


def kaggle_params(tmp_path: Path) -> Path:
    return write_params(tmp_path, "backbones: [a]\ndata: {source: kaggle}\n")


@pytest.mark.parametrize(
    ("fault_id", "authenticate", "download_error"),
    [
        ("kaggle-no-credentials", lambda: sys.exit(1), None),
        ("kaggle-401", None, FakeHTTPError(401)),
        ("kaggle-403", None, FakeHTTPError(403)),
        ("kaggle-404", None, FakeHTTPError(404)),
        ("kaggle-network", None, ConnectionError("connection reset by peer")),
    ],
)
def test_kaggle_errors_are_one_actionable_line_and_never_show_the_key(
    capsys, monkeypatch, tmp_path, sample_zip, fault_id, authenticate, download_error
):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)

    def half_then_fail(competition, path):
        Path(path, f"{competition}.zip").write_bytes(sample_zip.read_bytes()[:4000])
        raise download_error

    install_fake_kaggle(monkeypatch, authenticate=authenticate, download=half_then_fail)
    out = tmp_path / "artifacts" / "raw"
    line = fails(capsys, fault_id, download.main, ["--out", out, "--params", kaggle_params(tmp_path)])
    assert FAKE_KEY not in line
    assert not out.exists() and not any(out.parent.glob("*")) if out.parent.exists() else True  # no partial file


def test_world_readable_kaggle_json_gets_a_warning(capsys, monkeypatch, tmp_path, sample_zip, caplog):
    config_dir = tmp_path / "kaggle-config"
    config_dir.mkdir()
    (config_dir / "kaggle.json").write_text(json.dumps({"username": "someone", "key": FAKE_KEY}))
    (config_dir / "kaggle.json").chmod(0o644)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))
    install_fake_kaggle(monkeypatch, download=lambda c, path: shutil.copy(sample_zip, f"{path}/{c}.zip"))
    cli.run(download.main, ["--out", str(tmp_path / "raw"), "--params", str(kaggle_params(tmp_path))])
    assert "kaggle.json is readable by other users of this machine; run `chmod 600" in caplog.text
    captured = capsys.readouterr()
    assert FAKE_KEY not in captured.out + captured.err + caplog.text
    (config_dir / "kaggle.json").chmod(stat.S_IRUSR | stat.S_IWUSR)


# --- archives and CSVs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_zip_is_refused(capsys, tmp_path, sample_zip, fraction):
    broken = tmp_path / "cifar-10.zip"
    broken.write_bytes(sample_zip.read_bytes()[: int(sample_zip.stat().st_size * fraction)])
    params = write_params(tmp_path, f"backbones: [a]\ndata: {{source: local, path: {broken}}}\n")
    fails(capsys, "zip-truncated", download.main, ["--out", tmp_path / "raw", "--params", params])
    assert not (tmp_path / "raw").exists()


def extract_fails(capsys, fault_id: str, raw_dir: Path, tmp_path: Path) -> str:
    line = fails(capsys, fault_id, extract.main, ["--raw", raw_dir, "--out", tmp_path / "data"])
    assert not list(tmp_path.glob("*data*"))
    return line


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_7z_is_refused_naming_it(capsys, tmp_path, raw_dir, fraction):
    archive = raw_dir / "test.7z"
    archive.write_bytes(archive.read_bytes()[: int(archive.stat().st_size * fraction)])
    assert str(archive) in extract_fails(capsys, "7z-truncated", raw_dir, tmp_path)


@pytest.mark.parametrize(
    ("fault_id", "members"),
    [
        ("7z-not-png", [("train/1.png", IMAGE), ("train/2.png", b"GIF89a not a png")]),
        ("7z-wrong-size", [("train/1.png", IMAGE), ("train/2.png", encode_png(np.zeros((32, 48, 3), np.uint8)))]),
        ("7z-hostile-name", [("train/1.png", IMAGE), ("train/../2.png", IMAGE)]),
        ("7z-missing-id", [("train/1.png", IMAGE), ("train/3.png", IMAGE)]),
        ("7z-duplicate-id", [("train/1.png", IMAGE), ("train/2.png", IMAGE), ("train/2.png", IMAGE)]),
    ],
)
def test_bad_archive_members_are_refused(capsys, tmp_path, raw_dir, fault_id, members):
    seven_zip(raw_dir / "train.7z", members)
    (raw_dir / "trainLabels.csv").write_text("id,label\n1,cat\n2,dog\n")
    assert "train.7z" in extract_fails(capsys, fault_id, raw_dir, tmp_path)


@pytest.mark.parametrize(
    ("fault_id", "edit"),
    [
        ("csv-unknown-label", lambda text: text.replace(",cat\n", ",lion\n", 1)),
        ("csv-empty", lambda text: ""),
        ("csv-id-without-image", lambda text: text + "99999,cat\n"),
    ],
)
def test_bad_train_labels_are_refused(capsys, tmp_path, raw_dir, fault_id, edit):
    labels = raw_dir / "trainLabels.csv"
    labels.write_text(edit(labels.read_text()))
    assert "trainLabels.csv" in extract_fails(capsys, fault_id, raw_dir, tmp_path)


def test_bom_and_crlf_csvs_are_accepted(tmp_path, raw_dir):
    for name in ("trainLabels.csv", "sampleSubmission.csv"):
        path = raw_dir / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_text().replace("\n", "\r\n").encode())
    cli.run(extract.main, ["--raw", str(raw_dir), "--out", str(tmp_path / "data")])
    assert (tmp_path / "data" / "train_labels.npy").exists()


# --- training and checkpoints ------------------------------------------------------------------------------


def fold_files(tmp_path: Path, data_dir: Path) -> Path:
    from pipeline.dataset import load_dataset
    from pipeline.folds import make_folds, write_folds

    data = load_dataset(data_dir)
    write_folds(tmp_path / "folds.csv", data.train_ids, data.train_labels, make_folds(data.train_labels, 2, 0))
    return tmp_path / "folds.csv"


def test_diverging_training_stops_naming_backbone_fold_and_epoch(capsys, tmp_path, data_dir):
    params = write_params(
        tmp_path,
        yaml.safe_dump(
            {
                "backbones": ["test_resnet"],
                "train": {
                    "epochs": 2,
                    "batch_size": 16,
                    "lr": 1.0e30,
                    "warmup_epochs": 0,
                    "image_size": 32,
                    "weights": "scratch",
                },
            }
        ),
    )
    out = tmp_path / "out"
    line = fails(capsys, "train-diverged", train.main, [
        "--backbone", "test_resnet", "--fold", 0, "--data", data_dir, "--folds", fold_files(tmp_path, data_dir),
        "--model-out", out / "fold0.safetensors", "--oof-out", out / "oof.npz", "--metrics-out", out / "m.json",
        "--curves-out", out / "c.json", "--params", params,
    ])  # fmt: skip
    assert "test_resnet fold 0 epoch 1" in line
    assert not (out / "fold0.safetensors").exists() and not (out / "oof.npz").exists()


def test_checkpoint_of_another_backbone_is_refused(capsys, tmp_path, data_dir):
    from pipeline.models import create_backbone, save_checkpoint

    models = tmp_path / "models" / "test_resnet"
    for fold in (0, 1):
        save_checkpoint(models / f"fold{fold}.safetensors", create_backbone("test_efficientnet", "scratch"),
                        "test_efficientnet", 32)  # fmt: skip
    params = write_params(tmp_path, "backbones: [test_resnet]\ncv: {folds: [0, 1]}\n")
    fails(capsys, "checkpoint-other-backbone", predict.main, [
        "--backbone", "test_resnet", "--models", models, "--data", data_dir, "--out", tmp_path / "test.npz",
        "--params", params,
    ])  # fmt: skip
    assert not (tmp_path / "test.npz").exists()


# --- submission: refused before upload ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault_id", "rows"),
    [
        ("submission-missing-id", ["1,cat"]),
        ("submission-extra-id", ["1,cat", "2,dog", "3,dog"]),
        ("submission-wrong-order", ["2,dog", "1,cat"]),
        ("submission-unknown-label", ["1,cat", "2,lion"]),
        ("submission-empty-label", ["1,cat", "2,"]),
    ],
)
def test_bad_submissions_are_refused_before_upload(capsys, monkeypatch, tmp_path, fault_id, rows):
    calls = install_fake_kaggle(monkeypatch)
    (tmp_path / "sampleSubmission.csv").write_text("id,label\n1,cat\n2,cat\n")
    (tmp_path / "submission.csv").write_text("\n".join(["id,label", *rows]) + "\n")
    (tmp_path / "ensemble.json").write_text('{"backbones": {"a": {}}, "submission": {"method": "fitted",'
                                            ' "nested_cv_accuracy": 0.9}}')  # fmt: skip
    argv = ["--file", tmp_path / "submission.csv", "--sample-submission", tmp_path / "sampleSubmission.csv",
            "--metrics", tmp_path / "ensemble.json"]  # fmt: skip
    fails(capsys, fault_id, submit.main, argv)
    assert calls == []  # never authenticated, never uploaded


# --- the README table --------------------------------------------------------------------------------------


def readme_table() -> str:
    rows = ["| message (part of the one-line `error:`) | cause | fix |", "|---|---|---|"]
    rows += [f"| `{f.message}` | {f.cause} | {f.fix} |" for f in FAULTS]
    return "\n".join(rows)


def test_readme_table_matches_the_fault_matrix():
    readme = (REPO / "README.md").read_text()
    start, end = "<!-- fault-matrix:start -->\n", "\n<!-- fault-matrix:end -->"
    assert start in readme and end in readme, "README.md lacks the fault-matrix markers"
    table = readme.split(start, 1)[1].split(end, 1)[0]
    assert table == readme_table(), "update README.md's table to:\n" + readme_table()


def test_every_fault_has_a_test():
    source = Path(__file__).read_text()
    body = source.split("BY_ID = ", 1)[1]
    untested = [f.id for f in FAULTS if f'"{f.id}"' not in body]
    assert untested == []


# --- interruptions -----------------------------------------------------------------------------------------


def test_extract_killed_mid_write_then_rerun_gives_correct_arrays_and_no_stale_temp(tmp_path):
    from pipeline.dataset import load_dataset
    from pipeline.download import unpack_competition
    from pipeline.sample import write_sample_competition

    write_sample_competition(tmp_path / "big.zip", 3000, 3000, seed=1)  # big enough to be caught mid-way
    unpack_competition(tmp_path / "big.zip", tmp_path / "raw")
    cmd = [sys.executable, "-m", "stages.extract", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "data")]
    process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".data.*.tmp/train_images.npy")) and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "data").exists() and list(tmp_path.glob(".data.*.tmp"))  # killed mid-write

    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=120)
    assert not list(tmp_path.glob(".data.*.tmp"))  # the stale temporary folder is gone, not reused
    data = load_dataset(tmp_path / "data")
    assert data.train_images.shape == (3000, 32, 32, 3) and data.test_images.shape == (3000, 32, 32, 3)
    assert data.train_images[-1].std() > 0 and data.test_images[-1].std() > 0  # filled to the last row


def test_predict_killed_mid_run_then_rerun_gives_the_uninterrupted_output(tmp_path, data_dir):
    from pipeline.models import create_backbone, save_checkpoint

    models = tmp_path / "models"
    for fold in (0, 1):
        torch.manual_seed(fold)
        save_checkpoint(
            models / f"fold{fold}.safetensors", create_backbone("test_resnet", "scratch"), "test_resnet", 96
        )
    params = write_params(tmp_path, "backbones: [test_resnet]\ncv: {folds: [0, 1]}\npredict: {batch_size: 4}\n")

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "stages.predict", "--backbone", "test_resnet", "--models", str(models),
                "--data", str(data_dir), "--out", str(out), "--params", str(params)]  # fmt: skip

    subprocess.run(cmd(tmp_path / "clean.npz"), cwd=REPO, check=True, capture_output=True, timeout=300)
    process = subprocess.Popen(cmd(tmp_path / "test.npz"), cwd=REPO, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:  # kill once its progress bar for fold 0 appears
        if "test_resnet fold0" in line:
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "test.npz").exists()
    subprocess.run(cmd(tmp_path / "test.npz"), cwd=REPO, check=True, capture_output=True, timeout=300)
    with np.load(tmp_path / "test.npz") as resumed, np.load(tmp_path / "clean.npz") as clean:
        assert np.array_equal(resumed["scores"], clean["scores"]) and np.array_equal(resumed["ids"], clean["ids"])
    assert not list(tmp_path.glob(".*.tmp"))
