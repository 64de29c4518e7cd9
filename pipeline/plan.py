"""The job's plan before the run: each DVC stage's work for a Config (images; training passes, held-out, test and
other forwards; FLOPs; bytes written) and its wall time estimated on named GPU classes and a CPU class.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on the real timm architecture, built with
pretrained=False (no weights needed), at `train.image_size`, on the CPU at batch 2: forward + backward with
requires_grad as training sets it (`recipe.freeze_lower_blocks`; only the classifier in head-only epochs; only
`features.UpperPart` on cached features), forward only for scoring and predicting. FlopCounterMode counts matrix
products and convolutions (mm, addmm, bmm, convolution, their backward, attention) and nothing else: not elementwise
work (activations, batch and layer norm, residual adds, drop path, mixup, the optimizer's and the EMA's updates),
pooling, or the upscaling of the 32x32 images. The throughput table is calibrated in the same FLOPs, so that work is
inside the achieved FLOP/s. Its formula for a convolution's weight gradient ignores `groups` (torch 2.14; fixed
upstream in pytorch/pytorch#183405): a depthwise convolution counted C times over made convnext_tiny's training
pass 8.7x its forward, so `_conv_backward_flop` replaces it. Checked: convnext_tiny at 224 px counts 8.91 GFLOP
forward (timm publishes 4.47 GMACs = 8.94 GFLOP) and 26.7 GFLOP per training pass (3.0x).

Wall time of a stage = fixed costs (`FIXED`) + its FLOPs at a class's achieved FLOP/s (`GPU_CLASSES`, `CPU_CLASS`:
one table, each figure with its source) + bytes at `FIXED`'s disk speeds. `probe_rates` measures the present device
instead: a few updates of the real training loop and a few inference batches per backbone.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.config import Backbone, Config, DataConfig, TrainConfig, TtaConfig, load_config

KAGGLE_IMAGES = (50_000, 300_000)  # labelled, test (data.source kaggle or local)
N_CLASSES = 10
IMAGE_BYTES = 32 * 32 * 3  # uint8, one row of the extracted arrays
SESSION_HOURS = 12  # a Kaggle Notebooks GPU session (T4 x2 or P100)


# ---- the throughput table ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rates:
    """Achieved FLOP/s, in FlopCounterMode's FLOPs: of training passes (forward, backward, update) and of forwards."""

    train: float
    infer: float


@dataclass(frozen=True)
class TimmBenchmark:
    """An architecture in timm's published AMP benchmarks (pytorch-image-models results/, channels_last): training
    on an RTX 3090 (benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv) and inference on an RTX 4090
    (benchmark-infer-amp-nhwc-pt240-cu124-rtx4090.csv), img/s at their sizes, with the GFLOP per image this module
    counts there (whole model trained, `model_cost`)."""

    train_img_s: float
    train_px: int
    train_gflop: float
    infer_img_s: float
    infer_px: int
    infer_gflop: float

    def rates(self) -> Rates:
        return Rates(self.train_img_s * self.train_gflop * 1e9, self.infer_img_s * self.infer_gflop * 1e9)


TIMM_BENCHMARKS = {  # an architecture not listed is taken to run like resnet50 (then the uncertainty is larger)
    "resnet50": TimmBenchmark(1218.01, 224, 24.287, 5088.39, 224, 8.174),
    "resnet18": TimmBenchmark(3481.78, 224, 10.645, 18247.43, 224, 3.627),
    "convnext_tiny": TimmBenchmark(819.24, 224, 26.700, 4844.53, 224, 8.910),
    "convnext_nano": TimmBenchmark(1249.89, 224, 14.645, 6328.61, 224, 4.890),
    "tf_efficientnetv2_s": TimmBenchmark(488.25, 300, 31.809, 2589.86, 300, 10.613),
    "efficientnetv2_s": TimmBenchmark(559.15, 288, 28.212, 3014.62, 288, 9.413),
    "tf_efficientnet_lite0": TimmBenchmark(2134.89, 224, 2.282, 9765.44, 224, 0.768),
    "tf_efficientnet_lite1": TimmBenchmark(1443.47, 240, 3.569, 6635.79, 240, 1.198),
    "tf_efficientnet_lite2": TimmBenchmark(1121.02, 260, 5.122, 5161.30, 260, 1.717),
}
# ResNet-50 AMP training img/s, one GPU, from Lambda's benchmark (lambdal/deeplearning-benchmark,
# pytorch/pytorch-train-throughput-fp16.csv: NVIDIA's DeepLearningExamples code, the same on every GPU). A class's
# throughput is timm's figure on the 3090 (training) or 4090 (inference) times the class's ResNet-50 figure over that
# GPU's: the architecture's efficiency comes from timm, the GPU's speed from Lambda's one code on every GPU.
LAMBDA_RN50_3090, LAMBDA_RN50_4090 = 905.0, 1301.0
LAMBDA = "Lambda's ResNet-50 AMP training benchmark"


