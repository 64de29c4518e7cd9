import numpy as np
import pytest
from scipy.special import softmax

from pipeline.ensemble import (
    build_ensemble,
    caruana_weights,
    choose_weights,
    fit_temperatures,
    fit_weights,
    softmax_average,
)
from pipeline.metrics import probs_metrics


def noisy_logits(labels, signal, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (len(labels), 10))
    logits[np.arange(len(labels)), labels] += signal
    return logits


@pytest.fixture
def members():
    labels = np.random.default_rng(0).integers(0, 10, 2000)
    logits = np.stack([noisy_logits(labels, 2.5, 1), noisy_logits(labels, 1.0, 2), noisy_logits(labels, 0.0, 3)])
    return logits, labels


def test_softmax_average_is_the_weighted_mean_of_probabilities():
    logits = np.random.default_rng(0).normal(size=(2, 5, 10))
    probs = softmax_average(logits, np.array([0.25, 0.75]))
    assert np.allclose(probs, 0.25 * softmax(logits[0], axis=1) + 0.75 * softmax(logits[1], axis=1))
    assert np.allclose(probs.sum(1), 1)


def test_fitted_weights_are_on_the_simplex_favour_the_strong_member_and_ignore_noise(members):
    logits, labels = members
    weights = fit_weights(logits, labels)
    assert weights.sum() == pytest.approx(1) and (weights >= 0).all()
    assert weights[0] > weights[1] > weights[2] and weights[2] < 0.05


def test_fitted_weights_beat_equal_weights_and_every_member_in_log_loss(members):
    logits, labels = members
    fitted = probs_metrics(softmax_average(logits, fit_weights(logits, labels)), labels)["log_loss"]
    equal = probs_metrics(softmax_average(logits, choose_weights("equal", logits, labels)[0]), labels)["log_loss"]
    best = probs_metrics(softmax_average(logits, choose_weights("best", logits, labels)[0]), labels)["log_loss"]
    assert fitted < equal and fitted <= best + 1e-9
    assert choose_weights("best", logits, labels)[0].tolist() == [1.0, 0.0, 0.0]


def test_caruana_selection_favours_the_strong_member_and_ignores_noise(members):
    logits, labels = members
    weights = caruana_weights(logits, labels)
    assert weights.sum() == pytest.approx(1) and weights[0] > 0.5 and weights[2] == 0


def test_temperature_scaling_calibrates_an_overconfident_member(members):
    logits, labels = members
    overconfident = logits * 5
    temperatures = fit_temperatures(overconfident, labels)
    assert temperatures[:2] == pytest.approx(5 * fit_temperatures(logits, labels)[:2], rel=0.02)  # undoes the x5
    calibrated = probs_metrics(softmax_average(overconfident[:1], np.ones(1), temperatures[:1]), labels)
    raw = probs_metrics(softmax_average(overconfident[:1], np.ones(1)), labels)
    assert calibrated["log_loss"] < raw["log_loss"]


def test_build_ensemble_scores_every_method_with_nested_cv_and_applies_the_chosen_weights(members):
    logits, labels = members
    fold_of_image = np.arange(len(labels)) % 4
    test_logits = logits[:, :100]
    result = build_ensemble("equal", ["a", "b", "c"], logits, labels, fold_of_image, test_logits, fallback=False)
    assert list(result.metrics["backbones"]) == ["a", "b", "c"]
    assert set(result.metrics["methods"]) == {"best", "equal", "fitted", "caruana"}
    for m in result.metrics["methods"].values():
        assert {"accuracy", "log_loss", "nested_cv_accuracy", "nested_cv_log_loss"} <= set(m)
    fitted = result.metrics["methods"]["fitted"]
    assert fitted["nested_cv_log_loss"] >= fitted["log_loss"]  # judged on rows it was not fitted on
    assert result.metrics["submission"]["method"] == "equal"
    assert np.allclose(result.test_probs, softmax_average(test_logits, np.full(3, 1 / 3)))
    assert sum(result.weights.values()) == pytest.approx(1)


def test_a_method_that_loses_to_the_best_single_backbone_falls_back_and_says_so(members):
    logits, labels = members
    fold_of_image = np.arange(len(labels)) % 4
    result = build_ensemble("equal", ["a", "b", "c"], logits, labels, fold_of_image, logits[:, :10])
    assert result.method == "best" and result.weights == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert "equal weights do not beat the best single backbone in nested CV" in result.notes[0]


def test_fitting_is_fast_enough_for_five_backbones_and_many_rows():
    """A behaviour check, not a timing: 5 x 50,000 rows fit and give simplex weights."""
    labels = np.random.default_rng(0).integers(0, 10, 50_000)
    logits = np.stack([noisy_logits(labels, s, i) for i, s in enumerate([2.0, 1.8, 1.5, 1.0, 0.5])])
    weights = fit_weights(logits, labels)
    assert weights.sum() == pytest.approx(1) and weights.argmax() == 0
