"""The train stage as processes: SIGKILL then re-run resumes to the same result; torchrun DDP equals one process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.dataset import load_dataset
from pipeline.folds import make_folds, write_folds

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fold_inputs(data_dir, tmp_path):
    data = load_dataset(data_dir)
    write_folds(tmp_path / "folds.csv", data.train_ids, data.train_labels, make_folds(data.train_labels, 2, seed=0))
    return data_dir, tmp_path / "folds.csv"


def params(tmp_path, backbone, **train) -> Path:
    path = tmp_path / "params.yaml"
    recipe = {"epochs": 3, "batch_size": 16, "lr": 2.0e-3, "image_size": 32, "weights": "scratch", **train}
    path.write_text(yaml.safe_dump({"backbones": [backbone], "train": recipe}))
    return path


def train_cmd(launcher, backbone, fold_inputs, out: Path, params_path: Path) -> list[str]:
    data_dir, folds_csv = fold_inputs
    return [*launcher, "-m", "stages.train", "--backbone", backbone, "--fold", "0", "--data", str(data_dir),
            "--folds", str(folds_csv), "--model-out", str(out / "fold0.safetensors"), "--oof-out", str(out / "oof.npz"),
            "--metrics-out", str(out / "metrics.json"), "--curves-out", str(out / "curves.json"),
            "--params", str(params_path)]  # fmt: skip


def oof(out: Path) -> np.ndarray:
    with np.load(out / "oof.npz") as npz:
        return npz["scores"]


def test_sigkill_mid_training_then_rerun_resumes_and_equals_an_uninterrupted_run(fold_inputs, tmp_path):
    p = params(tmp_path, "test_resnet", epochs=4)
    python = [sys.executable]
    subprocess.run(train_cmd(python, "test_resnet", fold_inputs, tmp_path / "a", p), check=True, cwd=REPO,
                   capture_output=True, timeout=300)  # fmt: skip

    cmd = train_cmd(python, "test_resnet", fold_inputs, tmp_path / "b", p)
    process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume_file = tmp_path / "b" / "fold0.safetensors.resume.pt"
    deadline = time.monotonic() + 240
    while not resume_file.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # after at least one epoch, most likely mid-way through the next
    process.wait()
    assert resume_file.exists() and not (tmp_path / "b" / "oof.npz").exists()

    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming at epoch" in rerun.stderr
    assert np.array_equal(oof(tmp_path / "b"), oof(tmp_path / "a"))
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "curves.json", "fold0.safetensors", "metrics.json", "oof.npz"
    ]  # fmt: skip


def test_torchrun_two_cpu_processes_equal_one_process(fold_inputs, tmp_path):
    p = params(tmp_path, "test_convnext", epochs=2)  # LayerNorm: no per-process batch statistics
    single = subprocess.run(train_cmd([sys.executable], "test_convnext", fold_inputs, tmp_path / "one", p),
                            cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(train_cmd(torchrun, "test_convnext", fold_inputs, tmp_path / "two", p), cwd=REPO,
                         capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 process(es)" in ddp.stderr
    assert np.allclose(oof(tmp_path / "two"), oof(tmp_path / "one"), atol=1e-3)
    assert not np.array_equal(oof(tmp_path / "one"), np.zeros_like(oof(tmp_path / "one")))
