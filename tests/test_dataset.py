import numpy as np
import pytest

from pipeline.archive import ArchiveError
from pipeline.competition import CompetitionFileError, read_id_label_csv
from pipeline.dataset import extract_competition, load_dataset
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
