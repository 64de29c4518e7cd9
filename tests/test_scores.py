import warnings

import numpy as np
import pytest

from pipeline.scores import ScoresError, load_oof, load_scores, save_scores


def logits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 10)).astype(np.float32)


def test_scores_round_trip_with_their_ids(tmp_path):
    ids, scores = np.array([3, 1, 2]), logits(3)
    save_scores(tmp_path / "s.npz", ids, scores)
    loaded_ids, loaded = load_scores(tmp_path / "s.npz", expected_ids=np.array([3, 1, 2]))
    assert loaded_ids.tolist() == [3, 1, 2] and np.array_equal(loaded, scores)


@pytest.mark.parametrize(
    ("scores", "dtype", "message"),
    [
        (np.where(np.arange(30).reshape(3, 10) == 12, np.nan, 0.0), np.float32, "1 rows of non-finite scores"),
        (np.full((3, 10), np.inf), np.float32, "3 rows of non-finite scores as float32 (the first for image id 7)"),
        (np.full((3, 10), 7.0e4), np.float16, "3 rows of non-finite scores as float16"),  # beyond float16's range
    ],
)
def test_non_finite_scores_are_never_written(tmp_path, scores, dtype, message):
    with pytest.raises(ScoresError, match=message.replace("(", r"\(").replace(")", r"\)")):
        save_scores(tmp_path / "s.npz", np.array([7, 8, 9]), scores, dtype=dtype)
    assert list(tmp_path.iterdir()) == []


def test_float16_keeps_logits_within_its_range(tmp_path):
    save_scores(tmp_path / "s.npz", np.array([1]), np.full((1, 10), 6.0e4), dtype=np.float16)
    assert load_scores(tmp_path / "s.npz")[1].dtype == np.float16


def write_raw(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"ids": np.array([1, 2]), "scores": logits(3)}, "scores must be floats of shape (2, 10)"),
        ({"ids": np.array([1, 2]), "scores": logits(2)[:, :9]}, "scores must be floats of shape (2, 10)"),
        ({"ids": np.array([1, 2]), "scores": np.zeros((2, 10), np.int64)}, "scores must be floats"),
        ({"ids": np.array([[1, 2]]), "scores": logits(2)}, "ids must be a 1-D integer array"),
        ({"ids": np.array([1.0, 2.0]), "scores": logits(2)}, "ids must be a 1-D integer array"),
        ({"ids": np.array([1, 1]), "scores": logits(2)}, "an image id appears more than once"),
        ({"ids": np.array([1, 2]), "scores": np.full((2, 10), np.nan, np.float32)}, "non-finite scores (the first"),
        ({"ids": np.array([1, 2])}, "not a readable scores file (KeyError"),
    ],
)
def test_malformed_scores_files_are_refused_naming_the_file(tmp_path, arrays, message):
    write_raw(tmp_path / "s.npz", **arrays)
    with pytest.raises(ScoresError) as excinfo:
        load_scores(tmp_path / "s.npz")
    assert str(tmp_path / "s.npz") in str(excinfo.value) and message in str(excinfo.value)


def test_truncated_or_missing_scores_files_are_refused(tmp_path):
    save_scores(tmp_path / "s.npz", np.arange(1, 101), logits(100))
    (tmp_path / "s.npz").write_bytes((tmp_path / "s.npz").read_bytes()[:500])
    with pytest.raises(ScoresError, match="not a readable scores file"):
        load_scores(tmp_path / "s.npz")
    with pytest.raises(ScoresError, match="absent.npz: not found"):
        load_scores(tmp_path / "absent.npz")


def test_scores_of_other_images_are_refused_naming_the_first_difference(tmp_path):
    save_scores(tmp_path / "s.npz", np.array([1, 2, 4]), logits(3))
    with pytest.raises(ScoresError, match=r"for 3 images, expected 3 \(row 2 is id 4, expected id 3\)"):
        load_scores(tmp_path / "s.npz", expected_ids=np.array([1, 2, 3]))
    with pytest.raises(ScoresError, match="for 3 images, expected 4: it was made from other data or folds"):
        load_scores(tmp_path / "s.npz", expected_ids=np.array([1, 2, 4, 5]))


def test_oof_files_are_assembled_in_id_order_and_must_hold_exactly_their_folds_ids(tmp_path):
    fold_of_image = np.array([1, 0, 0, 1, 0])  # ids 2, 3, 5 in fold 0; ids 1, 4 in fold 1
    full = logits(5)
    save_scores(tmp_path / "fold0.npz", np.array([2, 3, 5]), full[[1, 2, 4]])
    save_scores(tmp_path / "fold1.npz", np.array([1, 4]), full[[0, 3]])
    assert np.array_equal(load_oof([tmp_path / "fold0.npz", tmp_path / "fold1.npz"], fold_of_image), full)

    other_split = np.array([0, 1, 0, 1, 0])  # the same ids covered once, but another assignment
    with pytest.raises(ScoresError, match="fold0.npz: holds scores for 3 images, expected 3 \\(row 0 is id 2"):
        load_oof([tmp_path / "fold0.npz", tmp_path / "fold1.npz"], other_split)
    with pytest.raises(ScoresError, match="1 OOF files for the 2 folds"):
        load_oof([tmp_path / "fold0.npz"], fold_of_image)


def test_oof_logits_are_float32_whatever_the_stored_dtype(tmp_path):
    fold_of_image = np.array([0, 1])
    save_scores(tmp_path / "fold0.npz", np.array([1]), logits(1), dtype=np.float16)
    save_scores(tmp_path / "fold1.npz", np.array([2]), logits(1, seed=1), dtype=np.float64)
    oof = load_oof([tmp_path / "fold0.npz", tmp_path / "fold1.npz"], fold_of_image)
    assert oof.dtype == np.float32 and oof.shape == (2, 10)


def test_a_non_finite_row_is_named_by_its_own_id(tmp_path):
    scores = logits(3)
    scores[1, 4] = np.inf
    write_raw(tmp_path / "s.npz", ids=np.array([5, 6, 7]), scores=scores)
    with pytest.raises(ScoresError, match=r"non-finite scores \(the first for image id 6\)"):
        load_scores(tmp_path / "s.npz")


def test_float16_overflow_is_a_scores_error_not_a_numpy_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ScoresError) as excinfo:
            save_scores(tmp_path / "s.npz", np.array([1]), np.full((1, 10), 1.0e5), dtype=np.float16)
    assert str(excinfo.value).endswith(
        "the model that made them is broken (diverged training, or logits beyond float16's range); re-train it"
        " with a lower train.lr."
    )


def test_malformed_scores_are_refused_on_writing_naming_the_file(tmp_path):
    with pytest.raises(ScoresError, match="ids must be a 1-D integer array") as excinfo:
        save_scores(tmp_path / "s.npz", np.array([[1, 2]]), logits(2))
    assert str(excinfo.value).startswith(f"{tmp_path / 's.npz'}: ")
    assert list(tmp_path.iterdir()) == []
