"""The job's plan before the run: each DVC stage's work for a Config (images; training passes, held-out, test and
other forwards; FLOPs; bytes written) and its wall time estimated on named GPU classes and a CPU class.

Wall time of a stage = fixed costs (`FIXED`) + its FLOPs (`pipeline.flops`) at a class's achieved FLOP/s
(`GPU_CLASSES`, `CPU_CLASS`: `pipeline.throughput`'s one table, each figure with its source) + its bytes at
`FIXED`'s disk speeds. `pipeline.probe` measures the present device instead.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.config import Backbone, Config, DataConfig, TrainConfig, TtaConfig, load_config
from pipeline.flops import model_cost
from pipeline.throughput import FIXED, CpuClass, FixedClass, GpuClass, PlanError, arch_of

KAGGLE_IMAGES = (50_000, 300_000)  # labelled, test (data.source kaggle or local)
N_CLASSES = 10
IMAGE_BYTES = 32 * 32 * 3  # uint8, one row of the extracted arrays
SESSION_HOURS = 12  # a Kaggle Notebooks GPU session (T4 x2 or P100)
KAGGLE_FILES_BYTES = 104.64e6 + 609.75e6 + 575.10e3 + 3.04e6  # train.7z, test.7z, the two CSVs (FACTS.md)
KAGGLE_ZIP_BYTES = 715e6


# ---- the work of every stage -------------------------------------------------------------------------------------


@dataclass
class StageWork:
    """One DVC stage's work. FLOPs are split by the rate they run at; `fixed_seconds` is what no device speeds up."""

    name: str  # as DVC names it: train@<backbone>-<fold>
    backbone: str | None = None
    arch: str | None = None  # the timm architecture: which throughput applies
    images: int = 0  # distinct images the stage reads
    train_passes: int = 0  # forward + backward of one image
    eval_forwards: int = 0  # held-out scoring: images x views x (raw, EMA) x times scored
    predict_forwards: int = 0  # test images x views x fold models
    probe_forwards: int = 0  # head_init probe: the training images and their mirrors, once
    feature_forwards: int = 0  # features@: the frozen lower part on every image and its mirror
    train_flops: float = 0.0
    infer_flops: float = 0.0  # forwards of the model (the upper part on cached features)
    lower_flops: float = 0.0  # forwards of the frozen lower part (features@)
    bytes_written: float = 0.0
    bytes_hashed: float = 0.0  # DVC's outputs, hashed after the stage
    bytes_read: float = 0.0
    fixed_seconds: float = 0.0
    on_device: bool = False  # it runs models (on the GPU of a GPU class)
    cached: bool = False  # the backbone trains on cached features
    compiled: bool = False  # train.compile
    processes: int = 1  # launcher.nproc_per_node: the stage's model work is shared by this many GPUs
    note: str = ""  # its work that is not a model's, for the tables

    @property
    def flops(self) -> float:
        return self.train_flops + self.infer_flops + self.lower_flops

    def seconds(self, device: GpuClass | FixedClass | CpuClass) -> float:
        """Estimated wall time on `device`."""
        compute = 0.0
        if self.flops:
            rates = device.rates(self.arch, self.cached, self.compiled)
            compute = self.lower_flops / rates.lower_rate
            compute += (self.train_flops / rates.train + self.infer_flops / rates.infer) / self.processes
        init = FIXED["device_init"].value if self.on_device and device.is_gpu else 0.0
        disk = (self.bytes_written / FIXED["write"].value + self.bytes_hashed / FIXED["hash"].value
                + self.bytes_read / FIXED["read"].value)  # fmt: skip
        return self.fixed_seconds + init + compute + disk


COUNTS = ("images", "train_passes", "eval_forwards", "predict_forwards", "probe_forwards", "feature_forwards")


def image_counts(data: DataConfig) -> tuple[int, int]:
    """(labelled, test) images: Kaggle's competition, or the embedded sample's sizes."""
    return (data.sample.n_train, data.sample.n_test) if data.source == "sample" else KAGGLE_IMAGES


def tta_views(tta: TtaConfig) -> int:
    """Forwards per scored image: the image, its mirror with hflip, four shifted copies with shift > 0."""
    return 1 + int(tta.hflip) + (4 if tta.shift > 0 else 0)


