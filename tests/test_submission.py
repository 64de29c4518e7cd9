import json

import numpy as np
import pytest

from pipeline.competition import CLASSES, id_label_csv_text, read_id_label_csv
from pipeline.submission import SubmissionError, check_submission, submission_message, write_submission


@pytest.fixture
def sample_submission(tmp_path):
    path = tmp_path / "sampleSubmission.csv"
    path.write_text(id_label_csv_text(np.array([1, 2, 3, 4]), np.full(4, 3)))
    return path


def test_rows_follow_the_sample_order_whatever_the_prediction_order(tmp_path, sample_submission):
    ids = np.array([4, 2, 1, 3])
    probs = np.eye(10)[[9, 1, 0, 5]]  # id 4 -> truck, 2 -> automobile, 1 -> airplane, 3 -> dog
    write_submission(tmp_path / "submission.csv", ids, probs, sample_submission)
    assert (tmp_path / "submission.csv").read_text().splitlines() == [
        "id,label", "1,airplane", "2,automobile", "3,dog", "4,truck",
    ]  # fmt: skip
    assert check_submission(tmp_path / "submission.csv", sample_submission) == 4


def test_a_missing_prediction_is_refused_and_nothing_written(tmp_path, sample_submission):
    with pytest.raises(SubmissionError, match="1 ids have no prediction, the first is id 4") as excinfo:
        write_submission(tmp_path / "submission.csv", np.array([1, 2, 3]), np.eye(10)[:3], sample_submission)
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
    assert message.startswith(f"{tmp_path / 'absent.csv'}: cannot read it (")
    assert message.endswith("); run `dvc repro submission`.")


def test_a_submission_saved_with_a_utf8_bom_and_crlf_is_accepted(tmp_path, sample_submission):
    path = tmp_path / "submission.csv"
    path.write_bytes(b"\xef\xbb\xbfid,label\r\n1,cat\r\n2,dog\r\n3,cat\r\n4,truck\r\n")
    assert check_submission(path, sample_submission) == 4


def test_a_label_is_quoted_in_the_error_exactly_as_the_file_holds_it(tmp_path, sample_submission):
    path = tmp_path / "submission.csv"
    path.write_bytes(b'id,label\r\n1,"ca\r\nt"\r\n2,cat\r\n3,cat\r\n4,cat\r\n')
    with pytest.raises(SubmissionError, match=r":2: label 'ca\\r\\nt' is not one of"):
        check_submission(path, sample_submission)


def write_metrics(tmp_path, metrics):
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(metrics))
    return path


def test_submission_message_names_the_backbones_method_and_accuracy(tmp_path):
    path = write_metrics(
        tmp_path,
        {"backbones": ["resnet18", "vit_b_16"], "submission": {"method": "fitted", "nested_cv_accuracy": 0.91236}},
    )
    assert submission_message(path) == "fitted softmax ensemble of resnet18, vit_b_16; nested-CV accuracy 0.9124"


def test_a_stacking_submission_message_does_not_call_it_a_softmax_average(tmp_path):
    path = write_metrics(
        tmp_path, {"backbones": ["a", "b"], "submission": {"method": "stacking", "nested_cv_accuracy": 0.5}}
    )
    assert submission_message(path) == "logistic-regression stacking ensemble of a, b; nested-CV accuracy 0.5000"


@pytest.mark.parametrize(
    "metrics",
    [
        {"submission": {"method": "fitted", "nested_cv_accuracy": 0.9}},
        {"backbones": ["a"], "submission": {"nested_cv_accuracy": 0.9}},
        {"backbones": ["a"], "submission": {"method": "fitted"}},
        {"backbones": ["a"], "method": "fitted", "nested_cv_accuracy": 0.9},
    ],
)
def test_submission_message_refuses_metrics_without_the_ensemble(tmp_path, metrics):
    path = write_metrics(tmp_path, metrics)
    with pytest.raises(SubmissionError) as excinfo:
        submission_message(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: lacks the ensemble's backbones or submission metrics (KeyError(")
    assert message.endswith("); re-run the ensemble stage (`dvc repro ensemble`).")


@pytest.mark.parametrize("text", [None, "{not json"])
def test_submission_message_refuses_a_missing_or_unparsable_metrics_file(tmp_path, text):
    path = tmp_path / "ensemble.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SubmissionError) as excinfo:
        submission_message(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: cannot read it (") and message.endswith("); run `dvc repro` first.")
