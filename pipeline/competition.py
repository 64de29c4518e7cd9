"""The Kaggle cifar-10 competition's contract: its files, its ten classes and its `id,label` CSVs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

SLUG = "cifar-10"
ZIP_NAME = "cifar-10.zip"
TRAIN_ARCHIVE = "train.7z"
TEST_ARCHIVE = "test.7z"
TRAIN_LABELS = "trainLabels.csv"
SAMPLE_SUBMISSION = "sampleSubmission.csv"
FILES = (TRAIN_ARCHIVE, TEST_ARCHIVE, TRAIN_LABELS, SAMPLE_SUBMISSION)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (32, 32, 3)


class CompetitionFileError(PipelineError):
    """A competition file is missing, malformed, or disagrees with the others."""


def read_id_label_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read Kaggle's `id,label` CSV; returns (ids, class indices), both int64, in file order.

    Accepts a UTF-8 BOM and CRLF line ends; rejects a missing header, non-integer or duplicate ids,
    and labels outside the ten classes, naming the first bad line.
    """
    class_index = {name: i for i, name in enumerate(CLASSES)}
    rows = read_csv_rows(path, CompetitionFileError, "re-run the download stage")
    if not rows or [c.strip() for c in rows[0]] != ["id", "label"]:
        found = rows[0] if rows else "an empty file"
        raise CompetitionFileError(f"{path}: expected the header 'id,label', got {found}; re-run the download stage.")
    ids, labels, seen = [], [], set()
    for line_no, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not _is_ascii_integer(row[0].strip()):
            raise CompetitionFileError(f"{path}:{line_no}: expected '<id>,<label>' with an integer id, got {row}.")
        image_id, label = int(row[0]), row[1].strip()
        if label not in class_index:
            raise CompetitionFileError(
                f"{path}:{line_no}: label {label!r} is not one of the ten classes ({', '.join(CLASSES)})."
            )
        if image_id in seen:
            raise CompetitionFileError(f"{path}:{line_no}: id {image_id} appears twice.")
        seen.add(image_id)
        ids.append(image_id)
        labels.append(class_index[label])
    if not ids:
        raise CompetitionFileError(f"{path}: has a header but no rows.")
    return np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)


def read_csv_rows(path: Path, error: type[PipelineError], fix: str) -> list[list[str]]:
    """Every row of a UTF-8 CSV (a BOM and CRLF line ends are fine); `error(...)` with one line saying what is wrong
    and `fix` for a missing file, text that is not UTF-8 (UTF-16, as some editors save it) or a broken quote."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader, rows = csv.reader(f, strict=True), []
            while True:
                start = reader.line_num + 1  # where the next row begins
                try:
                    rows.append(next(reader))
                except StopIteration:
                    return rows
                except csv.Error as exc:  # a stray quote swallows the rest of the file into one field
                    raise error(f"{path}:{start}: not a valid CSV ({exc}): a stray double quote opens a field that"
                                f" never closes; {fix}.") from exc  # fmt: skip
    except FileNotFoundError as exc:
        raise error(f"{path}: not found; {fix}.") from exc
    except UnicodeDecodeError as exc:
        bom = {b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}.get(Path(path).read_bytes()[:2], "not UTF-8")
        raise error(f"{path}: is not UTF-8 text ({bom}, byte {exc.start}); save it as UTF-8, or {fix}.") from exc
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc}); {fix}.") from exc


def _is_ascii_integer(text: str) -> bool:
    """`int()` takes it: str.isdigit alone also accepts digits such as '²' that int() refuses."""
    return text.isascii() and text.isdigit()


def id_label_csv_text(ids: np.ndarray, labels: np.ndarray) -> str:
    """Kaggle's `id,label` CSV as text; `labels` are class indices."""
    rows = (f"{i},{CLASSES[k]}\n" for i, k in zip(ids.tolist(), labels.tolist(), strict=True))
    return "id,label\n" + "".join(rows)
