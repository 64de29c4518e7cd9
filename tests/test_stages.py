"""Stages as a user runs them: `python -m stages.<name>` exit codes, one-line errors, nothing half-written."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.submission import SubmissionError
from stages import download, submit
from tests.test_download import install_fake_kaggle

REPO = Path(__file__).resolve().parents[1]


def run_stage(name: str, *args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=cwd or REPO, timeout=300,
    )  # fmt: skip


def params(tmp_path: Path, **data) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"backbones": ["test_resnet"], "data": data}))
    return path


def test_kaggle_source_without_credentials_fails_cleanly_and_writes_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE")}
    env |= {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config")}
    out = tmp_path / "artifacts" / "raw"
    result = run_stage("download", "--out", out, "--params", params(tmp_path, source="kaggle"), env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith("error: No Kaggle credentials found.") and "KAGGLE_API_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""  # kaggle's own help text is swallowed
    assert not (tmp_path / "artifacts").exists()


def test_local_source_reads_kaggles_zip(sample_zip, tmp_path):
    download.main(
        ["--out", str(tmp_path / "raw"), "--params", str(params(tmp_path, source="local", path=str(sample_zip)))]
    )
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(
        ["train.7z", "test.7z", "trainLabels.csv", "sampleSubmission.csv", "source.json"]
    )


def test_truncated_train_archive_fails_naming_it_and_writes_no_arrays(raw_dir, tmp_path):
    archive = raw_dir / "train.7z"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
    result = run_stage("extract", "--raw", raw_dir, "--out", tmp_path / "data")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {archive}")
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*data*"))


@pytest.fixture
def finished_run(tmp_path):
    sample = tmp_path / "sampleSubmission.csv"
    sample.write_text("id,label\n1,cat\n2,cat\n")
    (tmp_path / "submission.csv").write_text("id,label\n1,frog\n2,ship\n")
    metrics = {"backbones": {"a": {}, "b": {}}, "submission": {"method": "fitted", "nested_cv_accuracy": 0.91234}}
    (tmp_path / "ensemble.json").write_text(json.dumps(metrics))
    return ["--file", str(tmp_path / "submission.csv"), "--sample-submission", str(sample),
            "--metrics", str(tmp_path / "ensemble.json")]  # fmt: skip


def test_submit_dry_run_checks_everything_and_uploads_nothing(finished_run, monkeypatch, capsys):
    calls = install_fake_kaggle(monkeypatch)
    submit.main([*finished_run, "--dry-run"])
    out = capsys.readouterr().out
    assert "2 rows match" in out and "fitted softmax ensemble of a, b; nested-CV accuracy 0.9123" in out
    assert calls == []


def test_submit_uploads_with_a_message_and_lists_scores(finished_run, monkeypatch, capsys):
    calls = install_fake_kaggle(monkeypatch)
    api_class = sys.modules["kaggle.api.kaggle_api_extended"].KaggleApi
    api_class.competition_submit = lambda self, f, message, c, quiet=False: calls.append(
        ("submit", Path(f).name, message, c)
    )
    api_class.competition_submissions = lambda self, c: [type("S", (), {"public_score": "0.95", "description": "x"})()]
    submit.main(finished_run)
    assert calls[1] == (
        "submit",
        "submission.csv",
        "fitted softmax ensemble of a, b; nested-CV accuracy 0.9123",
        "cifar-10",
    )
    assert "public=0.95" in capsys.readouterr().out


def test_submit_refuses_a_submission_with_a_wrong_order(finished_run, tmp_path, monkeypatch):
    calls = install_fake_kaggle(monkeypatch)
    (tmp_path / "submission.csv").write_text("id,label\n2,ship\n1,frog\n")
    with pytest.raises(SubmissionError, match="expected id 1"):
        submit.main(finished_run)
    assert calls == []


def test_every_artifact_path_in_a_cmd_is_declared_in_its_stage():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        declared = set()
        for key in ("deps", "outs", "metrics", "plots"):
            declared |= {e if isinstance(e, str) else next(iter(e)) for e in stage.get(key, [])}
        for path in re.findall(r"artifacts/[^\s'\"]+", stage["cmd"]):
            assert any(path == d or path.startswith(d + "/") for d in declared), (name, path)
