import errno
import logging
import os
import shutil
from collections import namedtuple

import numpy as np
import py7zr
import pytest

import pipeline.dataset
from pipeline.archive import ArchiveError
from pipeline.atomic import DiskSpaceError, check_free_space
from pipeline.competition import CompetitionFileError, read_id_label_csv
from pipeline.dataset import (
    DatasetError,
    _check_same_ids,
    _reserve_blocks,
    extract_competition,
    load_dataset,
)
from pipeline.provenance import Record, write_record
from tests.conftest import N_TEST, N_TRAIN


def test_extract_writes_memory_mappable_arrays_with_labels_in_id_order(raw_dir, data_dir, tmp_path):
    # trainLabels.csv shuffled: row order must not matter, only each row's id
    header, *rows = (raw_dir / "trainLabels.csv").read_text().splitlines()
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    (raw_dir / "trainLabels.csv").write_text("\n".join([header, *shuffled]) + "\n")
    extract_competition(raw_dir, tmp_path / "data")
    data = load_dataset(tmp_path / "data")
    assert data.train_images.shape == (N_TRAIN, 32, 32, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (N_TEST, 32, 32, 3)
    assert isinstance(data.train_images, np.memmap)
    ids, labels = read_id_label_csv(raw_dir / "trainLabels.csv")
    assert not np.array_equal(ids, np.arange(1, N_TRAIN + 1))  # the CSV is not in id order
    assert np.array_equal(data.train_labels[ids - 1], labels)
    assert np.array_equal(data.train_labels, load_dataset(data_dir).train_labels)  # the same labels as in id order
    assert data.train_images.std() > 20  # real pictures, not zeros


def test_a_label_without_an_image_is_rejected_and_nothing_written(raw_dir, tmp_path):
    with open(raw_dir / "trainLabels.csv", "a") as f:
        f.write(f"{N_TRAIN + 1},cat\n")
    with pytest.raises(CompetitionFileError, match=f"1 ids have no image in train.7z, the first is id {N_TRAIN + 1}"):
        extract_competition(raw_dir, tmp_path / "data")
    assert list(tmp_path.glob("*data*")) == []


def test_an_image_without_a_label_is_rejected(raw_dir, tmp_path):
    lines = (raw_dir / "trainLabels.csv").read_text().splitlines()
    (raw_dir / "trainLabels.csv").write_text("\n".join(lines[:-1]) + "\n")
    message = f"trainLabels.csv: 1 images of train.7z have no label, the first is id {N_TRAIN}"
    with pytest.raises(CompetitionFileError, match=message):
        extract_competition(raw_dir, tmp_path / "data")


def test_a_submission_id_without_a_test_image_is_rejected(raw_dir, tmp_path):
    with open(raw_dir / "sampleSubmission.csv", "a") as f:
        f.write(f"{N_TEST + 5},cat\n")
    with pytest.raises(CompetitionFileError, match="sampleSubmission.csv: 1 ids have no image in test.7z"):
        extract_competition(raw_dir, tmp_path / "data")


def test_truncated_train_archive_names_it_and_writes_no_arrays(raw_dir, tmp_path):
    archive = raw_dir / "train.7z"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="train.7z"):
        extract_competition(raw_dir, tmp_path / "data")
    assert list(tmp_path.glob("*data*")) == []


@pytest.fixture
def data_copy(data_dir, tmp_path):
    return shutil.copytree(data_dir, tmp_path / "data")


