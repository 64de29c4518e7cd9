import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, check_registries, load_config

REPO = Path(__file__).resolve().parents[1]
ONE = "backbones: {a: {model: m}}\n"  # one backbone, its timm name never looked up


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


def test_a_backbones_own_settings_change_only_that_backbone(tmp_path):
    text = (
        "backbones:\n  a: {model: resnet18}\n  b: {model: vit_b_16.augreg_in1k, lr: 0.5}\n"
        "train: {lr: 1.0e-3, image_size: 32}\n"
    )
    cfg = load_config(write(tmp_path, text))
    assert list(cfg.backbones) == ["a", "b"]
    a, b = cfg.backbone("a"), cfg.backbone("b")
    assert (a.name, a.model, a.train.lr, a.train.image_size) == ("a", "resnet18", 1.0e-3, 32)
    assert (b.name, b.model, b.train.lr, b.train.image_size) == ("b", "vit_b_16.augreg_in1k", 0.5, 32)
    assert cfg.train.lr == 1.0e-3


def test_a_stage_naming_an_unlisted_backbone_is_told_which_are_listed(tmp_path):
    cfg = load_config(write(tmp_path, "backbones:\n  a: {model: resnet18}\n  b: {model: resnet34}\n"))
    with pytest.raises(ConfigError) as excinfo:
        cfg.backbone("c")
    assert str(excinfo.value) == "params.yaml:backbones has no 'c' (listed: a, b); add it or pick one."
    with pytest.raises(ConfigError, match="is not a backbone name"):
        cfg.backbone("a.b")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (ONE + "train: {lr: 3e-4}\n", "params.yaml:train:lr must be float, got '3e-4' (PyYAML"),
        (ONE + "train: {lrr: 0.1}\n", "params.yaml:train:lrr is not a known setting"),
        (ONE + "train: {epochs: 1.5}\n", "params.yaml:train:epochs must be int"),
        ("backbones: {a: {model: m, batch: 3}}\n", "params.yaml:backbones:a:batch is not a known setting"),
        (ONE + "cv: {folds: [0]}\n", "params.yaml:cv: folds must be [0, 1, ..., k-1] with k >= 2"),
        (ONE + "cv: {folds: [0, 2]}\n", "params.yaml:cv: folds must be [0, 1, ..., k-1]"),
        ("backbones: {}\n", "backbones must map one or more names to their timm model"),
        ("backbones: [resnet18]\n", "backbones must map one or more names to their timm model"),
        ("backbones: {a: {lr: 0.1}}\n", "params.yaml:backbones:a must be a mapping with `model: <timm name>`, got"),
        ("backbones: {a: resnet18}\n", "params.yaml:backbones:a must be a mapping with `model: <timm name>`"),
        # what `dvc exp run -S ++backbones.a.fb_in1k.lr=...` writes when a dotted timm name is used as the key
        ("backbones: {a: {model: m, fb_in1k: {lr: 0.1}}}\n", "params.yaml:backbones:a:fb_in1k is not a known setting"),
        ("backbones: {convnext_tiny.fb_in1k: {model: m}}\n", "'convnext_tiny.fb_in1k' is not a backbone name"),
        (ONE + "ensemble: {method: median}\n", "ensemble:method must be one of"),
        (ONE + "data: {source: s3}\n", "data:source must be one of"),
        (ONE + "data: {source: local}\n", "params.yaml:data: path must name"),
        (ONE + "train: {weights: imagenet}\n", "params.yaml:train: weights must be one of hub, scratch"),
        ("backbones: {a: {model: m, weights: imagenet}}\n", "params.yaml:train for a: weights must be one of hub"),
        (ONE + "tta: {hflip: 1}\n", "tta:hflip must be bool"),
        (ONE + "predict: {hflip: true}\n", "predict:hflip is not a known setting"),
        (ONE + "train: {layer_decay_floor: 0.0}\n", "params.yaml:train:layer_decay_floor must be > 0, got 0.0."),
        (ONE + "train: {mixup_prob: 1.5}\n", "params.yaml:train:mixup_prob must be <= 1, got 1.5."),
        (
            "backbones: {a: {model: \"a'; touch x; '\"}}\n",
            "backbones:a:model: \"a'; touch x; '\" is not a timm model name (lower-case",
        ),
        ("backbones: {a: {model: ../../etc}}\n", "backbones:a:model: '../../etc' is not a timm model name"),
        ("backbones: {a: {model: Resnet18}}\n", "backbones:a:model: 'Resnet18' is not a timm model name"),
        ("backbones: {a: {model: resnet18.a1.in1k}}\n", "'resnet18.a1.in1k' is not a timm model name"),
        ("backbones: {a: {model: 'resnet18 '}}\n", "'resnet18 ' is not a timm model name"),
        (
            ONE + "launcher: {nproc_per_node: 0}\n",
            "params.yaml:launcher:nproc_per_node must be >= 1, got 0.",
        ),
        (ONE + "launcher: torchrun --nproc_per_node=4\n", "launcher must be a mapping"),
    ],
)
def test_bad_params_are_rejected_with_the_key_named(tmp_path, text, message):
    with pytest.raises(ConfigError) as excinfo:
        load_config(write(tmp_path, text))
    assert message in str(excinfo.value)


