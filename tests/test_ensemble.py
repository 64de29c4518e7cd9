import numpy as np
import pytest
from scipy.special import softmax

from pipeline import ensemble
from pipeline.ensemble import (
    AVERAGING,
    METHODS,
    STACKING,
    build_ensemble,
    caruana_weights,
    choose_weights,
    fit_combination,
    fit_temperatures,
    fit_weights,
    nested_cv_probs,
    softmax_average,
)
from pipeline.metrics import logits_metrics, probs_metrics
from pipeline.stacking import C_GRID, fit_stacker


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


def test_fitted_weights_are_on_the_simplex_favour_the_strong_member_and_ignore_noise():
    # two useful members of different strength and pure noise: the optimum lies inside an edge of the simplex
    # (about [0.9, 0.1, 0]), far from a corner, so no host's rounding decides the order of the weights
    labels = np.random.default_rng(0).integers(0, 10, 2000)
    logits = np.stack([noisy_logits(labels, 2.5, 1), noisy_logits(labels, 2.0, 2), noisy_logits(labels, 0.0, 3)])
    weights = fit_weights(logits, labels)
    assert weights.sum() == pytest.approx(1) and (weights >= 0).all()
    assert weights[0] > weights[1] > 0.05 and weights[2] < 1e-6
    fitted = probs_metrics(softmax_average(logits, weights), labels)["log_loss"]
    grid = [np.array([a, b, 1 - a - b]) for a in np.linspace(0, 1, 41) for b in np.linspace(0, 1 - a, 41)]
    assert fitted <= min(probs_metrics(softmax_average(logits, w), labels)["log_loss"] for w in grid) + 1e-9


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
    assert set(result.metrics["methods"]) == {"best", "equal", "fitted", "caruana", "stacking"}
    for m in result.metrics["methods"].values():
        assert {"accuracy", "log_loss", "nested_cv_accuracy", "nested_cv_log_loss"} <= set(m)
    fitted = result.metrics["methods"]["fitted"]
    assert fitted["nested_cv_log_loss"] >= fitted["log_loss"]  # judged on rows it was not fitted on
    assert result.metrics["submitted"] == "equal"
    assert np.allclose(result.test_probs, softmax_average(test_logits, np.full(3, 1 / 3)))
    assert sum(result.weights.values()) == pytest.approx(1)
    equal, best = result.metrics["methods"]["equal"], result.metrics["methods"]["best"]
    assert result.notes == [  # without fallback the notes say so, and nothing more
        "equal weights do not beat the best single backbone in nested CV"
        f" ({equal['nested_cv_accuracy']:.4f} < {best['nested_cv_accuracy']:.4f})."
    ]


def test_a_method_that_loses_to_the_best_single_backbone_falls_back_and_says_so(members):
    logits, labels = members
    fold_of_image = np.arange(len(labels)) % 4
    result = build_ensemble("equal", ["a", "b", "c"], logits, labels, fold_of_image, logits[:, :10])
    assert result.method == "best" and result.weights == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert "equal weights do not beat the best single backbone in nested CV" in result.notes[0]
    assert result.notes[0].endswith("; the submission uses the best single backbone instead.")


def test_fitting_is_fast_enough_for_five_backbones_and_many_rows():
    """A behaviour check, not a timing: 5 x 50,000 rows fit and give simplex weights."""
    labels = np.random.default_rng(0).integers(0, 10, 50_000)
    logits = np.stack([noisy_logits(labels, s, i) for i, s in enumerate([2.0, 1.8, 1.5, 1.0, 0.5])])
    weights = fit_weights(logits, labels)
    assert weights.sum() == pytest.approx(1) and weights.argmax() == 0


def members_weakest_first(n=600, seed=0):
    """Three informative members of rising strength, so that the best one is not the first."""
    labels = np.random.default_rng(seed).integers(0, 10, n)
    return np.stack([noisy_logits(labels, s, seed + i + 1) for i, s in enumerate([0.8, 1.5, 2.0])]), labels