def fold_size(n_images: int, n_folds: int, fold: int) -> int:
    """Held-out images of `fold` (stratified folds: within one image per class of this)."""
    return n_images // n_folds + int(fold < n_images % n_folds)


def images_per_epoch(n_train: int, cfg: TrainConfig) -> int:
    """Training images an epoch passes: its updates (`recipe.updates_per_epoch`) of full batches, the last one
    partial when the recipe keeps it."""
    from pipeline.recipe import updates_per_epoch  # here: importing the plan must not load torch

    return min(updates_per_epoch(n_train, cfg) * cfg.batch_size, n_train)


def padded(n_images: int, batch_size: int, compile: bool) -> int:
    """Forwards of `n_images` in batches: compiled inference pads the last batch to a full one (one shape)."""
    return math.ceil(n_images / batch_size) * batch_size if compile else n_images


def times_scored(cfg: TrainConfig) -> int:
    """How often `training.train_one_fold` scores the held-out images (`training.scored_after`)."""
    from pipeline.training import scored_after  # here: importing the plan must not load torch

    return sum(scored_after(epochs_done, cfg) for epochs_done in range(1, cfg.epochs + 1))


def plan_stages(cfg: Config) -> list[StageWork]:
    """Every DVC stage of `cfg`, in dvc.yaml's order, with its work."""
    start = FIXED["stage_start"].value
    n_train, n_test = image_counts(cfg.data)
    n_all = n_train + n_test
    arrays = n_all * IMAGE_BYTES + n_train * 8
    stages = [StageWork("settings", fixed_seconds=start), _download(cfg.data, n_all),
              StageWork("extract", images=n_all, bytes_written=arrays, bytes_hashed=arrays,
                        fixed_seconds=start + n_all * FIXED["decode"].value, note=f"{_count(n_all)} PNGs decoded"),
              StageWork("folds", images=n_train, bytes_written=n_train * 12, bytes_hashed=n_train * 12,
                        bytes_read=n_train * 8, fixed_seconds=start)]  # fmt: skip
    stages += [_features(b, cfg, n_train, n_test) for b in cfg.backbones.values()]
    stages += [_train(b, cfg, fold, n_train) for b in cfg.backbones.values() for fold in cfg.cv.folds]
    stages += [_predict(b, cfg, n_test) for b in cfg.backbones.values()]
    probs = n_test * (N_CLASSES * 4 + 8)
    stages += [StageWork("ensemble", images=n_all, bytes_written=probs, bytes_hashed=probs,
                         fixed_seconds=start + n_train * FIXED["ensemble"].value / KAGGLE_IMAGES[0],
                         note="fitting on the OOF logits (CPU)"),
               StageWork("submission", images=n_test, bytes_written=n_test * 14, bytes_hashed=n_test * 14,
                         fixed_seconds=start + 5)]  # fmt: skip
    return stages


def _download(data: DataConfig, n_all: int) -> StageWork:
    files = KAGGLE_FILES_BYTES * n_all / sum(KAGGLE_IMAGES)  # the sample's PNGs are about Kaggle's size
    transfer = KAGGLE_ZIP_BYTES / FIXED["download"].value if data.source == "kaggle" else 0.0
    zipped = files if data.source != "local" else 0.0  # kaggle and sample write the zip first
    notes = {"kaggle": f"{_bytes(KAGGLE_ZIP_BYTES)} from Kaggle", "local": "the four files copied"}
    note = notes.get(data.source, "the sample written")
    return StageWork("download", images=n_all, bytes_written=files + zipped, bytes_hashed=files,
                     fixed_seconds=FIXED["stage_start"].value + transfer, note=note)  # fmt: skip


def _features(backbone: Backbone, config: Config, n_train: int, n_test: int) -> StageWork:
    cfg, work = backbone.train, StageWork(f"features@{backbone.name}", backbone.name, arch_of(backbone))
    work.fixed_seconds = FIXED["stage_start"].value
    if not cfg.cached_features:  # a record saying so
        work.note = "a record only (no cached features)"
        return work
    cost = model_cost(backbone.model, cfg.image_size, cfg.freeze_blocks, True)
    n_all, batch = n_train + n_test, config.predict.batch_size
    work.images, work.on_device, work.cached, work.compiled = n_all, True, True, cfg.compile
    work.feature_forwards = 2 * (padded(n_train, batch, cfg.compile) + padded(n_test, batch, cfg.compile))
    work.lower_flops = work.feature_forwards * cost.lower
    work.bytes_written = work.bytes_hashed = n_all * cost.feature_bytes
    work.bytes_read = n_all * IMAGE_BYTES
    work.fixed_seconds += FIXED["model_build"].value + (FIXED["compile"].value if cfg.compile else 0.0)
    return work


