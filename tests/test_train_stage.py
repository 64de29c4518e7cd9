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
from pipeline.distributed import torchrun_command
from stages import features
from tests import artifacts
from tests.test_fold_log import read_curve

REPO = Path(__file__).resolve().parents[1]
CURVES = ("lr", "train_loss", "valid_accuracy", "valid_log_loss")


@pytest.fixture
def fold_inputs(data_dir, tmp_path):
    """The data and folds.csv (cv.folds [0, 1], params.yaml's cv.seed) as their stages write them."""
    _, cfg = artifacts.params_file(tmp_path, {"backbones": {"a": {"model": "a"}}, "cv": {"folds": [0, 1]}})
    artifacts.folds_csv(tmp_path / "folds.csv", load_dataset(data_dir), cfg)
    return data_dir, tmp_path / "folds.csv"


def params(tmp_path, backbone, nproc_per_node=1, **train) -> Path:
    path = tmp_path / f"params{nproc_per_node}.yaml"
    recipe = {"epochs": 3, "batch_size": 16, "lr": 2.0e-3, "image_size": 32, "weights": "scratch", **train}
    launcher = {"nproc_per_node": nproc_per_node}
    path.write_text(yaml.safe_dump({"backbones": {backbone: {"model": backbone}}, "cv": {"folds": [0, 1]},
                                    "launcher": launcher, "train": recipe}))  # fmt: skip
    return path


def train_cmd(backbone, fold_inputs, out: Path, params_path: Path) -> list[str]:
    """The train stage's command; its features@ stage's folder is written first, unless a test did."""
    data_dir, folds_csv = fold_inputs
    if not (out / "features" / backbone).exists():
        features.main(["--backbone", backbone, "--data", str(data_dir), "--out", str(out / "features"), "--params",
                       str(params_path)])  # fmt: skip
    return [sys.executable, "-m", "stages.train", "--backbone", backbone, "--fold", "0", "--data", str(data_dir),
            "--folds", str(folds_csv), "--features", str(out / "features"), "--models", str(out), "--oof", str(out),
            "--live", str(out / "live"), "--params", str(params_path)]  # fmt: skip


def oof(out: Path, backbone: str = "test_resnet") -> np.ndarray:
    with np.load(out / backbone / "fold0.npz") as npz:
        return npz["scores"]


def test_sigkill_mid_training_then_rerun_resumes_and_equals_an_uninterrupted_run(fold_inputs, tmp_path):
    p = params(tmp_path, "test_resnet", epochs=4)
    subprocess.run(train_cmd("test_resnet", fold_inputs, tmp_path / "a", p), check=True, cwd=REPO,
                   capture_output=True, timeout=300)  # fmt: skip

    cmd = train_cmd("test_resnet", fold_inputs, tmp_path / "b", p)
    process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume_file = tmp_path / "b" / "test_resnet" / "fold0.safetensors.resume.pt"
    deadline = time.monotonic() + 240
    while not resume_file.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # after at least one epoch, most likely mid-way through the next
    process.wait()
    assert resume_file.exists() and not (tmp_path / "b" / "test_resnet" / "fold0.npz").exists()

    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming at epoch" in rerun.stderr
    assert np.array_equal(oof(tmp_path / "b"), oof(tmp_path / "a"))
    live = "live/test_resnet/fold0"
    assert sorted(str(p.relative_to(tmp_path / "b")) for p in (tmp_path / "b").rglob("*") if p.is_file()) == [
        "features/test_resnet/provenance.json",  # features@test_resnet's record (not cached)
        f"{live}/metrics.json", *(f"{live}/plots/metrics/{name}.tsv" for name in CURVES),
        "test_resnet/fold0.npz", "test_resnet/fold0.safetensors",
    ]  # fmt: skip
    # every epoch's row, those before the kill included, the same as the uninterrupted run's
    for name in CURVES:
        assert read_curve(tmp_path / "b" / live, name) == read_curve(tmp_path / "a" / live, name)
    assert [step for step, _ in read_curve(tmp_path / "b" / live, "lr")] == [1, 2, 3, 4]


def test_nproc_per_node_relaunches_the_stage_as_ddp_processes_equal_to_one_process(fold_inputs, tmp_path):
    """Head-only epochs (the trainable set changes under DDP) and accumulation (no_sync) included."""
    # test_convnext has LayerNorm: no per-process batch statistics, so the processes compute what one would
    recipe = {"epochs": 3, "head_epochs": 1, "accumulate": 2}
    one, two = params(tmp_path, "test_convnext", **recipe), params(tmp_path, "test_convnext", 2, **recipe)
    single = subprocess.run(train_cmd("test_convnext", fold_inputs, tmp_path / "one", one), cwd=REPO,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert single.returncode == 0, single.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(train_cmd("test_convnext", fold_inputs, tmp_path / "two", two), cwd=REPO,
                         capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 process(es)" in ddp.stderr and "1 process(es)" in single.stderr
    one_oof, two_oof = oof(tmp_path / "one", "test_convnext"), oof(tmp_path / "two", "test_convnext")
    assert np.allclose(two_oof, one_oof, atol=1e-3) and not np.array_equal(one_oof, np.zeros_like(one_oof))


def test_torchrun_command_is_an_argument_list_and_never_nests():
    argv = ["--backbone", "a'; touch x; '", "--fold", "0"]
    command = torchrun_command(4, "stages.train", argv)
    assert command == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m",
                       "stages.train", *argv]  # fmt: skip
    assert torchrun_command(1, "stages.train", argv) is None


def test_torchrun_command_is_none_inside_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert torchrun_command(4, "stages.train", []) is None


def test_cached_features_train_under_ddp_processes(fold_inputs, tmp_path):
    """The cached path under torchrun: DDP wraps the blocks above the features, head-only epochs re-wrap them."""
    data_dir, _ = fold_inputs
    recipe = {"epochs": 2, "head_epochs": 1, "freeze_blocks": 3, "cached_features": True, "head_init": "probe"}
    two = params(tmp_path, "test_efficientnet", 2, **recipe)
    features = subprocess.run([sys.executable, "-m", "stages.features", "--backbone", "test_efficientnet", "--data",
                               str(data_dir), "--out", str(tmp_path / "two" / "features"), "--params", str(two)],
                              cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert features.returncode == 0, features.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(train_cmd("test_efficientnet", fold_inputs, tmp_path / "two", two), cwd=REPO,
                         capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 process(es)" in ddp.stderr and "the head starts as a linear probe" in ddp.stderr
    logits = oof(tmp_path / "two", "test_efficientnet")
    assert logits.std(axis=0).min() > 0  # per-image logits, not a constant
