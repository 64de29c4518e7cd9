"""dvc.yaml as DVC renders it: no params.yaml value reaches the shell unquoted, outs are where stages write."""

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

from pipeline import layout
from pipeline.config import load_config, stage_settings

REPO = Path(__file__).resolve().parents[1]
HOSTILE = "a'; touch pwned; echo '"


def rendered_stages(tmp_path: Path, params: dict) -> dict[str, object]:
    """DVC's own rendering of the repo's dvc.yaml with `params`: stage name -> stage."""
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    with Repo(str(tmp_path)) as repo:
        return {stage.name: stage for stage in repo.index.stages}


def argv_of(stage) -> dict[str, str]:
    """`--flag value` pairs of a stage's command, split as a POSIX shell splits it."""
    words = shlex.split(stage.cmd)
    assert words[:2] == ["python", "-m"], stage.cmd  # a fixed program: no setting chooses what runs
    return dict(zip(words[3::2], words[4::2], strict=True))


def paths(entries) -> set[str]:
    return {str(entry.def_path) for entry in entries}


def test_a_hostile_backbone_name_reaches_the_stage_as_one_quoted_argument(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["backbones"] = {HOSTILE: {"model": "resnet18"}}
    stages = rendered_stages(tmp_path, params)
    assert {name.split("@")[0] for name in stages if "@" in name} == {"features", "train", "predict"}
    for name, stage in stages.items():
        if "@" in name:
            assert argv_of(stage)["--backbone"] == HOSTILE, stage.cmd
    # and the shell really runs it as one argument: nothing but `python` would create the file
    command = stages[f"predict@{HOSTILE}"].cmd.replace("python -m stages.predict", "true", 1)
    subprocess.run(command, shell=True, cwd=tmp_path, check=True)
    assert not (tmp_path / "pwned").exists()


def test_train_and_predict_outs_are_the_paths_the_stages_write(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = rendered_stages(tmp_path, params)
    n_features = n_train = n_predict = 0
    for name, stage in stages.items():
        args = argv_of(stage)
        if "--features" in args:  # train and predict read the folder features@<backbone> writes
            assert str(layout.backbone_file(args["--features"], args["--backbone"], "")) in paths(stage.deps)
        if name.startswith("features@"):
            n_features += 1
            assert paths(stage.outs) == {str(layout.backbone_file(args["--out"], args["--backbone"], ""))}
        elif name.startswith("train@"):
            n_train += 1
            backbone, fold = args["--backbone"], int(args["--fold"])
            live = layout.fold_file(args["--live"], backbone, fold, "")
            assert paths(stage.outs) == {
                str(layout.fold_file(args["--models"], backbone, fold, ".safetensors")),
                str(layout.fold_file(args["--oof"], backbone, fold, ".npz")),
                str(live / "metrics.json"), str(live / "plots"),  # DVCLive's files
            }  # fmt: skip
        elif name.startswith("predict@"):
            n_predict += 1
            backbone = args["--backbone"]
            assert paths(stage.outs) == {str(layout.backbone_file(args["--out"], backbone, ".npz"))}
            assert str(Path(args["--models"]) / backbone) in paths(stage.deps)
    assert n_train == len(params["backbones"]) * len(params["cv"]["folds"])
    assert n_features == n_predict == len(params["backbones"])


def test_oof_and_test_logits_depend_on_the_same_test_time_views(tmp_path):
    stages = rendered_stages(tmp_path, yaml.safe_load((REPO / "params.yaml").read_text()))
    for name, stage in stages.items():
        if name.startswith(("train@", "predict@")):
            declared = {key for dep in stage.deps if hasattr(dep, "params") for key in dep.params}
            assert "tta" in declared, name  # a changed view reruns both, never one of the two


@pytest.mark.parametrize("stage_kind", ["download", "extract", "folds", "ensemble", "submission"])
def test_every_artifact_path_in_a_command_is_declared(tmp_path, stage_kind):
    stages = rendered_stages(tmp_path, yaml.safe_load((REPO / "params.yaml").read_text()))
    stage = stages[stage_kind]
    declared = paths(stage.deps) | paths(stage.outs)
    for value in argv_of(stage).values():
        if value.startswith("artifacts/"):
            assert any(value == d or value.startswith(d + "/") for d in declared), (stage_kind, value)


def declared_params(stage) -> set[str]:
    return {key for dep in stage.deps if hasattr(dep, "params") for key in dep.params}


def test_every_setting_a_stages_record_holds_is_a_param_it_declares(tmp_path):
    """A record says what made an artifact (pipeline/provenance.py): its settings must be ones DVC tracks for that
    stage, or a settings change would leave the artifact in place with a record that disagrees."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = rendered_stages(tmp_path, params)
    cfg = load_config(tmp_path / "params.yaml")
    checked = 0
    for name, stage in stages.items():
        kind, _, item = name.partition("@")
        if kind in ("settings", "features"):  # features@ reads its settings through the settings stage's file
            continue
        backbone = item.rsplit("-", 1)[0] if kind == "train" else item
        declared = declared_params(stage)
        for key in stage_settings(cfg, name):
            dotted = f"backbones.{backbone}.model" if key == "model" else key
            covered = {d for d in declared if dotted == d or dotted.startswith(d + ".")}
            if kind == "train" and key.startswith("train."):  # resolved: train, or the backbone's own entry
                covered &= {"train"}
                assert f"backbones.{backbone}" in declared, name
            assert covered, f"{name}: its record holds {key}, but dvc.yaml declares only {sorted(declared)}"
            checked += 1
    assert checked > 50


def test_a_features_stage_depends_on_its_resolved_settings_and_not_on_a_whole_backbone_entry(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = rendered_stages(tmp_path, params)
    assert stages["settings"].always_changed
    settings_out = paths(stages["settings"].outs)
    for name, stage in stages.items():
        if name.startswith("features@"):
            backbone = name.split("@")[1]
            trigger = layout.backbone_file(Path(next(iter(settings_out))) / "features", backbone, ".json")
            assert str(trigger) in paths(stage.deps), name
            assert declared_params(stage) == set(), name  # another lr of this backbone does not re-run it
    # and the file holds exactly what the features record holds
    subprocess.run([sys.executable, "-m", "stages.settings", "--out", str(tmp_path / "s"), "--params",
                    str(tmp_path / "params.yaml")], cwd=REPO, check=True, capture_output=True)  # fmt: skip
    cfg = load_config(tmp_path / "params.yaml")
    for backbone in params["backbones"]:
        written = json.loads(layout.backbone_file(tmp_path / "s" / "features", backbone, ".json").read_text())
        assert written == stage_settings(cfg, f"features@{backbone}")
