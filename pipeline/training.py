"""THE training loop: fine-tune one backbone on one fold's training images; OOF logits from `predict_logits`.

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
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from pipeline.atomic import atomic_file, write_json
from pipeline.batches import autocast_dtype, random_crop_flip, to_device, to_model_input
from pipeline.config import BackboneConfig
from pipeline.errors import PipelineError
from pipeline.folds import Split
from pipeline.inference import predict_logits
from pipeline.metrics import logits_metrics
from pipeline.models import create_backbone, normalisation, save_checkpoint
from pipeline.scores import save_scores

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    model: nn.Module
    oof_logits: np.ndarray  # (n_valid, n_classes), rows in the order of Split.valid_ids
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch

    def save(self, *, model_path: Path, oof_path: Path, metrics_path: Path, history_path: Path,
             backbone: str, valid_ids: np.ndarray, image_size: int) -> None:  # fmt: skip
        """Checkpoint, OOF logits with their ids, fold metrics (JSON) and per-epoch curves (JSON rows)."""
        save_checkpoint(model_path, self.model, backbone, image_size)
        save_scores(oof_path, valid_ids, self.oof_logits)
        write_json(metrics_path, self.metrics)
        write_json(history_path, self.history)


def train_one_fold(
    backbone: str,
    split: Split,
    cfg: BackboneConfig,
    device: torch.device,
    *,
    name: str,
    resume_path: Path | None = None,
) -> FoldResult:
    """Fine-tune timm `backbone` on `split` with AdamW, warmup + cosine, label smoothing, crop/flip augmentation.

    `name` (e.g. "resnet18 fold 0") labels logs and errors. With `resume_path`, training state is saved
    there after each epoch and picked up from there if present; it is deleted when training ends.
    """
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    model = create_backbone(backbone, cfg.weights)
    model.to(device).to(memory_format=torch.channels_last)
    mean, std = normalisation(model)
    steps_per_epoch = math.ceil(len(split.train_images) / cfg.batch_size)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=cfg.epochs,
        warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.lr * 0.01,
        min_lr=cfg.lr * 0.01,
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    amp = autocast_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    if scaler.is_enabled():
        state["scaler"] = scaler
    fingerprint = {"name": name, "n_train": len(split.train_images), **dataclasses.asdict(cfg)}
    start_epoch, history = _resume(resume_path, state, fingerprint)
    log.info(
        "%s: %d train / %d valid images, %d epochs of %d steps, batch %d, %dpx, device %s%s",
        name, len(split.train_images), len(split.valid_images), cfg.epochs, steps_per_epoch, cfg.batch_size,
        cfg.image_size, device, f", resuming at epoch {start_epoch + 1}" if start_epoch else "",
    )  # fmt: skip

    valid_logits = None
    with logging_redirect_tqdm():
        for epoch in range(start_epoch, cfg.epochs):
            torch.manual_seed(cfg.seed * 1000 + epoch)  # drop path / dropout
            augment_rng = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(split.train_images))
            model.train()
            losses = []
            bar = tqdm(range(steps_per_epoch), desc=f"{name} epoch {epoch + 1}/{cfg.epochs}", leave=False)
            for step in bar:
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                images = random_crop_flip(to_device(split.train_images[idx], device), cfg.crop_padding, augment_rng)
                labels = torch.from_numpy(split.train_labels[idx]).to(device)
                with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
                    loss = loss_fn(model(to_model_input(images, cfg.image_size, mean, std, torch.float32)), labels)
                if not torch.isfinite(loss):
                    raise PipelineError(
                        f"{name} epoch {epoch + 1}: the training loss is {loss.item()}; lower train.lr"
                        " (or this backbone's override) and re-run."
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step_update(epoch * steps_per_epoch + step + 1)
                losses.append(loss.item())
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            valid_logits = predict_logits(
                model, split.valid_images, image_size=cfg.image_size, mean=mean, std=std,
                batch_size=cfg.batch_size * 2, device=device, desc=f"{name} valid",
            )  # fmt: skip
            row = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": float(np.mean(losses)),
                **{f"valid_{k}": v for k, v in logits_metrics(valid_logits, split.valid_labels).items()},
            }
            history.append(row)
            log.info(
                "%s epoch %d: lr %.2e train_loss %.4f valid_loss %.4f valid_acc %.4f",
                name, row["epoch"], row["lr"], row["train_loss"], row["valid_log_loss"], row["valid_accuracy"],
            )  # fmt: skip
            _save_resume(resume_path, state, fingerprint, epoch + 1, history)

    if valid_logits is None:  # resumed after the last epoch: only the OOF logits are missing
        valid_logits = predict_logits(
            model, split.valid_images, image_size=cfg.image_size, mean=mean, std=std,
            batch_size=cfg.batch_size * 2, device=device, desc=f"{name} valid",
        )  # fmt: skip
    metrics = logits_metrics(valid_logits, split.valid_labels)
    if resume_path is not None:
        Path(resume_path).unlink(missing_ok=True)
    return FoldResult(model=model, oof_logits=valid_logits, metrics=metrics, history=history)


def _save_resume(path: Path | None, state: dict, fingerprint: dict, epochs_done: int, history: list) -> None:
    if path is None:
        return
    snapshot = {key: obj.state_dict() for key, obj in state.items()}
    with atomic_file(path) as tmp:
        torch.save({**snapshot, "fingerprint": fingerprint, "epochs_done": epochs_done, "history": history}, tmp)


def _resume(path: Path | None, state: dict, fingerprint: dict) -> tuple[int, list]:
    """Load the state saved by `_save_resume`; returns (epochs already done, their history rows)."""
    if path is None or not Path(path).exists():
        return 0, []
    snapshot = torch.load(path, map_location="cpu", weights_only=True)
    if snapshot.get("fingerprint") != fingerprint:  # another backbone, fold size or recipe: start over
        log.warning("%s: resume file %s is from other settings; starting from epoch 1", fingerprint["name"], path)
        Path(path).unlink()
        return 0, []
    for key, obj in state.items():
        obj.load_state_dict(snapshot[key])
    return int(snapshot["epochs_done"]), list(snapshot["history"])
