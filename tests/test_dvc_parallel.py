"""Train stages side by side through DVC (`make train GPUS=...`), and on several machines through a DVC remote."""

import csv
import datetime
import hashlib
import os
import re
import stat
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import fanout
from tests.repo_copy import committed_copy, git_commit, sh, stages_run

PARAMS = {
    "launcher": {"nproc_per_node": 1},
    "data": {"source": "sample", "sample": {"n_train": 400, "n_test": 60, "seed": 0}},
    "cv": {"folds": [0, 1], "seed": 0},
    "backbones": {"tiny": {"model": "test_efficientnet"}},
    "train": {"epochs": 3, "batch_size": 32, "lr": 3.0e-3, "warmup_epochs": 1, "image_size": 32, "weights": "scratch",
              "freeze_blocks": 0, "cached_features": False},  # features@ depends on these: DVC needs them present
    "tta": {"hflip": False, "shift": 0},
    "predict": {"batch_size": 128},
    "ensemble": {"method": "fitted", "temperature": False, "fallback": True},
}  # fmt: skip
TRAIN_STAGES = ["train@tiny-0", "train@tiny-1"]


def epoch_times(repo: Path, fold: int) -> list[float]:
    """When each epoch of a fold ended, from DVCLive's timestamps (ms)."""
    with (repo / f"artifacts/live/tiny/fold{fold}/plots/metrics/train_loss.tsv").open() as f:
        return [float(row["timestamp"]) for row in csv.DictReader(f, delimiter="\t")]


def training_started(repo: Path, fold: int, day_of: float) -> float:
    """When a fold's training began, at the latest (its log line, to the second), as a timestamp in ms."""
    log = (repo / "artifacts/logs" / f"train@tiny-{fold}.log").read_text()
    clock = re.search(rf"^(\d\d:\d\d:\d\d) pipeline\.training: tiny fold {fold}: ", log, re.MULTILINE).group(1)
    day = datetime.datetime.fromtimestamp(day_of / 1000).date()
    return (datetime.datetime.combine(day, datetime.time.fromisoformat(clock)).timestamp() + 1) * 1000


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.e2e
def test_two_workers_train_two_folds_at_once_and_dvc_lock_records_both(tmp_path):
    repo = committed_copy(tmp_path / "repo", PARAMS)
    sh(repo, "python", "-m", "stages.train_parallel", "--devices", "0,1")  # exit 0: no stage failed
    # both folds were training at the same time: each began before the other's last epoch ended
    fold0, fold1 = epoch_times(repo, 0), epoch_times(repo, 1)
    assert len(fold0) == len(fold1) == 3
    assert training_started(repo, 0, fold0[0]) < fold1[-1] and training_started(repo, 1, fold1[0]) < fold0[-1]
    for stage in [*TRAIN_STAGES, "predict@tiny"]:  # DVC itself ran each stage, on its own device: predict too
        log = (repo / "artifacts/logs" / f"{stage}.log").read_text()
        assert f"Running stage '{stage}'" in log
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for fold, stage in enumerate(TRAIN_STAGES):
        outs = {out["path"]: out["md5"] for out in lock[stage]["outs"]}
        for path in (f"artifacts/models/tiny/fold{fold}.safetensors", f"artifacts/oof/tiny/fold{fold}.npz"):
            assert outs[path] == md5(repo / path), path
    assert {"predict@tiny", "ensemble", "submission"} <= set(lock)  # the final `dvc repro` finished the pipeline
    assert (repo / "artifacts/submission.csv").read_text().startswith("id,label\n")
    assert stages_run(sh(repo, "dvc", "repro")) == ["settings"]  # which only checks params.yaml
    assert sh(repo, "dvc", "status").split() == ["settings:", "always", "changed"]


@pytest.mark.e2e
def test_folds_trained_on_two_machines_are_pulled_by_a_third_and_not_trained_again(tmp_path):
    origin = committed_copy(tmp_path / "origin", PARAMS)
    sh(origin, "dvc", "remote", "add", "--default", "shared", str(tmp_path / "dvc-remote"))
    git_commit(origin, "a DVC remote all machines reach")
    machines = {}
    for name in ("gpu0", "gpu1", "head"):
        sh(tmp_path, "git", "clone", "-q", str(origin), name)
        machines[name] = tmp_path / name
    for fold, name in enumerate(("gpu0", "gpu1")):  # each machine trains one fold and shares it
        assert f"train@tiny-{fold}" in stages_run(sh(machines[name], "dvc", "repro", f"train@tiny-{fold}"))
        sh(machines[name], "dvc", "push", "--run-cache")

    head = machines["head"]
    output = sh(head, "dvc", "repro", "--pull")  # pulls the run-cache and the outputs it names
    ran = stages_run(output)
    assert not set(TRAIN_STAGES) & set(ran), output  # restored from the run-cache, not trained again
    for stage in TRAIN_STAGES:
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in output
    assert {"predict@tiny", "ensemble", "submission"} <= set(ran)
    for fold, name in enumerate(("gpu0", "gpu1")):
        path = f"artifacts/oof/tiny/fold{fold}.npz"
        assert md5(head / path) == md5(machines[name] / path)
    assert stages_run(sh(head, "dvc", "repro")) == ["settings"]


def fake_dvc(tmp_path: Path, failures: list[str]) -> Path:
    """A `dvc` on PATH that prints each of `failures` on successive calls (exit 1), then succeeds."""
    script = tmp_path / "bin" / "dvc"
    script.parent.mkdir()
    calls = tmp_path / "calls"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"calls = {str(calls)!r}\n"
        "n = sum(1 for _ in open(calls)) if __import__('os').path.exists(calls) else 0\n"
        "open(calls, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        f"failures = {failures!r}\n"
        "if n < len(failures):\n"
        "    print(failures[n]); sys.exit(1)\n"
        "print('ok')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return calls


def test_a_busy_dvc_lock_is_retried_and_any_other_failure_is_not(tmp_path, monkeypatch):
    monkeypatch.setattr(fanout.time, "sleep", lambda seconds: None)
    calls = fake_dvc(tmp_path, ["ERROR: Unable to acquire lock. Most likely another DVC process is running", "x"])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    run = fanout.run_stage("train@a-0", "3", tmp_path, cwd=tmp_path)
    assert run.returncode == 1 and (tmp_path / "train@a-0.log").read_text() == "x\n"  # "x" is not a lock error
    assert calls.read_text().splitlines() == ["--wait-for-lock repro --single-item train@a-0"] * 2


def test_failed_stages_are_named_with_their_logs_after_the_others_ran(tmp_path, monkeypatch):
    monkeypatch.setattr(fanout.time, "sleep", lambda seconds: None)
    calls = fake_dvc(tmp_path, ["boom"])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(fanout.PipelineError) as excinfo:
        fanout.run_in_parallel(["train@a-0", "train@a-1"], ["0"], tmp_path / "logs", cwd=tmp_path)
    assert str(excinfo.value) == (
        f"1 of 2 train stages failed: train@a-0 (see {tmp_path / 'logs' / 'train@a-0.log'}). Fix the cause and"
        " re-run: the stages that finished are kept."
    )
    assert len(calls.read_text().splitlines()) == 2  # the second stage still ran


@pytest.mark.parametrize("devices", [[], [""], ["0,1"]])
def test_devices_must_be_single_ids(tmp_path, devices):
    with pytest.raises(fanout.PipelineError, match="devices must be one or more CUDA device ids"):
        fanout.run_in_parallel(["train@a-0"], devices, tmp_path, cwd=tmp_path)