def _train(backbone: Backbone, cfg: Config, fold: int, n_train: int) -> StageWork:
    t = backbone.train
    cost = model_cost(backbone.model, t.image_size, t.freeze_blocks, t.cached_features)
    n_valid = fold_size(n_train, cfg.cv.n_folds, fold)
    n_fit = n_train - n_valid
    per_epoch = images_per_epoch(n_fit, t)
    weights = 2 if t.ema_decay > 0 else 1  # raw and EMA are both scored
    work = StageWork(f"train@{backbone.name}-{fold}", backbone.name, arch_of(backbone), images=n_train, on_device=True,
                     cached=t.cached_features, compiled=t.compile, processes=cfg.launcher.nproc_per_node)  # fmt: skip
    work.train_passes = per_epoch * t.epochs
    scored = padded(n_valid, 2 * t.batch_size, t.compile)  # training.train_one_fold scores in batches of 2 x batch
    work.eval_forwards = scored * tta_views(cfg.tta) * weights * times_scored(t)
    work.probe_forwards = 2 * n_fit if t.head_init == "probe" else 0
    head_passes = per_epoch * t.head_epochs
    work.train_flops = head_passes * cost.head_train + (work.train_passes - head_passes) * cost.train
    work.infer_flops = (work.eval_forwards + work.probe_forwards) * cost.forward
    outputs = cost.state_bytes + n_valid * (N_CLASSES * 4 + 8)  # checkpoint, OOF logits with their ids
    resume = cost.state_bytes * weights + 2 * 4 * cost.trainable_params  # model, EMA, AdamW's two moments
    work.bytes_written, work.bytes_hashed = outputs + resume * t.epochs, outputs
    work.bytes_read = n_train * IMAGE_BYTES + (n_train * cost.feature_bytes if t.cached_features else 0)
    builds = 2 if t.cached_features else 1  # the initial model's frozen weights are checked against the features'
    probe = FIXED["probe_fit"].value * n_fit / 40_000 if t.head_init == "probe" else 0.0
    compiles = 2 * FIXED["compile"].value if t.compile else 0.0  # the step, the scoring (raw and EMA alike)
    work.fixed_seconds = FIXED["stage_start"].value + builds * FIXED["model_build"].value + probe + compiles
    return work


def _predict(backbone: Backbone, cfg: Config, n_test: int) -> StageWork:
    t, k = backbone.train, cfg.cv.n_folds
    cost = model_cost(backbone.model, t.image_size, t.freeze_blocks, t.cached_features)
    work = StageWork(f"predict@{backbone.name}", backbone.name, arch_of(backbone), images=n_test, on_device=True,
                     cached=t.cached_features, compiled=t.compile)  # fmt: skip
    work.predict_forwards = padded(n_test, cfg.predict.batch_size, t.compile) * tta_views(cfg.tta) * k
    work.infer_flops = work.predict_forwards * cost.forward
    work.bytes_written = work.bytes_hashed = n_test * (N_CLASSES * 2 + 8)  # float16 logits, ids
    work.bytes_read = n_test * (IMAGE_BYTES + (k * cost.feature_bytes if t.cached_features else 0))
    compiles = FIXED["compile"].value if t.compile else 0.0
    work.fixed_seconds = FIXED["stage_start"].value + k * FIXED["model_build"].value + compiles
    return work