def test_fitted_weights_meet_the_optimality_conditions_of_log_loss_on_the_simplex():
    labels = np.random.default_rng(0).integers(0, 10, 500)
    logits = np.stack([noisy_logits(labels, s, i + 1) for i, s in enumerate([1.5, 1.4, 1.3, 0.5])])
    weights = fit_weights(logits, labels)
    picked = softmax(logits, axis=2)[:, np.arange(len(labels)), labels]  # each member's probability of the truth
    # d(log loss)/dw_i = -mean(picked_i / p): the same (-1) for every member used, no steeper for the others (KKT)
    slope = (picked / (weights @ picked)).mean(axis=1)
    used = weights > 1e-9
    assert weights.sum() == pytest.approx(1) and used.sum() >= 2
    assert np.abs(slope[used] - 1).max() < 1e-6 and (slope[~used] <= 1).all()


def test_a_row_no_member_gives_any_probability_leaves_the_weights_as_without_it():
    logits, labels = members_weakest_first()
    hopeless = logits.copy()
    hopeless[:, 0, labels[0]] = -1e4  # every member's softmax underflows to exactly 0 on row 0's true class
    assert softmax(hopeless, axis=2)[:, 0, labels[0]].max() == 0
    assert np.allclose(fit_weights(hopeless, labels), fit_weights(logits[:, 1:], labels[1:]), atol=1e-5)
    assert caruana_weights(hopeless, labels).tolist() == caruana_weights(logits[:, 1:], labels[1:]).tolist()


def test_caruana_adds_in_each_round_the_member_that_most_lowers_the_log_loss():
    logits, labels = members_weakest_first()
    counts = np.zeros(3)
    for rounds in range(1, 13):
        weights = caruana_weights(logits, labels, rounds=rounds)
        added = np.rint(weights * rounds) - counts
        assert np.allclose(weights * rounds, np.rint(weights * rounds)) and sorted(added) == [0, 0, 1]
        losses = [
            probs_metrics(softmax_average(logits, (counts + np.eye(3)[j]) / rounds), labels)["log_loss"]
            for j in range(3)
        ]
        assert int(np.argmax(added)) == int(np.argmin(losses))
        counts += added
    assert (counts > 0).sum() >= 2  # the path mixed members, so every round's choice was a real one


def test_each_method_name_gives_its_own_weights():
    logits, labels = members_weakest_first()
    assert np.array_equal(choose_weights("fitted", logits, labels)[0], fit_weights(logits, labels))
    assert np.array_equal(choose_weights("caruana", logits, labels)[0], caruana_weights(logits, labels))
    assert choose_weights("equal", logits, labels)[0].tolist() == [1 / 3] * 3
    assert choose_weights("best", logits, labels)[0].tolist() == [0.0, 0.0, 1.0]  # the strongest, last
    assert all(choose_weights(method, logits, labels)[1] is None for method in AVERAGING)  # no temperature by default
    assert sorted([*AVERAGING, STACKING]) == sorted(METHODS)  # every configurable name has its implementation
    with pytest.raises(ValueError, match="'stacking' is not a softmax-averaging method"):
        choose_weights("stacking", logits, labels)  # no silent fall-through to "best"


def test_with_temperature_weights_are_fitted_on_the_calibrated_members():
    logits, labels = members_weakest_first()
    overconfident = logits * np.array([6.0, 1.0, 3.0])[:, None, None]
    weights, temperatures = choose_weights("fitted", overconfident, labels, temperature=True)
    assert temperatures.tolist() == fit_temperatures(overconfident, labels).tolist()
    assert np.allclose(weights, fit_weights(overconfident / temperatures[:, None, None], labels))
    assert not np.allclose(weights, fit_weights(overconfident, labels), atol=1e-3)  # calibration mattered


def test_a_member_without_signal_is_flattened_only_as_far_as_the_highest_temperature():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 10, (1, 500, 10))  # says nothing about the labels: the best temperature is infinite
    assert 19.99 < fit_temperatures(noise, rng.integers(0, 10, 500))[0] <= 20.0


@pytest.fixture
def spread_temperatures(monkeypatch):
    """A fast stand-in for `fit_temperatures`, each member's logit spread: for tests of where temperatures go."""

    def spread(logits, labels):
        return logits.std(axis=(1, 2))

    monkeypatch.setattr(ensemble, "fit_temperatures", spread)
    return spread