@dataclass(frozen=True)
class GpuClass:
    name: str
    label: str
    amp: str  # what pipeline.batches.autocast_dtype picks there: bf16 from sm_80, else fp16 with a GradScaler
    peak_tflops: float  # dense FP16/BF16 tensor (no sparsity), NVIDIA's datasheet: for the implied efficiency only
    rn50_img_s: float
    source: str  # of rn50_img_s
    uncertainty: float  # relative (0.4: the time may be 40% off either way)
    is_gpu: bool = True

    def rates(self, arch: str) -> Rates:
        reference = TIMM_BENCHMARKS.get(arch, TIMM_BENCHMARKS["resnet50"]).rates()
        return Rates(reference.train * self.rn50_img_s / LAMBDA_RN50_3090,
                     reference.infer * self.rn50_img_s / LAMBDA_RN50_4090)  # fmt: skip


GPU_CLASSES = {
    "T4": GpuClass("T4", "NVIDIA T4 16 GB (Turing; Kaggle, Colab)", "fp16", 65, 295,
                   "derived: NVIDIA DeepLearningExamples' ResNet-50 AMP inference at batch 256, T4 1,198 / V100 3,382"
                   " img/s = 0.354, times Lambda's V100 833 (bandwidth scaling, 320/900 GB/s, gives 296 too)", 0.4),
    "P100": GpuClass("P100", "NVIDIA P100 PCIe 16 GB (Pascal, no tensor cores; Kaggle)", "fp16", 18.7, 362,
                     "derived: Dell EMC's ResNet-50 FP16 training, V100-SXM2 2.03x P100-SXM2 (TensorFlow), on"
                     " Lambda's V100 833, x 18.7/21.2 TFLOPS for the PCIe card; GEMM-heavy models (convnext) gain"
                     " more from tensor cores than ResNet-50, so this may flatter the P100", 0.5),
    "V100": GpuClass("V100", "NVIDIA V100 SXM2 16 GB", "fp16", 125, 833, LAMBDA + " (LambdaCloud V100 16GB)", 0.3),
    "L4": GpuClass("L4", "NVIDIA L4 24 GB (Ada)", "bf16", 121, 387,
                   "derived: Lambda's RTX 4090 1,301 (same Ada architecture) x 300/1,008 GB/s memory bandwidth: Lambda's"
                   " ResNet-50 figures follow memory bandwidth across 11 GPUs within 27%", 0.5),
    "A10G": GpuClass("A10G", "NVIDIA A10G 24 GB (AWS g5, Ampere)", "bf16", 70, 638,
                     LAMBDA + " on the A10, which has the A10G's memory and bandwidth (600 GB/s) and more tensor"
                     " FLOPS (125 vs ~70: Baseten's A10 vs A10G comparison)", 0.35),
    "A100": GpuClass("A100", "NVIDIA A100 80 GB SXM4", "bf16", 312, 1582,
                     LAMBDA + " (A100 80GB SXM4; 40 GB PCIe: 1,396)", 0.3),
    "H100": GpuClass("H100", "NVIDIA H100 80 GB SXM5", "bf16", 989, 2616,
                     LAMBDA + " (H100 80GB SXM5, 2,616-2,791 across four systems; PCIe card: 1,866)", 0.3),
}


@dataclass(frozen=True)
class FixedClass:
    """A device whose achieved FLOP/s were measured (or probed) directly, per architecture or for all."""

    name: str
    label: str
    rates_by_arch: dict[str, Rates]  # "*": any architecture
    source: str
    uncertainty: float
    is_gpu: bool = False

    def rates(self, arch: str) -> Rates:
        return self.rates_by_arch.get(arch) or self.rates_by_arch["*"]


