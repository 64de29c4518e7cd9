import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.competition import CLASSES, id_label_csv_text, read_id_label_csv
from pipeline.provenance import Made, Record, file_digest, read_record, sidecar
from pipeline.submission import (
    SubmissionError,
    check_submission,
    check_submittable,
    submission_message,
    write_submission,
)

RECORD = Record("submission")


@pytest.fixture
def sample_submission(tmp_path):
    path = tmp_path / "sampleSubmission.csv"
    path.write_text(id_label_csv_text(np.array([1, 2, 3, 4]), np.full(4, 3)))
    return path


def test_rows_follow_the_sample_order_whatever_the_prediction_order(tmp_path, sample_submission):
    ids = np.array([4, 2, 1, 3])
    probs = np.eye(10)[[9, 1, 0, 5]]  # id 4 -> truck, 2 -> automobile, 1 -> airplane, 3 -> dog
    write_submission(tmp_path / "submission.csv", ids, probs, sample_submission, RECORD)
    assert (tmp_path / "submission.csv").read_text().splitlines() == [
        "id,label", "1,airplane", "2,automobile", "3,dog", "4,truck",
    ]  # fmt: skip
    assert check_submission(tmp_path / "submission.csv", sample_submission) == 4


def test_a_missing_prediction_is_refused_and_nothing_written(tmp_path, sample_submission):
    with pytest.raises(SubmissionError, match="1 ids have no prediction, the first is id 4") as excinfo:
        write_submission(tmp_path / "submission.csv", np.array([1, 2, 3]), np.eye(10)[:3], sample_submission, RECORD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sampleSubmission.csv"]
    assert str(excinfo.value).endswith("the first is id 4; re-run the predict and ensemble stages.")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("1,cat\n2,cat\n3,cat\n", "has 3 rows, "),
        ("1,cat\n3,cat\n2,cat\n4,cat\n", ":3: expected id 2 (sampleSubmission.csv's order), got ['3', 'cat']"),
        ("1,cat\n2,lion\n3,cat\n4,cat\n", ":3: label 'lion' is not one of"),
        ("1,cat\n2,\n3,cat\n4,cat\n", ":3: label '' is not one of"),
        ("1,cat\n2,cat\n3,cat\n5,cat\n", ":5: expected id 4"),
    ],
)
def test_bad_submissions_are_refused_with_the_line(tmp_path, sample_submission, body, message):
    path = tmp_path / "submission.csv"
    path.write_text("id,label\n" + body)
    with pytest.raises(SubmissionError) as excinfo:
        check_submission(path, sample_submission)
    assert message in str(excinfo.value)


def test_class_indices_follow_cifar10s_label_order(tmp_path):
    """Kaggle's first training rows (train/1.png a frog, 2 and 3 trucks, 4 a deer, 5 an automobile: FACTS.md and
    CIFAR-10's data_batch_1 labels 6, 9, 9, 4, 1) read back as CIFAR-10's class indices, so an index written by
    the pipeline means the same class in Kaggle's CSV and in any CIFAR-10 label array."""
    path = tmp_path / "trainLabels.csv"
    path.write_text("id,label\n1,frog\n2,truck\n3,truck\n4,deer\n5,automobile\n")
    assert read_id_label_csv(path)[1].tolist() == [6, 9, 9, 4, 1]
    assert list(CLASSES) == sorted(CLASSES) and len(set(CLASSES)) == 10  # CIFAR-10's order is alphabetical


def test_an_unknown_label_error_lists_kaggles_classes(tmp_path, sample_submission):
    path = tmp_path / "submission.csv"
    path.write_text("id,label\n1,lion\n2,cat\n3,cat\n4,cat\n")
    with pytest.raises(SubmissionError) as excinfo:
        check_submission(path, sample_submission)
    assert str(excinfo.value).endswith(
        ":2: label 'lion' is not one of airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck."
    )


@pytest.mark.parametrize("text", ["", "id,labels\n1,cat\n2,cat\n3,cat\n4,cat\n"])
def test_an_empty_file_or_a_wrong_header_is_refused(tmp_path, sample_submission, text):
    path = tmp_path / "submission.csv"
    path.write_text(text)
    with pytest.raises(SubmissionError) as excinfo:
        check_submission(path, sample_submission)
    assert str(excinfo.value) == f"{path}: the first line must be 'id,label'."