@pytest.mark.parametrize("temperature", [False, True])
def test_nested_cv_predicts_each_fold_with_weights_fitted_on_all_the_other_folds(spread_temperatures, temperature):
    logits, labels = members_weakest_first()
    fold_of_image = np.arange(len(labels)) % 3
    probs = nested_cv_probs("fitted", logits, labels, fold_of_image, temperature)
    for fold in range(3):
        held_out = fold_of_image == fold
        weights, temperatures = choose_weights("fitted", logits[:, ~held_out], labels[~held_out], temperature)
        assert (temperatures is not None) == temperature
        assert np.allclose(probs[held_out], softmax_average(logits[:, held_out], weights, temperatures))


def test_per_backbone_scores_are_each_backbone_alone():
    logits, labels = members_weakest_first()
    names = ["weak", "medium", "strong"]
    result = build_ensemble("best", names, logits, labels, np.arange(len(labels)) % 4, logits[:, :10])
    assert result.method == "best" and result.weights == {"weak": 0.0, "medium": 0.0, "strong": 1.0}
    assert result.temperatures is None and result.notes == []
    for name, member in zip(names, logits, strict=True):
        alone = logits_metrics(member, labels)
        nested = {"nested_cv_accuracy": alone["accuracy"], "nested_cv_log_loss": alone["log_loss"]}
        assert result.metrics["backbones"][name] == pytest.approx({**alone, **nested})  # nothing to fit alone


def test_with_temperature_every_score_and_output_uses_the_calibrated_members(spread_temperatures):
    logits, labels = members_weakest_first()
    names, fold_of_image, test_logits = ["a", "b", "c"], np.arange(len(labels)) % 3, logits[:, :50]
    result = build_ensemble(
        "fitted", names, logits, labels, fold_of_image, test_logits, temperature=True, fallback=False
    )
    temperatures = spread_temperatures(logits, labels)
    assert result.temperatures == pytest.approx(dict(zip(names, temperatures, strict=True)))
    for name, member in zip(names, logits, strict=True):
        nested = probs_metrics(nested_cv_probs("best", member[None], labels, fold_of_image, True), labels)
        assert result.metrics["backbones"][name] == pytest.approx(
            {**logits_metrics(member, labels), **{f"nested_cv_{k}": v for k, v in nested.items()}}
        )
    for method in METHODS:
        in_sample = probs_metrics(fit_combination(method, logits, labels, temperature=True).predict(logits), labels)
        nested = probs_metrics(nested_cv_probs(method, logits, labels, fold_of_image, True), labels)
        expected = {**in_sample, **{f"nested_cv_{k}": v for k, v in nested.items()}}
        assert result.metrics["methods"][method] == pytest.approx(expected)
        assert nested != probs_metrics(nested_cv_probs(method, logits, labels, fold_of_image, False), labels)
    weights = np.array([result.weights[name] for name in names])
    assert result.method == "fitted" and weights.tolist() == choose_weights("fitted", logits, labels, True)[0].tolist()
    assert np.allclose(result.oof_probs, softmax_average(logits, weights, temperatures))
    assert np.allclose(result.test_probs, softmax_average(test_logits, weights, temperatures))
    assert not np.allclose(result.test_probs, softmax_average(test_logits, weights))  # temperatures mattered


def complementary_members(n=800, seed=0):
    """Two members, each informative on half the classes only: together they beat either one."""
    labels = np.random.default_rng(seed).integers(0, 10, n)
    first, second = noisy_logits(labels, 0.0, seed + 1), noisy_logits(labels, 0.0, seed + 2)
    rows = np.arange(n)
    first[rows[labels < 5], labels[labels < 5]] += 4.0
    second[rows[labels >= 5], labels[labels >= 5]] += 4.0
    return np.stack([first, second]), labels


@pytest.mark.parametrize("method", ["equal", "fitted"])
def test_a_method_that_beats_the_best_single_backbone_is_kept(method):
    logits, labels = complementary_members()
    result = build_ensemble(method, ["a", "b"], logits, labels, np.arange(len(labels)) % 4, logits[:, :10])
    scores = result.metrics["methods"]
    assert scores[method]["nested_cv_accuracy"] > scores["best"]["nested_cv_accuracy"]
    assert result.method == method and result.metrics["submitted"] == method and result.notes == []


