"""The plan's counts against hand arithmetic and the real training loop, its JSON, the README's tables."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import flops, plan, throughput
from pipeline.config import Config, TrainConfig
from pipeline.distributed import World
from pipeline.folds import Split
from stages import plan as plan_stage

REPO = Path(__file__).resolve().parents[1]
TINY = {  # 200 labelled images in 2 folds of 100, 50 test images, one tiny EfficientNet at 32 px
    "data": {"source": "sample", "sample": {"n_train": 200, "n_test": 50, "seed": 0}},
    "cv": {"folds": [0, 1], "seed": 0},
    "backbones": {"tiny": {"model": "test_efficientnet"}},
    "train": {"epochs": 4, "batch_size": 32, "image_size": 32, "weights": "scratch", "mixup": 0.0, "cutmix": 0.0,
              "ema_decay": 0.0, "warmup_epochs": 0, "freeze_blocks": 0},
    "tta": {"hflip": False, "shift": 0},
}  # fmt: skip
MIN = 60


def tiny(tmp_path: Path, *overrides: str) -> Config:
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return plan.load_planned_config(path, list(overrides))


def stage(stages: list[plan.StageWork], name: str) -> plan.StageWork:
    return next(s for s in stages if s.name == name)


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> Path:
    """params.yaml as committed (the workspace's may hold `make demo`'s settings)."""
    path = tmp_path_factory.mktemp("committed") / "params.yaml"
    path.write_text(subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True,
                                   check=True).stdout)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def committed_plan(committed) -> plan.Plan:
    return plan.make_plan(plan.load_planned_config(committed, []), dict(throughput.ALL_CLASSES))


# ---- counts ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mixing", "per_epoch"), [([], 100), (["train.mixup=0.8"], 96), (["train.compile=true"], 96)])
def test_training_passes_are_images_times_epochs_with_the_last_partial_batch_dropped_when_mixing(
    tmp_path, mixing, per_epoch
):  # fmt: skip
    stages = plan.plan_stages(tiny(tmp_path, *mixing))
    for fold in (0, 1):  # 100 training images a fold; batches of 32: 3 full ones, the 4th of 4 kept unless mixing
        assert stage(stages, f"train@tiny-{fold}").train_passes == per_epoch * 4


@pytest.mark.parametrize("mixup", [0.0, 0.8])
def test_images_per_epoch_is_what_the_recipe_builds(mixup):
    from pipeline.recipe import build_recipe

    cfg = TrainConfig(epochs=2, batch_size=32, image_size=32, weights="scratch", mixup=mixup)
    recipe = build_recipe("test_efficientnet", cfg, 100, World())
    assert plan.images_per_epoch(100, cfg) == min(recipe.updates_per_epoch * 32, 100)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], 100),  # 100 held-out images, scored once after the last epoch, one view, raw weights only
        (["train.ema_decay=0.99"], 200),  # raw and EMA
        (["tta.hflip=true"], 200),  # and the mirror
        (["tta.hflip=true", "tta.shift=2"], 600),  # and four shifted copies
        (["train.eval_every=2"], 200),  # after epochs 2 and 4
        (["train.eval_every=3"], 200),  # after epochs 3 and 4
        (["train.eval_every=1", "train.ema_decay=0.99", "tta.hflip=true"], 1600),  # every epoch: the old way
    ],
)
def test_held_out_forwards(tmp_path, overrides, expected):
    stages = plan.plan_stages(tiny(tmp_path, *overrides))
    assert [stage(stages, f"train@tiny-{k}").eval_forwards for k in (0, 1)] == [expected, expected]


def test_held_out_forwards_are_what_the_training_loop_scores(tmp_path, monkeypatch):
    """train_one_fold, run for real on a tiny fold, scores as many held-out views as the plan counts."""
    from pipeline import training

    cfg = tiny(tmp_path, "train.epochs=3", "train.eval_every=2", "train.ema_decay=0.9", "tta.hflip=true")
    scored, real = [], training.predict_logits

    def counted(model, images, **kwargs):
        scored.append(len(images) * (1 + kwargs["hflip"]))
        return real(model, images, **kwargs)

    monkeypatch.setattr(training, "predict_logits", counted)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(48) % 10
    split = Split(images[:32], labels[:32], images[32:], labels[32:], np.arange(33, 49))
    training.train_one_fold("test_efficientnet", split, cfg.backbones["tiny"].train, World(), name="t", tta=cfg.tta)
    assert sum(scored) == 16 * plan.tta_views(cfg.tta) * 2 * plan.times_scored(cfg.backbones["tiny"].train) == 128


def test_predict_forwards_are_test_images_times_views_times_folds(tmp_path):
    stages = plan.plan_stages(tiny(tmp_path, "tta.hflip=true", "tta.shift=1", "cv.folds=[0,1,2,3]"))
    assert stage(stages, "predict@tiny").predict_forwards == 50 * 6 * 4


def test_the_committed_job_scores_its_held_out_images_a_tenth_as_often(committed_plan):
    """Before: every epoch, raw and EMA, with the mirror: 10 x 2 x 10,000 x 2 = 400,000 a fold, 2,000,000 a
    backbone. Now once, after the last epoch."""
    for backbone in ("convnext_tiny", "efficientnetv2_s"):
        trains = [s for s in committed_plan.stages if s.name.startswith(f"train@{backbone}-")]
        assert len(trains) == 5
        assert sum(s.eval_forwards for s in trains) == 200_000 <= 0.2 * 2_000_000
        assert sum(s.train_passes for s in trains) == 5 * 10 * 312 * 128  # 40,000 a fold, batches of 128, mixup


def test_the_committed_job_on_an_h100(committed, committed_plan):
    """The honest arithmetic: 50 min (55 before the held-out scoring was cut); 35 min needs one of the README's
    variants (smaller images, or no mirror view)."""
    now = committed_plan.total()["seconds"]["H100"]
    before = plan.make_plan(plan.load_planned_config(committed, ["train.eval_every=1"]), dict(throughput.ALL_CLASSES))
    assert before.total()["seconds"]["H100"] - now > 5 * MIN
    assert 40 * MIN < now < 60 * MIN
    for name in plan.H100_35_MIN:
        variant = plan.VARIANTS[name]
        fast = plan.make_plan(plan.load_planned_config(committed, variant), {"H100": throughput.GPU_CLASSES["H100"]})
        assert fast.total()["seconds"]["H100"] <= 35 * MIN, variant


def test_the_kaggle_t4_profile_fits_a_session_even_at_the_pessimistic_end(committed):
    cfg = plan.load_planned_config(committed, plan.KAGGLE_T4_PROFILE)
    result = plan.make_plan(cfg, {name: throughput.GPU_CLASSES[name] for name in ("T4", "P100")})
    for name, seconds in result.total()["seconds"].items():
        assert seconds * (1 + throughput.GPU_CLASSES[name].uncertainty) < 0.6 * plan.SESSION_HOURS * 3600, name


# ---- cached features, FLOPs ------------------------------------------------------------------------------------


def test_cached_features_count_the_lower_part_once_per_image_and_the_upper_part_in_training(tmp_path):
    cfg = tiny(tmp_path, "train.freeze_blocks=1", "train.cached_features=true", "tta.hflip=true")
    whole = flops.model_cost("test_efficientnet", 32, 1, False)
    cached = flops.model_cost("test_efficientnet", 32, 1, True)
    assert cached.lower + cached.forward == whole.forward  # the same operations, split at the cached blocks
    assert 0 < cached.train < whole.train
    stages = plan.plan_stages(cfg)
    features = stage(stages, "features@tiny")
    assert features.feature_forwards == (200 + 50) * 2  # every labelled and test image and its mirror
    assert features.lower_flops == features.feature_forwards * cached.lower and features.infer_flops == 0
    assert features.bytes_written == 250 * 2 * 2 * math.prod(cached.feature_shape)  # float16
    train = stage(stages, "train@tiny-0")
    assert train.train_flops == train.train_passes * cached.train and train.lower_flops == 0
    assert train.infer_flops == train.eval_forwards * cached.forward
    assert stage(stages, "predict@tiny").infer_flops == 50 * 2 * 2 * cached.forward
    not_cached = plan.plan_stages(tiny(tmp_path))
    assert stage(not_cached, "features@tiny").flops == 0  # a record only


def test_head_only_epochs_cost_about_a_forward(tmp_path):
    cost = flops.model_cost("test_efficientnet", 32)
    assert cost.forward < cost.head_train < 1.01 * cost.forward
    stages = plan.plan_stages(tiny(tmp_path, "train.head_epochs=1"))
    train = stage(stages, "train@tiny-0")
    assert train.train_flops == 100 * cost.head_train + 300 * cost.train


# ---- the command -----------------------------------------------------------------------------------------------


def run_json(capsys, *argv: str) -> dict:
    plan_stage.main(["--json", "--no-probe", *argv])
    return json.loads(capsys.readouterr().out)


def test_json_has_one_entry_per_dvc_stage_and_the_total_of_their_sums(committed, capsys, tmp_path):
    from tests.test_dvc_yaml import rendered_stages

    result = run_json(capsys, "--params", str(committed))
    names = [s["name"] for s in result["stages"]]
    assert sorted(names) == sorted(rendered_stages(tmp_path, yaml.safe_load(committed.read_text())))
    keys = {"name", "train_passes", "eval_forwards", "predict_forwards", "flops", "bytes_written", "seconds"}
    for entry in result["stages"]:
        assert keys <= set(entry) and ("backbone" in entry) == ("@" in entry["name"])
        assert set(entry["seconds"]) == set(throughput.ALL_CLASSES) and entry["seconds"]["H100"] > 0
    for key in ("train_passes", "eval_forwards", "predict_forwards", "flops", "bytes_written"):
        assert result["total"][key] == pytest.approx(sum(s[key] for s in result["stages"]), rel=1e-9)
    for name in throughput.ALL_CLASSES:
        assert result["total"]["seconds"][name] == pytest.approx(sum(s["seconds"][name] for s in result["stages"]),
                                                                 abs=0.1 * len(names))  # fmt: skip


def test_settings_override_as_dvc_exp_run_does(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(TINY))
    result = run_json(capsys, "--params", str(path), "-S", "~backbones", "-S", "+backbones={a: {model: test_resnet}}",
                      "-S", "cv.folds=[0,1,2]", "--classes", "T4")  # fmt: skip
    assert [s["name"] for s in result["stages"] if "@" in s["name"]] == [
        "features@a", "train@a-0", "train@a-1", "train@a-2", "predict@a"]  # fmt: skip
    assert set(result["total"]["seconds"]) == {"T4"}


def test_importing_the_stage_does_not_import_torch():
    code = "import sys, stages.plan; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip() == "False"  # fmt: skip


# ---- the README --------------------------------------------------------------------------------------------------


def readme_block(marker: str) -> str:
    readme = (REPO / "README.md").read_text()
    start, end = f"<!-- {marker}:start -->\n", f"\n<!-- {marker}:end -->"
    assert start in readme and end in readme, f"README.md lacks the {marker} markers"
    return readme.split(start, 1)[1].split(end, 1)[0]


def markdown(capsys, *argv: str) -> str:
    plan_stage.main(["--markdown", *argv])
    return capsys.readouterr().out.rstrip("\n")


def test_readme_gpu_table_is_the_plans(committed, capsys):
    table = markdown(capsys, "--params", str(committed))
    assert readme_block("plan") == table, "update README.md's plan table to:\n" + table


def test_readme_kaggle_profile_is_the_plans(committed, capsys):
    table = markdown(capsys, "--params", str(committed), "--profile", "kaggle-t4", "--classes", "T4,P100")
    assert readme_block("plan-kaggle-t4") == table, "update README.md's Kaggle table to:\n" + table
    command = " ".join(["dvc exp run", *(f"-S '{o}'" for o in plan.KAGGLE_T4_PROFILE)])
    assert command in readme_block("plan-kaggle-t4-command")


def test_readme_cpu_profile_is_the_plans(committed, capsys):
    table = markdown(capsys, "--params", str(committed), "--demo-data", "cifar-10.zip", "--classes", "CPU")
    assert readme_block("plan-cpu") == table, "update README.md's CPU table to:\n" + table


def test_readme_variants_are_the_plans(committed, capsys):
    plan_stage.main(["--variants", "--params", str(committed)])
    table = capsys.readouterr().out.rstrip("\n")
    assert readme_block("plan-variants") == table, "update README.md's variants to:\n" + table


def test_readme_assumptions_are_the_plans(capsys):
    plan_stage.main(["--assumptions"])
    table = capsys.readouterr().out.rstrip("\n")
    assert readme_block("plan-assumptions") == table, "update README.md's assumptions to:\n" + table
