"""The fault matrix: each row is a bad input or interruption a competitor meets, run through the real stage.

Every failing row asserts exit status 1, one `error: ...` line naming the problem, and that the stage's
declared output does not exist. FAULTS also generates README.md's "When something goes wrong" table
(`test_readme_table_matches_the_fault_matrix` fails if they drift apart).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import py7zr
import pytest
import torch
import yaml

from pipeline import cli
from pipeline.config import TrainConfig
from pipeline.dataset import load_dataset
from pipeline.features import initial_model, write_features
from pipeline.models import create_backbone, save_checkpoint
from pipeline.provenance import file_digest, read_record, record_of, write_record
from pipeline.sample import encode_png
from pipeline.scores import save_scores
from pipeline.submission import digest_tag
from stages import download, ensemble, extract, folds, predict, submit, train
from tests import artifacts
from tests.test_download import (
    DAILY_LIMIT,
    FakeHTTPError,
    SilentServer,
    install_fake_kaggle,
    network_error,
    upload_failed,
    use_fake_credentials,
)
from tests.test_submit import scored

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
    Fault("params-unknown-model", "is not a timm model name", "a `model:` timm does not know",
          "pick a name from `timm.list_models('<pattern>')`"),
    Fault("params-out-of-range", "must be > 0, got -0.0003", "a setting outside its range (a negative lr,"
          " label_smoothing 1, predict.batch_size 0, ...): every setting has one, in pipeline/config.py",
          "use a value in the range the message names"),
    Fault("params-unknown-optimizer", "which timm does not know", "a train.optimizer timm's registry lacks",
          "pick one of `timm.optim.list_optimizers()`"),
    Fault("params-one-fold", "folds must be [0, 1, ..., k-1] with k >= 2", "cv.folds lists fewer than 2 folds",
          "use [0, 1, ..., k-1] with k >= 2"),
    Fault("params-folds-exceed-class", "folds but a class has only", "more folds than images of some class",
          "use fewer folds or more data"),
    Fault("params-ensemble-method", "ensemble:method must be one of", "an ensemble method that does not exist",
          "fitted, equal, best, caruana or stacking"),
    Fault("params-hostile-name", "is not a backbone name (lower-case letters", "a backbone name with dots, quotes,"
          " spaces, / or capitals (it names folders, DVC stages and param paths)",
          "name it with [a-z0-9_] and put the timm name in `model:`"),
    Fault("kaggle-no-credentials", "No Kaggle credentials found", "no token, env vars or kaggle.json",
          "set KAGGLE_API_TOKEN or KAGGLE_USERNAME/KAGGLE_KEY, or add ~/.kaggle/kaggle.json"),
    Fault("kaggle-token-rejected", "Kaggle rejected the access token", "a revoked, expired or mistyped"
          " KAGGLE_API_TOKEN or ~/.kaggle/access_token", "create a new token at kaggle.com/settings/api"),
    Fault("kaggle-sign-in-network", "Could not reach Kaggle to sign in", "no network (or a broken HTTPS_PROXY)"
          " while kaggle checks the token", "fix the connection, re-run"),
    Fault("kaggle-token-unsendable", "contain a line break, space or other character", "a token saved with a"
          " trailing newline or space", "save the token without it"),
    Fault("kaggle-401", "rejected your credentials (HTTP 401)", "a wrong or revoked token", "create a new token"),
    Fault("kaggle-403", "accept the competition's rules", "competition rules not accepted",
          "accept them on kaggle.com/competitions/cifar-10/rules"),
    Fault("kaggle-404", "did not find the competition", "wrong competition or no access", "check the competition page"),
    Fault("kaggle-network", "check your network connection", "the download broke off",
          "re-run; nothing partial is kept"),
    Fault("kaggle-timeout", "Kaggle did not answer within", "Kaggle, or a proxy on the way, accepts the connection"
          " and never answers (3 tries for sign-in, download and listing)", "check the network or HTTPS_PROXY;"
          " `KAGGLE_TIMEOUT_SECONDS=120` on a slow link"),
    Fault("kaggle-create-unanswered", "so Kaggle may have taken it", "no answer to the request that creates the"
          " submission (never repeated: each counts against the day's 5)", "look at your submissions on Kaggle"
          " before re-running"),
    Fault("kaggle-submit-failed", "Kaggle's upload failed, so nothing was submitted", "the upload of submission.csv"
          " broke off or was refused (kaggle itself only returns a message)", "re-run `python -m stages.submit`"),
    Fault("kaggle-daily-limit", "your team has used today's submissions", "the competition's daily submission"
          " allowance is used up", "wait until 00:00 UTC (the message says how long), re-run"),
    Fault("zip-truncated", "not a valid zip file", "a truncated or damaged cifar-10.zip", "download it again"),
    Fault("zip-damaged-member", "a member's compressed data is damaged", "a cifar-10.zip whose directory is intact"
          " but whose deflate data is not (a bad disk or transfer)", "download it again"),
    Fault("zip-deflate64", "uses a compression Python cannot read", "a zip re-packed with Deflate64 (Windows"
          " Explorer does this for large files)", "re-pack it as a plain zip or download Kaggle's again"),
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
    Fault("csv-utf16", "is not UTF-8 text (UTF-16", "a CSV saved as UTF-16 (Excel's \"Unicode text\")",
          "save it as UTF-8"),
    Fault("csv-stray-quote", "a stray double quote opens a field", "an unmatched \" in a CSV (csv's \"field larger"
          " than field limit\")", "fix the line it names, or download the files again"),
    Fault("csv-id-without-image", "have no image in train.7z", "a trainLabels.csv id with no PNG",
          "download the competition files again"),
    Fault("disk-full", "bytes but only", "too little free disk for the image arrays (1.1 GB for Kaggle's)",
          "free the bytes it names (`dvc gc -w`), re-run"),
    Fault("array-wrong-shape", "expected uint8 (n, 32, 32, 3)", "an array in artifacts/data not written by extract",
          "`dvc repro -f extract`"),
    Fault("array-unreadable", "not a readable .npy array", "a truncated or foreign .npy file",
          "`dvc repro -f extract`"),
    Fault("folds-other-data", "folds.csv was made from other data", "folds.csv from another sample or competition",
          "`dvc repro folds`"),
    Fault("folds-other-cv", "but params.yaml cv.folds asks for", "folds.csv with other folds than cv.folds",
          "`dvc repro folds`"),
    Fault("folds-truncated", "images, the extracted data has", "a truncated folds.csv, or one of other data",
          "`dvc repro folds`"),
    Fault("record-settings", "but params.yaml now gives", "an artifact made with other settings than params.yaml"
          " holds now: a stage run alone (`dvc repro -s`, `python -m stages...`) after a settings change, or a"
          " `git checkout` without `dvc checkout`", "the `dvc repro <stage>` it names (or `dvc repro`)"),
    Fault("record-inputs", "than the one this stage reads now", "an artifact made from another upstream output: a"
          " stage upstream re-run since (e.g. one fold retrained, its predict not)",
          "the `dvc repro <stage>` it names"),
    Fault("record-other-stage", "whose output this stage reads there", "a file of another stage in this one's place"
          " (e.g. two folds' OOF files swapped)", "the `dvc repro <stage>` it names"),
    Fault("record-missing", "holds no record of what made it", "a file written by hand or by an older version of"
          " this pipeline", "`dvc repro -f <stage>`"),
    Fault("record-other-file", "is not the file its record", "folds.csv or submission.csv edited after its stage"
          " wrote it", "`dvc repro -f folds` or `dvc repro -f submission`"),
    Fault("scores-other-images", "it was made from other data or folds",
          "OOF logits from another split, or test logits of other images", "re-run its train or predict stage"),
    Fault("scores-non-finite", "holds non-finite scores", "NaN or inf in a logits file",
          "re-run the stage that wrote it"),
    Fault("logits-overflow", "refusing to write", "a model whose logits are NaN or beyond float16 (a broken model)",
          "re-train it with a lower train.lr"),
    Fault("features-other-weights", "made from other frozen weights", "cached features (train.cached_features)"
          " of other pretrained weights than the train stage starts from", "`dvc repro features@<name>`"),
    Fault("train-diverged", "the training loss is", "NaN/inf loss (lr too high)", "lower train.lr or the override"),
    Fault("checkpoint-other-backbone", "holds 'test_efficientnet' with 10 classes", "a checkpoint of another backbone",
          "re-run its train stage"),
    Fault("checkpoint-tensors", "its tensors do not fit", "a checkpoint of another architecture or a damaged one",
          "re-run its train stage"),
    Fault("submission-record-incomplete", "its record lacks the ensemble's method", "test probabilities from an"
          " older or hand-made run", "`dvc repro -f ensemble submission`"),
    Fault("submission-of-the-sample", "was made from the embedded sample competition", "`python -m stages.submit`"
          " after `make demo` (generated shapes, not Kaggle's images)", "`git checkout params.yaml`, `dvc repro`"),
    Fault("submission-sent-before", "went to Kaggle already", "the same submission.csv (by its digest) is among"
          " your submissions", "`--again` to spend another submission on it, `--scores` for its scores"),
    Fault("submission-missing-id", "has 1 rows,", "a row missing", "re-run `dvc repro submission`"),
    Fault("submission-extra-id", "has 3 rows,", "an extra row", "re-run `dvc repro submission`"),
    Fault("submission-wrong-order", "(sampleSubmission.csv's order)", "rows out of order",
          "re-run `dvc repro submission`"),
    Fault("submission-unknown-label", "label 'lion' is not one of", "a label outside the ten classes",
          "re-run `dvc repro submission`"),
    Fault("submission-empty-label", "label '' is not one of", "an empty label", "re-run `dvc repro submission`"),
]  # fmt: skip
BY_ID = {fault.id: fault for fault in FAULTS}
EXERCISED: set[str] = set()  # fault ids whose error was produced and checked in this session (see the last test)


def fails(capsys, fault_id: str, main, argv: list) -> str:
    """Run a stage; assert exit 1 and one `error:` line with the fault's message; return that line."""
    with pytest.raises(SystemExit) as excinfo:
        cli.run(main, [str(a) for a in argv])
    assert excinfo.value.code == 1
    captured = capsys.readouterr()
    assert FAKE_KEY not in captured.out + captured.err and "Authorization" not in captured.out + captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and BY_ID[fault_id].message in lines[0], lines
    EXERCISED.add(fault_id)
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
        ("params-unknown-key", "backbones: {a: {model: a}}\ncv: {folds: [0, 1], sed: 1}\n"),
        ("params-wrong-type", "backbones: {a: {model: a}}\ntrain: {lr: 3e-4}\n"),
        ("params-one-fold", "backbones: {a: {model: a}}\ncv: {folds: [0]}\n"),
        ("params-ensemble-method", "backbones: {a: {model: a}}\nensemble: {method: median}\n"),
        ("params-out-of-range", "backbones: {a: {model: a}}\ntrain: {lr: -3.0e-4}\n"),
    ],
)
def test_bad_params_stop_the_stage_before_it_reads_data(capsys, tmp_path, fault_id, text):
    fails(capsys, fault_id, folds.main, ["--data", tmp_path / "no-data-needed", "--out", tmp_path / "folds.csv",
                                         "--params", write_params(tmp_path, text)])  # fmt: skip
    assert not (tmp_path / "folds.csv").exists()