# ---- the plan ----------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    stages: list[StageWork]
    classes: dict[str, GpuClass | FixedClass | CpuClass]
    source: str  # what the plan is of: the params file and its overrides
    images: tuple[int, int]

    def seconds(self, work: StageWork) -> dict[str, float]:
        return {name: work.seconds(device) for name, device in self.classes.items()}

    def groups(self) -> list[tuple[str, list[StageWork]]]:
        """Rows of the tables: the data stages, per backbone its features, its train stages and its predict, then
        ensemble and submission."""
        data = [s for s in self.stages if s.backbone is None and s.name not in ("ensemble", "submission")]
        rows = [("settings, download, extract, folds", data)]
        for name in dict.fromkeys(s.backbone for s in self.stages if s.backbone):
            mine = [s for s in self.stages if s.backbone == name]
            trains = [s for s in mine if s.name.startswith("train@")]
            rows += [(f"{name}: features@", [s for s in mine if s.name.startswith("features@")]),
                     (f"{name}: train@ x{len(trains)}", trains),
                     (f"{name}: predict@", [s for s in mine if s.name.startswith("predict@")])]  # fmt: skip
        return rows + [("ensemble, submission", [s for s in self.stages if s.name in ("ensemble", "submission")])]

    def total(self) -> dict:
        return _summed(self.stages, self.seconds)

    def to_json(self) -> str:
        stages = []
        for s in self.stages:
            entry = {"name": s.name} | ({"backbone": s.backbone} if s.backbone else {})
            entry |= {key: getattr(s, key) for key in COUNTS}
            entry |= {"flops": s.flops, "bytes_written": round(s.bytes_written), "seconds": _rounded(self.seconds(s))}
            stages.append(entry)
        classes = {name: {"label": c.label, "uncertainty": c.uncertainty, "source": c.source}
                   for name, c in self.classes.items()}  # fmt: skip
        summary = {"params": self.source, "images": {"labelled": self.images[0], "test": self.images[1]}}
        return json.dumps(summary | {"classes": classes, "stages": stages, "total": self.total()}, indent=2)

    def format_table(self) -> str:
        """The human table: per stage group its counts, TFLOPs, bytes written and time per class."""
        head = ["stage", "images", "train passes", "held-out fwd", "test fwd", "other fwd", "TFLOP", "written",
                *self.classes]  # fmt: skip
        rows = []
        for label, stages in [*self.groups(), ("total", self.stages)]:
            s = _summed(stages, self.seconds)
            rows.append([label, _count(s["images"]), _count(s["train_passes"]),
                         _count(s["eval_forwards"]), _count(s["predict_forwards"]),
                         _count(s["probe_forwards"] + s["feature_forwards"]), f"{s['flops'] / 1e12:,.0f}",
                         _bytes(s["bytes_written"]), *(_duration(v) for v in s["seconds"].values())])  # fmt: skip
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join([str(r[0]).ljust(widths[0])] + [str(r[i]).rjust(widths[i]) for i in range(1, len(r))])
                 for r in [head, *rows]]  # fmt: skip
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(-1, "-" * len(lines[0]))
        legend = [f"  {c.name}: {c.label}, +-{c.uncertainty:.0%}; {c.source}" for c in self.classes.values()]
        totals = ", ".join(f"{name} {_duration(v)} ({v:,.0f} s)" for name, v in self.total()["seconds"].items())
        n_train, n_test = self.images
        return "\n".join([f"plan of {self.source}: {n_train:,} labelled and {n_test:,} test images", *lines,
                          f"total: {totals}", "",
                          "times per class (one device, stages one after another as `dvc repro` runs them):",
                          *legend])  # fmt: skip

    def format_markdown(self) -> str:
        """The README's table: stage groups, their work, PFLOPs, bytes written and time per class."""
        lines = [f"| stage | work | PFLOP | written | {' | '.join(self.classes)} |",
                 "|---|---|---|---|" + "---|" * len(self.classes)]  # fmt: skip
        for label, stages in [*self.groups(), ("**total**", self.stages)]:
            s = _summed(stages, self.seconds)
            times = [_duration(v) for v in s["seconds"].values()]
            if label == "**total**":
                times = [f"**{t}**" for t in times]
            pflop = f"{s['flops'] / 1e15:.1f}" if s["flops"] else "–"
            work = _work(s) or ", ".join(w.note for w in stages if w.note) or "start-up"
            lines.append(f"| {label} | {work} | {pflop} | {_bytes(s['bytes_written'])} | {' | '.join(times)} |")
        return "\n".join(lines)


def _summed(stages: list[StageWork], seconds) -> dict:
    """The stages' counts, FLOPs, bytes and seconds summed; `images`: the most any of them reads."""
    total = {key: sum(getattr(s, key) for s in stages) for key in COUNTS} | {"images": max(s.images for s in stages)}
    total |= {"flops": sum(s.flops for s in stages), "bytes_written": round(sum(s.bytes_written for s in stages))}
    per_stage = [seconds(s) for s in stages]
    return total | {"seconds": _rounded({name: sum(p[name] for p in per_stage) for name in per_stage[0]})}


