"""Class scores on disk (logits, or the ensemble's probabilities): `.npz` files of `ids` and `scores` rows.

OOF logits are one file per backbone and fold, test logits one per backbone, test probabilities one. Every
file is checked when it is written and when it is read: one row of `len(CLASSES)` finite scores per id, each
id once, and on reading exactly the ids the reader expects, in its order.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_file
from pipeline.competition import CLASSES
from pipeline.errors import PipelineError
from pipeline.provenance import KEY, Record

_REMAKE = "re-run the stage that writes it (`dvc repro -f <stage>`; `dvc stage list` names them)"


class ScoresError(PipelineError):
    """A scores file is missing, malformed, non-finite, or holds other images than expected."""


def save_scores(path: Path, ids: np.ndarray, scores: np.ndarray, dtype: type = np.float32,
                record: Record | None = None) -> None:  # fmt: skip
    """Write `ids` `(n,)` and `scores` `(n, n_classes)` as `dtype`, with the `record` of what made them (read back
    by `pipeline.provenance.read_record`), atomically; refuses non-finite scores."""
    with np.errstate(over="ignore"):  # overflow is reported below, with the file and the fix
        stored = np.asarray(scores).astype(dtype)
    _check(path, np.asarray(ids), stored)
    bad = ~np.isfinite(stored).all(axis=1)
    if bad.any():
        raise ScoresError(
            f"{path}: refusing to write {int(bad.sum())} rows of non-finite scores as {np.dtype(dtype).name}"
            f" (the first for image id {int(ids[np.flatnonzero(bad)[0]])}): the model that made them is broken"
            " (diverged training, or logits beyond float16's range); re-train it with a lower train.lr."
        )
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        extra = {} if record is None else {KEY: np.array(record.to_json())}
        np.savez(f, ids=np.asarray(ids).astype(np.int64), scores=stored, **extra)


def load_scores(path: Path, expected_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) as written by `save_scores`, checked; with `expected_ids`, the ids must equal them."""
    try:
        with np.load(path) as npz:
            ids, scores = npz["ids"], npz["scores"]
    except FileNotFoundError as exc:
        raise ScoresError(f"{path}: not found; run the stage that writes it (`dvc repro`).") from exc
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ScoresError(f"{path}: not a readable scores file ({type(exc).__name__}: {exc}); {_REMAKE}.") from exc
    _check(path, ids, scores)
    if not np.isfinite(scores).all():
        row = int(np.flatnonzero(~np.isfinite(scores).all(axis=1))[0])
        raise ScoresError(f"{path}: holds non-finite scores (the first for image id {int(ids[row])}); {_REMAKE}.")
    if expected_ids is not None and not np.array_equal(ids, expected_ids):
        raise ScoresError(
            f"{path}: holds scores for {len(ids)} images, expected {len(expected_ids)}"
            f"{_first_difference(ids, expected_ids)}: it was made from other data or folds; {_REMAKE}."
        )
    return ids, scores


def load_oof(paths: list[Path], fold_of_image: np.ndarray) -> np.ndarray:
    """`(n_images, n_classes)` OOF logits in id order from `paths[k]`, fold k's file: exactly that fold's ids."""
    n_folds = len(np.unique(fold_of_image))
    if len(paths) != n_folds:
        raise ScoresError(f"{len(paths)} OOF files for the {n_folds} folds of folds.csv; {_REMAKE}.")
    logits = np.empty((len(fold_of_image), len(CLASSES)), dtype=np.float32)
    for fold, path in enumerate(paths):
        valid_ids = np.flatnonzero(fold_of_image == fold) + 1
        logits[valid_ids - 1] = load_scores(path, expected_ids=valid_ids)[1]
    return logits


def _check(path: Path, ids: np.ndarray, scores: np.ndarray) -> None:
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ScoresError(f"{path}: ids must be a 1-D integer array, got {ids.dtype} {ids.shape}; {_REMAKE}.")
    if scores.shape != (len(ids), len(CLASSES)) or not np.issubdtype(scores.dtype, np.floating):
        raise ScoresError(
            f"{path}: scores must be floats of shape ({len(ids)}, {len(CLASSES)}), one row per id,"
            f" got {scores.dtype} {scores.shape}; {_REMAKE}."
        )
    if len(np.unique(ids)) != len(ids):
        raise ScoresError(f"{path}: an image id appears more than once; {_REMAKE}.")


def _first_difference(ids: np.ndarray, expected: np.ndarray) -> str:
    n = min(len(ids), len(expected))
    differ = np.flatnonzero(ids[:n] != expected[:n])
    if len(differ):
        k = int(differ[0])
        return f" (row {k} is id {int(ids[k])}, expected id {int(expected[k])})"
    return ""
