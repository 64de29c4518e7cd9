import numpy as np
import pytest
from scipy.special import softmax

from pipeline.ensemble import build_ensemble, choose_weights, fit_weights, softmax_average
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
    equal = probs_metrics(softmax_average(logits, choose_weights("equal", logits, labels)), labels)["log_loss"]
    best = probs_metrics(softmax_average(logits, choose_weights("best", logits, labels)), labels)["log_loss"]
    assert fitted < equal and fitted <= best + 1e-9
    assert choose_weights("best", logits, labels).tolist() == [1.0, 0.0, 0.0]


def test_build_ensemble_reports_members_equal_fitted_and_applies_weights_to_test(members):
    logits, labels = members
    test_logits = logits[:, :100]
    result = build_ensemble("equal", ["a", "b", "c"], logits, labels, test_logits)
    assert list(result.metrics["backbones"]) == ["a", "b", "c"]
    assert result.metrics["ensemble"]["method"] == "equal"
    assert result.metrics["ensemble"]["log_loss"] == pytest.approx(result.metrics["equal_weights"]["log_loss"])
    assert result.metrics["fitted_weights"]["log_loss"] < result.metrics["equal_weights"]["log_loss"]
    assert np.allclose(result.test_probs, softmax_average(test_logits, np.full(3, 1 / 3)))
    assert sum(result.weights.values()) == pytest.approx(1)