CPU_CLASS = FixedClass(
    "CPU", "CPU, 2-core AVX2 (AMD EPYC, no avx512f; fp32, channels_last)",
    {"*": Rates(train=305 * 0.1032e9, infer=80 * 0.2950e9)},
    "measured on this host kind (README, Benchmarks): forwards, features@ tf_efficientnet_lite1 @128, stem + 6 blocks"
    " (0.295 GFLOP): 11,120 views (5,560 images and mirrors) in its 152 s stage of benchmarks/real_accuracy.py,"
    " start-up included, ~80 views/s = 23.6 GFLOP/s; training, tf_efficientnet_lite2 @128 on cached features,"
    " 6 blocks frozen, batch 64: 305 img/s x 0.103 GFLOP = 31.5 GFLOP/s (benchmarks/train_throughput.py). Other"
    " architectures may differ 2x; AVX-512 hosts are 2-4x faster", 0.5,
)  # fmt: skip
ALL_CLASSES = {**GPU_CLASSES, "CPU": CPU_CLASS}
DEFAULT_CLASSES = ("T4", "L4", "A10G", "A100", "H100")


@dataclass(frozen=True)
class Fixed:
    value: float
    unit: str
    source: str


FIXED = {  # every cost that is not FLOPs: assumptions unless a source is named
    "stage_start": Fixed(10, "s per stage", "assumption: Python with torch and timm (4-14 s here, idle to loaded),"
                         " DVC's per-stage checks"),
    "device_init": Fixed(10, "s per GPU stage", "assumption: CUDA context, cuDNN autotuning of the first batches"),
    "model_build": Fixed(3, "s per model", "assumption: timm model built, weights from the local hub cache or a"
                         " checkpoint (the first download of hub weights, 0.1-0.2 GB a model, is not counted)"),
    "probe_fit": Fixed(30, "s per 40,000 images", "assumption: the linear probe's LogisticRegression, CPU"),
    "decode": Fixed(67.2 / 350_000, "s per image", "FACTS.md: extract streams train.7z in 8.2 s and test.7z in 59 s"
                    " on the 2-core CPU (CPU-bound: no GPU helps)"),
    "ensemble": Fixed(60, "s per 50,000 labelled images", "assumption: every method's nested CV and stacking's"
                      " inner CV on the OOF logits, CPU"),
    "download": Fixed(50e6, "bytes/s", "assumption: Kaggle's download of cifar-10.zip (715 MB)"),
    "write": Fixed(200e6, "bytes/s", "assumption: a cloud VM's disk"),
    "hash": Fixed(500e6, "bytes/s", "assumption: DVC's md5 of each output (with the cache as hardlinks, no copy)"),
    "read": Fixed(1e9, "bytes/s", "assumption: arrays and cached features from the page cache or an NVMe disk"),
}
KAGGLE_FILES_BYTES = 104.64e6 + 609.75e6 + 575.10e3 + 3.04e6  # train.7z, test.7z, the two CSVs (FACTS.md)
KAGGLE_ZIP_BYTES = 715e6


# ---- FLOPs of one backbone -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCost:
    """FLOPs per image of what a backbone's stages run, and the sizes of what they write."""

    train: float  # one training pass: forward + backward (the upper part only with cached features)
    head_train: float  # one pass of a head-only epoch
    forward: float  # one scoring or predicting forward (the upper part with cached features)
    lower: float  # one forward of the frozen lower part (features@; 0 without cached features)
    feature_shape: tuple[int, ...]  # (C, H, W) of a cached feature map; () without cached features
    state_bytes: int  # the state dict (a checkpoint, the EMA copy)
    trainable_params: int  # what the optimizer keeps moments for

    @property
    def feature_bytes(self) -> int:
        """One image's cached features: both views, float16."""
        return 2 * 2 * math.prod(self.feature_shape) if self.feature_shape else 0


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, groups, output_mask, out_shape=None, **kwargs) -> int:  # fmt: skip
    """torch's formula for aten.convolution_backward with the weight gradient divided by `groups`."""
    from torch.utils.flop_counter import conv_flop_count

    def t(shape):
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:
        pair = (t(grad_out_shape), t(x_shape)) if transposed else (t(x_shape), t(grad_out_shape))
        flops += conv_flop_count(*pair, t(out_shape[1]), transposed=False) // groups
    return flops


