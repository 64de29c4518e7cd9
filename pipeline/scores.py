"""Class scores on disk (logits, or the ensemble's probabilities): `.npz` files of `ids` and `scores` rows.

OOF logits are one file per backbone and fold, test logits one per backbone, test probabilities one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_file
from pipeline.errors import PipelineError


def save_scores(path: Path, ids: np.ndarray, scores: np.ndarray, dtype: type = np.float32) -> None:
    """Write `ids` `(n,)` and `scores` `(n, n_classes)` as `dtype`, atomically."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, ids=ids.astype(np.int64), scores=scores.astype(dtype))


def load_scores(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) as written by `save_scores`."""
    try:
        with np.load(path) as npz:
            return npz["ids"], npz["scores"]
    except FileNotFoundError as exc:
        raise PipelineError(f"{path}: not found; run the stage that writes it (`dvc repro`).") from exc


def load_oof(paths: list[Path], n_images: int) -> np.ndarray:
    """Concatenate per-fold OOF files into `(n_images, n_classes)` logits in id order; every id exactly once."""
    parts = [load_scores(p) for p in paths]
    ids = np.concatenate([ids for ids, _ in parts])
    if not np.array_equal(np.sort(ids), np.arange(1, n_images + 1)):
        raise PipelineError(
            f"the OOF files {', '.join(map(str, paths))} do not cover the {n_images} training images exactly once;"
            " re-run the folds and train stages."
        )
    logits = np.concatenate([logits for _, logits in parts])
    return logits[np.argsort(ids)]