def test_unknown_timm_model_stops_training_before_data_is_read(capsys, tmp_path):
    params = write_params(tmp_path, "backbones: {resnet_99: {model: resnet_99}}\n")
    fails(capsys, "params-unknown-model", train.main, train_argv(tmp_path, "resnet_99", tmp_path / "absent",
                                                                 tmp_path / "absent.csv", params))  # fmt: skip
    assert list(tmp_path.iterdir()) == [params]


def test_an_optimizer_timm_does_not_know_stops_training_before_data_is_read(capsys, tmp_path):
    params = write_params(tmp_path, "backbones: {test_resnet: {model: test_resnet}}\ntrain: {optimizer: adamx}\n")
    fails(capsys, "params-unknown-optimizer", train.main, train_argv(tmp_path, "test_resnet", tmp_path / "absent",
                                                                     tmp_path / "absent.csv", params))  # fmt: skip
    assert list(tmp_path.iterdir()) == [params]


def test_a_hostile_backbone_name_stops_every_stage_before_anything_runs(capsys, tmp_path):
    hostile = "x'; touch pwned; echo '"
    params = write_params(tmp_path, yaml.safe_dump({"backbones": {hostile: {"model": "resnet18"}}}))
    fails(capsys, "params-hostile-name", folds.main, ["--data", tmp_path / "absent", "--out", tmp_path / "folds.csv",
                                                      "--params", params])  # fmt: skip
    ok = write_params(tmp_path, "backbones: {test_resnet: {model: test_resnet}}\n")
    fails(capsys, "params-hostile-name", train.main, train_argv(tmp_path, hostile, tmp_path / "absent",
                                                                tmp_path / "absent.csv", ok))  # fmt: skip
    assert list(tmp_path.iterdir()) == [ok]


