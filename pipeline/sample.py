"""The embedded offline competition: a small, learnable CIFAR-10 look-alike in exactly Kaggle's file format.

Each class is a shape (plus, bar, triangle, ring, striped square, disc, checkered disc, diagonal, half disc,
two blocks) with a class-biased but overlapping hue, drawn at a random place, size and angle over a random
gradient background with pixel noise. Cat (ring) and dog (disc) are close on purpose, as in CIFAR-10.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import py7zr
from PIL import Image
from py7zr.helpers import ArchiveTimestamp
from tqdm import tqdm

from pipeline.competition import (
    CLASSES,
    IMAGE_SHAPE,
    SAMPLE_SUBMISSION,
    TEST_ARCHIVE,
    TRAIN_ARCHIVE,
    TRAIN_LABELS,
    id_label_csv_text,
)

_SIZE = IMAGE_SHAPE[0]
_YY, _XX = np.mgrid[0:_SIZE, 0:_SIZE].astype(np.float32)


def draw_image(label: int, rng: np.random.Generator, noise: float = 22.0) -> np.ndarray:
    """One 32x32 RGB uint8 image of class `label`, with Gaussian pixel noise of std `noise` (0-255 scale)."""
    corners = rng.uniform(0, 255, size=(2, 3))
    t = (_XX * np.cos(a := rng.uniform(0, 2 * np.pi)) + _YY * np.sin(a)) / (_SIZE * 1.5) + 0.5
    image = corners[0] * (1 - t[..., None]) + corners[1] * t[..., None]

    mask = _shape_mask(label, rng)
    hue = (label / len(CLASSES) + rng.normal(0, 0.07)) % 1.0
    colour = _hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.55, 1.0)) * 255
    alpha = rng.uniform(0.7, 1.0)
    image = np.where(mask[..., None], alpha * colour + (1 - alpha) * image, image)
    image += rng.normal(0, noise, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _sample_labels(n: int, seed: int) -> np.ndarray:
    """Balanced-ish random class indices for `n` images."""
    return np.random.default_rng(seed).integers(0, len(CLASSES), size=n)


def write_sample_competition(zip_path: Path, n_train: int, n_test: int, seed: int) -> np.ndarray:
    """Write `cifar-10.zip` as Kaggle ships it (train.7z, test.7z, trainLabels.csv, sampleSubmission.csv).

    Deterministic in (n_train, n_test, seed), byte for byte (every member stamped with one fixed time, not now):
    machines that share DVC's run-cache write the same files. Returns the hidden test labels, `(n_test,)` class indices,
    which Kaggle would keep to itself; tests use them to score a submission. The images are drawn as they are
    packed, never held all at once: a Kaggle-size sample (50,000 + 300,000) needs no more memory than a small one.
    """
    train_labels = _sample_labels(n_train, seed)
    test_labels = _sample_labels(n_test, seed + 1)
    _write_zip(zip_path, _drawn(train_labels, np.random.default_rng([seed, 1])), train_labels,
               _drawn(test_labels, np.random.default_rng([seed, 2])), n_test)  # fmt: skip
    return test_labels


def draw_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`(n, 32, 32, 3)` uint8 images drawn by `draw_image`, one per class index in `labels`, in order."""
    images = np.empty((len(labels), *IMAGE_SHAPE), dtype=np.uint8)
    for i, image in enumerate(_drawn(labels, rng)):
        images[i] = image
    return images


def _drawn(labels: np.ndarray, rng: np.random.Generator) -> Iterator[np.ndarray]:
    return (draw_image(label, rng) for label in labels.tolist())


def write_competition_zip(zip_path: Path, train_images: np.ndarray, train_labels: np.ndarray,
                          test_images: np.ndarray) -> None:  # fmt: skip
    """Write `cifar-10.zip` in Kaggle's layout from `(n, 32, 32, 3)` uint8 images; ids are 1..n in array order.

    sampleSubmission.csv says `cat` for every test image, as Kaggle's does.
    """
    _write_zip(zip_path, iter(train_images), train_labels, iter(test_images), len(test_images))