def test_timm_names_with_and_without_tags_are_accepted(tmp_path):
    models = ["convnext_tiny.fb_in22k_ft_in1k", "tf_efficientnet_lite0", "vit_b_16"]
    text = "backbones:\n" + "".join(f"  b{i}: {{model: {m}}}\n" for i, m in enumerate(models))
    assert [bb.model for bb in load_config(write(tmp_path, text)).backbones.values()] == models


@pytest.mark.parametrize(
    "train",
    [
        "{weights: w/model.pth}", "{weights: w/model.pt}", "{weights: w/model.bin}", "{weights: w/model.safetensors}",
        "{epochs: 1, warmup_epochs: 0}", "{batch_size: 1}", "{image_size: 8}", "{layer_decay_floor: 1.0}",
        "{mixup_prob: 0.0}", "{mixup_prob: 1.0}", "{ema_decay: 0.0}", "{ema_decay: 0.999}",
        "{epochs: 2, head_epochs: 1}", "{batch_size: 12, accumulate: 3}", "{freeze_blocks: 0}", "{freeze_blocks: 3}",
        "{head_init: probe}", "{freeze_blocks: 1, cached_features: true}",
    ],
)  # fmt: skip
def test_boundary_and_weights_file_settings_are_accepted(tmp_path, train):
    cfg = load_config(write(tmp_path, ONE + f"cv: {{folds: [0, 1]}}\ntrain: {train}\n"))
    assert cfg.cv.folds == (0, 1)
    for key, value in yaml.safe_load(train).items():
        assert getattr(cfg.backbone("a").train, key) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # one declared range or set of choices per setting, each refused alone with the key and value named
        ("train: {epochs: 0}", "params.yaml:train:epochs must be >= 1, got 0."),
        ("train: {batch_size: 0}", "params.yaml:train:batch_size must be >= 1, got 0."),
        ("train: {lr: -3.0e-4}", "params.yaml:train:lr must be > 0, got -0.0003."),
        ("train: {lr: 0}", "params.yaml:train:lr must be > 0, got 0."),
        ("train: {weight_decay: -0.1}", "params.yaml:train:weight_decay must be >= 0, got -0.1."),
        ("train: {layer_decay_floor: 1.5}", "params.yaml:train:layer_decay_floor must be <= 1, got 1.5."),
        ("train: {warmup_epochs: -1}", "params.yaml:train:warmup_epochs must be >= 0, got -1."),
        ("train: {epochs: 3, warmup_epochs: 3}", "params.yaml:train: warmup_epochs (3) must be fewer than epochs (3)."),
        ("train: {epochs: 2, head_epochs: 2}", "params.yaml:train: head_epochs (2) must be fewer than epochs (2)."),
        ("train: {head_init: linear}", "params.yaml:train:head_init must be one of 'random', 'probe', got 'linear'."),
        ("train: {freeze_blocks: -1}", "params.yaml:train:freeze_blocks must be >= 0, got -1."),
        ("train: {label_smoothing: 1.0}", "params.yaml:train:label_smoothing must be < 1, got 1.0."),
        ("train: {label_smoothing: -0.1}", "params.yaml:train:label_smoothing must be >= 0, got -0.1."),
        ("train: {mixup: -0.2}", "params.yaml:train:mixup must be >= 0, got -0.2."),
        ("train: {cutmix: -1.0}", "params.yaml:train:cutmix must be >= 0, got -1.0."),
        ("train: {mixup_prob: -0.1}", "params.yaml:train:mixup_prob must be >= 0, got -0.1."),
        ("train: {mixup_off_epoch: -1}", "params.yaml:train:mixup_off_epoch must be >= 0, got -1."),
        ("train: {drop_path: 1.0}", "params.yaml:train:drop_path must be < 1, got 1.0."),
        ("train: {ema_decay: 1.0}", "params.yaml:train:ema_decay must be < 1, got 1.0."),
        ("train: {ema_decay: -0.1}", "params.yaml:train:ema_decay must be >= 0, got -0.1."),
        ("train: {accumulate: 0}", "params.yaml:train:accumulate must be >= 1, got 0."),
        ("train: {batch_size: 10, accumulate: 3}", "params.yaml:train: batch_size (10) must be a multiple of"
                                                   " accumulate (3)."),
        ("train: {image_size: 7}", "params.yaml:train:image_size must be >= 8, got 7."),
        ("train: {crop_padding: -1}", "params.yaml:train:crop_padding must be >= 0, got -1."),
        ("train: {crop_padding: 32}", "params.yaml:train:crop_padding must be < 32, got 32."),
        ("train: {seed: -1}", "params.yaml:train:seed must be >= 0, got -1."),
        ("train: {cached_features: true}", "params.yaml:train: cached_features caches the frozen blocks' outputs, so it"
                                           " needs freeze_blocks > 0."),
        ("train: {freeze_blocks: 2, cached_features: true}\ntta: {shift: 2}", "params.yaml:tta:shift is 2, but a has"
         " train.cached_features: cached features hold the image and its mirror only, so set tta.shift to 0 or"
         " cached_features to false."),
        ("tta: {shift: -1}", "params.yaml:tta:shift must be >= 0, got -1."),
        ("predict: {batch_size: 0}", "params.yaml:predict:batch_size must be >= 1, got 0."),
        ("cv: {seed: -1}", "params.yaml:cv:seed must be >= 0, got -1."),
        ("data: {sample: {n_test: 0}}", "params.yaml:data:sample:n_test must be >= 1, got 0."),
        ("data: {source: sample, sample: {n_train: 99}}", "params.yaml:data:sample:n_train is 99, too few for the 5"
         " folds of cv.folds (10 classes in every fold): use at least 100, or fewer folds."),
        ("train: {mixup: 0.8, batch_size: 15}", "params.yaml:train for a: mixup/cutmix pairs images, but batch_size 15"
         " / accumulate 1 / 1 process(es) gives micro-batches of 15 images per process; make that an even whole"
         " number (or set mixup and cutmix to 0)."),
        ("train: {cutmix: 1.0, batch_size: 16}\nlauncher: {nproc_per_node: 3}", "params.yaml:train for a:"
         " mixup/cutmix pairs images, but batch_size 16 / accumulate 1 / 3 process(es) gives micro-batches of"
         " 5.33333 images per process"),
        ("backbones: {a: {model: m, epochs: 2, head_epochs: 2}}", "params.yaml:train for a: head_epochs (2) must be"
         " fewer than epochs (2)."),
        ("backbones: {a: {model: m, lr: -1.0}}", "params.yaml:backbones:a:lr must be > 0, got -1.0."),
    ],
)  # fmt: skip
def test_each_setting_out_of_its_range_is_rejected_alone(tmp_path, text, message):
    text = text if text.startswith("backbones") else ONE + text
    with pytest.raises(ConfigError) as excinfo:
        load_config(write(tmp_path, text + "\n"))
    assert str(excinfo.value).startswith(message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("backbones: {a: {model: resnet_99}}\n", "params.yaml:backbones:a:model: 'resnet_99' is not a timm model"),
        (ONE.replace(": m", ": resnet18") + "train: {optimizer: adamx}\n",
         "params.yaml:train:optimizer for a is 'adamx', which timm does not know; use one of"),
    ],
)  # fmt: skip
def test_the_choices_timm_registers_are_looked_up_in_its_registries(tmp_path, text, message):
    cfg = load_config(write(tmp_path, text))  # the cheap checks pass: the registries need torch
    with pytest.raises(ConfigError) as excinfo:
        check_registries(cfg)
    assert str(excinfo.value).startswith(message)