def train_argv(tmp_path: Path, backbone: str, data: Path, folds_csv: Path, params: Path) -> list:
    out = tmp_path / "out"
    return ["--backbone", backbone, "--fold", 0, "--data", data, "--folds", folds_csv, "--features", out / "features",
            "--models", out, "--oof", out,
            "--live", out / "live", "--params", params]  # fmt: skip


def test_more_folds_than_a_class_has_images(capsys, tmp_path, data_dir):
    params = write_params(
        tmp_path, "backbones: {a: {model: a}}\ncv: {folds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]}\n"
    )
    fails(capsys, "params-folds-exceed-class", folds.main, ["--data", data_dir, "--out", tmp_path / "folds.csv",
                                                            "--params", params])  # fmt: skip
    assert not (tmp_path / "folds.csv").exists()


# --- Kaggle ------------------------------------------------------------------------------------------------


def kaggle_params(tmp_path: Path) -> Path:
    return write_params(tmp_path, "backbones: {a: {model: a}}\ndata: {source: kaggle}\n")


@pytest.mark.parametrize(
    ("fault_id", "authenticate", "download_error"),
    [
        ("kaggle-401", None, FakeHTTPError(401)),
        ("kaggle-403", None, FakeHTTPError(403)),
        ("kaggle-404", None, FakeHTTPError(404)),
        ("kaggle-network", None, ConnectionError("connection reset by peer")),
    ],
)
def test_kaggle_errors_are_one_actionable_line_and_never_show_the_key(
    capsys, monkeypatch, tmp_path, sample_zip, fault_id, authenticate, download_error
):
    use_fake_credentials(monkeypatch, tmp_path / "home", KAGGLE_USERNAME="someone", KAGGLE_KEY=FAKE_KEY, VERBOSE="1")

    def half_then_fail(competition, path):
        Path(path, f"{competition}.zip").write_bytes(sample_zip.read_bytes()[:4000])
        raise download_error

    install_fake_kaggle(monkeypatch, authenticate=authenticate, download=half_then_fail)
    out = tmp_path / "artifacts" / "raw"
    line = fails(capsys, fault_id, download.main, ["--out", out, "--params", kaggle_params(tmp_path)])
    assert FAKE_KEY not in line
    assert not out.exists() and [p for p in tmp_path.rglob("*") if p.is_file()] == [tmp_path / "params.yaml"]


def test_no_kaggle_credentials_at_all_say_where_to_put_them(capsys, monkeypatch, tmp_path):
    use_fake_credentials(monkeypatch, tmp_path / "home", KAGGLE_CONFIG_DIR=str(tmp_path / "none"), VERBOSE="1")
    calls = install_fake_kaggle(monkeypatch)  # no token, no username and key, no kaggle.json: kaggle exits
    out = tmp_path / "artifacts" / "raw"
    fails(capsys, "kaggle-no-credentials", download.main, ["--out", out, "--params", kaggle_params(tmp_path)])
    assert "download" not in [c[0] for c in calls if isinstance(c, tuple)] and not out.exists()