def count_flops(run) -> int:
    """FLOPs of what `run()` does (FlopCounterMode, with the grouped convolution's weight gradient counted right)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        run()
    return counter.get_total_flops()


@functools.cache
def model_cost(model_name: str, image_size: int, freeze_blocks: int = 0, cached: bool = False) -> ModelCost:
    """The FLOPs of `model_name` (timm name, optional tag) at `image_size`, trained as `train.freeze_blocks` and
    `train.cached_features` say; counted once per process (seconds on the CPU: batch 2, no weights)."""
    import torch

    from pipeline.features import UpperPart, lower_part
    from pipeline.models import create_backbone
    from pipeline.recipe import freeze_lower_blocks

    model = create_backbone(model_name, "scratch")
    freeze_lower_blocks(model, freeze_blocks)
    images = torch.randn(2, 3, image_size, image_size)
    lower, inputs, shape = 0, images, ()
    if cached:
        lower_blocks = lower_part(model, freeze_blocks).eval()
        with torch.no_grad():
            lower = count_flops(lambda: lower_blocks(images)) / 2
            inputs = lower_blocks(images)
        shape = tuple(inputs.shape[1:])
        model = UpperPart(model, freeze_blocks)
    trainable = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        forward = count_flops(lambda: model.eval()(inputs)) / 2
    model.train()
    train = count_flops(lambda: model(inputs).float().sum().backward()) / 2
    classifier = (model.model if cached else model).get_classifier()
    for param in trainable:
        param.requires_grad_(any(param is p for p in classifier.parameters()))
    head_train = count_flops(lambda: model(inputs).float().sum().backward()) / 2
    state = (model.model if cached else model).state_dict()
    state_bytes = sum(t.numel() * t.element_size() for t in state.values())
    return ModelCost(train, head_train, forward, lower, shape, state_bytes, sum(p.numel() for p in trainable))


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
    infer_flops: float = 0.0
    bytes_written: float = 0.0
    bytes_hashed: float = 0.0  # DVC's outputs, hashed after the stage
    bytes_read: float = 0.0
    fixed_seconds: float = 0.0
    on_device: bool = False  # it runs models (on the GPU of a GPU class)
    processes: int = 1  # launcher.nproc_per_node: the stage's model work is shared by this many GPUs

    @property
    def flops(self) -> float:
        return self.train_flops + self.infer_flops

    def seconds(self, device: GpuClass | FixedClass) -> float:
        """Estimated wall time on `device`."""
        compute = 0.0
        if self.flops:
            rates = device.rates(self.arch)
            compute = (self.train_flops / rates.train + self.infer_flops / rates.infer) / self.processes
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
    """Training images an epoch passes: `recipe.build_recipe` drops the last partial batch with mixup, cutmix or
    compile (when there is a full batch), and keeps it otherwise."""
    drop_last = (cfg.mixup > 0 or cfg.cutmix > 0 or cfg.compile) and n_train >= cfg.batch_size
    return n_train // cfg.batch_size * cfg.batch_size if drop_last else n_train


def times_scored(cfg: TrainConfig) -> int:
    """How often `training.train_one_fold` scores the held-out images: after the last epoch, and every
    `eval_every` epochs."""
    return len({cfg.epochs} | (set(range(cfg.eval_every, cfg.epochs + 1, cfg.eval_every)) if cfg.eval_every else set()))


def plan_stages(cfg: Config) -> list[StageWork]:
    """Every DVC stage of `cfg`, in dvc.yaml's order, with its work."""
    start = FIXED["stage_start"].value
    n_train, n_test = image_counts(cfg.data)
    n_all = n_train + n_test
    arrays = n_all * IMAGE_BYTES + n_train * 8
    stages = [StageWork("settings", fixed_seconds=start), _download(cfg.data, n_all),
              StageWork("extract", images=n_all, bytes_written=arrays, bytes_hashed=arrays,
                        fixed_seconds=start + n_all * FIXED["decode"].value),
              StageWork("folds", images=n_train, bytes_written=n_train * 12, bytes_hashed=n_train * 12,
                        bytes_read=n_train * 8, fixed_seconds=start)]  # fmt: skip
    stages += [_features(b, n_train, n_test) for b in cfg.backbones.values()]
    stages += [_train(b, cfg, fold, n_train) for b in cfg.backbones.values() for fold in cfg.cv.folds]
    stages += [_predict(b, cfg, n_test) for b in cfg.backbones.values()]
    probs = n_test * (N_CLASSES * 4 + 8)
    stages += [StageWork("ensemble", images=n_all, bytes_written=probs, bytes_hashed=probs,
                         fixed_seconds=start + n_train * FIXED["ensemble"].value / KAGGLE_IMAGES[0]),
               StageWork("submission", images=n_test, bytes_written=n_test * 14, bytes_hashed=n_test * 14,
                         fixed_seconds=start + 5)]  # fmt: skip
    return stages


