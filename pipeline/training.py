"""THE training loop: fine-tune one backbone on one fold's training images; OOF logits from `predict_logits`.

The recipe (`pipeline.recipe`) is timm's building blocks; this module runs it: per-update steps with
gradient accumulation, AMP on CUDA, head-only warm-up epochs, mixup switched off for the last epochs, an EMA
evaluated beside the raw weights (the better of the two is kept), and under torchrun every process drawing
the same global batch and training on its shard (DDP).

On CUDA an update never waits for the device: the loss and its finiteness stay on the device and are read
once per `SYNC_EVERY` updates, augmentation randomness is drawn there, the fold's images are copied there
once per epoch. Every epoch draws its shuffle, augmentations and dropout from seeds derived from (seed,
epoch), and a resume file is written after every epoch, so a run killed and re-run continues where it
stopped and ends with the same weights as an uninterrupted one (on the CPU; GPU kernels are not
bit-deterministic).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from pipeline.atomic import atomic_file
from pipeline.batches import InputSpec, autocast_dtype, random_crop_flip, to_device, to_model_input
from pipeline.config import TrainConfig, TtaConfig
from pipeline.distributed import World
from pipeline.errors import PipelineError
from pipeline.features import UpperPart
from pipeline.folds import Split
from pipeline.head_init import init_head_from_probe
from pipeline.inference import predict_feature_logits, predict_logits
from pipeline.metrics import logits_metrics
from pipeline.models import input_spec, save_checkpoint, weights_digest
from pipeline.provenance import Record, arrays_digest
from pipeline.recipe import Recipe, build_recipe, set_head_only
from pipeline.scores import save_scores

_RANK_SEED_STRIDE = 1_000_003  # process k draws drop-path masks from another seed than process 0
SYNC_EVERY = 50  # updates between the host's reads of the loss (each read waits for the device)

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    model: nn.Module  # the EMA weights when EMA is on
    oof_logits: np.ndarray  # (n_valid, n_classes), rows in the order of Split.valid_ids
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    is_main: bool = True  # under torchrun, only the main process's result is saved
    resume_path: Path | None = None  # removed by `save` once every output is in place

    def save(self, *, model_path: Path, oof_path: Path, backbone: str, valid_ids: np.ndarray, image_size: int,
             record: Record) -> None:  # fmt: skip
        """Checkpoint and OOF logits with their ids (metrics and curves went to the stage's `on_epoch` logger), both
        with `record` (stage, settings, inputs), whose facts become a digest of the weights and the OOF logits.

        The resume file goes last, so a failure while saving keeps the trained fold. A no-op in torchrun's
        other processes, so that one process writes each output.
        """
        if not self.is_main:
            return
        facts = {"weights": weights_digest(self.model), "oof_logits": arrays_digest(self.oof_logits)}
        record = dataclasses.replace(record, facts=facts)  # the same record in both files: one training run
        save_scores(oof_path, valid_ids, self.oof_logits, record=record)  # first: it refuses non-finite logits
        save_checkpoint(model_path, self.model, backbone, image_size, record=record)
        if self.resume_path is not None:
            Path(self.resume_path).unlink(missing_ok=True)


def train_one_fold(
    backbone: str,
    split: Split,
    cfg: TrainConfig,
    world: World,
    *,
    name: str,
    tta: TtaConfig | None = None,
    resume_path: Path | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FoldResult:
    """Fine-tune timm `backbone` on `split`; returns the kept model, its OOF logits (`tta` views), metrics, curves.

    `name` (e.g. "resnet18 fold 0") labels logs and errors. The held-out images are scored after the last epoch
    (and every `cfg.eval_every` epochs, for the curves), each process scoring its share; with EMA on, both the
    raw and the EMA weights, and the better of the two at the end is the result (the metrics say which). With
    `resume_path`, training state is saved there after each epoch (by the main process) and picked up from there
    if it was made with the same settings and split; `FoldResult.save` deletes it once the outputs are written.
    Under torchrun only the main process's result is meant to be saved. The main process hands each epoch's
    history row to `on_epoch`, the resumed epochs' rows first.
    """
    tta = tta or TtaConfig()
    if cfg.cached_features != (split.train_features is not None):
        raise PipelineError(f"{name}: train.cached_features is {cfg.cached_features}, but the split holds"
                            f" {'no ' if split.train_features is None else ''}cached features.")  # fmt: skip

    def init_head(model: nn.Module) -> None:
        accuracy = init_head_from_probe(model, split, cfg, world.device)
        if world.is_main:
            log.info("%s: the head starts as a linear probe (%.4f accuracy on the training images)", name, accuracy)

    head = init_head if cfg.head_init == "probe" else None
    recipe = build_recipe(backbone, cfg, len(split.train_images), world, head)
    spec = input_spec(recipe.model)
    # everything that decides the weights: a resume file made with another split has seen these valid images
    fingerprint = {"backbone": backbone, "split": split.digest(), "world": world.size, "tta": dataclasses.asdict(tta),
                   **dataclasses.asdict(cfg)}  # fmt: skip
    start_epoch, history = 0, []
    # rank 0 reads the file and hands it to the others: on several machines only its disk holds it
    snapshot = world.broadcast_object(_read_resume(resume_path, fingerprint, name) if world.is_main else None)
    if snapshot is not None:
        try:
            for key, obj in recipe.state().items():
                obj.load_state_dict(snapshot[key])
            start_epoch, history = int(snapshot["epochs_done"]), list(snapshot["history"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:  # a half-loaded state is rebuilt
            log.warning("%s: resume file %s does not fit (%s); starting from epoch 1", name, resume_path, exc)
            recipe = build_recipe(backbone, cfg, len(split.train_images), world, head)
    on_epoch = on_epoch if world.is_main and on_epoch is not None else lambda row: None
    for row in history:
        on_epoch(row)
    if world.is_main:
        log.info(
            "%s: %d train / %d valid images, %d epochs of %d updates, batch %d (x%d accumulation), %dpx, %d"
            " process(es) on %s%s",
            name, len(split.train_images), len(split.valid_images), cfg.epochs, recipe.updates_per_epoch,
            cfg.batch_size, cfg.accumulate, cfg.image_size, world.size, world.device,
            f", resuming at epoch {start_epoch + 1}" if start_epoch else "",
        )  # fmt: skip

    rows = world.shard(len(split.valid_images))  # this process's share of the held-out images

    def evaluate(model: nn.Module, epochs_done: int) -> np.ndarray | None:
        """Held-out logits of `model` (every process scores its share); None in the processes but the main one."""
        if cfg.cached_features:
            logits = predict_feature_logits(
                UpperPart(model, cfg.freeze_blocks), split.valid_features[rows], batch_size=cfg.batch_size * 2,
                device=world.device, hflip=tta.hflip, compile=cfg.compile, desc=f"{name} valid",
            )  # fmt: skip
        else:
            logits = predict_logits(
                model, split.valid_images[rows], image_size=cfg.image_size, spec=spec,
                batch_size=cfg.batch_size * 2, device=world.device, hflip=tta.hflip, shift=tta.shift,
                compile=cfg.compile, desc=f"{name} valid",
            )  # fmt: skip
        logits = world.gather_rows(logits)
        if logits is not None and not np.isfinite(logits).all():
            raise PipelineError(
                f"{name} epoch {epochs_done}: the logits of the held-out images are not finite; lower"
                " train.lr (or this backbone's override) and re-run."
            )
        return logits

    def evaluate_both(epochs_done: int) -> dict[str, np.ndarray | None]:
        """Held-out logits of the raw weights and, with EMA on, of the EMA weights."""
        candidates = {"raw": recipe.model} | ({"ema": recipe.ema.module} if recipe.ema is not None else {})
        return {kind: evaluate(model, epochs_done) for kind, model in candidates.items()}

    valid_logits = None
    with logging_redirect_tqdm():
        for epoch in range(start_epoch, cfg.epochs):
            train_loss = train_epoch(recipe, split, cfg, world, epoch, spec, name=name)
            valid_logits = evaluate_both(epoch + 1) if scored_after(epoch + 1, cfg) else None
            if world.is_main:
                row = {"epoch": epoch + 1, "lr": recipe.optimizer.param_groups[-1]["lr"], "train_loss": train_loss}
                for kind, logits in (valid_logits or {}).items():
                    prefix = "valid" if kind == "raw" else "ema_valid"
                    row |= {f"{prefix}_{k}": v for k, v in logits_metrics(logits, split.valid_labels).items()}
                history.append(row)
                on_epoch(row)
                log.info(
                    "%s epoch %d: lr %.2e train_loss %.4f%s%s",
                    name, row["epoch"], row["lr"], row["train_loss"],
                    f" valid_loss {row['valid_log_loss']:.4f} valid_acc {row['valid_accuracy']:.4f}"
                    if "valid_accuracy" in row else "",
                    f" ema_valid_loss {row['ema_valid_log_loss']:.4f} ema_valid_acc {row['ema_valid_accuracy']:.4f}"
                    if "ema_valid_accuracy" in row else "",
                )  # fmt: skip
                _save_resume(resume_path, recipe.state(), fingerprint, epoch + 1, history)
            world.barrier()

    if valid_logits is None:  # resumed after the last epoch: the held-out images are scored once more
        valid_logits = evaluate_both(cfg.epochs)
    if not world.is_main:  # its share went to the main process, which keeps the result
        return FoldResult(recipe.model, np.empty((0, 0)), {}, history, is_main=False, resume_path=resume_path)
    scored = {kind: logits_metrics(logits, split.valid_labels) for kind, logits in valid_logits.items()}
    kept = better_weights(scored)
    model = recipe.model if kept == "raw" else recipe.ema.module
    metrics = {
        **scored[kept],
        "ema_kept": int(kept == "ema"),
        **{f"{kind}_accuracy": m["accuracy"] for kind, m in scored.items()},
    }
    return FoldResult(model, valid_logits[kept], metrics, history, world.is_main, resume_path)


def scored_after(epochs_done: int, cfg: TrainConfig) -> bool:
    """Whether the held-out images are scored after `epochs_done` epochs. Scoring costs as many forwards as an epoch
    of training: at the end, and every `eval_every`."""
    return epochs_done == cfg.epochs or (cfg.eval_every > 0 and epochs_done % cfg.eval_every == 0)


def better_weights(scored: dict[str, dict[str, float]]) -> str:
    """The kind of weights ("raw", "ema") with the higher held-out accuracy; ties go to the lower log loss."""
    return max(scored, key=lambda kind: (scored[kind]["accuracy"], -scored[kind]["log_loss"]))


def train_epoch(
    recipe: Recipe, split: Split, cfg: TrainConfig, world: World, epoch: int,
    spec: InputSpec, *, name: str, max_updates: int | None = None,
) -> float:  # fmt: skip
    """One pass over the training images; returns the mean training loss. `max_updates` cuts it short.

    Reads nothing back from the device but once per `SYNC_EVERY` updates and at the end (the loss, and
    whether any was non-finite: then the stage stops, naming the epoch).
    """
    device = world.device
    # drop path / dropout: per sample, so another draw in each process; the shuffle and the augmentation (of the
    # whole global batch, in every process) stay common
    torch.manual_seed(cfg.seed * 1000 + epoch + _RANK_SEED_STRIDE * world.rank)
    np.random.seed(cfg.seed * 1000 + epoch)  # timm's Mixup draws from numpy's global generator
    augment_rng = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + epoch)
    order_host = np.random.default_rng([cfg.seed, epoch]).permutation(len(split.train_images))
    order = to_device(order_host, device)
    labels_all = to_device(split.train_labels, device)
    # the fold's uint8 images (40,000 x 3 KB: 123 MB) go to the device once per epoch and are indexed there; its
    # cached features can be tens of GB at GPU sizes, so the device holds one batch of them at a time
    images_all = None if cfg.cached_features else to_device(split.train_images, device)

    def batch_of(update: int) -> torch.Tensor:
        if images_all is None:
            return to_device(split.train_features[order_host[_rows(update, cfg.batch_size)]], device)
        return images_all[order[_rows(update, cfg.batch_size)]]

    set_head_only(recipe, epoch < cfg.head_epochs, cfg, world)
    if recipe.mixup is not None:  # timm's mixup_off_epoch: the last epochs see real images only
        recipe.mixup.mixup_enabled = not (cfg.mixup_off_epoch and epoch >= cfg.mixup_off_epoch)
    amp = autocast_dtype(device)
    micro_batch = cfg.batch_size // cfg.accumulate
    recipe.train_mode()
    loss_sum = torch.zeros((), device=device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    n_seen = 0
    n_updates = recipe.updates_per_epoch if max_updates is None else min(max_updates, recipe.updates_per_epoch)
    bar = tqdm(range(n_updates), desc=f"{name} epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=not world.is_main)  # fmt: skip
    for update in bar:
        batch_idx = order[_rows(update, cfg.batch_size)]
        # every rank augments the whole global batch (cheap) so the result does not depend on sharding
        inputs = augment(batch_of(update), cfg, augment_rng)
        labels = labels_all[batch_idx]
        recipe.optimizer.zero_grad(set_to_none=True)
        starts = range(0, len(batch_idx), micro_batch)
        for start in starts:
            micro = slice(start, start + micro_batch)
            shard = world.shard(len(inputs[micro]))
            x = inputs[micro][shard]
            if cfg.cached_features:
                x = x.float().contiguous(memory_format=torch.channels_last)
            else:
                x = to_model_input(x, cfg.image_size, spec)
            y = labels[micro][shard]
            mixed = recipe.mixup is not None and len(y) % 2 == 0  # timm's Mixup pairs images: even batches only
            if mixed:
                x, y = recipe.mixup(x, y)  # y becomes smoothed soft targets
            # DDP all-reduces gradients on the last micro-batch of an update only
            accumulating = world.size > 1 and start != starts[-1]
            with recipe.forward.no_sync() if accumulating else contextlib.nullcontext():
                with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
                    logits = recipe.forward(x).float()
                if mixed:
                    loss = SoftTargetCrossEntropy()(logits, y) * len(y)  # a sum, like the other branch
                else:
                    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing, reduction="sum")
                # a sum over this shard / the global batch x world size: DDP's gradient mean then equals the
                # gradient of the global batch mean, however the batch was sharded or accumulated
                scaled = loss * world.size / len(batch_idx)
                recipe.scaler.scale(scaled).backward()
            loss_sum += loss.detach()
            nonfinite |= ~torch.isfinite(loss.detach())
            n_seen += len(y)
        recipe.scaler.step(recipe.optimizer)
        recipe.scaler.update()
        step = epoch * recipe.updates_per_epoch + update + 1
        recipe.scheduler.step_update(step)
        if recipe.ema is not None:
            recipe.ema.update(recipe.model, step=step)
        if (update + 1) % SYNC_EVERY == 0 or update + 1 == n_updates:
            mean_loss = _read_loss(loss_sum, nonfinite, n_seen, f"{name} epoch {epoch + 1}")
            bar.set_postfix(loss=f"{mean_loss:.3f}")
    return mean_loss  # this process's share: under DDP, an estimate of the global mean


def _rows(update: int, batch_size: int) -> slice:
    """The rows of the epoch's shuffle that make update `update`."""
    return slice(update * batch_size, (update + 1) * batch_size)


def augment(batch: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """A random crop and flip per image; with cached features (n, 2, C, H, W), the image or its mirror per image
    (a crop changes every feature, so cached training has the flip only)."""
    if not cfg.cached_features:
        return random_crop_flip(batch, cfg.crop_padding, generator)
    mirror = torch.rand(len(batch), generator=generator, device=batch.device) < 0.5
    return batch[torch.arange(len(batch), device=batch.device), mirror.long()]


def _read_loss(loss_sum: torch.Tensor, nonfinite: torch.Tensor, n_seen: int, where: str) -> float:
    """The mean loss so far, read from the device (one wait); a non-finite loss stops the stage."""
    if bool(nonfinite):
        raise PipelineError(
            f"{where}: the training loss is {float(loss_sum)}; lower train.lr (or this backbone's override) and re-run."
        )
    return float(loss_sum) / n_seen


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