def _write_zip(zip_path: Path, train_images: Iterable[np.ndarray], train_labels: np.ndarray,
               test_images: Iterable[np.ndarray], n_test: int) -> None:  # fmt: skip
    zip_path = Path(zip_path)
    with tempfile.TemporaryDirectory(dir=zip_path.parent) as tmp, \
            zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as z:  # fmt: skip
        for name, split, images, n in ((TRAIN_ARCHIVE, "train", train_images, len(train_labels)),
                                       (TEST_ARCHIVE, "test", test_images, n_test)):  # fmt: skip
            archive = Path(tmp) / name
            _seven_zip(archive, split, images, n)
            with archive.open("rb") as src, z.open(_member(name), "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            archive.unlink()
        z.writestr(_member(TRAIN_LABELS), id_label_csv_text(np.arange(1, len(train_labels) + 1), train_labels))
        all_cats = np.full(n_test, CLASSES.index("cat"))  # as Kaggle's own sampleSubmission.csv
        z.writestr(_member(SAMPLE_SUBMISSION), id_label_csv_text(np.arange(1, n_test + 1), all_cats))


_STAMP = datetime(2013, 10, 1, tzinfo=UTC)  # every member's time: the competition's launch, not now


def _member(name: str) -> zipfile.ZipInfo:
    return zipfile.ZipInfo(name, date_time=_STAMP.timetuple()[:6])


def encode_png(image: np.ndarray) -> bytes:
    """8-bit RGB, non-interlaced PNG bytes, as Kaggle's."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


# LZMA2 as Kaggle's archives (so extract takes its fast path), at its fastest preset: noisy PNGs do not compress,
# and at the default preset LZMA spent most of the time of writing a Kaggle-size test.7z looking for matches
_FILTERS = [{"id": py7zr.FILTER_LZMA2, "preset": 0}]


class _StampedSevenZip(py7zr.SevenZipFile):
    """py7zr stamps each member written from bytes with the time now; this one with `_STAMP`."""

    @staticmethod
    def _make_file_info_from_name(bio, size: int, arcname: str) -> dict:
        info = py7zr.SevenZipFile._make_file_info_from_name(bio, size, arcname)
        stamp = ArchiveTimestamp.from_datetime(_STAMP.timestamp())
        return {**info, "creationtime": stamp, "lastwritetime": stamp, "lastaccesstime": stamp}


def _seven_zip(path: Path, split: str, images: Iterable[np.ndarray], n: int) -> None:
    """`path`: a 7z archive of `<split>/<id>.png` members, ids 1..n, written to disk with a progress bar."""
    with _StampedSevenZip(path, "w", filters=_FILTERS) as archive:
        for image_id, image in enumerate(tqdm(images, total=n, desc=f"write {split}.7z", unit="img", leave=False,
                                              mininterval=1, disable=n < 10_000), start=1):  # fmt: skip
            archive.writestr(encode_png(image), f"{split}/{image_id}.png")


def _shape_mask(label: int, rng: np.random.Generator) -> np.ndarray:
    r = rng.uniform(7, 12)
    cx, cy = rng.uniform(r * 0.7, _SIZE - r * 0.7, size=2)
    theta = rng.uniform(-0.4, 0.4)
    u = (_XX - cx) * np.cos(theta) + (_YY - cy) * np.sin(theta)
    v = -(_XX - cx) * np.sin(theta) + (_YY - cy) * np.cos(theta)
    d = np.hypot(u, v)
    name = CLASSES[label]
    if name == "airplane":  # a plus
        return ((np.abs(u) < r * 0.22) & (np.abs(v) < r)) | ((np.abs(v) < r * 0.22) & (np.abs(u) < r))
    if name == "automobile":  # a wide bar
        return (np.abs(u) < r) & (np.abs(v) < r * 0.45)
    if name == "bird":  # a triangle
        return (v < r * 0.6) & (v > -r) & (np.abs(u) < (v + r) * 0.55)
    if name == "cat":  # a ring
        return (d < r) & (d > r * 0.55)
    if name == "deer":  # a vertically striped square
        return (np.abs(u) < r * 0.8) & (np.abs(v) < r * 0.8) & (np.sin(u * 1.6) > 0)
    if name == "dog":  # a disc
        return d < r * 0.9
    if name == "frog":  # a checkered disc
        return (d < r) & ((np.floor(u / 3) + np.floor(v / 3)) % 2 == 0)
    if name == "horse":  # a diagonal bar
        return (np.abs(u - v) < r * 0.45) & (np.abs(u + v) < r * 1.6)
    if name == "ship":  # a half disc
        return (d < r) & (v > 0)
    return ((np.abs(u + r * 0.5) < r * 0.4) | (np.abs(u - r * 0.5) < r * 0.4)) & (np.abs(v) < r * 0.4)  # truck


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)