@pytest.mark.parametrize(
    ("fault_id", "authenticate", "token"),
    [
        ("kaggle-token-rejected", lambda: (_ for _ in ()).throw(FakeHTTPError(403)), FAKE_KEY),
        ("kaggle-token-rejected", lambda: (_ for _ in ()).throw(FakeHTTPError(401)), FAKE_KEY),
        ("kaggle-sign-in-network", lambda: (_ for _ in ()).throw(network_error()), FAKE_KEY),
        ("kaggle-token-unsendable", lambda: (_ for _ in ()).throw(ValueError(f"Invalid header value b'Bearer"
                                                                             f" {FAKE_KEY}\\n'")), FAKE_KEY + "\n"),
    ],
)  # fmt: skip
def test_sign_in_failures_say_which_of_the_three_it_was(capsys, monkeypatch, tmp_path, fault_id, authenticate, token):
    use_fake_credentials(monkeypatch, tmp_path / "home", KAGGLE_API_TOKEN=token, VERBOSE="1")
    calls = install_fake_kaggle(monkeypatch, authenticate=authenticate)
    out = tmp_path / "artifacts" / "raw"
    fails(capsys, fault_id, download.main, ["--out", out, "--params", kaggle_params(tmp_path)])
    tries = 3 if fault_id == "kaggle-sign-in-network" else 1  # a network error is worth retrying; a refusal is not
    assert calls == ["authenticate"] * tries and not out.exists()


@pytest.mark.parametrize(
    ("fault_id", "submit_fake"),
    [
        ("kaggle-submit-failed", upload_failed("HTTPSConnectionPool(host='storage.googleapis.com'): aborted.")),
        ("kaggle-daily-limit", lambda file_name, message, competition: (_ for _ in ()).throw(
            FakeHTTPError(400, DAILY_LIMIT))),
    ],
)  # fmt: skip
def test_a_submission_kaggle_did_not_take_is_an_error(capsys, monkeypatch, tmp_path, fault_id, submit_fake):
    use_fake_credentials(monkeypatch, tmp_path / "home", KAGGLE_USERNAME="someone", KAGGLE_KEY=FAKE_KEY, VERBOSE="1")
    calls = install_fake_kaggle(monkeypatch, submit=submit_fake)
    fails(capsys, fault_id, submit.main, artifacts.finished_run(tmp_path))
    # listed first (was this file sent before?), created once, never retried, nothing listed after
    assert [call[0] for call in calls if isinstance(call, tuple)] == ["submissions", "submit"]


def test_a_kaggle_that_never_answers_is_one_line_naming_the_call(capsys, monkeypatch, tmp_path):
    server = SilentServer()
    try:
        use_fake_credentials(monkeypatch, tmp_path / "home", KAGGLE_USERNAME="someone", KAGGLE_KEY=FAKE_KEY,
                             KAGGLE_TIMEOUT_SECONDS="1")  # fmt: skip
        calls = install_fake_kaggle(monkeypatch, never_answer={"download": server.url})
        out = tmp_path / "artifacts" / "raw"
        line = fails(capsys, "kaggle-timeout", download.main, ["--out", out, "--params", kaggle_params(tmp_path)])
        assert line.startswith("error: While downloading the cifar-10 files: Kaggle did not answer within 1 s")
        assert [c for c in calls if isinstance(c, tuple)] == [("download", "cifar-10")] * 3 and not out.exists()
        calls = install_fake_kaggle(monkeypatch, never_answer={"create": server.url})
        fails(capsys, "kaggle-create-unanswered", submit.main, artifacts.finished_run(tmp_path / "run"))
        assert [c[0] for c in calls if isinstance(c, tuple)] == ["submissions", "submit"]  # created once, at most
    finally:
        server.close()


def test_world_readable_kaggle_json_gets_a_warning(capsys, monkeypatch, tmp_path, sample_zip, caplog):
    config_dir = tmp_path / "kaggle-config"
    config_dir.mkdir()
    (config_dir / "kaggle.json").write_text(json.dumps({"username": "someone", "key": FAKE_KEY}))
    (config_dir / "kaggle.json").chmod(0o644)
    use_fake_credentials(monkeypatch, tmp_path / "home", KAGGLE_CONFIG_DIR=str(config_dir), VERBOSE="1")
    install_fake_kaggle(monkeypatch, download=lambda c, path: shutil.copy(sample_zip, f"{path}/{c}.zip"))
    cli.run(download.main, ["--out", str(tmp_path / "raw"), "--params", str(kaggle_params(tmp_path))])
    assert "kaggle.json is readable by other users of this machine; run `chmod 600" in caplog.text
    printed = "".join(capsys.readouterr()) + caplog.text
    basic = base64.b64encode(f"someone:{FAKE_KEY}".encode()).decode()
    assert FAKE_KEY not in printed and basic not in printed and "Authorization" not in printed
    (config_dir / "kaggle.json").chmod(stat.S_IRUSR | stat.S_IWUSR)


# --- archives and CSVs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_zip_is_refused(capsys, tmp_path, sample_zip, fraction):
    broken = tmp_path / "cifar-10.zip"
    broken.write_bytes(sample_zip.read_bytes()[: int(sample_zip.stat().st_size * fraction)])
    params = write_params(tmp_path, f"backbones: {{a: {{model: a}}}}\ndata: {{source: local, path: {broken}}}\n")
    fails(capsys, "zip-truncated", download.main, ["--out", tmp_path / "raw", "--params", params])
    assert not (tmp_path / "raw").exists()


def deflated_copy(sample_zip: Path, path: Path) -> Path:
    """Kaggle's four files re-packed with deflate (the sample's zip stores them)."""
    with zipfile.ZipFile(sample_zip) as src, zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    return path


