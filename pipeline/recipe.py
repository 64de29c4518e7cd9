"""The fine-tuning recipe built from timm's blocks: model, optimizer with layer decay, schedule, EMA, mixup.

`build_recipe` makes every object a fold's training updates, after freezing the stem and the first
`freeze_blocks` of timm's coarse blocks when asked (`freeze_lower_blocks`); `wrap_for_world` puts the model
behind DDP (several processes) and `torch.compile`. Layer decay is set by the lowest group's lr scale, not by
a per-layer factor: timm's per-layer factor compounds over each model's own number of groups (20 for
convnext_tiny, 42 for tf_efficientnetv2_s), so one factor freezes a deep model's early layers and barely
touches a shallow one's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import timm.layers
import torch
from timm.data import Mixup
from timm.models import group_parameters
from timm.optim import create_optimizer_v2
from timm.optim._param_groups import auto_group_layers
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.batches import autocast_dtype
from pipeline.config import TrainConfig
from pipeline.distributed import World
from pipeline.errors import PipelineError
from pipeline.features import UpperPart
from pipeline.models import create_backbone


@dataclass
class Recipe:
    """Everything that is built from the config and updated while training."""

    model: nn.Module  # the plain model (what is saved)
    forward: nn.Module  # what the batch goes through: the model, DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    scheduler: object  # timm scheduler, stepped per optimizer update
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    mixup: Mixup | None
    updates_per_epoch: int
    head_only: bool = False  # whether only the head is trainable (what `forward` was wrapped for)
    frozen_names: frozenset[str] = frozenset()  # parameters frozen all along (`freeze_blocks`)
    frozen_modules: tuple[nn.Module, ...] = ()  # the outermost modules holding only those: kept in eval mode

    def train_mode(self) -> None:
        """Training mode, but for the frozen lower blocks: their batch norm keeps its pretrained statistics."""
        self.forward.train()
        for module in self.frozen_modules:
            module.eval()

    def state(self) -> dict:
        """The objects a resume file saves and restores."""
        state = {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}
        if self.ema is not None:
            state["ema"] = self.ema
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler
        return state


def build_recipe(
    backbone: str, cfg: TrainConfig, n_train: int, world: World, init_head: Callable[[nn.Module], None] | None = None
) -> Recipe:
    """The recipe's objects for `n_train` images; `init_head(model)`, if given, sets the new head first (before
    the optimizer, the EMA copy and DDP, whose start-up broadcast then hands rank 0's head to every process)."""
    torch.manual_seed(cfg.seed)  # the new head's initialisation, identical on every rank
    model = create_backbone(backbone, cfg.weights, drop_path=cfg.drop_path)
    model.to(world.device).to(memory_format=torch.channels_last)
    model = sync_batchnorm_if_needed(model, world)
    frozen_names, frozen_modules = freeze_lower_blocks(model, cfg.freeze_blocks)  # before the optimizer sees them
    if init_head is not None:
        init_head(model)
    per_epoch = updates_per_epoch(n_train, cfg)
    fused = {"fused": True} if world.device.type == "cuda" and cfg.optimizer.lower() in ("adam", "adamw") else {}
    optimizer = create_optimizer_v2(
        model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
        layer_decay=layer_decay_for(model, cfg.layer_decay_floor), **fused,
    )  # fmt: skip
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.lr * 0.01,
        min_lr=cfg.lr * 0.01, step_on_epochs=False, updates_per_epoch=per_epoch,
    )  # fmt: skip
    scaler = torch.amp.GradScaler(world.device.type, enabled=autocast_dtype(world.device) == torch.float16)
    ema = None
    if cfg.ema_decay > 0:  # warm-up: early updates move the EMA fast, so the random head of step 1 does not linger
        ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True,
                         warmup_power=ema_warmup_power(cfg.ema_decay, per_epoch))  # fmt: skip
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                      label_smoothing=cfg.label_smoothing, num_classes=model.num_classes)  # fmt: skip
    forward = wrap_for_world(batch_entry(model, cfg), cfg, world)
    return Recipe(model, forward, optimizer, scheduler, scaler, ema, mixup, per_epoch,
                  frozen_names=frozen_names, frozen_modules=frozen_modules)  # fmt: skip


def updates_per_epoch(n_train: int, cfg: TrainConfig) -> int:
    """Optimizer updates an epoch of `n_train` images makes, in batches of `cfg.batch_size`."""
    # With mixup (it pairs images: an odd last batch would go unmixed) or compile (a smaller last batch is another
    # shape: a recompile every epoch), the last partial batch of an epoch is dropped, as timm's loader does; the
    # shuffle differs every epoch, so every image is still seen
    drop_last = (cfg.mixup > 0 or cfg.cutmix > 0 or cfg.compile) and n_train >= cfg.batch_size
    return n_train // cfg.batch_size if drop_last else math.ceil(n_train / cfg.batch_size)


