"""THE training loop: fine-tune one backbone on one fold's training images; OOF logits from `predict_logits`.

The recipe is timm's building blocks: `create_optimizer_v2` (AdamW by default, optional layer decay), a cosine
schedule with warmup stepped per update, label smoothing, optional mixup/cutmix (`Mixup`), drop path, EMA
weights (`ModelEmaV3`), head-only warm-up epochs, gradient accumulation, AMP on CUDA, channels_last, optional
`torch.compile`. Under torchrun every process draws the same global batch and trains on its shard (DDP).

Every epoch draws its shuffle, augmentations and dropout from seeds derived from (seed, epoch), and a resume
file is written after every epoch, so a run killed and re-run continues where it stopped and ends with the
same weights as an uninterrupted one (on the CPU; GPU kernels are not bit-deterministic).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from pipeline.atomic import atomic_file, write_json
from pipeline.batches import autocast_dtype, random_crop_flip, to_device, to_model_input
from pipeline.config import BackboneConfig
from pipeline.distributed import World
from pipeline.errors import PipelineError
from pipeline.folds import Split
from pipeline.inference import predict_logits
from pipeline.metrics import logits_metrics
from pipeline.models import create_backbone, normalisation, save_checkpoint
from pipeline.scores import save_scores

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    model: nn.Module  # the EMA weights when EMA is on
    oof_logits: np.ndarray  # (n_valid, n_classes), rows in the order of Split.valid_ids
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    is_main: bool = True  # under torchrun, only the main process's result is saved
    resume_path: Path | None = None  # removed by `save` once every output is in place

    def save(self, *, model_path: Path, oof_path: Path, metrics_path: Path, history_path: Path,
             backbone: str, valid_ids: np.ndarray, image_size: int) -> None:  # fmt: skip
        """Checkpoint, OOF logits with their ids, fold metrics (JSON) and per-epoch curves (JSON rows).

        The resume file goes last, so a failure while saving keeps the trained fold. A no-op in torchrun's
        other processes, so that one process writes each output.
        """
        if not self.is_main:
            return
        save_scores(oof_path, valid_ids, self.oof_logits)  # first: it refuses non-finite logits
        save_checkpoint(model_path, self.model, backbone, image_size)
        write_json(metrics_path, self.metrics)
        write_json(history_path, self.history)
        if self.resume_path is not None:
            Path(self.resume_path).unlink(missing_ok=True)


@dataclass
class Recipe:
    """Everything that is built from the config and updated while training."""

    model: nn.Module  # the plain model (what is saved)
    forward: nn.Module  # what the batch goes through: the model, compiled and/or DDP-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: object  # timm scheduler, stepped per optimizer update
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    mixup: Mixup | None
    updates_per_epoch: int

    def state(self) -> dict:
        """The objects a resume file saves and restores."""
        state = {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}
        if self.ema is not None:
            state["ema"] = self.ema
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler
        return state


def build_recipe(backbone: str, cfg: BackboneConfig, n_train: int, world: World) -> Recipe:
    torch.manual_seed(cfg.seed)  # the new head's initialisation, identical on every rank
    model = create_backbone(backbone, cfg.weights, drop_path=cfg.drop_path)
    model.to(world.device).to(memory_format=torch.channels_last)
    updates_per_epoch = math.ceil(n_train / cfg.batch_size)
    optimizer = create_optimizer_v2(
        model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay or None
    )
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.lr * 0.01,
        min_lr=cfg.lr * 0.01, step_on_epochs=False, updates_per_epoch=updates_per_epoch,
    )  # fmt: skip
    scaler = torch.amp.GradScaler(world.device.type, enabled=autocast_dtype(world.device) == torch.float16)
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                      num_classes=model.num_classes)  # fmt: skip
    forward = torch.compile(model) if cfg.compile else model
    if world.size > 1:
        if world.device.type == "cuda":
            forward = nn.SyncBatchNorm.convert_sync_batchnorm(forward)
        forward = DistributedDataParallel(forward, device_ids=[world.device] if world.device.type == "cuda" else None)
    return Recipe(model, forward, optimizer, scheduler, scaler, ema, mixup, updates_per_epoch)


def train_one_fold(
    backbone: str,
    split: Split,
    cfg: BackboneConfig,
    world: World,
    *,
    name: str,
    resume_path: Path | None = None,
) -> FoldResult:
    """Fine-tune timm `backbone` on `split`; returns the (EMA) model, its OOF logits, metrics and curves.

    `name` (e.g. "resnet18 fold 0") labels logs and errors. With `resume_path`, training state is saved
    there after each epoch (by the main process) and picked up from there if it was made with the same
    settings and split; `FoldResult.save` deletes it once the outputs are written. Under torchrun only the
    main process's result is meant to be saved.
    """
    recipe = build_recipe(backbone, cfg, len(split.train_images), world)
    mean, std = normalisation(recipe.model)
    # everything that decides the weights: a resume file made with another split has seen these valid images
    fingerprint = {"backbone": backbone, "split": split.digest(), "world": world.size, **dataclasses.asdict(cfg)}
    start_epoch, history = 0, []
    snapshot = _read_resume(resume_path, fingerprint, name)
    if snapshot is not None:
        try:
            for key, obj in recipe.state().items():
                obj.load_state_dict(snapshot[key])
            start_epoch, history = int(snapshot["epochs_done"]), list(snapshot["history"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:  # a half-loaded state is rebuilt
            log.warning("%s: resume file %s does not fit (%s); starting from epoch 1", name, resume_path, exc)
            recipe = build_recipe(backbone, cfg, len(split.train_images), world)
    if world.is_main:
        log.info(
            "%s: %d train / %d valid images, %d epochs of %d updates, batch %d (x%d accumulation), %dpx, %d"
            " process(es) on %s%s",
            name, len(split.train_images), len(split.valid_images), cfg.epochs, recipe.updates_per_epoch,
            cfg.batch_size, cfg.accumulate, cfg.image_size, world.size, world.device,
            f", resuming at epoch {start_epoch + 1}" if start_epoch else "",
        )  # fmt: skip

    def evaluate(epochs_done: int) -> np.ndarray:
        model = recipe.ema.module if recipe.ema is not None else recipe.model
        logits = predict_logits(
            model, split.valid_images, image_size=cfg.image_size, mean=mean, std=std,
            batch_size=cfg.batch_size * 2, device=world.device, desc=f"{name} valid",
        )  # fmt: skip
        if not np.isfinite(logits).all():
            raise PipelineError(
                f"{name} epoch {epochs_done}: the logits of the held-out images are not finite; lower"
                " train.lr (or this backbone's override) and re-run."
            )
        return logits

    valid_logits = None
    with logging_redirect_tqdm():
        for epoch in range(start_epoch, cfg.epochs):
            train_loss = train_epoch(recipe, split, cfg, world, epoch, mean, std, name=name)
            if world.is_main:
                valid_logits = evaluate(epoch + 1)
                row = {
                    "epoch": epoch + 1,
                    "lr": recipe.optimizer.param_groups[-1]["lr"],
                    "train_loss": train_loss,
                    **{f"valid_{k}": v for k, v in logits_metrics(valid_logits, split.valid_labels).items()},
                }
                history.append(row)
                log.info(
                    "%s epoch %d: lr %.2e train_loss %.4f valid_loss %.4f valid_acc %.4f",
                    name, row["epoch"], row["lr"], row["train_loss"], row["valid_log_loss"], row["valid_accuracy"],
                )  # fmt: skip
                _save_resume(resume_path, recipe.state(), fingerprint, epoch + 1, history)
            world.barrier()

    if valid_logits is None:  # resumed after the last epoch, or not the main process
        valid_logits = evaluate(cfg.epochs)
    model = recipe.ema.module if recipe.ema is not None else recipe.model
    metrics = logits_metrics(valid_logits, split.valid_labels)
    return FoldResult(model, valid_logits, metrics, history, world.is_main, resume_path)


def train_epoch(
    recipe: Recipe, split: Split, cfg: BackboneConfig, world: World, epoch: int,
    mean: tuple[float, ...], std: tuple[float, ...], *, name: str, max_updates: int | None = None,
) -> float:  # fmt: skip
    """One pass over the training images; returns the mean training loss. `max_updates` cuts it short."""
    torch.manual_seed(cfg.seed * 1000 + epoch)  # drop path / dropout
    np.random.seed(cfg.seed * 1000 + epoch)  # timm's Mixup draws from numpy's global generator
    augment_rng = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(split.train_images))
    head_only = epoch < cfg.head_epochs
    for param_name, param in recipe.model.named_parameters():
        param.requires_grad_(not head_only or param_name.startswith(recipe.model.default_cfg["classifier"]))
    amp = autocast_dtype(world.device)
    micro_batch = cfg.batch_size // cfg.accumulate
    recipe.forward.train()
    loss_sum, n_seen = 0.0, 0
    n_updates = recipe.updates_per_epoch if max_updates is None else min(max_updates, recipe.updates_per_epoch)
    bar = tqdm(range(n_updates), desc=f"{name} epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=not world.is_main)  # fmt: skip
    for update in bar:
        batch_idx = order[update * cfg.batch_size : (update + 1) * cfg.batch_size]
        # every rank augments the whole global batch (cheap, uint8) so the result does not depend on sharding
        images = random_crop_flip(to_device(split.train_images[batch_idx], world.device), cfg.crop_padding,
                                  augment_rng)  # fmt: skip
        labels = torch.from_numpy(split.train_labels[batch_idx]).to(world.device)
        recipe.optimizer.zero_grad(set_to_none=True)
        for start in range(0, len(batch_idx), micro_batch):
            micro = slice(start, start + micro_batch)
            shard = world.shard(len(images[micro]))
            x = to_model_input(images[micro][shard], cfg.image_size, mean, std)
            y = labels[micro][shard]
            mixed = recipe.mixup is not None and len(y) % 2 == 0  # timm's Mixup pairs images: even batches only
            if mixed:
                x, y = recipe.mixup(x, y)  # y becomes smoothed soft targets
            with torch.autocast(world.device.type, dtype=amp) if amp else contextlib.nullcontext():
                logits = recipe.forward(x).float()
            if mixed:
                loss = SoftTargetCrossEntropy()(logits, y) * len(y)  # a sum, like the other branch
            else:
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing, reduction="sum")
            # a sum over this shard / the global batch x world size: DDP's gradient mean then equals the
            # gradient of the global batch mean, however the batch was sharded or accumulated
            scaled = loss * world.size / len(batch_idx)
            if not torch.isfinite(scaled):
                raise PipelineError(
                    f"{name} epoch {epoch + 1}: the training loss is {scaled.item()}; lower train.lr"
                    " (or this backbone's override) and re-run."
                )
            recipe.scaler.scale(scaled).backward()
            loss_sum, n_seen = loss_sum + loss.item(), n_seen + len(y)
        recipe.scaler.step(recipe.optimizer)
        recipe.scaler.update()
        step = epoch * recipe.updates_per_epoch + update + 1
        recipe.scheduler.step_update(step)
        if recipe.ema is not None:
            recipe.ema.update(recipe.model, step=step)
        bar.set_postfix(loss=f"{loss_sum / n_seen:.3f}")
    return loss_sum / n_seen  # this process's share: under DDP, an estimate of the global mean


def _save_resume(path: Path | None, state: dict, fingerprint: dict, epochs_done: int, history: list) -> None:
    if path is None:
        return
    snapshot = {key: obj.state_dict() for key, obj in state.items()}
    with atomic_file(path) as tmp:
        torch.save({**snapshot, "fingerprint": fingerprint, "epochs_done": epochs_done, "history": history}, tmp)


def _read_resume(path: Path | None, fingerprint: dict, name: str) -> dict | None:
    """The snapshot saved by `_save_resume` if it exists, reads, and was made with these settings and data."""
    if path is None or not Path(path).exists():
        return None
    try:
        snapshot = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file: torch raises RuntimeError, EOFError, UnpicklingError...
        log.warning("%s: resume file %s is unreadable (%s); starting from epoch 1", name, path, type(exc).__name__)
        return None
    if not isinstance(snapshot, dict) or snapshot.get("fingerprint") != fingerprint:
        log.warning("%s: resume file %s is from other settings, folds or images; starting from epoch 1", name, path)
        return None
    return snapshot
