"""The competition as packed arrays: extract Kaggle's four files once, then load them memory-mapped.

Layout of the data folder (all `.npy`, row i is image id i + 1):
  train_images.npy (n_train, 32, 32, 3) uint8    train_labels.npy (n_train,) int64 class indices
  test_images.npy  (n_test, 32, 32, 3) uint8
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.archive import decode_archive_into, open_archive, read_member_ids
from pipeline.atomic import atomic_dir, check_free_space
from pipeline.competition import (
    CLASSES,
    IMAGE_SHAPE,
    SAMPLE_SUBMISSION,
    TEST_ARCHIVE,
    TRAIN_ARCHIVE,
    TRAIN_LABELS,
    CompetitionFileError,
    read_id_label_csv,
)
from pipeline.errors import PipelineError
from pipeline.provenance import Made, Record, arrays_digest, expect, write_record

log = logging.getLogger(__name__)
_REMAKE = "re-run the extract stage (`dvc repro -f extract`)"
_ARRAYS = ("train_images", "train_labels", "test_images")


class DatasetError(PipelineError):
    """The packed arrays are missing, unreadable, or not what the extract stage writes."""


STAGE = "extract"


@dataclass(frozen=True)
class Dataset:
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    made: Made | None = None  # the data folder and its record: what every record downstream lists as `data`

    @property
    def train_ids(self) -> np.ndarray:
        return np.arange(1, len(self.train_images) + 1)

    @property
    def test_ids(self) -> np.ndarray:
        return np.arange(1, len(self.test_images) + 1)


def extract_competition(raw_dir: Path, data_dir: Path) -> None:
    """Check Kaggle's four files in `raw_dir` against each other and write the arrays to `data_dir`.

    Nothing appears at `data_dir` unless every check passes. The folder's record lists the raw folder's and
    holds a digest of the arrays.
    """
    raw_dir = Path(raw_dir)
    raw = expect(raw_dir, "download")
    train_path, test_path = raw_dir / TRAIN_ARCHIVE, raw_dir / TEST_ARCHIVE
    with open_archive(train_path) as train_archive, open_archive(test_path) as test_archive:
        train_ids = read_member_ids(train_archive, train_path, "train")
        test_ids = read_member_ids(test_archive, test_path, "test")
        labelled_ids, labels = read_id_label_csv(raw_dir / TRAIN_LABELS)
        submission_ids, _ = read_id_label_csv(raw_dir / SAMPLE_SUBMISSION)
        _check_same_ids(raw_dir / TRAIN_LABELS, labelled_ids, train_ids, TRAIN_ARCHIVE)
        _check_subset(raw_dir / SAMPLE_SUBMISSION, submission_ids, test_ids, TEST_ARCHIVE)
        log.info("%d train images (%d labelled), %d test images", len(train_ids), len(labelled_ids), len(test_ids))

        train_labels = np.empty(len(train_ids), dtype=np.int64)
        train_labels[labelled_ids - 1] = labels
        n_bytes = (len(train_ids) + len(test_ids)) * int(np.prod(IMAGE_SHAPE))
        check_free_space(Path(data_dir).parent, n_bytes, "the arrays", "the extract stage")
        with atomic_dir(data_dir) as tmp:
            for split, n_images, archive, path in (
                ("train", len(train_ids), train_archive, train_path),
                ("test", len(test_ids), test_archive, test_path),
            ):
                write_images_npy(archive, path, n_images, tmp / f"{split}_images.npy")
            np.save(tmp / "train_labels.npy", train_labels)
            written = {name: np.load(tmp / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
            facts = {"n_train": len(train_ids), "n_test": len(test_ids), "arrays": arrays_digest(*written.values())}
            del written  # unmap before the folder is renamed
            write_record(tmp, Record(stage=STAGE, inputs={"raw": raw.digest}, facts=facts))
    log.info("wrote %s", data_dir)


def write_images_npy(archive, archive_path: Path, n_images: int, npy_path: Path) -> None:
    """Decode an opened archive's images into a new `(n_images, 32, 32, 3)` uint8 `.npy` at `npy_path`."""
    images = np.lib.format.open_memmap(npy_path, mode="w+", dtype=np.uint8, shape=(n_images, *IMAGE_SHAPE))
    _reserve_blocks(npy_path)
    decode_archive_into(archive, archive_path, images)
    images.flush()
    del images  # unmap before the folder is renamed


