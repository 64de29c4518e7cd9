from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_repo_params_yaml_is_valid_and_typed():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.data.source == "kaggle"
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
        ("backbones: [a]\npredict: {hflip: 1}\n", "predict:hflip must be bool"),
    ],
)
def test_bad_params_are_rejected_with_the_key_named(tmp_path, text, message):
    with pytest.raises(ConfigError) as excinfo:
        load_config(write(tmp_path, text))
    assert message in str(excinfo.value)