def _download(data: DataConfig, n_all: int) -> StageWork:
    files = KAGGLE_FILES_BYTES * n_all / sum(KAGGLE_IMAGES)  # the sample's PNGs are about Kaggle's size
    transfer = KAGGLE_ZIP_BYTES / FIXED["download"].value if data.source == "kaggle" else 0.0
    zipped = files if data.source != "local" else 0.0  # kaggle and sample write the zip first
    return StageWork("download", images=n_all, bytes_written=files + zipped, bytes_hashed=files,
                     fixed_seconds=FIXED["stage_start"].value + transfer)  # fmt: skip


def _features(backbone: Backbone, n_train: int, n_test: int) -> StageWork:
    cfg, work = backbone.train, StageWork(f"features@{backbone.name}", backbone.name, _arch(backbone))
    work.fixed_seconds = FIXED["stage_start"].value
    if not cfg.cached_features:  # a record saying so
        return work
    cost = model_cost(backbone.model, cfg.image_size, cfg.freeze_blocks, True)
    n_all = n_train + n_test
    work.images, work.feature_forwards, work.on_device = n_all, 2 * n_all, True
    work.infer_flops = work.feature_forwards * cost.lower
    work.bytes_written = work.bytes_hashed = n_all * cost.feature_bytes
    work.bytes_read = n_all * IMAGE_BYTES
    work.fixed_seconds += FIXED["model_build"].value
    return work


def _train(backbone: Backbone, cfg: Config, fold: int, n_train: int) -> StageWork:
    t = backbone.train
    cost = model_cost(backbone.model, t.image_size, t.freeze_blocks, t.cached_features)
    n_valid = fold_size(n_train, cfg.cv.n_folds, fold)
    n_fit = n_train - n_valid
    per_epoch = images_per_epoch(n_fit, t)
    weights = 2 if t.ema_decay > 0 else 1  # raw and EMA are both scored
    work = StageWork(f"train@{backbone.name}-{fold}", backbone.name, _arch(backbone), images=n_train, on_device=True,
                     processes=cfg.launcher.nproc_per_node)  # fmt: skip
    work.train_passes = per_epoch * t.epochs
    work.eval_forwards = n_valid * tta_views(cfg.tta) * weights * times_scored(t)
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
    work.fixed_seconds = FIXED["stage_start"].value + builds * FIXED["model_build"].value + probe
    return work


def _predict(backbone: Backbone, cfg: Config, n_test: int) -> StageWork:
    t, k = backbone.train, cfg.cv.n_folds
    cost = model_cost(backbone.model, t.image_size, t.freeze_blocks, t.cached_features)
    work = StageWork(f"predict@{backbone.name}", backbone.name, _arch(backbone), images=n_test, on_device=True)
    work.predict_forwards = n_test * tta_views(cfg.tta) * k
    work.infer_flops = work.predict_forwards * cost.forward
    work.bytes_written = work.bytes_hashed = n_test * (N_CLASSES * 2 + 8)  # float16 logits, ids
    work.bytes_read = n_test * (IMAGE_BYTES + (k * cost.feature_bytes if t.cached_features else 0))
    work.fixed_seconds = FIXED["stage_start"].value + k * FIXED["model_build"].value
    return work


def _arch(backbone: Backbone) -> str:
    return backbone.model.split(".")[0]


# ---- the plan ----------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    stages: list[StageWork]
    classes: dict[str, GpuClass | FixedClass]
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
            rows.append([label, _count(max((w.images for w in stages), default=0)), _count(s["train_passes"]),
                         _count(s["eval_forwards"]), _count(s["predict_forwards"]),
                         _count(s["probe_forwards"] + s["feature_forwards"]), f"{s['flops'] / 1e12:,.0f}",
                         _bytes(s["bytes_written"]), *(_duration(v) for v in s["seconds"].values())])  # fmt: skip
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in [head, *rows]]  # fmt: skip
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(-1, "-" * len(lines[0]))
        legend = [f"  {c.name}: {c.label}, +-{c.uncertainty:.0%}; {c.source}" for c in self.classes.values()]
        n_train, n_test = self.images
        return "\n".join([f"plan of {self.source}: {n_train:,} labelled and {n_test:,} test images", *lines, "",
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
            lines.append(f"| {label} | {_work(s)} | {pflop} | {_bytes(s['bytes_written'])} | {' | '.join(times)} |")
        return "\n".join(lines)


def _summed(stages: list[StageWork], seconds) -> dict:
    total = {key: sum(getattr(s, key) for s in stages) for key in COUNTS}
    total |= {"flops": sum(s.flops for s in stages), "bytes_written": round(sum(s.bytes_written for s in stages))}
    per_stage = [seconds(s) for s in stages]
    return total | {"seconds": _rounded({name: sum(p[name] for p in per_stage) for name in per_stage[0]})}


def _rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 1) for name, value in seconds.items()}


