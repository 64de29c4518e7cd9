"""The throughput table: each device class's achieved FLOP/s per architecture and the fixed costs (start-up, disk
speeds) that are not FLOPs, each figure with its source.

A GPU class's rates are timm's published AMP benchmarks of the architecture (`TIMM_BENCHMARKS`: training on an RTX
3090, inference on an RTX 4090) scaled by the class's ResNet-50 training figure over those GPUs' (Lambda's
benchmark: one code on every GPU); the CPU class and a probed device (`pipeline.probe`) were measured. Rates are in
FlopCounterMode's FLOPs (`pipeline.flops`), so the work it does not count is inside them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import Backbone
from pipeline.errors import PipelineError


class PlanError(PipelineError):
    """An override or a device class the plan cannot read."""


@dataclass(frozen=True)
class Rates:
    """Achieved FLOP/s, in FlopCounterMode's FLOPs: of training passes (forward, backward, update), of forwards, and
    of the frozen lower part's forwards (features@; None: as `infer`)."""

    train: float
    infer: float
    lower: float | None = None

    @property
    def lower_rate(self) -> float:
        return self.infer if self.lower is None else self.lower


@dataclass(frozen=True)
class TimmBenchmark:
    """An architecture in timm's published AMP benchmarks (pytorch-image-models results/, channels_last): training
    on an RTX 3090 (benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv) and inference on an RTX 4090
    (benchmark-infer-amp-nhwc-pt240-cu124-rtx4090.csv; compiled: -nchw-pt240-cu124-rtx4090-dynamo.csv), img/s at
    their sizes, with the GFLOP per image `flops.model_cost` counts there (whole model trained). timm
    publishes no compiled training figures: `train.compile` is credited for inference only."""

    train_img_s: float
    train_px: int
    train_gflop: float
    infer_img_s: float
    infer_px: int
    infer_gflop: float
    compiled_img_s: float

    def rates(self, compiled: bool = False) -> Rates:
        infer = self.compiled_img_s if compiled else self.infer_img_s
        return Rates(self.train_img_s * self.train_gflop * 1e9, infer * self.infer_gflop * 1e9)


TIMM_BENCHMARKS = {  # an architecture not listed is taken to run like resnet50 (then the uncertainty is larger)
    "resnet50": TimmBenchmark(1218.01, 224, 24.287, 5088.39, 224, 8.174, 8237.46),
    "resnet18": TimmBenchmark(3481.78, 224, 10.645, 18247.43, 224, 3.627, 25948.79),
    "convnext_tiny": TimmBenchmark(819.24, 224, 26.700, 4844.53, 224, 8.910, 6713.74),
    "convnext_nano": TimmBenchmark(1249.89, 224, 14.645, 6328.61, 224, 4.890, 11259.00),
    "tf_efficientnetv2_s": TimmBenchmark(488.25, 300, 31.809, 2589.86, 300, 10.613, 3151.03),
    "efficientnetv2_s": TimmBenchmark(559.15, 288, 28.212, 3014.62, 288, 9.413, 3702.94),
    "tf_efficientnet_lite0": TimmBenchmark(2134.89, 224, 2.282, 9765.44, 224, 0.768, 17685.01),
    "tf_efficientnet_lite1": TimmBenchmark(1443.47, 240, 3.569, 6635.79, 240, 1.198, 11696.20),
    "tf_efficientnet_lite2": TimmBenchmark(1121.02, 260, 5.122, 5161.30, 260, 1.717, 8796.92),
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

    def rates(self, arch: str, cached: bool = False, compiled: bool = False) -> Rates:
        reference = TIMM_BENCHMARKS.get(arch, TIMM_BENCHMARKS["resnet50"]).rates(compiled)
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
                   "derived: Lambda's RTX 4090 1,301 (same Ada architecture) x 300/1,008 GB/s memory bandwidth:"
                   " Lambda's ResNet-50 figures follow memory bandwidth across 11 GPUs within 27%", 0.5),
    "A10G": GpuClass("A10G", "NVIDIA A10G 24 GB (AWS g5, Ampere)", "bf16", 70, 638,
                     LAMBDA + " on the A10, which has the A10G's memory and bandwidth (600 GB/s) and more tensor"
                     " FLOPS (125 vs ~70: Baseten's A10 vs A10G comparison)", 0.35),
    "A100": GpuClass("A100", "NVIDIA A100 80 GB SXM4", "bf16", 312, 1582,
                     LAMBDA + " (A100 80GB SXM4; 40 GB PCIe: 1,396)", 0.3),
    "H100": GpuClass("H100", "NVIDIA H100 80 GB SXM5", "bf16", 989, 2616,
                     LAMBDA + " (H100 80GB SXM5, 2,616-2,791 across four systems; PCIe card: 1,866)", 0.3),
}  # fmt: skip


@dataclass(frozen=True)
class FixedClass:
    """A device whose achieved FLOP/s were measured (or probed) directly, per architecture or for all."""

    name: str
    label: str
    rates_by_arch: dict[str, Rates]  # "*": any architecture
    source: str
    uncertainty: float
    is_gpu: bool = False

    def rates(self, arch: str, cached: bool = False, compiled: bool = False) -> Rates:
        return self.rates_by_arch.get(arch) or self.rates_by_arch["*"]


@dataclass(frozen=True)
class CpuClass:
    """The CPU, measured: one rate per kind of work (a cached recipe's upper part runs at other FLOP/s than a whole
    model's high-resolution blocks), for any architecture."""

    name: str
    label: str
    whole: Rates  # the whole model (or with frozen blocks) on images
    cached: Rates  # the upper part on cached features; `lower`: the frozen part in features@
    source: str
    uncertainty: float
    is_gpu: bool = False

    def rates(self, arch: str, cached: bool = False, compiled: bool = False) -> Rates:
        return self.cached if cached else self.whole