def test_an_unreadable_submission_says_which_stage_writes_it(tmp_path, sample_submission):
    with pytest.raises(SubmissionError) as excinfo:
        check_submission(tmp_path / "absent.csv", sample_submission)
    message = str(excinfo.value)
    assert message == f"{tmp_path / 'absent.csv'}: not found; run `dvc repro submission`."


def test_a_utf16_submission_is_one_line_naming_the_encoding(tmp_path, sample_submission):
    path = tmp_path / "submission.csv"
    path.write_bytes("id,label\n1,cat\n2,cat\n3,cat\n4,cat\n".encode("utf-16"))  # Excel's "Unicode text"
    with pytest.raises(SubmissionError) as excinfo:
        check_submission(path, sample_submission)
    assert str(excinfo.value) == (
        f"{path}: is not UTF-8 text (UTF-16, byte 0); save it as UTF-8, or run `dvc repro submission`."
    )


def test_a_submission_saved_with_a_utf8_bom_and_crlf_is_accepted(tmp_path, sample_submission):
    path = tmp_path / "submission.csv"
    path.write_bytes(b"\xef\xbb\xbfid,label\r\n1,cat\r\n2,dog\r\n3,cat\r\n4,truck\r\n")
    assert check_submission(path, sample_submission) == 4


def test_a_label_is_quoted_in_the_error_exactly_as_the_file_holds_it(tmp_path, sample_submission):
    path = tmp_path / "submission.csv"
    path.write_bytes(b'id,label\r\n1,"ca\r\nt"\r\n2,cat\r\n3,cat\r\n4,cat\r\n')
    with pytest.raises(SubmissionError, match=r":2: label 'ca\\r\\nt' is not one of"):
        check_submission(path, sample_submission)


def made(**facts):
    return Made(Path("submission.csv"), Record("submission", facts=facts))


DIGEST = "0123456789abcdef" * 2


def test_submission_message_names_the_backbones_method_accuracy_and_the_files_digest():
    record = made(backbones=["resnet18", "vit_b_16"], method="fitted", nested_cv_accuracy=0.91236)
    assert submission_message(record, DIGEST) == (
        "fitted softmax ensemble of resnet18, vit_b_16; nested-CV accuracy 0.9124 [csv 0123456789ab]"
    )


def test_a_stacking_submission_message_does_not_call_it_a_softmax_average():
    record = made(backbones=["a", "b"], method="stacking", nested_cv_accuracy=0.5)
    assert submission_message(record, DIGEST).startswith("logistic-regression stacking ensemble of a, b;")


def test_submission_message_refuses_a_record_without_the_ensemble():
    with pytest.raises(SubmissionError) as excinfo:
        submission_message(made(backbones=["a"], nested_cv_accuracy=0.9), DIGEST)
    assert str(excinfo.value) == (
        "submission.csv: its record lacks the ensemble's method, backbones or nested-CV accuracy ('method'); re-run"
        " the ensemble and submission stages (`dvc repro -f ensemble submission`)."
    )


def test_write_submission_records_the_files_digest_rows_and_what_it_was_made_from(tmp_path, sample_submission):
    path = tmp_path / "submission.csv"
    write_submission(path, np.array([1, 2, 3, 4]), np.eye(10)[[0, 1, 2, 3]], sample_submission,
                     Record("submission", inputs={"probs": "p"}, facts={"method": "fitted"}))  # fmt: skip
    record = read_record(path)
    assert record.facts == {"method": "fitted", "csv": file_digest(path), "rows": 4}
    assert record.inputs == {"probs": "p"} and sidecar(path).is_file()


@pytest.mark.parametrize(
    ("facts", "message"),
    [
        ({"data_source": "kaggle"}, None),
        ({"data_source": "sample"}, "was made from the embedded sample competition (data.source: sample"),
        ({"data_source": "kaggle", "csv": "edited"}, "is not the file its record"),
    ],
)
def test_a_submission_that_is_not_its_records_file_or_comes_from_the_sample_is_not_submittable(
    tmp_path, sample_submission, facts, message
):
    path = tmp_path / "submission.csv"
    write_submission(path, np.array([1, 2, 3, 4]), np.eye(10)[[0, 1, 2, 3]], sample_submission,
                     Record("submission", facts=facts))  # fmt: skip
    record = read_record(path)
    if "csv" in facts:
        record = Record("submission", facts={**record.facts, "csv": facts["csv"]})
    if message is None:
        assert check_submittable(path, Made(path, record)) == file_digest(path)
        return
    with pytest.raises(SubmissionError, match=re.escape(message)):
        check_submittable(path, Made(path, record))
