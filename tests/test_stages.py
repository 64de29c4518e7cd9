"""Stages as a user runs them: `python -m stages.<name>` exit codes, one-line errors, nothing half-written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kagglesdk.competitions.types.competition_api_service import ApiSubmission
from kagglesdk.competitions.types.submission_status import SubmissionStatus

from pipeline import cli
from pipeline.errors import PipelineError
from pipeline.submission import SubmissionError
from stages import download, submit
from tests.test_download import DAILY_LIMIT, http_error, install_fake_kaggle, upload_failed, use_fake_credentials

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


def test_submit_uploads_with_a_message_and_lists_scores(finished_run, monkeypatch, tmp_path, capsys):
    use_fake_credentials(monkeypatch, tmp_path / "home")
    scored = ApiSubmission()
    scored.public_score, scored.description, scored.status = "0.95", "x", SubmissionStatus.COMPLETE
    calls = install_fake_kaggle(monkeypatch, submissions=[scored])
    submit.main(finished_run)
    assert calls[1] == (
        "submit",
        "submission.csv",
        "fitted softmax ensemble of a, b; nested-CV accuracy 0.9123",
        "cifar-10",
    )
    out = capsys.readouterr().out
    assert "; Kaggle says: Successfully submitted to CIFAR-10" in out and "COMPLETE  public=0.95  x" in out


def refuse_daily(file_name, message, competition):
    raise http_error(400, DAILY_LIMIT)


@pytest.mark.parametrize(
    ("kaggle_submit", "error"),
    [
        (upload_failed("Connection aborted."), "Kaggle's upload failed, so nothing was submitted (kaggle: Connection"
                                               " aborted.)"),
        (refuse_daily, "Kaggle refused it because your team has used today's submissions"),
    ],
    ids=["upload-failed", "daily-limit"],
)  # fmt: skip
def test_a_submission_kaggle_did_not_take_exits_1_and_never_says_submitted(
    finished_run, monkeypatch, tmp_path, capsys, kaggle_submit, error
):
    use_fake_credentials(monkeypatch, tmp_path / "home")
    calls = install_fake_kaggle(monkeypatch, submit=kaggle_submit)
    with pytest.raises(SystemExit) as excinfo:
        cli.run(submit.main, finished_run)
    captured = capsys.readouterr()
    assert excinfo.value.code == 1
    assert captured.err.startswith(f"error: While submitting {finished_run[1]}: {error}")
    assert captured.err.count("\n") == 1  # one line
    assert "submitted" not in captured.out and ("submissions", "cifar-10") not in calls


def test_submit_refuses_a_submission_with_a_wrong_order(finished_run, tmp_path, monkeypatch):
    calls = install_fake_kaggle(monkeypatch)
    (tmp_path / "submission.csv").write_text("id,label\n2,ship\n1,frog\n")
    with pytest.raises(SubmissionError, match="expected id 1"):
        submit.main(finished_run)
    assert calls == []


def test_a_stage_run_with_pipeline_timings_appends_its_label_and_seconds(tmp_path):
    from pipeline.cli import stage_label

    timings = tmp_path / "logs" / "timings.jsonl"
    env = {**os.environ, "PIPELINE_TIMINGS": str(timings)}
    data = {"source": "sample", "sample": {"n_train": 40, "n_test": 10, "seed": 0}}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"backbones": {"a": {"model": "a"}}, "data": data}))
    for _ in range(2):
        subprocess.run([sys.executable, "-m", "stages.download", "--out", str(tmp_path / "raw"), "--params",
                        str(params)], cwd=REPO, env=env, check=True, capture_output=True)  # fmt: skip
    rows = [json.loads(line) for line in timings.read_text().splitlines()]
    assert [row["stage"] for row in rows] == ["download", "download"] and all(row["seconds"] >= 0 for row in rows)
    assert (
        stage_label(["/x/stages/train.py", "--backbone", "lite0", "--fold", "2", "--data", "d"]) == "train lite0 fold 2"
    )
    assert stage_label(["/x/stages/predict.py", "--backbone", "lite0"]) == "predict lite0"


def test_the_summary_adds_up_folds_and_reports_oof_accuracy_and_the_submission(tmp_path, monkeypatch):
    from stages.summary import summary_lines

    timings = tmp_path / "t.jsonl"
    timings.write_text("".join(json.dumps(row) + "\n" for row in [
        {"stage": "extract", "seconds": 4.0}, {"stage": "train lite0 fold 0", "seconds": 30.0},
        {"stage": "train lite0 fold 1", "seconds": 32.5}, {"stage": "predict lite0", "seconds": 5.0},
    ]))  # fmt: skip
    metrics = tmp_path / "ensemble.json"
    metrics.write_text(json.dumps({
        "backbones": {"lite0": {"accuracy": 0.8123}, "lite1": {"accuracy": 0.8}},
        "submission": {"method": "fitted", "accuracy": 0.85, "nested_cv_accuracy": 0.849},
    }))  # fmt: skip
    submission = tmp_path / "submission.csv"
    submission.write_text("id,label\n1,cat\n2,dog\n")
    monkeypatch.setattr("stages.summary.describe_host", lambda: "host: X")
    lines = summary_lines(timings, metrics, submission, since=None)
    assert lines[2:] == [
        "host: X",
        "wall time per stage (its own work; DVC adds a few s each):",
        "  extract                                  4 s",
        "  train lite0 (2 folds)                   62 s",
        "  predict lite0                            5 s",
        "OOF accuracy (held-out folds):",
        "  lite0                              0.8123",
        "  lite1                              0.8000",
        "  ensemble (fitted)                  0.8500   nested-CV estimate 0.8490",
        f"submission: {submission} (2 rows); send it with `python -m stages.submit`",
    ]
    with pytest.raises(PipelineError, match="cannot summarise the run"):
        summary_lines(tmp_path / "absent.jsonl", metrics, submission, since=None)