_LOWER_CPU = 80 * 0.2950e9  # tf_efficientnet_lite1 @128, stem + 6 blocks
_UPPER_CPU = 305 * 0.1032e9  # tf_efficientnet_lite2 @128 above 6 blocks, training
CPU_CLASS = CpuClass(
    "CPU", "CPU, 2-core AVX2 (AMD EPYC, no avx512f; fp32, channels_last)",
    whole=Rates(train=20 * 1.120e9, infer=_LOWER_CPU),
    cached=Rates(train=_UPPER_CPU, infer=_UPPER_CPU, lower=_LOWER_CPU),
    source="measured on this host kind (benchmarks/real_accuracy.py's 128 px profile, 2026-12-01): the frozen"
    " part, features@ tf_efficientnet_lite1 @128 (stem + 6 blocks, 0.295 GFLOP a view): 11,120 views (5,560"
    " images and mirrors) in its 152 s stage, start-up included: ~80 views/s = 23.6 GFLOP/s, also taken for whole-model"
    " forwards; training, tf_efficientnet_lite2 @128, batch 64 (benchmarks/train_throughput.py): the whole model"
    " 20 img/s x 1.12 GFLOP = 22.4 GFLOP/s, on cached features (6 blocks frozen) 305 img/s x 0.103 GFLOP ="
    " 31.5 GFLOP/s, also taken for its forwards (conservative: predict@'s 17 s for 10,800 of them, start-up"
    " included, imply more). Other architectures may differ 2x; an Intel AVX-512 host was 2-4x faster, the AVX-512"
    " Zen 4 host no faster (features@ tf_efficientnet_lite1 @160: 18-20 GFLOP/s)",
    uncertainty=0.5,
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
    "compile": Fixed(30, "s per compiled graph", "assumption: torch.compile's first call in a process: train"
                     " compiles the step and the scoring, features@ and predict@ one forward (models of one"
                     " architecture share the graph; benchmarks/compile_time.py measures it)"),
    "probe_fit": Fixed(30, "s per 40,000 images", "assumption: the linear probe's LogisticRegression, CPU"),
    "decode": Fixed(67.2 / 350_000, "s per image", "FACTS.md: extract streams train.7z in 8.2 s and test.7z in 59 s"
                    " on the 2-core CPU (CPU-bound: no GPU helps)"),
    "ensemble": Fixed(60, "s per 50,000 labelled images", "assumption: every method's nested CV and stacking's"
                      " inner CV on the OOF logits, CPU"),
    "download": Fixed(50e6, "bytes/s", "assumption: Kaggle's download of cifar-10.zip (715 MB)"),
    "write": Fixed(200e6, "bytes/s", "assumption: a cloud VM's disk"),
    "hash": Fixed(500e6, "bytes/s", "assumption: DVC's md5 of each output (with the cache as hardlinks, no copy)"),
    "read": Fixed(1e9, "bytes/s", "assumption: arrays and cached features from the page cache or an NVMe disk"),
}  # fmt: skip


def arch_of(backbone: Backbone) -> str:
    """The timm architecture of `backbone` (its model name without the tag): what the rates are kept by."""
    return backbone.model.split(".")[0]


def select_classes(names: str | None, default: tuple[str, ...] = DEFAULT_CLASSES) -> dict:
    """The classes named in `names` ("T4,A100", or "all"), `default` when None."""
    if names == "all":
        return dict(ALL_CLASSES)
    wanted = default if names is None else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in ALL_CLASSES]
    if unknown:
        raise PlanError(f"unknown device class {', '.join(unknown)}; known: {', '.join(ALL_CLASSES)} (or all).")
    return {name: ALL_CLASSES[name] for name in wanted}


def format_assumptions() -> str:
    """The throughput table and the fixed costs as markdown, with their sources."""
    lines = ["| class | AMP | peak TFLOPS | ResNet-50 training img/s | so convnext_tiny @224: training, inference img/s"
             " (training's share of peak) | +- | source |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    cost = TIMM_BENCHMARKS["convnext_tiny"]
    for c in GPU_CLASSES.values():
        rates = c.rates("convnext_tiny")
        train, infer = rates.train / 1e9 / cost.train_gflop, rates.infer / 1e9 / cost.infer_gflop
        lines.append(f"| {c.label} | {c.amp} | {c.peak_tflops:g} | {c.rn50_img_s:,.0f} | {train:,.0f}, {infer:,.0f}"
                     f" ({rates.train / 1e12 / c.peak_tflops:.0%}) | {c.uncertainty:.0%} | {c.source} |")  # fmt: skip
    whole, cached = CPU_CLASS.whole, CPU_CLASS.cached
    lines.append(f"| {CPU_CLASS.label} | – | – | – | any model, GFLOP/s: training {whole.train / 1e9:.1f} (on cached"
                 f" features {cached.train / 1e9:.1f}), forwards {whole.infer / 1e9:.1f} (upper part"
                 f" {cached.infer / 1e9:.1f}) | {CPU_CLASS.uncertainty:.0%} | {CPU_CLASS.source} |")  # fmt: skip
    lines += ["", "| fixed cost | value | source |", "|---|---|---|"]
    lines += [f"| {name} | {_fixed(f)} | {f.source} |" for name, f in FIXED.items()]
    return "\n".join(lines)


def _fixed(f: Fixed) -> str:
    if f.unit == "bytes/s":
        return f"{f.value / 1e6:,.0f} MB/s"
    return f"{f.value * 1e3:.2f} ms per image" if f.unit == "s per image" else f"{f.value:g} {f.unit}"