def ema_warmup_power(decay: float, warmup_updates: int) -> float:
    """The power of timm's EMA warm-up (decay 1 - t^-power at update t) that reaches `decay` after `warmup_updates`
    (the first epoch's), or after the average's own window of 1 / (1 - decay) updates if that is longer, and holds it
    from there. timm's default 2/3 reaches 0.999 only after ~31,600 updates, ten times a default fold's 3,130: any
    ema_decay above 0.9953 would then give the same run. A power above 1 (a first epoch shorter than the window)
    would keep the first updates, made at the warm-up's low learning rate, in the average for good; 1 is the plain
    mean of every update so far."""
    return min(1.0, -math.log(1 - decay) / math.log(max(warmup_updates, 2)))


def freeze_lower_blocks(model: nn.Module, n_blocks: int) -> tuple[frozenset[str], tuple[nn.Module, ...]]:
    """Stop gradients to the stem and the first `n_blocks` of timm's coarse blocks (stages for EfficientNet and
    ConvNeXt, layers for ResNet); returns their parameter names and the outermost modules that hold only those.

    Autograd then never goes back through them (the backward pass of the high-resolution layers is most of a
    CPU update), and the optimizer, built afterwards, never sees them. Keep the modules in eval mode while
    training (`Recipe.train_mode`) so their batch norm statistics stay pretrained too.
    """
    if n_blocks == 0:
        return frozenset(), ()
    if not hasattr(model, "group_matcher"):
        raise PipelineError(f"{type(model).__name__} has no timm group_matcher: train.freeze_blocks must be 0 for it.")
    grouped = group_parameters(model, model.group_matcher(coarse=True))
    groups = [names for _, names in sorted(grouped.items())]  # the stem, the blocks, the head
    if n_blocks > len(groups) - 2:
        raise PipelineError(
            f"train.freeze_blocks is {n_blocks}, but {type(model).__name__} has {len(groups) - 2} blocks after its"
            " stem: set at most that (the head always trains)."
        )
    frozen = frozenset(name for names in groups[: n_blocks + 1] for name in names)
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    modules, kept = [], []
    for name, module in model.named_modules():  # parents come before their children
        names = {n for n, _ in module.named_parameters(prefix=name)}
        if names and names <= frozen and not any(name.startswith(k + ".") for k in kept):
            modules.append(module)
            kept.append(name)
    return frozen, tuple(modules)


def sync_batchnorm_if_needed(model: nn.Module, world: World) -> nn.Module:
    """With several CUDA processes, batch norm over the global batch (NCCL; gloo on the CPU cannot).

    timm's conversion, not torch's: torch's turns timm's BatchNormAct2d (BN + SiLU in one module) into a plain
    SyncBatchNorm and the activation is never called again.
    """
    if world.size > 1 and world.device.type == "cuda":
        return timm.layers.convert_sync_batchnorm(model)
    return model


def layer_groups(model: nn.Module) -> int:
    """How many layer groups timm's layer decay gives `model` (its fine-grained `group_matcher`)."""
    if hasattr(model, "group_matcher"):
        layer_map = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    else:
        layer_map = auto_group_layers(model)
    return max(layer_map.values()) + 1


def layer_decay_for(model: nn.Module, floor: float) -> float | None:
    """timm's per-group `layer_decay` that scales the lowest group's lr by `floor` (the head keeps 1); None: off."""
    groups = layer_groups(model)
    if floor >= 1 or groups < 2:
        return None
    return floor ** (1 / (groups - 1))


def batch_entry(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Where a training batch enters `model`: its input, or with `cached_features` the blocks above the frozen
    ones (the batch is then their cached outputs)."""
    return UpperPart(model, cfg.freeze_blocks) if cfg.cached_features else model


def wrap_for_world(model: nn.Module, cfg: TrainConfig, world: World) -> nn.Module:
    """What a batch goes through: DDP over the processes (registering only the parameters that require
    gradients now: re-wrap when that changes), then `torch.compile`, so that it sees DDP's buckets."""
    forward = model
    if world.size > 1:
        forward = DistributedDataParallel(model, device_ids=[world.device] if world.device.type == "cuda" else None)
    return torch.compile(forward) if cfg.compile else forward


def set_head_only(recipe: Recipe, head_only: bool, cfg: TrainConfig, world: World) -> None:
    """Freeze (or unfreeze) everything but the classifier; under DDP, re-wrap for the new set of parameters.

    The blocks frozen all along (`freeze_blocks`) stay frozen when the rest is unfrozen.
    """
    if head_only == recipe.head_only:
        return
    head = recipe.model.default_cfg["classifier"]
    for param_name, param in recipe.model.named_parameters():
        param.requires_grad_((not head_only or param_name.startswith(head)) and param_name not in recipe.frozen_names)
    recipe.head_only = head_only
    if world.size > 1:
        recipe.forward = wrap_for_world(batch_entry(recipe.model, cfg), cfg, world)
