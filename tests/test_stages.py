"""Stages as a user runs them: `python -m stages.<name>` exit codes, one-line errors, nothing half-written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.errors import PipelineError
from stages import download

REPO = Path(__file__).resolve().parents[1]


def run_stage(name: str, *args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=cwd or REPO, timeout=300,
    )  # fmt: skip


def params(tmp_path: Path, **data) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"backbones": {"test_resnet": {"model": "test_resnet"}}, "data": data}))
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
        ["train.7z", "test.7z", "trainLabels.csv", "sampleSubmission.csv", "provenance.json"]
    )


def test_truncated_train_archive_fails_naming_it_and_writes_no_arrays(raw_dir, tmp_path):
    archive = raw_dir / "train.7z"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
    result = run_stage("extract", "--raw", raw_dir, "--out", tmp_path / "data")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {archive}")
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*data*"))


def test_a_stage_run_with_pipeline_timings_appends_its_label_and_seconds(tmp_path):
    from pipeline.cli import stage_label

    timings = tmp_path / "logs" / "timings.jsonl"
    env = {**os.environ, "PIPELINE_TIMINGS": str(timings)}
    data = {"source": "sample", "sample": {"n_train": 40, "n_test": 10, "seed": 0}}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"backbones": {"a": {"model": "a"}}, "data": data, "cv": {"folds": [0, 1]}}))
    for _ in range(2):
        subprocess.run([sys.executable, "-m", "stages.download", "--out", str(tmp_path / "raw"), "--params",
                        str(params)], cwd=REPO, env=env, check=True, capture_output=True)  # fmt: skip
    rows = [json.loads(line) for line in timings.read_text().splitlines()]
    assert [row["stage"] for row in rows] == ["download", "download"]
    # the first run wrote the sample competition, the second found it there and did nothing
    assert rows[0]["seconds"] > rows[1]["seconds"]
    assert all(50 < row["peak_rss_mb"] < 4000 for row in rows)  # a Python process with numpy: tens of MB at least
    assert (
        stage_label(["/x/stages/train.py", "--backbone", "lite0", "--fold", "2", "--data", "d"]) == "train lite0 fold 2"
    )
    assert stage_label(["/x/stages/predict.py", "--backbone", "lite0"]) == "predict lite0"


def test_the_summary_adds_up_folds_and_reports_oof_accuracy_and_the_submission(tmp_path, monkeypatch):
    from stages.summary import summary_lines

    timings = tmp_path / "t.jsonl"
    timings.write_text("".join(json.dumps(row) + "\n" for row in [
        {"stage": "extract", "seconds": 4.0, "peak_rss_mb": 700}, {"stage": "train lite0 fold 0", "seconds": 30.0,
        "peak_rss_mb": 2048}, {"stage": "train lite0 fold 1", "seconds": 32.5, "peak_rss_mb": 3072},
        {"stage": "predict lite0", "seconds": 5.0, "peak_rss_mb": 1200},
    ]))  # fmt: skip
    metrics = tmp_path / "ensemble.json"
    metrics.write_text(json.dumps({
        "backbones": {"lite0": {"accuracy": 0.8123}, "lite1": {"accuracy": 0.8}},
        "cv_accuracy": 0.849, "submitted": "fitted",
        "methods": {"fitted": {"accuracy": 0.85, "nested_cv_accuracy": 0.849}},
    }))  # fmt: skip
    submission = tmp_path / "submission.csv"
    submission.write_text("id,label\n1,cat\n2,dog\n")
    monkeypatch.setattr("stages.summary.describe_host", lambda: "host: X")
    lines = summary_lines(timings, metrics, submission, since=None)
    assert lines[2:] == [
        "host: X",
        "wall time per stage (its own work; DVC adds a few s each) and its peak resident memory:",
        "  extract                                  4 s    0.7 GB",
        "  train lite0 (2 folds)                   62 s    3.0 GB",
        "  predict lite0                            5 s    1.2 GB",
        "OOF accuracy (held-out folds):",
        "  lite0                              0.8123",
        "  lite1                              0.8000",
        "  ensemble (fitted)                  0.8500   nested-CV estimate 0.8490",
        f"submission: {submission} (2 rows); send it with `python -m stages.submit`",
    ]
    with pytest.raises(PipelineError, match="cannot summarise the run"):
        summary_lines(tmp_path / "absent.jsonl", metrics, submission, since=None)
