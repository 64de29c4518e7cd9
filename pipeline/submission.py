"""Kaggle's `id,label` submission: one row per sampleSubmission.csv id, in its order, checked before it lands."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_file
from pipeline.competition import CLASSES, id_label_csv_text, read_csv_rows, read_id_label_csv
from pipeline.errors import PipelineError
from pipeline.provenance import Made, Record, file_digest, sidecar, write_record


class SubmissionError(PipelineError):
    """A submission does not match sampleSubmission.csv."""


def write_submission(path: Path, test_ids: np.ndarray, test_probs: np.ndarray, sample_submission: Path,
                     record: Record) -> None:  # fmt: skip
    """Label each id of `sample_submission` with its most probable class and write the CSV atomically, then its
    `record` (stage, inputs, facts), to which the CSV's digest and row count are added.

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
        digest = file_digest(tmp)
    facts = {**record.facts, "csv": digest, "rows": len(sample_ids)}
    write_record(path, dataclasses.replace(record, facts=facts))


def check_submission(path: Path, sample_submission: Path) -> int:
    """Check a submission CSV against sampleSubmission.csv: same ids, same order, known labels; returns rows."""
    sample_ids, _ = read_id_label_csv(sample_submission)
    rows = read_csv_rows(path, SubmissionError, "run `dvc repro submission`")
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


def check_submittable(path: Path, made: Made) -> str:
    """Refuse a submission.csv that is not the file its record describes, or that was made from the embedded
    sample competition; returns the CSV's digest (what the Kaggle description carries)."""
    digest = file_digest(path)
    if digest != made.record.facts.get("csv"):
        raise SubmissionError(f"{path}: is not the file its record {sidecar(path)} describes (edited after the"
                              " submission stage wrote it); run `dvc repro -f submission`.")  # fmt: skip
    if made.record.facts.get("data_source") == "sample":
        raise SubmissionError(
            f"{path}: was made from the embedded sample competition (data.source: sample, the offline demo), not"
            " Kaggle's images; nothing to send. Set data.source to kaggle (or local with Kaggle's zip), `git"
            " checkout params.yaml` after a demo, and run `dvc repro`."
        )
    return digest


def submission_message(made: Made, digest: str) -> str:
    """The Kaggle submission description: the ensemble (method, backbones, nested-CV accuracy) the record says
    the file was made from, and the file's short digest, by which a re-run finds it among your submissions."""
    facts = made.record.facts
    try:
        method, backbones, accuracy = (facts[key] for key in ("method", "backbones", "nested_cv_accuracy"))
    except KeyError as exc:
        raise SubmissionError(
            f"{made.path}: its record lacks the ensemble's method, backbones or nested-CV accuracy ({exc}); re-run the"
            " ensemble and submission stages (`dvc repro -f ensemble submission`)."
        ) from exc
    kind = "logistic-regression stacking" if method == "stacking" else f"{method} softmax"
    return f"{kind} ensemble of {', '.join(backbones)}; nested-CV accuracy {accuracy:.4f} {digest_tag(digest)}"


def digest_tag(digest: str) -> str:
    """`[csv 0123456789ab]`: a file's mark in its Kaggle description."""
    return f"[csv {digest[:12]}]"
