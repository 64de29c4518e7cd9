"""Kaggle's `id,label` submission: one row per sampleSubmission.csv id, in its order, checked before it lands."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_file
from pipeline.competition import CLASSES, id_label_csv_text, read_id_label_csv
from pipeline.errors import PipelineError


class SubmissionError(PipelineError):
    """A submission does not match sampleSubmission.csv."""


def write_submission(path: Path, test_ids: np.ndarray, test_probs: np.ndarray, sample_submission: Path) -> None:
    """Label each id of `sample_submission` with its most probable class and write the CSV atomically.

    `test_ids` `(n,)` and `test_probs` `(n, n_classes)` may be in any order; every sample id must be among them.
    """
    sample_ids, _ = read_id_label_csv(sample_submission)
    row_of_id = {int(image_id): row for row, image_id in enumerate(test_ids.tolist())}
    missing = [i for i in sample_ids.tolist() if i not in row_of_id]
    if missing:
        raise SubmissionError(
            f"{sample_submission}: {len(missing)} ids have no prediction, the first is id {missing[0]};"
            " re-run the predict and ensemble stages."
        )
    labels = test_probs[[row_of_id[i] for i in sample_ids.tolist()]].argmax(1)
    with atomic_file(path) as tmp:
        tmp.write_text(id_label_csv_text(sample_ids, labels))
        check_submission(tmp, sample_submission)


def check_submission(path: Path, sample_submission: Path) -> int:
    """Check a submission CSV against sampleSubmission.csv: same ids, same order, known labels; returns rows."""
    sample_ids, _ = read_id_label_csv(sample_submission)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise SubmissionError(f"{path}: cannot read it ({exc}); run `dvc repro submission`.") from exc
    if not rows or rows[0] != ["id", "label"]:
        raise SubmissionError(f"{path}: the first line must be 'id,label'.")
    body = rows[1:]
    if len(body) != len(sample_ids):
        raise SubmissionError(f"{path}: has {len(body)} rows, {sample_submission} has {len(sample_ids)}.")
    for line_no, (row, expected_id) in enumerate(zip(body, sample_ids.tolist(), strict=True), start=2):
        if len(row) != 2 or row[0] != str(expected_id):
            raise SubmissionError(
                f"{path}:{line_no}: expected id {expected_id} (sampleSubmission.csv's order), got {row}."
            )
        if row[1] not in CLASSES:
            raise SubmissionError(f"{path}:{line_no}: label {row[1]!r} is not one of {', '.join(CLASSES)}.")
    return len(body)


def submission_message(ensemble_metrics_path: Path) -> str:
    """The Kaggle submission description: backbones and the ensemble's nested-CV accuracy, from ensemble.json."""
    try:
        ensemble_metrics = json.loads(Path(ensemble_metrics_path).read_text())
    except (OSError, ValueError) as exc:
        raise SubmissionError(f"{ensemble_metrics_path}: cannot read it ({exc}); run `dvc repro` first.") from exc
    try:
        backbones = ", ".join(ensemble_metrics["backbones"])
        method, accuracy = (ensemble_metrics["submission"][key] for key in ("method", "nested_cv_accuracy"))
        kind = "logistic-regression stacking" if method == "stacking" else f"{method} softmax"
        return f"{kind} ensemble of {backbones}; nested-CV accuracy {accuracy:.4f}"
    except (KeyError, TypeError, ValueError) as exc:
        raise SubmissionError(
            f"{ensemble_metrics_path}: lacks the ensemble's backbones or submission metrics ({exc!r});"
            " re-run the ensemble stage (`dvc repro ensemble`)."
        ) from exc
