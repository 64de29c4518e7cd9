import numpy as np
import pytest

from pipeline.competition import CLASSES, CompetitionFileError, id_label_csv_text, read_id_label_csv


def test_csv_round_trips_ids_and_labels(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(id_label_csv_text(np.array([3, 1, 2]), np.array([9, 0, 3])))
    ids, labels = read_id_label_csv(path)
    assert ids.tolist() == [3, 1, 2]
    assert [CLASSES[k] for k in labels] == ["truck", "airplane", "cat"]


def test_csv_text_refuses_ids_and_labels_of_different_lengths():
    with pytest.raises(ValueError, match="zip.. argument 2 is shorter than argument 1"):
        id_label_csv_text(np.array([1, 2, 3]), np.array([0, 1]))


def test_bom_and_crlf_line_ends_are_accepted(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes("\ufeffid,label\r\n1,frog\r\n2,truck\r\n".encode())
    ids, labels = read_id_label_csv(path)
    assert ids.tolist() == [1, 2] and labels.tolist() == [6, 9]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected the header 'id,label', got an empty file"),
        ("image,label\n1,cat\n", "expected the header 'id,label', got ['image', 'label']"),
        ("id,label\n", "has a header but no rows"),
        (
            "id,label\n1,cat\n2,lion\n",
            ":3: label 'lion' is not one of the ten classes"
            " (airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck)",
        ),
        ("id,label\n1,cat\n1,dog\n", ":3: id 1 appears twice"),
        ("id,label\nx,cat\n", ":2: expected '<id>,<label>' with an integer id"),
    ],
)
def test_malformed_csv_is_rejected_naming_the_line(tmp_path, text, message):
    path = tmp_path / "trainLabels.csv"
    path.write_text(text)
    with pytest.raises(CompetitionFileError) as excinfo:
        read_id_label_csv(path)
    assert str(path) in str(excinfo.value) and message in str(excinfo.value)


def test_a_line_break_inside_a_quoted_label_is_reported_as_written(tmp_path):
    # csv needs newline="" to see a quoted field's own line break; translated, '\r\n' would be reported as '\n'
    path = tmp_path / "trainLabels.csv"
    path.write_bytes(b'id,label\r\n1,"ca\r\nt"\r\n')
    with pytest.raises(CompetitionFileError, match=r":2: label 'ca\\r\\nt' is not one of the ten classes"):
        read_id_label_csv(path)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda path: path.mkdir(), ": cannot read it ("),  # a folder where the file should be
        (lambda path: path.write_bytes(b"id,label\n1,\xff\xfecat\n"), ": is not UTF-8 text (not UTF-8, byte 11); save"),
        # what Notepad and Excel's "Unicode text" save: UTF-16 with its byte-order mark
        (lambda path: path.write_bytes("id,label\n1,cat\n".encode("utf-16")), ": is not UTF-8 text (UTF-16, byte 0)"),
        # a stray quote opens a field that swallows the rest of the file: csv's "field larger than field limit"
        (lambda path: path.write_text('id,label\n1,"cat\n' + "2,dog\n" * 30000), ":2: not a valid CSV (field larger"),
    ],
    ids=["a directory", "not utf-8", "utf-16", "stray quote"],
)
def test_an_unreadable_csv_is_one_clear_error_naming_it(tmp_path, write, message):
    path = tmp_path / "trainLabels.csv"
    write(path)
    with pytest.raises(CompetitionFileError) as excinfo:
        read_id_label_csv(path)
    assert str(excinfo.value).startswith(f"{path}{message}") and "\n" not in str(excinfo.value)
    assert str(excinfo.value).endswith("re-run the download stage.")


def test_an_id_written_with_unicode_digits_is_refused_not_a_traceback(tmp_path):
    path = tmp_path / "trainLabels.csv"
    path.write_text("id,label\n1,cat\n\u00b2,dog\n")
    with pytest.raises(CompetitionFileError, match=":3: expected '<id>,<label>' with an integer id"):
        read_id_label_csv(path)