def test_registered_names_pass_the_registry_check(tmp_path):
    text = "backbones: {a: {model: convnext_tiny.fb_in22k_ft_in1k}, b: {model: resnet18, optimizer: sgd}}\n"
    check_registries(load_config(write(tmp_path, text)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (ONE + "cv: {folds: [0]}\n", "params.yaml:cv: folds must be [0, 1, ..., k-1] with k >= 2, got [0]."),
        (ONE + "cv: {folds: 2}\n", "params.yaml:cv:folds must be a list, got 2."),
        (ONE + "cv: {folds: [0, x]}\n", "params.yaml:cv:folds[1] must be int, got 'x'."),
        ("backbones: {a: {model: m, epochs: x}}\n", "params.yaml:backbones:a:epochs must be int, got 'x'."),
        (ONE + "train: {epochs: x}\n", "params.yaml:train:epochs must be int, got 'x'."),
        (ONE + "train: {lr: true}\n", "params.yaml:train:lr must be float, got True."),
        (ONE + "tta: {flip: true}\n", "params.yaml:tta:flip is not a known setting; known: hflip, shift."),
    ],
)  # fmt: skip
def test_bad_params_messages_name_the_file_the_key_and_the_value(tmp_path, text, message):
    with pytest.raises(ConfigError) as excinfo:
        load_config(write(tmp_path, text))
    assert str(excinfo.value) == message


