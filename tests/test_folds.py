import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.folds import FoldsError, make_folds, read_folds, split_fold, write_folds
from pipeline.provenance import Record

RECORD = Record("folds")  # what the folds stage adds: settings and inputs (tests/test_provenance.py checks them)


def test_stratified_folds_cover_every_image_once_and_balance_classes():
    labels = np.repeat(np.arange(10), 20)
    fold_of_image = make_folds(labels, n_folds=5, seed=0)
    assert sorted(np.bincount(fold_of_image).tolist()) == [40] * 5
    for fold in range(5):
        assert np.bincount(labels[fold_of_image == fold], minlength=10).tolist() == [4] * 10


def test_same_seed_same_folds_other_seed_other_folds():
    labels = np.random.default_rng(0).integers(0, 10, 500)
    assert np.array_equal(make_folds(labels, 5, seed=1), make_folds(labels, 5, seed=1))
    assert not np.array_equal(make_folds(labels, 5, seed=1), make_folds(labels, 5, seed=2))


def test_more_folds_than_images_of_a_class_is_refused():
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 2)
    with pytest.raises(PipelineError, match="asks for 3 folds but a class has only 2 images"):
        make_folds(labels, 3, seed=0)


def test_folds_csv_round_trip_and_split(tmp_path):
    labels = np.repeat(np.arange(10), 3)
    fold_of_image = make_folds(labels, 3, seed=0)
    write_folds(tmp_path / "folds.csv", np.arange(1, 31), labels, fold_of_image, RECORD)
    assert np.array_equal(read_folds(tmp_path / "folds.csv", labels, n_folds=3), fold_of_image)
    images = np.arange(30, dtype=np.uint8)[:, None, None, None] * np.ones((1, 32, 32, 3), np.uint8)
    split = split_fold(images, labels, fold_of_image, fold=1)
    assert np.array_equal(split.valid_ids, np.flatnonzero(fold_of_image == 1) + 1)
    assert np.array_equal(split.valid_images[:, 0, 0, 0], split.valid_ids - 1)  # image of id i is row i - 1
    assert len(split.train_images) + len(split.valid_images) == 30
    assert not set(split.valid_images[:, 0, 0, 0]) & set(split.train_images[:, 0, 0, 0])


@pytest.fixture
def folds_csv(tmp_path):
    labels = np.repeat(np.arange(10), 3)
    write_folds(tmp_path / "folds.csv", np.arange(1, 31), labels, make_folds(labels, 3, seed=0), RECORD)
    return tmp_path / "folds.csv", labels


@pytest.mark.parametrize(
    ("edit", "n_folds", "message"),
    [
        (lambda rows: rows, 5, "holds folds [0, 1, 2], but params.yaml cv.folds asks for [0, 1, 2, 3, 4]"),
        (lambda rows: rows[:-1], 3, "has 29 images, the extracted data has 30"),
        (lambda rows: rows + ["31,cat,0"], 3, "has 31 images, the extracted data has 30"),
        (lambda rows: [rows[0], rows[1].replace(",airplane,", ",truck,"), *rows[2:]], 3,
         ":2: id 1 is labelled 'truck' but the extracted data says 'airplane'"),
        (lambda rows: [rows[0], rows[2], rows[1], *rows[3:]], 3, ":2: expected '1,<label>,<fold>'"),
        (lambda rows: [rows[0], rows[1][:-1] + "x", *rows[2:]], 3, ":2: expected '1,<label>,<fold>'"),
        (lambda rows: ["id,fold,label", *rows[1:]], 3, "the first line must be 'id,label,fold'"),
        (lambda rows: [r[:-1] + "0" if i else r for i, r in enumerate(rows)], 3, "holds folds [0], but"),
        (lambda rows: [r[:-1] + "1" if r.endswith("2") else r for r in rows], 3, "holds folds [0, 1], but"),
    ],
)  # fmt: skip
def test_folds_csv_that_does_not_match_the_data_or_cv_folds_is_refused(folds_csv, edit, n_folds, message):
    path, labels = folds_csv
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(FoldsError) as excinfo:
        read_folds(path, labels, n_folds)
    assert str(path) in str(excinfo.value) and message in str(excinfo.value)
    assert "dvc repro folds" in str(excinfo.value)
    assert str(excinfo.value).endswith("; re-run the folds stage (`dvc repro folds`).")


def test_missing_folds_csv_says_which_stage_writes_it(tmp_path):
    with pytest.raises(FoldsError, match="folds.csv: not found; re-run the folds stage"):
        read_folds(tmp_path / "folds.csv", np.zeros(3, np.int64), 2)


