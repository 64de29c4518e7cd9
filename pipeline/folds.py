"""Stratified k-fold assignment of the training images, saved as `id,label,fold` CSV."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

from pipeline.atomic import atomic_file
from pipeline.competition import CLASSES
from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Split:
    """One fold: the images to train on, and the held-out images whose logits become out-of-fold (OOF)."""

    train_images: np.ndarray  # (n_train, 32, 32, 3) uint8
    train_labels: np.ndarray  # (n_train,) class indices
    valid_images: np.ndarray
    valid_labels: np.ndarray
    valid_ids: np.ndarray  # (n_valid,) image ids of the held-out rows


def split_fold(images: np.ndarray, labels: np.ndarray, fold_of_image: np.ndarray, fold: int) -> Split:
    """The train/held-out split of `fold`; row i of `images` is image id i + 1."""
    held_out = fold_of_image == fold
    if not held_out.any():
        raise PipelineError(f"fold {fold} holds no images; folds.csv has folds {sorted(set(fold_of_image.tolist()))}.")
    train_idx, valid_idx = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    return Split(
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        valid_images=images[valid_idx],
        valid_labels=labels[valid_idx],
        valid_ids=valid_idx + 1,
    )


def make_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold index of each image, `(n_images,)` int64, stratified by class and reproducible from `seed`."""
    smallest = int(np.bincount(labels, minlength=len(CLASSES)).min())
    if smallest < n_folds:
        raise PipelineError(
            f"cv:folds asks for {n_folds} folds but a class has only {smallest} images; use fewer folds"
            " or more training images."
        )
    fold_of_image = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, valid_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold_of_image[valid_idx] = fold
    return fold_of_image


def write_folds(path: Path, ids: np.ndarray, labels: np.ndarray, fold_of_image: np.ndarray) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "label", "fold"])
        writer.writerows(zip(ids.tolist(), (CLASSES[k] for k in labels.tolist()), fold_of_image.tolist(), strict=True))


def read_folds(path: Path) -> np.ndarray:
    """Fold index of each image in id order (row i is image id i + 1)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError as exc:
        raise PipelineError(f"{path}: not found; run the folds stage first (`dvc repro folds`).") from exc
    ids = np.array([int(r["id"]) for r in rows], dtype=np.int64)
    if not np.array_equal(ids, np.arange(1, len(ids) + 1)):
        raise PipelineError(f"{path}: ids must be 1..N in order; re-run the folds stage.")
    return np.array([int(r["fold"]) for r in rows], dtype=np.int64)
