import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.folds import make_folds, read_folds, split_fold, write_folds


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
    write_folds(tmp_path / "folds.csv", np.arange(1, 31), labels, fold_of_image)
    assert np.array_equal(read_folds(tmp_path / "folds.csv"), fold_of_image)
    images = np.arange(30, dtype=np.uint8)[:, None, None, None] * np.ones((1, 32, 32, 3), np.uint8)
    split = split_fold(images, labels, fold_of_image, fold=1)
    assert np.array_equal(split.valid_ids, np.flatnonzero(fold_of_image == 1) + 1)
    assert np.array_equal(split.valid_images[:, 0, 0, 0], split.valid_ids - 1)  # image of id i is row i - 1
    assert len(split.train_images) + len(split.valid_images) == 30
    assert not set(split.valid_images[:, 0, 0, 0]) & set(split.train_images[:, 0, 0, 0])