def damage_a_members_data(path: Path) -> None:
    """Bytes flipped inside trainLabels.csv's deflate stream: the zip's directory and headers stay intact."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("trainLabels.csv")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 3 : start + 40] = bytes(b ^ 0xFF for b in data[start + 3 : start + 40])
    path.write_bytes(bytes(data))


def mark_deflate64(path: Path) -> None:
    """test.7z's compression method set to 9 (Deflate64) in its local and central headers, as Windows Explorer
    writes large files."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("test.7z")
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, info.header_offset + 8, 9)
    central = data.find(b"PK\x01\x02")
    while central != -1:
        name_length = struct.unpack_from("<H", data, central + 28)[0]
        if bytes(data[central + 46 : central + 46 + name_length]) == b"test.7z":
            struct.pack_into("<H", data, central + 10, 9)
        central = data.find(b"PK\x01\x02", central + 4)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("fault_id", "damage"), [("zip-damaged-member", damage_a_members_data),
                                                  ("zip-deflate64", mark_deflate64)])  # fmt: skip
def test_a_zip_python_cannot_unpack_is_one_line(capsys, tmp_path, sample_zip, fault_id, damage):
    broken = deflated_copy(sample_zip, tmp_path / "cifar-10.zip")
    damage(broken)
    params = write_params(tmp_path, f"backbones: {{a: {{model: a}}}}\ndata: {{source: local, path: {broken}}}\n")
    fails(capsys, fault_id, download.main, ["--out", tmp_path / "raw", "--params", params])
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
        ("csv-utf16", lambda text: text.encode("utf-16")),
        ("csv-stray-quote", lambda text: text.replace(",cat\n", ',"cat\n', 1)),
    ],
)
def test_bad_train_labels_are_refused(capsys, tmp_path, raw_dir, fault_id, edit):
    labels = raw_dir / "trainLabels.csv"
    edited = edit(labels.read_text())
    labels.write_bytes(edited if isinstance(edited, bytes) else edited.encode())
    assert "trainLabels.csv" in extract_fails(capsys, fault_id, raw_dir, tmp_path)


def test_bom_and_crlf_csvs_give_the_same_arrays(tmp_path, raw_dir, data_dir):
    for name in ("trainLabels.csv", "sampleSubmission.csv"):
        path = raw_dir / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_text().replace("\n", "\r\n").encode())
    cli.run(extract.main, ["--raw", str(raw_dir), "--out", str(tmp_path / "data")])
    for name in ("train_images.npy", "train_labels.npy", "test_images.npy"):
        assert np.array_equal(np.load(tmp_path / "data" / name), np.load(data_dir / name)), name


# --- training and checkpoints ------------------------------------------------------------------------------

RESNET = {"backbones": {"test_resnet": {"model": "test_resnet"}}, "cv": {"folds": [0, 1]},
          "train": {"image_size": 32, "weights": "scratch", "warmup_epochs": 0}}  # fmt: skip


def upstream(tmp_path: Path, data_dir: Path, params: dict = RESNET, backbone: str = "test_resnet"):
    """params.yaml, folds.csv and a features folder (not cached) as their stages write them."""
    path, cfg = artifacts.params_file(tmp_path, params)
    data = load_dataset(data_dir)
    fold_of_image, made_folds = artifacts.folds_csv(tmp_path / "folds.csv", data, cfg)
    made_features = artifacts.features_not_cached(tmp_path / "features", backbone, data, cfg)
    return path, cfg, data, fold_of_image, made_folds, made_features


def test_diverging_training_stops_naming_backbone_fold_and_epoch(capsys, tmp_path, data_dir):
    diverging = {**RESNET, "train": {**RESNET["train"], "epochs": 2, "batch_size": 16, "lr": 1.0e30}}
    params = upstream(tmp_path, data_dir, diverging)[0]
    argv = train_argv(tmp_path, "test_resnet", data_dir, tmp_path / "folds.csv", params)
    argv[argv.index("--features") + 1] = tmp_path / "features"
    line = fails(capsys, "train-diverged", train.main, argv)
    assert "test_resnet fold 0 epoch 1" in line
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def checkpoints(tmp_path: Path, data_dir: Path, make_model, params: dict = RESNET) -> Path:
    """Both folds' checkpoints of what `make_model()` returns, with the records train stages would write."""
    path, cfg, data, _, made_folds, made_features = upstream(tmp_path, data_dir, params)
    for fold in (0, 1):
        model, name = make_model()
        artifacts.checkpoint(tmp_path / "models" / "test_resnet" / f"fold{fold}.safetensors", model, name, cfg,
                             "test_resnet", fold, data=data, folds=made_folds, features=made_features)  # fmt: skip
    return path


def predict_fails(capsys, fault_id: str, tmp_path: Path, data_dir: Path, params: Path) -> str:
    line = fails(capsys, fault_id, predict.main, ["--backbone", "test_resnet", "--models", tmp_path / "models",
                                                   "--data", data_dir, "--features", tmp_path / "features",
                                                   "--out", tmp_path / "test_logits", "--params", params])  # fmt: skip
    assert not (tmp_path / "test_logits").exists() or list((tmp_path / "test_logits").iterdir()) == []
    return line


def test_checkpoint_of_another_backbone_is_refused(capsys, tmp_path, data_dir):
    params = checkpoints(tmp_path, data_dir, lambda: (create_backbone("test_efficientnet", "scratch"),
                                                      "test_efficientnet"))  # fmt: skip
    predict_fails(capsys, "checkpoint-other-backbone", tmp_path, data_dir, params)