def _work(s: dict) -> str:
    parts = [(s["train_passes"], "training passes"), (s["eval_forwards"], "held-out forwards"),
             (s["predict_forwards"], "test forwards"), (s["probe_forwards"], "probe forwards"),
             (s["feature_forwards"], "frozen-part forwards")]  # fmt: skip
    return ", ".join(f"{_count(n)} {what}" for n, what in parts if n) or "CPU work, start-up"


def _count(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k" if n >= 1e4 else f"{n:,.0f}"


def _bytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else "<1 MB"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return "<1 min"
    return f"{seconds / 60:.0f} min" if seconds < 100 * 60 else f"{seconds / 3600:.1f} h"


def make_plan(cfg: Config, classes: dict[str, GpuClass | FixedClass], source: str = "params.yaml") -> Plan:
    return Plan(plan_stages(cfg), classes, source, image_counts(cfg.data))


def select_classes(names: str | None, default: tuple[str, ...] = DEFAULT_CLASSES) -> dict:
    """The classes named in `names` ("T4,A100", or "all"), `default` when None."""
    if names == "all":
        return dict(ALL_CLASSES)
    wanted = default if names is None else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in ALL_CLASSES]
    if unknown:
        raise ValueError(f"unknown device class {', '.join(unknown)}; known: {', '.join(ALL_CLASSES)} (or all)")
    return {name: ALL_CLASSES[name] for name in wanted}