def test_a_method_that_ties_the_best_single_backbone_is_kept():
    logits, labels = members_weakest_first()
    twins = np.stack([logits[2], logits[2]])  # equal weights of two copies predict exactly what one copy does
    result = build_ensemble("equal", ["a", "b"], twins, labels, np.arange(len(labels)) % 4, twins[:, :10])
    scores = result.metrics["methods"]
    assert scores["equal"]["nested_cv_accuracy"] == scores["best"]["nested_cv_accuracy"]
    assert result.method == "equal" and result.weights == {"a": 0.5, "b": 0.5} and result.notes == []


def test_backbone_names_that_do_not_match_the_logits_are_an_error(members):
    logits, labels = members  # three backbones' logits, two names
    with pytest.raises(ValueError, match="2 backbone names for 3 backbones' OOF logits and 3 backbones' test logits"):
        build_ensemble("equal", ["a", "b"], logits, labels, np.arange(len(labels)) % 4, logits[:, :10])


def test_best_is_the_most_accurate_backbone_even_when_it_is_over_confident():
    """Kaggle scores accuracy: a backbone right more often but too sure when wrong must not lose to a calibrated,
    less accurate one because of its log loss."""
    labels = np.random.default_rng(0).integers(0, 10, 2000)
    accurate = noisy_logits(labels, 2.5, 1) * 10  # 0.80 accurate, far too sure: log loss 1.44
    calibrated = noisy_logits(labels, 2.0, 2) * 1.5  # 0.67 accurate, log loss 1.01
    logits = np.stack([calibrated, accurate])
    scored = [logits_metrics(m, labels) for m in logits]
    assert scored[1]["accuracy"] > scored[0]["accuracy"] and scored[1]["log_loss"] > scored[0]["log_loss"]
    assert choose_weights("best", logits, labels)[0].tolist() == [0.0, 1.0]
    result = build_ensemble("best", ["calibrated", "accurate"], logits, labels, np.arange(2000) % 4, logits[:, :5])
    assert result.best_backbone == "accurate" and result.weights == {"calibrated": 0.0, "accurate": 1.0}
    # a tie in accuracy goes to the lower log loss
    twins = np.stack([calibrated * 3, calibrated])
    assert choose_weights("best", twins, labels)[0].tolist() == [0.0, 1.0]


def swapping_members(n=800, seed=0):
    """A strong member that reads classes 0 and 1 the wrong way round, and a weak honest one."""
    labels = np.random.default_rng(seed).integers(0, 10, n)
    swapped = noisy_logits(labels, 3.0, seed + 1)[:, [1, 0, *range(2, 10)]]
    return np.stack([swapped, noisy_logits(labels, 1.0, seed + 2)]), labels


def test_stacking_undoes_a_member_that_swaps_two_classes_where_averaging_cannot():
    logits, labels = swapping_members()
    fold_of_image = np.arange(len(labels)) % 4
    nested = {m: probs_metrics(nested_cv_probs(m, logits, labels, fold_of_image, False), labels) for m in METHODS}
    best_average = max(nested[m]["accuracy"] for m in AVERAGING)
    assert best_average < 0.75  # averaging keeps the swap: classes 0 and 1 (a fifth of the rows) mostly wrong
    assert nested[STACKING]["accuracy"] > best_average + 0.12  # measured 0.891 against 0.725
    assert nested[STACKING]["log_loss"] < min(nested[m]["log_loss"] for m in AVERAGING) - 0.3


def test_a_stacking_submission_uses_the_model_fitted_on_all_oof_rows_and_records_it():
    logits, labels = swapping_members()
    test_logits = swapping_members(n=50, seed=7)[0]
    result = build_ensemble("stacking", ["a", "b"], logits, labels, np.arange(len(labels)) % 4, test_logits)
    assert result.method == "stacking" and result.notes == []
    combination = fit_combination("stacking", logits, labels)
    assert np.allclose(result.test_probs, combination.predict(test_logits))
    assert np.allclose(result.oof_probs, combination.predict(logits))
    assert not np.allclose(result.test_probs, softmax_average(test_logits, combination.weights))  # not an average
    assert result.weights == pytest.approx({"a": combination.weights[0], "b": combination.weights[1]})
    assert sum(result.weights.values()) == pytest.approx(1) and result.weights["a"] > result.weights["b"]
    assert result.weights_json() == {
        "method": "stacking", "weights_kind": "coefficient_norm_share", "weights": result.weights,
        "temperatures": None, "stacking": {"C": combination.stacker.C, "coef_shape": [10, 20]},
    }  # fmt: skip
    assert result.metrics["submitted"] == "stacking"
    assert result.metrics["cv_accuracy"] == result.metrics["methods"]["stacking"]["nested_cv_accuracy"]