def load_dataset(data_dir: Path) -> Dataset:
    """Memory-map the arrays written by `extract_competition`, checked: shapes, dtypes, label range, and the
    folder's record (its digest of the arrays is not recomputed: the folder is one DVC output)."""
    data_dir = Path(data_dir)
    train_images = _load_array(data_dir / "train_images.npy", mmap=True)
    train_labels = _load_array(data_dir / "train_labels.npy", mmap=False)
    test_images = _load_array(data_dir / "test_images.npy", mmap=True)
    for name, images in (("train_images.npy", train_images), ("test_images.npy", test_images)):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE or not len(images):
            raise DatasetError(
                f"{data_dir / name}: holds {images.dtype} {images.shape}, expected uint8 (n, 32, 32, 3) with n > 0;"
                f" {_REMAKE}."
            )
    if train_labels.dtype != np.int64 or train_labels.shape != (len(train_images),):
        raise DatasetError(
            f"{data_dir / 'train_labels.npy'}: holds {train_labels.dtype} {train_labels.shape}, expected int64"
            f" ({len(train_images)},), one label per training image; {_REMAKE}."
        )
    outside = np.flatnonzero((train_labels < 0) | (train_labels >= len(CLASSES)))
    if len(outside):
        raise DatasetError(
            f"{data_dir / 'train_labels.npy'}: {len(outside)} labels are not class indices 0..{len(CLASSES) - 1},"
            f" the first is {int(train_labels[outside[0]])} (image id {outside[0] + 1}); {_REMAKE}."
        )
    made = expect(data_dir, STAGE)
    counts, recorded = (len(train_images), len(test_images)), (made.record.facts.get("n_train"),
                                                               made.record.facts.get("n_test"))  # fmt: skip
    if counts != recorded:
        raise DatasetError(f"{data_dir}: holds {counts[0]} train and {counts[1]} test images, its record says"
                           f" {recorded[0]} and {recorded[1]}; {_REMAKE}.")  # fmt: skip
    return Dataset(train_images=train_images, train_labels=train_labels, test_images=test_images, made=made)


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: not found; run the extract stage first (`dvc repro extract`).") from exc
    except (OSError, ValueError, EOFError) as exc:  # truncated, not .npy, or an object array
        raise DatasetError(f"{path}: not a readable .npy array ({exc}); {_REMAKE}.") from exc


def _reserve_blocks(path: Path) -> None:
    """Allocate the memmap's blocks now, so a full disk is an error here rather than a SIGBUS mid-decode."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DatasetError(
                    f"{path}: the disk is full ({size:,} bytes needed for this array); free space and re-run the"
                    " extract stage."
                ) from exc
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            # file systems without fallocate: the free-space check before writing is the guard


def _check_same_ids(csv_path: Path, csv_ids: np.ndarray, image_ids: np.ndarray, archive: str) -> None:
    _check_subset(csv_path, csv_ids, image_ids, archive)
    unlabelled = np.setdiff1d(image_ids, csv_ids)
    if len(unlabelled):
        raise CompetitionFileError(
            f"{csv_path}: {len(unlabelled)} images of {archive} have no label, the first is id {unlabelled[0]}."
        )


def _check_subset(csv_path: Path, csv_ids: np.ndarray, image_ids: np.ndarray, archive: str) -> None:
    missing = np.setdiff1d(csv_ids, image_ids)
    if len(missing):
        raise CompetitionFileError(
            f"{csv_path}: {len(missing)} ids have no image in {archive}, the first is id {missing[0]}."
        )