def format_assumptions() -> str:
    """The throughput table and the fixed costs as markdown, with their sources."""
    lines = ["| class | AMP | peak TFLOPS | ResNet-50 train img/s | convnext_tiny train / infer img/s @224 | +- |"
             " source |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    cost = TIMM_BENCHMARKS["convnext_tiny"]
    for c in GPU_CLASSES.values():
        rates = c.rates("convnext_tiny")
        train, infer = rates.train / 1e9 / cost.train_gflop, rates.infer / 1e9 / cost.infer_gflop
        lines.append(f"| {c.label} | {c.amp} | {c.peak_tflops:g} | {c.rn50_img_s:,.0f} | {train:,.0f} / {infer:,.0f}"
                     f" | {c.uncertainty:.0%} | {c.source} |")  # fmt: skip
    cpu = CPU_CLASS.rates("*")
    lines.append(f"| {CPU_CLASS.label} | – | – | – | {cpu.train / 1e9:.1f} / {cpu.infer / 1e9:.1f} GFLOP/s (any"
                 f" model) | {CPU_CLASS.uncertainty:.0%} | {CPU_CLASS.source} |")  # fmt: skip
    lines += ["", "| fixed cost | value | source |", "|---|---|---|"]
    lines += [f"| {name} | {f.value:.3g} {f.unit} | {f.source} |" for name, f in FIXED.items()]
    return "\n".join(lines)


# ---- the settings planned --------------------------------------------------------------------------------------


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """params.yaml's mapping with `dvc exp run -S` style overrides applied in order: `key=value` (value read as
    YAML), `+key=value`, `++key=value`, `~key` (removed); keys are dotted paths."""
    raw = json.loads(json.dumps(raw))
    for item in overrides:
        remove = item.startswith("~")
        key, _, value = item.lstrip("~+").partition("=")
        if not key or (not remove and "=" not in item):
            raise ValueError(f"override {item!r}: expected key=value, +key=value or ~key")
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
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


# a job for one Kaggle Notebooks session (12 h) on one T4 (or the P100): `dvc exp run` these over params.yaml
KAGGLE_T4_PROFILE = [
    "cv.folds=[0,1,2]",
    "train.image_size=160",
    "train.epochs=8",
    "train.mixup_off_epoch=6",
]


# ---- measuring the present device --------------------------------------------------------------------------------


def probe_rates(backbone: Backbone, tta: TtaConfig, predict_batch: int, device, *, updates: int = 12,
                batches: int = 3) -> Rates:  # fmt: skip
    """Achieved FLOP/s on `device` of `backbone`'s training loop (`training.train_epoch`, `updates` updates after
    two of warm-up) and of its forwards (`predict_batch` images x `batches`, after one batch), at its configured
    size, on random images (or random cached features), from scratch weights: tens of seconds on a GPU."""
    import numpy as np
    import torch

    from pipeline.distributed import World
    from pipeline.features import UpperPart
    from pipeline.folds import Split
    from pipeline.inference import predict_feature_logits, predict_logits
    from pipeline.models import input_spec
    from pipeline.recipe import build_recipe
    from pipeline.training import train_epoch

    cfg = dataclasses.replace(backbone.train, weights="scratch", head_init="random", head_epochs=0)
    cost = model_cost(backbone.model, cfg.image_size, cfg.freeze_blocks, cfg.cached_features)
    rng = np.random.default_rng(0)
    n = cfg.batch_size * (updates + 2)
    images = rng.integers(0, 256, (max(n, predict_batch * (batches + 1)), 32, 32, 3), dtype=np.uint8)
    labels = np.arange(len(images)) % N_CLASSES
    features = None
    if cfg.cached_features:
        features = rng.standard_normal((len(images), 2, *cost.feature_shape)).astype(np.float16)
    split = Split(images, labels, images[:predict_batch], labels[:predict_batch], np.arange(1, predict_batch + 1),
                  train_features=features, valid_features=None if features is None else features[:predict_batch])
    world = World(device=device)
    recipe = build_recipe(backbone.model, cfg, len(images), world)
    spec = input_spec(recipe.model)

    def timed(run) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    train_epoch(recipe, split, cfg, world, 0, spec, name="probe warm-up", max_updates=2)
    train_seconds = timed(lambda: train_epoch(recipe, split, cfg, world, 0, spec, name="probe", max_updates=updates))
    views = 1 + int(tta.hflip)  # the shifted views cost what the mirror does

    def predict(count: int) -> None:
        if features is not None:
            predict_feature_logits(UpperPart(recipe.model, cfg.freeze_blocks), features[:count],
                                   batch_size=predict_batch, device=device, hflip=tta.hflip)  # fmt: skip
        else:
            predict_logits(recipe.model, images[:count], image_size=cfg.image_size, spec=spec,
                           batch_size=predict_batch, device=device, hflip=tta.hflip)  # fmt: skip

    predict(predict_batch)
    infer_seconds = timed(lambda: predict(predict_batch * batches))
    return Rates(train=updates * cfg.batch_size * cost.train / train_seconds,
                 infer=predict_batch * batches * views * cost.forward / infer_seconds)


GPU_NAMES = {"T4": r"\bT4\b", "P100": r"P100", "V100": r"V100", "L4": r"\bL4\b", "A10G": r"A10G",
             "A100": r"A100", "H100": r"H100"}  # fmt: skip


def measured_class(cfg: Config, device, *, updates: int = 12, batches: int = 3) -> FixedClass:
    """The present device as a class: its probed rates per backbone architecture, named after the GPU class it
    is (`T4` for a "Tesla T4"), else "this GPU" (or "this CPU")."""
    import torch

    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "this CPU"
    name = next((c for c, pattern in GPU_NAMES.items() if re.search(pattern, label)), None)
    rates = {_arch(b): probe_rates(b, cfg.tta, cfg.predict.batch_size, device, updates=updates, batches=batches)
             for b in cfg.backbones.values()}  # fmt: skip
    name = name or ("this GPU" if device.type == "cuda" else "this CPU")
    return FixedClass(name, f"{label}, measured", rates, "probe_rates: the training loop and forwards timed here",
                      0.15, is_gpu=device.type == "cuda")  # fmt: skip


def with_measured(classes: dict, measured: FixedClass) -> dict:
    """`classes` with the measured device in place of its class's assumption (or added)."""
    return {**classes, measured.name: measured}


def probe_wanted(probe: bool | None, markdown: bool) -> bool:
    """Whether to probe: as asked, else on a CUDA machine for the human and JSON outputs (the README's markdown
    is the table's, the same on every machine)."""
    if probe is not None:
        return probe
    import torch

    return torch.cuda.is_available() and not markdown