@pytest.mark.parametrize(
    ("name", "array", "message"),
    [
        ("train_images.npy", np.zeros((N_TRAIN, 32, 32, 3), np.float32), "holds float32 (120, 32, 32, 3), expected"),
        ("train_images.npy", np.zeros((N_TRAIN, 32, 32), np.uint8), "holds uint8 (120, 32, 32), expected uint8"),
        ("test_images.npy", np.zeros((N_TEST, 3, 32, 32), np.uint8), "holds uint8 (40, 3, 32, 32), expected"),
        ("test_images.npy", np.zeros((0, 32, 32, 3), np.uint8), "holds uint8 (0, 32, 32, 3), expected uint8"),
        ("train_labels.npy", np.zeros(N_TRAIN, np.int32), "holds int32 (120,), expected int64 (120,)"),
        ("train_labels.npy", np.zeros(N_TRAIN - 1, np.int64), "holds int64 (119,), expected int64 (120,)"),
        ("train_labels.npy", np.r_[np.zeros(5), [10], np.zeros(N_TRAIN - 6)].astype(np.int64),
         "1 labels are not class indices 0..9, the first is 10 (image id 6)"),
        ("train_labels.npy", np.r_[[-1], np.zeros(N_TRAIN - 1)].astype(np.int64), "the first is -1 (image id 1)"),
    ],
)  # fmt: skip
def test_arrays_not_as_extract_writes_them_are_refused_naming_the_file(data_copy, name, array, message):
    np.save(data_copy / name, array)
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(data_copy)
    assert str(data_copy / name) in str(excinfo.value) and message in str(excinfo.value)
    assert "dvc repro -f extract" in str(excinfo.value)


def test_unreadable_or_missing_arrays_are_refused(data_copy):
    (data_copy / "test_images.npy").write_bytes(b"not an array")
    with pytest.raises(DatasetError, match="test_images.npy: not a readable .npy array"):
        load_dataset(data_copy)
    (data_copy / "test_images.npy").unlink()
    with pytest.raises(DatasetError, match="test_images.npy: not found; run the extract stage first"):
        load_dataset(data_copy)


def test_too_little_free_space_stops_before_anything_is_written(raw_dir, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    needed = (N_TRAIN + N_TEST) * 32 * 32 * 3
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12, needed))  # 1% short
    with pytest.raises(DiskSpaceError, match=f"the arrays need {int(needed * 1.01):,} bytes but only {needed:,} are"):
        extract_competition(raw_dir, tmp_path / "out" / "data")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_disk_that_fills_while_allocating_is_an_error_not_a_sigbus(raw_dir, tmp_path, monkeypatch):
    calls = []

    def full_disk(fd, offset, length):
        calls.append(length)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full_disk)
    with pytest.raises(DatasetError, match="train_images.npy: the disk is full"):
        extract_competition(raw_dir, tmp_path / "out" / "data")
    assert calls and calls[0] >= N_TRAIN * 32 * 32 * 3  # the whole array was reserved up front
    assert list((tmp_path / "out").iterdir()) == []


def test_blocks_are_reserved_before_decoding(raw_dir, tmp_path, monkeypatch):
    order = []
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, offset, length: order.append("reserve"))
    real_decode = pipeline.dataset.decode_archive_into
    monkeypatch.setattr(pipeline.dataset, "decode_archive_into", lambda *a: (order.append("decode"), real_decode(*a)))
    extract_competition(raw_dir, tmp_path / "data")
    assert order == ["reserve", "decode", "reserve", "decode"]


def write_arrays(folder, train_images, train_labels, test_images):
    """A data folder as the extract stage writes it: the arrays and the folder's record."""
    folder.mkdir(exist_ok=True)
    np.save(folder / "train_images.npy", train_images)
    np.save(folder / "train_labels.npy", train_labels)
    np.save(folder / "test_images.npy", test_images)
    write_record(folder, Record("extract", facts={"n_train": len(train_images), "n_test": len(test_images)}))
    return folder


def test_images_are_memory_mapped_and_labels_read_into_memory(tmp_path):
    images = np.zeros((2, 32, 32, 3), np.uint8)
    write_arrays(tmp_path / "data", images, np.array([0, 9], np.int64), images[:1])
    data = load_dataset(tmp_path / "data")
    assert isinstance(data.train_images, np.memmap) and isinstance(data.test_images, np.memmap)
    assert not isinstance(data.train_labels, np.memmap) and data.train_labels.tolist() == [0, 9]
    assert data.train_ids.tolist() == [1, 2] and data.test_ids.tolist() == [1]