@pytest.mark.parametrize("method", ["fitted", "equal", "best", "caruana", "stacking"])
def test_every_ensemble_method_is_accepted(tmp_path, method):
    cfg = load_config(write(tmp_path, ONE + f"ensemble: {{method: {method}}}\n"))
    assert cfg.ensemble.method == method and cfg.ensemble.fallback is True


def test_an_int_is_accepted_where_a_float_is_expected(tmp_path):
    cfg = load_config(write(tmp_path, ONE + "train: {lr: 1}\n"))
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float


def test_a_bad_model_name_message_says_what_a_timm_name_looks_like(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        load_config(write(tmp_path, "backbones: {a: {model: A}}\n"))
    assert str(excinfo.value).endswith(
        " .tag, e.g. convnext_tiny.fb_in22k_ft_in1k); see `timm.list_models('<pattern>')`."
    )


@pytest.mark.parametrize("text", [None, "backbones: [a\n"])
def test_a_missing_or_unparsable_params_yaml_is_rejected(tmp_path, text):
    path = tmp_path / "params.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert str(excinfo.value).startswith(f"{path}: cannot read it as YAML (")


def test_the_committed_params_yaml_sets_every_setting_so_no_default_decides_the_real_job():
    """The schema holds each setting's type, range and default; the real job states every value, so deleting a
    line from params.yaml is a visible change, not a silent switch to a default."""
    import dataclasses as dc

    from pipeline import config

    committed = yaml.safe_load(subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True,
                                              text=True, check=True).stdout)  # fmt: skip
    sections = {"launcher": config.LauncherConfig, "data": config.DataConfig, "cv": config.CvConfig,
                "train": config.TrainConfig, "tta": config.TtaConfig, "predict": config.PredictConfig,
                "ensemble": config.EnsembleConfig}  # fmt: skip
    assert set(sections) | {"backbones"} == set(committed)
    for name, schema in sections.items():
        missing = {f.name for f in dc.fields(schema)} - set(committed[name])
        assert not missing, f"params.yaml:{name} lacks {sorted(missing)}"