def overfitting_members(n=160, n_noise=7, seed=0):
    """One informative member and many without signal, on few rows: 810 coefficients from 120 fitting rows."""
    labels = np.random.default_rng(seed).integers(0, 10, n)
    noise = [noisy_logits(labels, 0.0, seed + 2 + i) for i in range(n_noise)]
    return np.stack([noisy_logits(labels, 2.5, seed + 1), *noise]), labels


@pytest.mark.parametrize("fallback", [True, False])
def test_nested_cv_rejects_stacking_that_overfits_few_rows_of_many_members(fallback):
    logits, labels = overfitting_members()
    names = [f"m{i}" for i in range(len(logits))]
    result = build_ensemble("stacking", names, logits, labels, np.arange(len(labels)) % 4, logits[:, :10],
                            fallback=fallback)  # fmt: skip
    scores = result.metrics["methods"]
    best_average = max(scores[m]["nested_cv_accuracy"] for m in AVERAGING)
    assert scores["stacking"]["nested_cv_accuracy"] < best_average - 0.2  # measured 0.431 against 0.744
    assert scores["stacking"]["accuracy"] > scores["best"]["accuracy"]  # in sample it flatters itself
    assert result.notes[0].startswith("stacking weights do not beat the best single backbone in nested CV")
    if fallback:
        assert result.method == "best" and result.stacking is None and result.weights["m0"] == 1.0
        assert result.weights_json()["weights_kind"] == "softmax_average"
        assert np.allclose(result.test_probs, softmax(logits[0, :10], axis=1))
    else:
        assert result.method == "stacking" and result.stacking is not None


def test_stacking_in_nested_cv_never_sees_the_held_out_fold():
    logits, labels = swapping_members(n=400)
    fold_of_image = np.arange(len(labels)) % 4
    probs = nested_cv_probs(STACKING, logits, labels, fold_of_image, False)
    held_out = fold_of_image == 2
    relabelled = labels.copy()
    relabelled[held_out] = np.random.default_rng(1).integers(0, 10, held_out.sum())
    assert (relabelled != labels).mean() > 0.2
    again = nested_cv_probs(STACKING, logits, relabelled, fold_of_image, False)
    assert np.array_equal(again[held_out], probs[held_out])  # neither C nor coefficients saw these labels
    assert not np.allclose(again[~held_out], probs[~held_out])  # while the other folds' fits did
    for fold in range(4):  # nor their logits (the scaler's means and spreads)
        rows = fold_of_image == fold
        alone = fit_combination(STACKING, logits[:, ~rows], labels[~rows]).predict(logits[:, rows])
        assert np.array_equal(probs[rows], alone)


def test_the_inner_search_regularises_noise_most_and_a_learnable_swap_less():
    rng = np.random.default_rng(0)
    noise_labels = rng.integers(0, 10, 300)
    assert fit_combination(STACKING, rng.normal(size=(3, 300, 10)), noise_labels).stacker.C == min(C_GRID)
    assert fit_combination(STACKING, *swapping_members()).stacker.C >= 0.1


def test_with_temperature_stacking_is_fitted_and_applied_on_the_calibrated_members(spread_temperatures):
    logits, labels = members_weakest_first()
    overconfident = logits * np.array([6.0, 1.0, 3.0])[:, None, None]
    temperatures = spread_temperatures(overconfident, labels)
    combination = fit_combination(STACKING, overconfident, labels, temperature=True)
    assert combination.temperatures.tolist() == temperatures.tolist()
    calibrated = overconfident / temperatures[:, None, None]
    expected = fit_stacker(calibrated, labels).predict_probs(calibrated)
    assert np.allclose(combination.predict(overconfident), expected)
    assert not np.allclose(expected, fit_stacker(overconfident, labels).predict_probs(calibrated), atol=1e-3)