def test_free_space_check_makes_the_missing_parent_folders(tmp_path):
    check_free_space(tmp_path / "a" / "b", 1, "the arrays", "the extract stage")
    assert (tmp_path / "a" / "b").is_dir()


@pytest.mark.parametrize(("free", "enough"), [(1010, True), (1009, False)])
def test_free_space_must_cover_the_arrays_plus_one_percent(tmp_path, monkeypatch, free, enough):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - free, free))
    if enough:
        check_free_space(tmp_path, 1000, "the arrays", "the extract stage")
        return
    with pytest.raises(DiskSpaceError) as excinfo:
        check_free_space(tmp_path, 1000, "the arrays", "the extract stage")
    assert str(excinfo.value) == (
        f"{tmp_path}: the arrays need 1,010 bytes but only 1,009 are free; free 1 bytes (e.g. `dvc gc -w` or"
        " another disk) and re-run the extract stage."
    )


def test_the_whole_file_is_reserved_from_its_first_byte(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, offset, length: calls.append((offset, length)))
    (tmp_path / "a.npy").write_bytes(bytes(100))
    _reserve_blocks(tmp_path / "a.npy")
    assert calls == [(0, 100)]


def fallocate_failing_with(code):
    def fallocate(fd, offset, length):
        raise OSError(code, os.strerror(code))

    return fallocate


def test_a_full_disk_while_reserving_names_the_file_and_its_size(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "posix_fallocate", fallocate_failing_with(errno.ENOSPC))
    (tmp_path / "a.npy").write_bytes(bytes(1000))
    with pytest.raises(DatasetError) as excinfo:
        _reserve_blocks(tmp_path / "a.npy")
    assert str(excinfo.value) == (
        f"{tmp_path / 'a.npy'}: the disk is full (1,000 bytes needed for this array); free space and re-run the"
        " extract stage."
    )


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL])
def test_file_systems_without_fallocate_are_left_to_the_free_space_check(tmp_path, monkeypatch, code):
    monkeypatch.setattr(os, "posix_fallocate", fallocate_failing_with(code))
    (tmp_path / "a.npy").write_bytes(bytes(10))
    _reserve_blocks(tmp_path / "a.npy")
    assert (tmp_path / "a.npy").read_bytes() == bytes(10)


def test_other_fallocate_errors_are_raised(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "posix_fallocate", fallocate_failing_with(errno.EIO))
    (tmp_path / "a.npy").write_bytes(bytes(10))
    with pytest.raises(OSError) as excinfo:
        _reserve_blocks(tmp_path / "a.npy")
    assert excinfo.value.errno == errno.EIO and not isinstance(excinfo.value, DatasetError)


def test_a_label_without_an_image_names_the_labels_file(tmp_path):
    with pytest.raises(CompetitionFileError) as excinfo:
        _check_same_ids(tmp_path / "labels.csv", np.array([1, 3]), np.array([1, 2]), "train.7z")
    assert str(excinfo.value) == f"{tmp_path / 'labels.csv'}: 1 ids have no image in train.7z, the first is id 3."


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_badly_named_member_names_its_archive(raw_dir, tmp_path, split):
    with py7zr.SevenZipFile(raw_dir / f"{split}.7z", "w") as archive:
        archive.writestr(b"not a png", f"{split}/one.png")
    with pytest.raises(ArchiveError) as excinfo:
        extract_competition(raw_dir, tmp_path / "data")
    assert str(excinfo.value).startswith(f"{raw_dir / f'{split}.7z'}: member '{split}/one.png' is not named")


def test_extract_logs_the_counts_and_the_folder(raw_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.dataset"):
        extract_competition(raw_dir, tmp_path / "data")
    assert [r.getMessage() for r in caplog.records if r.name == "pipeline.dataset"] == [
        f"{N_TRAIN} train images ({N_TRAIN} labelled), {N_TEST} test images",
        f"wrote {tmp_path / 'data'}",
    ]