def test_checkpoint_whose_tensors_do_not_fit_is_refused(capsys, tmp_path, data_dir):
    # resnet weights labelled test_resnet... but built with another depth
    params = checkpoints(tmp_path, data_dir, lambda: (create_backbone("resnet10t", "scratch"), "test_resnet"))
    predict_fails(capsys, "checkpoint-tensors", tmp_path, data_dir, params)


def test_logits_beyond_float16_are_not_written_as_inf(capsys, tmp_path, data_dir):
    def broken():
        model = create_backbone("test_resnet", "scratch")
        with torch.no_grad():
            model.get_classifier().weight.mul_(1.0e7)  # logits far beyond float16's 65,504
        return model, "test_resnet"

    line = predict_fails(capsys, "logits-overflow", tmp_path, data_dir, checkpoints(tmp_path, data_dir, broken))
    assert "test_resnet.npz" in line and "float16" in line


def test_predict_refuses_models_trained_with_other_settings_or_without_a_record(capsys, tmp_path, data_dir):
    params = checkpoints(tmp_path, data_dir, lambda: (create_backbone("test_resnet", "scratch"), "test_resnet"))
    text = params.read_text()
    params.write_text(text + "tta: {hflip: false}\n")  # trained with the default, hflip true
    line = predict_fails(capsys, "record-settings", tmp_path, data_dir, params)  # e.g. `dvc repro -s predict@...`
    assert "fold0.safetensors: made with tta.hflip=true, but params.yaml now gives tta.hflip=false" in line
    assert "run `dvc repro train@test_resnet-0`" in line
    params.write_text(text)
    fold1 = tmp_path / "models" / "test_resnet" / "fold1.safetensors"
    save_checkpoint(fold1, create_backbone("test_resnet", "scratch"), "test_resnet", 32)  # no record
    assert "fold1.safetensors" in predict_fails(capsys, "record-missing", tmp_path, data_dir, params)


# --- artifacts passed between stages: each reader checks what it reads --------------------------------------


def test_extract_refuses_to_start_without_the_disk_space_it_needs(capsys, monkeypatch, tmp_path, raw_dir):
    from collections import namedtuple

    monkeypatch.setattr(shutil, "disk_usage", lambda path: namedtuple("usage", "total used free")(10**9, 10**9, 1000))
    line = extract_fails(capsys, "disk-full", raw_dir, tmp_path)
    assert "only 1,000 are free" in line


@pytest.mark.parametrize(
    ("fault_id", "damage"),
    [
        ("array-wrong-shape", lambda path: np.save(path, np.load(path)[:, :, :, 0])),
        ("array-wrong-shape", lambda path: np.save(path, np.load(path).astype(np.float32))),
        ("array-unreadable", lambda path: path.write_bytes(path.read_bytes()[:100])),
    ],
)
def test_damaged_image_arrays_are_refused_by_the_next_stage(capsys, tmp_path, data_dir, fault_id, damage):
    data = Path(shutil.copytree(data_dir, tmp_path / "data"))
    damage(data / "train_images.npy")
    params = write_params(tmp_path, "backbones: {a: {model: a}}\ncv: {folds: [0, 1]}\n")
    line = fails(capsys, fault_id, folds.main, ["--data", data, "--out", tmp_path / "folds.csv", "--params", params])
    assert str(data / "train_images.npy") in line and not (tmp_path / "folds.csv").exists()


ENSEMBLE = {"backbones": {"a": {"model": "a"}, "b": {"model": "b"}}, "cv": {"folds": [0, 1]}}


def ensemble_inputs(tmp_path: Path, data_dir: Path) -> tuple[list, Path]:
    """What the folds, train and predict stages hand to the ensemble stage, records included, for 2 folds and two
    backbones of random logits."""
    path, cfg = artifacts.params_file(tmp_path, ENSEMBLE)
    data = load_dataset(data_dir)
    fold_of_image, made_folds = artifacts.folds_csv(tmp_path / "folds.csv", data, cfg)
    rng = np.random.default_rng(0)
    for bb in ENSEMBLE["backbones"]:
        made_features = artifacts.features_not_cached(tmp_path / "features", bb, data, cfg)
        models = []
        for fold in (0, 1):
            ids = np.flatnonzero(fold_of_image == fold) + 1
            models.append(artifacts.oof_logits(tmp_path / "oof" / bb / f"fold{fold}.npz", ids,
                                               rng.normal(size=(len(ids), 10)), cfg, bb, fold, data=data,
                                               folds=made_folds, features=made_features))  # fmt: skip
        artifacts.test_logits(tmp_path / "test_logits" / f"{bb}.npz", rng.normal(size=(len(data.test_ids), 10)), cfg,
                              bb, data=data, features=made_features, models=models)  # fmt: skip
    out = tmp_path / "out"
    argv = ["--data", data_dir, "--folds", tmp_path / "folds.csv", "--oof", tmp_path / "oof", "--test-logits",
            tmp_path / "test_logits", "--weights-out", out / "weights.json", "--probs-out", out / "probs.npz",
            "--metrics-out", out / "ensemble.json", "--report-out", out / "report", "--params", path]  # fmt: skip
    return argv, tmp_path / "folds.csv"


def test_ensemble_inputs_as_the_stages_write_them_are_accepted(tmp_path, data_dir):
    argv, _ = ensemble_inputs(tmp_path, data_dir)
    cli.run(ensemble.main, [str(a) for a in argv])
    assert json.loads((tmp_path / "out" / "ensemble.json").read_text())["backbones"].keys() == {"a", "b"}
    record = read_record(tmp_path / "out" / "probs.npz")
    assert record.stage == "ensemble" and len(record.inputs["oof"]) == 4 and len(record.inputs["test_logits"]) == 2
    assert read_record(tmp_path / "out" / "weights.json") == record