def _rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 1) for name, value in seconds.items()}


def _work(s: dict) -> str:
    parts = [(s["train_passes"], "training passes"), (s["eval_forwards"], "held-out forwards"),
             (s["predict_forwards"], "test forwards"), (s["probe_forwards"], "probe forwards"),
             (s["feature_forwards"], "frozen-part forwards")]  # fmt: skip
    return ", ".join(f"{_count(n)} {what}" for n, what in parts if n)


def _count(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k" if n >= 1e4 else f"{n:,.0f}"


def _bytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else "<1 MB"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return "<1 min"
    return f"{seconds / 60:.0f} min" if seconds < 100 * 60 else f"{seconds / 3600:.1f} h"


def make_plan(cfg: Config, classes: dict[str, GpuClass | FixedClass | CpuClass], source: str = "params.yaml") -> Plan:
    return Plan(plan_stages(cfg), classes, source, image_counts(cfg.data))


# ---- the settings planned --------------------------------------------------------------------------------------


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """params.yaml's mapping with `dvc exp run -S` style overrides applied in order: `key=value` (value read as
    YAML), `+key=value`, `++key=value`, `~key` (removed); keys are dotted paths."""
    raw = json.loads(json.dumps(raw))
    for item in overrides:
        remove = item.startswith("~")
        key, _, value = item.lstrip("~+").partition("=")
        if not key or (not remove and "=" not in item):
            raise PlanError(f"-S {item!r}: expected key=value, +key=value or ~key.")
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PlanError(f"-S {item!r}: {part} is not a section of params.yaml.")
        if remove:
            node.pop(leaf, None)
        else:
            node[leaf] = yaml.safe_load(value)
    return raw


def load_planned_config(params: Path, overrides: list[str]) -> Config:
    """The Config of `params` with `overrides`, checked as every stage checks it (errors name params.yaml)."""
    raw = yaml.safe_load(Path(params).read_text()) or {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(yaml.safe_dump(apply_overrides(raw, overrides), sort_keys=False))
        return load_config(path)


def make_demo_settings(repo: Path, data: str) -> list[str]:
    """The `-S` settings `make demo DATA=<data>` runs with: the CPU recipe's one home is the Makefile."""
    commands = subprocess.run(["make", "--dry-run", "demo", f"DATA={data}"], cwd=repo, capture_output=True,
                              text=True, check=True).stdout  # fmt: skip
    words = shlex.split(next(line for line in commands.splitlines() if "dvc exp run" in line))
    return [words[i + 1] for i, word in enumerate(words) if word == "-S"]


# a job for one Kaggle Notebooks session (12 h) on one T4 (or the P100), with margin: `dvc exp run` these over
# params.yaml. Kaggle attaches the competition's four files at /kaggle/input/cifar-10 (no token needed)
KAGGLE_T4_PROFILE = ["data.source=local", "data.path=/kaggle/input/cifar-10", "cv.folds=[0,1,2]"]
# the committed job against the way it scored its held-out images before, and settings that bring it to 35 min
# on an H100
VARIANTS = {
    "held-out images scored every epoch (as before)": ["train.eval_every=1"],
    "as committed": [],
    "no mirror view": ["tta.hflip=false"],
    "three folds": ["cv.folds=[0,1,2]"],
    "160 px": ["train.image_size=160"],
}
H100_35_MIN = ("three folds", "160 px")


def format_variants(params: Path, classes: dict) -> str:
    """`VARIANTS` of `params` as markdown: their settings, held-out forwards per backbone and total times."""
    lines = [f"| settings over params.yaml | held-out forwards a backbone | {' | '.join(classes)} |",
             "|---|---|" + "---|" * len(classes)]  # fmt: skip
    for label, overrides in VARIANTS.items():
        result = make_plan(load_planned_config(params, overrides), classes)
        evals = sum(s.eval_forwards for s in result.stages) / max(1, len({s.backbone for s in result.stages} - {None}))
        settings = ": " + ", ".join(f"`{o}`" for o in overrides) if overrides else ""
        times = " | ".join(_duration(v) for v in result.total()["seconds"].values())
        lines.append(f"| {label}{settings} | {_count(evals)} | {times} |")
    return "\n".join(lines)
