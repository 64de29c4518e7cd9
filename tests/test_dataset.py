import errno
import os
import shutil
from collections import namedtuple

import numpy as np
import pytest

import pipeline.dataset
from pipeline.archive import ArchiveError
from pipeline.competition import CompetitionFileError, read_id_label_csv
from pipeline.dataset import DatasetError, extract_competition, load_dataset
from tests.conftest import N_TEST, N_TRAIN


def test_extract_writes_memory_mappable_arrays_with_labels_in_id_order(raw_dir, data_dir):
    data = load_dataset(data_dir)
    assert data.train_images.shape == (N_TRAIN, 32, 32, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (N_TEST, 32, 32, 3)
    assert isinstance(data.train_images, np.memmap)
    ids, labels = read_id_label_csv(raw_dir / "trainLabels.csv")
    assert np.array_equal(data.train_labels[ids - 1], labels)
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
    with pytest.raises(CompetitionFileError, match=f"1 images of train.7z have no label, the first is id {N_TRAIN}"):
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
    with pytest.raises(DatasetError, match=f"the arrays need {int(needed * 1.01):,} bytes but only {needed:,} are"):
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
