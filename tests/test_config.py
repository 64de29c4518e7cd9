import subprocess
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_committed_params_yaml_is_the_real_job_valid_and_typed(tmp_path):
    """The committed params.yaml, not the working tree's: `make demo` writes its settings there."""
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True,
                               check=True)  # fmt: skip
    cfg = load_config(write(tmp_path, committed.stdout))
    assert cfg.data.source == "kaggle" and cfg.launcher.nproc_per_node == 1
    assert cfg.cv.n_folds == len(cfg.cv.folds) >= 2
    assert isinstance(cfg.train.lr, float)
    assert cfg.backbones


def test_overrides_change_only_their_backbone(tmp_path):
    cfg = load_config(
        write(tmp_path, "backbones: [a, b]\ntrain:\n  lr: 1.0e-3\n  image_size: 32\n  overrides:\n    b: {lr: 0.5}\n")
    )
    assert cfg.train.for_backbone("a").lr == 1.0e-3
    assert cfg.train.for_backbone("b").lr == 0.5
    assert cfg.train.for_backbone("b").image_size == 32


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("backbones: [a]\ntrain: {lr: 3e-4}\n", "params.yaml:train:lr must be float, got '3e-4' (PyYAML"),
        ("backbones: [a]\ntrain: {lrr: 0.1}\n", "params.yaml:train:lrr is not a known setting"),
        ("backbones: [a]\ntrain: {epochs: 1.5}\n", "params.yaml:train:epochs must be int"),
        ("backbones: [a]\ntrain: {overrides: {a: {batch: 3}}}\n", "train:overrides:a:batch is not a known setting"),
        ("backbones: [a]\ncv: {folds: [0]}\n", "cv:folds must be [0, 1, ..., k-1] with k >= 2"),
        ("backbones: [a]\ncv: {folds: [0, 2]}\n", "cv:folds must be [0, 1, ..., k-1]"),
        ("backbones: []\n", "backbones must list one or more"),
        ("backbones: [a]\nensemble: {method: median}\n", "ensemble:method must be one of"),
        ("backbones: [a]\ndata: {source: s3}\n", "data:source must be one of"),
        ("backbones: [a]\ndata: {source: local}\n", "data:path must name"),
        ("backbones: [a]\ntrain: {weights: imagenet}\n", "train:weights for a must be one of"),
        ("backbones: [a]\ntta: {hflip: 1}\n", "tta:hflip must be bool"),
        ("backbones: [a]\npredict: {hflip: true}\n", "predict:hflip is not a known setting"),
        ("backbones: [a]\ntrain: {layer_decay_floor: 0.0}\n", "layer_decay_floor must be in (0, 1]"),
        ("backbones: [a]\ntrain: {mixup_prob: 1.5}\n", "mixup_prob in [0, 1]"),
        ("backbones: [\"a'; touch x; '\"]\n", "backbones: \"a'; touch x; '\" is not a timm model name (lower-case"),
        ("backbones: [../../etc]\n", "backbones: '../../etc' is not a timm model name"),
        ("backbones: [Resnet18]\n", "backbones: 'Resnet18' is not a timm model name"),
        ("backbones: [resnet18.a1.in1k]\n", "'resnet18.a1.in1k' is not a timm model name"),
        ("backbones: ['resnet18 ']\n", "'resnet18 ' is not a timm model name"),
        ("backbones: [a]\nlauncher: {nproc_per_node: 0}\n", "launcher:nproc_per_node must be 1 or more, got 0"),
        ("backbones: [a]\nlauncher: torchrun --nproc_per_node=4\n", "launcher must be a mapping"),
    ],
)
def test_bad_params_are_rejected_with_the_key_named(tmp_path, text, message):
    with pytest.raises(ConfigError) as excinfo:
        load_config(write(tmp_path, text))
    assert message in str(excinfo.value)


def test_timm_names_with_and_without_tags_are_accepted(tmp_path):
    cfg = load_config(write(tmp_path, "backbones: [convnext_tiny.fb_in22k_ft_in1k, tf_efficientnet_lite0, vit_b_16]\n"))
    assert cfg.backbones == ("convnext_tiny.fb_in22k_ft_in1k", "tf_efficientnet_lite0", "vit_b_16")
