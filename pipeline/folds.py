"""Stratified k-fold assignment of the training images, saved as `id,label,fold` CSV."""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

from pipeline.atomic import atomic_file
from pipeline.competition import CLASSES, read_csv_rows
from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.provenance import Made, Record, arrays_digest, made_by, sidecar, write_record

STAGE = "folds"


class FoldsError(PipelineError):
    """folds.csv is missing, malformed, or does not match the data or cv.folds."""


@dataclass(frozen=True)
class Split:
    """One fold: the images to train on, and the held-out images whose logits become out-of-fold (OOF)."""

    train_images: np.ndarray  # (n_train, 32, 32, 3) uint8
    train_labels: np.ndarray  # (n_train,) class indices
    valid_images: np.ndarray
    valid_labels: np.ndarray
    valid_ids: np.ndarray  # (n_valid,) image ids of the held-out rows
    # with train.cached_features: the frozen blocks' outputs for the same rows, (n, views, C, H, W) float16
    train_features: np.ndarray | None = None
    valid_features: np.ndarray | None = None

    def digest(self) -> str:
        """A hash of both sides' images, labels and the held-out ids: another split or other data differ."""
        return arrays_digest(self.train_images, self.train_labels, self.valid_images, self.valid_labels,
                             self.valid_ids)  # fmt: skip


def split_fold(
    images: np.ndarray, labels: np.ndarray, fold_of_image: np.ndarray, fold: int, features: np.ndarray | None = None
) -> Split:
    """The train/held-out split of `fold`; row i of `images` (and of `features`, if given) is image id i + 1."""
    held_out = fold_of_image == fold
    if not held_out.any() or held_out.all():
        raise FoldsError(
            f"fold {fold} holds {int(held_out.sum())} of {len(held_out)} images; folds.csv has folds"
            f" {sorted(set(fold_of_image.tolist()))}: train a fold listed in cv.folds."
        )
    train_idx, valid_idx = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    return Split(
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        valid_images=images[valid_idx],
        valid_labels=labels[valid_idx],
        valid_ids=valid_idx + 1,
        train_features=None if features is None else features[train_idx],
        valid_features=None if features is None else features[valid_idx],
    )


def make_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold index of each image, `(n_images,)` int64, stratified by class and reproducible from `seed`."""
    smallest = int(np.bincount(labels, minlength=len(CLASSES)).min())
    if smallest < n_folds:
        raise FoldsError(
            f"cv:folds asks for {n_folds} folds but a class has only {smallest} images; use fewer folds"
            " or more training images."
        )
    fold_of_image = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, valid_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold_of_image[valid_idx] = fold
    return fold_of_image


def write_folds(path: Path, ids: np.ndarray, labels: np.ndarray, fold_of_image: np.ndarray, record: Record) -> None:
    """folds.csv, then its record (`record`: stage, settings, inputs; the facts are added here)."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "label", "fold"])
        writer.writerows(zip(ids.tolist(), (CLASSES[k] for k in labels.tolist()), fold_of_image.tolist(), strict=True))
    facts = {"n_images": len(ids), "folds": arrays_digest(fold_of_image)}
    write_record(path, dataclasses.replace(record, facts=facts))


def load_folds(path: Path, labels: np.ndarray, cfg: Config, data: Made) -> tuple[np.ndarray, Made]:
    """`read_folds`, and its record checked: made with params.yaml's cv settings, from `data`, and describing
    this very file (not one edited or replaced without its record)."""
    fold_of_image = read_folds(path, labels, n_folds=cfg.cv.n_folds)
    made = made_by(path, cfg, STAGE, data=data)
    if made.record.facts.get("folds") != arrays_digest(fold_of_image):
        raise FoldsError(f"{path}: is not the file its record {sidecar(path)} describes (edited, or replaced"
                         " without it); re-run the folds stage (`dvc repro -f folds`).")  # fmt: skip
    return fold_of_image, made


def read_folds(path: Path, labels: np.ndarray, n_folds: int) -> np.ndarray:
    """Fold index of each image in id order (row i is image id i + 1), checked against the data and `cv.folds`.

    `labels` `(n_images,)` are the extracted class indices: folds.csv must list the same images with the same
    labels (else it was made from other data), and its folds must be exactly 0..n_folds-1, none empty.
    """
    remake = "re-run the folds stage (`dvc repro folds`)"
    rows = read_csv_rows(path, FoldsError, remake)
    if not rows or rows[0] != ["id", "label", "fold"]:
        raise FoldsError(f"{path}: the first line must be 'id,label,fold'; {remake}.")
    body = rows[1:]
    if len(body) != len(labels):
        raise FoldsError(f"{path}: has {len(body)} images, the extracted data has {len(labels)}; {remake}.")
    fold_of_image = np.empty(len(body), dtype=np.int64)
    for line_no, (row, expected_label) in enumerate(zip(body, labels.tolist(), strict=True), start=2):
        expected_id = line_no - 1
        if len(row) != 3 or row[0] != str(expected_id) or not (row[2].isascii() and row[2].isdigit()):
            raise FoldsError(f"{path}:{line_no}: expected '{expected_id},<label>,<fold>', got {row}; {remake}.")
        if row[1] != CLASSES[expected_label]:
            raise FoldsError(
                f"{path}:{line_no}: id {expected_id} is labelled {row[1]!r} but the extracted data says"
                f" {CLASSES[expected_label]!r}: folds.csv was made from other data; {remake}."
            )
        fold_of_image[line_no - 2] = int(row[2])
    found = sorted(set(fold_of_image.tolist()))
    if found != list(range(n_folds)):
        raise FoldsError(
            f"{path}: holds folds {found}, but params.yaml cv.folds asks for {list(range(n_folds))}; {remake}."
        )
    return fold_of_image