def test_split_digest_changes_with_the_split_and_with_the_pixels():
    labels = np.repeat(np.arange(10), 4)
    images = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    a = split_fold(images, labels, make_folds(labels, 2, seed=0), fold=0)
    assert a.digest() == split_fold(images, labels, make_folds(labels, 2, seed=0), fold=0).digest()
    assert a.digest() != split_fold(images, labels, make_folds(labels, 2, seed=0), fold=1).digest()
    assert a.digest() != split_fold(images, labels, make_folds(labels, 2, seed=1), fold=0).digest()
    changed = images.copy()
    changed[int(a.valid_ids[0]) - 1, 0, 0, 0] ^= 1  # one bit of one held-out image
    assert a.digest() != split_fold(changed, labels, make_folds(labels, 2, seed=0), fold=0).digest()
    relabelled = labels.copy()
    relabelled[0] = (relabelled[0] + 1) % 10
    assert a.digest() != split_fold(images, relabelled, make_folds(labels, 2, seed=0), fold=0).digest()


def test_a_fold_outside_folds_csv_is_refused():
    labels = np.repeat(np.arange(10), 2)
    with pytest.raises(FoldsError, match="fold 2 holds 0 of 20 images"):
        split_fold(np.zeros((20, 32, 32, 3), np.uint8), labels, make_folds(labels, 2, seed=0), fold=2)


def test_a_class_with_no_images_is_refused_and_the_message_says_what_to_do():
    labels = np.repeat(np.arange(9), 4)  # no image of class 9 (truck)
    with pytest.raises(FoldsError) as excinfo:
        make_folds(labels, 2, seed=0)
    assert str(excinfo.value) == (
        "cv:folds asks for 2 folds but a class has only 0 images; use fewer folds or more training images."
    )


def test_split_keeps_each_side_labels_aligned_with_its_images():
    labels = np.repeat(np.arange(10), 2)
    fold_of_image = make_folds(labels, 2, seed=0)
    images = np.arange(20, dtype=np.uint8)[:, None, None, None] * np.ones((1, 32, 32, 3), np.uint8)
    split = split_fold(images, labels, fold_of_image, fold=0)
    assert split.valid_labels.tolist() == labels[split.valid_images[:, 0, 0, 0]].tolist()
    assert split.train_labels.tolist() == labels[split.train_images[:, 0, 0, 0]].tolist()
    assert len(split.valid_labels) == 10 and len(split.train_labels) == 10


def test_folds_csv_has_unix_line_endings(tmp_path):
    labels = np.array([0, 1])
    write_folds(tmp_path / "folds.csv", np.array([1, 2]), labels, np.array([0, 1]), RECORD)
    assert (tmp_path / "folds.csv").read_bytes() == b"id,label,fold\n1,airplane,0\n2,automobile,1\n"


def test_write_folds_refuses_arrays_of_different_lengths_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="zip"):
        write_folds(tmp_path / "folds.csv", np.array([1, 2, 3]), np.array([0, 1, 2]), np.array([0, 1]), RECORD)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_folds_csv_is_refused_naming_the_fix(tmp_path):
    (tmp_path / "folds.csv").mkdir()  # a folder where the file should be
    with pytest.raises(FoldsError) as excinfo:
        read_folds(tmp_path / "folds.csv", np.zeros(3, np.int64), 2)
    message = str(excinfo.value)
    assert message.startswith(f"{tmp_path / 'folds.csv'}: cannot read it (")  # a folder, not a file
    assert message.endswith("; re-run the folds stage (`dvc repro folds`).")


def test_a_label_is_quoted_in_the_error_exactly_as_the_file_holds_it(tmp_path):
    path = tmp_path / "folds.csv"
    path.write_bytes(b'id,label,fold\r\n1,"air\r\nplane",0\r\n2,automobile,1\r\n')
    with pytest.raises(FoldsError, match=r"id 1 is labelled 'air\\r\\nplane' but"):
        read_folds(path, np.array([0, 1]), 2)


def test_a_fold_written_with_unicode_digits_is_refused_not_a_traceback(folds_csv):
    path, labels = folds_csv
    rows = path.read_text().splitlines()
    rows[1] = rows[1][:-1] + "\u00b2"  # '²': str.isdigit() says yes, int() says no
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(FoldsError, match=":2: expected '1,<label>,<fold>'"):
        read_folds(path, labels, 3)
