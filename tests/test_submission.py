import numpy as np
import pytest

from pipeline.competition import CLASSES, id_label_csv_text
from pipeline.submission import SubmissionError, check_submission, write_submission


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
    with pytest.raises(SubmissionError, match="1 ids have no prediction, the first is id 4"):
        write_submission(tmp_path / "submission.csv", np.array([1, 2, 3]), np.eye(10)[:3], sample_submission)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sampleSubmission.csv"]


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


def test_classes_are_kaggles_spelling():
    assert CLASSES == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