def swap_oof_folds(tmp_path: Path, folds_csv: Path) -> None:
    """fold0.npz <-> fold1.npz of backbone b: every id still covered once, each file in the wrong fold."""
    a, b = tmp_path / "oof" / "b" / "fold0.npz", tmp_path / "oof" / "b" / "fold1.npz"
    a.rename(tmp_path / "swap.npz")
    b.rename(a)
    (tmp_path / "swap.npz").rename(b)


def retrain_one_fold(tmp_path: Path, folds_csv: Path) -> None:
    """b's fold 1 trained again (its OOF logits and record change), b's predict not re-run since."""
    from pipeline.scores import load_scores

    path = tmp_path / "oof" / "b" / "fold1.npz"
    ids, logits = load_scores(path)
    record = read_record(path)
    save_scores(path, ids, logits + 1.0, record=dataclasses.replace(record, facts={"retrained": True}))


def other_recipe(tmp_path: Path, folds_csv: Path) -> None:
    """params.yaml changed since the folds were trained (e.g. `dvc repro -s -f ensemble` after a train.* change)."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**ENSEMBLE, "train": {"lr": 0.5}}))


def drop_a_test_row(tmp_path: Path, folds_csv: Path) -> None:
    from pipeline.scores import load_scores

    path = tmp_path / "test_logits" / "b.npz"
    ids, logits = load_scores(path)
    save_scores(path, ids[1:], logits[1:], record=read_record(path))


def nan_in_oof(tmp_path: Path, folds_csv: Path) -> None:
    path = tmp_path / "oof" / "a" / "fold1.npz"
    with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays["scores"] = arrays["scores"].copy()
    arrays["scores"][3, 4] = np.nan
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def relabel_folds_csv(tmp_path: Path, folds_csv: Path) -> None:
    lines = folds_csv.read_text().splitlines()
    image_id, label, fold = lines[5].split(",")
    lines[5] = ",".join([image_id, "truck" if label != "truck" else "ship", fold])
    folds_csv.write_text("\n".join(lines) + "\n")


def three_folds_csv(tmp_path: Path, folds_csv: Path) -> None:
    lines = folds_csv.read_text().splitlines()
    folds_csv.write_text("\n".join([lines[0], *(line[:-1] + str(i % 3) for i, line in enumerate(lines[1:]))]) + "\n")


def truncate_folds_csv(tmp_path: Path, folds_csv: Path) -> None:
    text = folds_csv.read_text()
    folds_csv.write_text(text[: len(text) // 2].rsplit("\n", 1)[0] + "\n")  # cut at a line: a killed copy


def swap_two_images_folds(tmp_path: Path, folds_csv: Path) -> None:
    """Two images of one class trade folds: every check of folds.csv itself passes, its record does not."""
    rows = folds_csv.read_text().splitlines()
    body = [row.split(",") for row in rows[1:]]
    first = next(i for i, r in enumerate(body) if r[2] == "0")
    other = next(i for i, r in enumerate(body) if r[1] == body[first][1] and r[2] == "1")
    body[first][2], body[other][2] = "1", "0"
    folds_csv.write_text("\n".join([rows[0], *(",".join(r) for r in body)]) + "\n")


def oof_without_record(tmp_path: Path, folds_csv: Path) -> None:
    path = tmp_path / "oof" / "a" / "fold0.npz"
    with np.load(path) as npz:
        ids, logits = npz["ids"], npz["scores"]
    save_scores(path, ids, logits)  # what an older version of the pipeline wrote: no record


@pytest.mark.parametrize(
    ("fault_id", "damage"),
    [
        ("record-other-stage", swap_oof_folds),
        ("scores-other-images", drop_a_test_row),
        ("record-inputs", retrain_one_fold),
        ("record-settings", other_recipe),
        ("record-missing", oof_without_record),
        ("scores-non-finite", nan_in_oof),
        ("folds-other-data", relabel_folds_csv),
        ("folds-other-cv", three_folds_csv),
        ("folds-truncated", truncate_folds_csv),
        ("record-other-file", swap_two_images_folds),
    ],
)
def test_the_ensemble_stage_refuses_inputs_that_do_not_fit_together(capsys, tmp_path, data_dir, fault_id, damage):
    argv, folds_csv = ensemble_inputs(tmp_path, data_dir)
    damage(tmp_path, folds_csv)
    fails(capsys, fault_id, ensemble.main, argv)
    assert not (tmp_path / "out").exists() or [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_training_refuses_folds_csv_of_other_data(capsys, tmp_path, data_dir):
    params = upstream(tmp_path, data_dir)[0]
    relabel_folds_csv(tmp_path, tmp_path / "folds.csv")
    argv = train_argv(tmp_path, "test_resnet", data_dir, tmp_path / "folds.csv", params)
    argv[argv.index("--features") + 1] = tmp_path / "features"
    fails(capsys, "folds-other-data", train.main, argv)
    assert not (tmp_path / "out").exists()


def test_training_refuses_folds_of_another_cv_seed(capsys, tmp_path, data_dir):
    params = upstream(tmp_path, data_dir)[0]
    params.write_text(yaml.safe_dump({**RESNET, "cv": {"folds": [0, 1], "seed": 7}}))  # folds.csv: seed 42
    argv = train_argv(tmp_path, "test_resnet", data_dir, tmp_path / "folds.csv", params)
    argv[argv.index("--features") + 1] = tmp_path / "features"
    line = fails(capsys, "record-settings", train.main, argv)
    assert "folds.csv: made with cv.seed=42, but params.yaml now gives cv.seed=7; run `dvc repro folds`" in line


def test_training_refuses_features_made_from_other_frozen_weights(capsys, tmp_path, data_dir):
    cached = {"backbones": {"tiny": {"model": "test_efficientnet"}}, "cv": {"folds": [0, 1]},
              "train": {"weights": "scratch", "image_size": 32, "freeze_blocks": 2, "cached_features": True,
                        "warmup_epochs": 0}}  # fmt: skip
    params, cfg = artifacts.params_file(tmp_path, cached)
    data = load_dataset(data_dir)
    artifacts.folds_csv(tmp_path / "folds.csv", data, cfg)
    model = initial_model("test_efficientnet", TrainConfig(weights="scratch", seed=1))  # not the seed it trains from
    write_features(tmp_path / "features" / "tiny", model, 2, 32, data.train_images, data.test_images, batch_size=256,
                   device=torch.device("cpu"), record=record_of(cfg, "features@tiny", data=data.made))  # fmt: skip
    argv = train_argv(tmp_path, "tiny", data_dir, tmp_path / "folds.csv", params)
    argv[argv.index("--features") + 1] = tmp_path / "features"
    fails(capsys, "features-other-weights", train.main, argv)
    assert not (tmp_path / "out").exists()


# --- submission: refused before upload ---------------------------------------------------------------------


def edit_submission(argv: list, rows: list[str]) -> list:
    Path(argv[1]).write_text("\n".join(["id,label", *rows]) + "\n")
    return argv


@pytest.mark.parametrize(
    ("fault_id", "rows"),
    [
        ("submission-missing-id", ["1,cat"]),
        ("submission-extra-id", ["1,cat", "2,dog", "3,dog"]),
        ("submission-wrong-order", ["2,dog", "1,cat"]),
        ("submission-unknown-label", ["1,cat", "2,lion"]),
        ("submission-empty-label", ["1,cat", "2,"]),
        ("record-other-file", ["1,cat", "2,dog"]),  # a valid file, but not the one the submission stage wrote
    ],
)
def test_bad_submissions_are_refused_before_upload(capsys, monkeypatch, tmp_path, fault_id, rows):
    calls = install_fake_kaggle(monkeypatch)
    fails(capsys, fault_id, submit.main, edit_submission(artifacts.finished_run(tmp_path), rows))
    assert calls == []  # never authenticated, never uploaded


def test_a_submission_of_the_offline_sample_is_never_sent(capsys, monkeypatch, tmp_path):
    calls = install_fake_kaggle(monkeypatch)
    argv = artifacts.finished_run(tmp_path, data_source="sample")
    fails(capsys, "submission-of-the-sample", submit.main, argv)
    fails(capsys, "submission-of-the-sample", submit.main, [*argv, "--dry-run"])  # a dry run says so too
    assert calls == []


def test_a_submission_sent_before_is_not_sent_again(capsys, monkeypatch, tmp_path):
    use_fake_credentials(monkeypatch, tmp_path / "home", KAGGLE_USERNAME="someone", KAGGLE_KEY=FAKE_KEY)
    argv = artifacts.finished_run(tmp_path)
    earlier = scored(f"fitted softmax ensemble of a, b {digest_tag(file_digest(Path(argv[1])))}")
    calls = install_fake_kaggle(monkeypatch, submissions=[earlier])
    fails(capsys, "submission-sent-before", submit.main, argv)
    assert "submit" not in [c[0] for c in calls if isinstance(c, tuple)]  # a day's submission not spent


def test_a_submission_whose_record_lacks_the_ensemble_is_refused_before_upload(capsys, monkeypatch, tmp_path):
    calls = install_fake_kaggle(monkeypatch)
    argv = artifacts.finished_run(tmp_path)
    path = Path(argv[1])
    record = read_record(path)
    write_record(path, dataclasses.replace(record, facts={k: v for k, v in record.facts.items() if k != "method"}))
    fails(capsys, "submission-record-incomplete", submit.main, argv)
    assert calls == []


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


def test_download_killed_mid_write_leaves_a_temp_folder_that_the_next_run_removes(tmp_path):
    data = {"source": "sample", "sample": {"n_train": 3000, "n_test": 3000, "seed": 0}}
    params = write_params(tmp_path, yaml.safe_dump({"backbones": {"a": {"model": "a"}}, "data": data}))
    out = tmp_path / "artifacts" / "raw"
    cmd = [sys.executable, "-m", "stages.download", "--out", str(out), "--params", str(params)]
    process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(out.parent.glob(".sample-*")) and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert list(out.parent.glob(".sample-*")) and not out.exists()  # killed mid-write
    (out.parent / ".download-left-by-a-killed-kaggle-download").mkdir()

    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in out.parent.iterdir()) == ["raw"]  # every temporary folder is gone
    assert (out / "trainLabels.csv").read_text().count("\n") == 3001


# --- last: every row of the table was produced and checked by a test above -----------------------------------


def test_every_fault_row_was_produced_by_a_test(request):
    """Runs last (pytest keeps file order): `fails()` records each fault id it saw in the stage's real output."""
    selected = [item for item in request.session.items if item.module is request.module and item is not request.node]
    if len(selected) < len(request.node.parent.collect()) - 1:
        pytest.fail("run the whole fault matrix file to check its table (a -k or node selection hides rows)")
    assert sorted(set(BY_ID) - EXERCISED) == []
