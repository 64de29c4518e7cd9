"""Ensembles of backbones fitted on OOF logits and judged honestly: softmax averaging, or stacking.

Averaging methods (per-backbone softmax probabilities, weighted on the simplex):
  best     all weight on the backbone with the highest OOF accuracy (Kaggle's metric; log loss breaks ties)
  equal    1 / n_backbones each
  fitted   the weights minimising OOF log loss (scipy SLSQP on the simplex)
  caruana  greedy ensemble selection with replacement (Caruana et al. 2004, as AutoGluon and auto-sklearn)
and
  stacking a logistic regression on all backbones' log-softmax outputs (`pipeline.stacking`); its "weights" are
           each backbone's share of the coefficient norm, for the report only
Optionally each backbone's logits are first divided by a temperature fitted on log loss.

Weights fitted and scored on the same OOF rows flatter themselves, so every method is also scored by nested
cross-validation over the folds: fit on the OOF rows of k-1 folds, score on the held-out fold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import softmax

from pipeline.config import ENSEMBLE_METHODS
from pipeline.metrics import logits_metrics, probs_metrics
from pipeline.stacking import Stacker, fit_stacker

METHODS = ENSEMBLE_METHODS
STACKING = "stacking"
_CARUANA_ROUNDS = 50


def calibrated(logits: np.ndarray, temperatures: np.ndarray | None) -> np.ndarray:
    """`(n_backbones, n, c)` logits, each backbone's divided by its temperature (unchanged without temperatures)."""
    return logits if temperatures is None else logits / temperatures[:, None, None]


def softmax_average(logits: np.ndarray, weights: np.ndarray, temperatures: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean of per-backbone softmax probabilities: `(n_backbones, n, c)` logits -> `(n, c)` probs."""
    return np.tensordot(weights, softmax(calibrated(logits.astype(np.float64), temperatures), axis=2), axes=1)


def fit_weights(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Simplex weights `(n_backbones,)` minimising the log loss of `softmax_average(logits, w)` on `labels`."""
    picked = softmax(logits.astype(np.float64), axis=2)[:, np.arange(len(labels)), labels]  # (m, n)

    def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        p = np.clip(w @ picked, 1e-15, None)
        return -np.log(p).mean(), -(picked / p).mean(axis=1)

    m = len(logits)
    result = minimize(
        loss_and_grad, np.full(m, 1.0 / m), jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
        options={"ftol": 1e-12, "maxiter": 500},
    )  # fmt: skip
    weights = np.clip(result.x, 0.0, None)
    return weights / weights.sum()


def caruana_weights(logits: np.ndarray, labels: np.ndarray, rounds: int = _CARUANA_ROUNDS) -> np.ndarray:
    """Greedy forward selection with replacement: each round adds the member that most lowers the log loss."""
    picked = softmax(logits.astype(np.float64), axis=2)[:, np.arange(len(labels)), labels]  # (m, n)
    counts = np.zeros(len(logits))
    running = np.zeros(len(labels))
    for round_ in range(rounds):
        candidates = (running[None, :] * round_ + picked) / (round_ + 1)
        best = int(np.argmin(-np.log(np.clip(candidates, 1e-15, None)).mean(axis=1)))
        counts[best] += 1
        running = candidates[best]
    return counts / counts.sum()


def fit_temperatures(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-backbone temperature `(n_backbones,)` minimising each one's log loss (calibration)."""

    def loss(t: float, member: np.ndarray) -> float:
        return logits_metrics(member / t, labels)["log_loss"]

    return np.array([minimize_scalar(loss, bounds=(0.05, 20.0), args=(m,), method="bounded").x for m in logits])


def best_member(logits: np.ndarray, labels: np.ndarray) -> int:
    """The backbone with the highest accuracy on `labels`, the competition's metric; the lower log loss breaks ties
    (an over-confident backbone at 0.95 accuracy must not lose to one at 0.89 on log loss)."""
    scored = [logits_metrics(member, labels) for member in logits]
    return max(range(len(logits)), key=lambda i: (scored[i]["accuracy"], -scored[i]["log_loss"]))


def best_member_weights(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.eye(len(logits))[best_member(logits, labels)]


def equal_weights(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.full(len(logits), 1.0 / len(logits))


AVERAGING = {"fitted": fit_weights, "caruana": caruana_weights, "equal": equal_weights, "best": best_member_weights}


def method_weights(method: str, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    if method not in AVERAGING:
        raise ValueError(f"{method!r} is not a softmax-averaging method; use one of {tuple(AVERAGING)}.")
    return AVERAGING[method](logits, labels)


def choose_weights(method: str, logits: np.ndarray, labels: np.ndarray, temperature: bool = False):
    """(weights, temperatures or None) of averaging `method`, fitted on `logits` `(n_backbones, n, c)`, `labels`."""
    temperatures = fit_temperatures(logits, labels) if temperature else None
    return method_weights(method, calibrated(logits, temperatures), labels), temperatures


@dataclass(frozen=True)
class Combination:
    """A fitted ensemble: `predict` maps `(n_backbones, n, c)` logits to `(n, c)` probabilities."""

    weights: np.ndarray  # (n_backbones,) on the simplex: averaging weights, or stacking's coefficient-norm shares
    temperatures: np.ndarray | None
    stacker: Stacker | None = None  # set for stacking, which does not average

    def predict(self, logits: np.ndarray) -> np.ndarray:
        if self.stacker is None:
            return softmax_average(logits, self.weights, self.temperatures)
        return self.stacker.predict_probs(calibrated(logits, self.temperatures))


def fit_combination(method: str, logits: np.ndarray, labels: np.ndarray, temperature: bool = False) -> Combination:
    """`method` fitted on `logits` `(n_backbones, n, c)` and `labels` `(n,)`, and on nothing else."""
    if method != STACKING:
        return Combination(*choose_weights(method, logits, labels, temperature))
    temperatures = fit_temperatures(logits, labels) if temperature else None
    stacker = fit_stacker(calibrated(logits, temperatures), labels)
    return Combination(stacker.backbone_shares(), temperatures, stacker)


def nested_cv_probs(method: str, logits: np.ndarray, labels: np.ndarray, fold_of_image: np.ndarray,
                    temperature: bool) -> np.ndarray:  # fmt: skip
    """`(n, c)` probabilities where each fold's rows come from `method` fitted on the other folds only."""
    probs = np.empty(logits.shape[1:])
    for fold in np.unique(fold_of_image):
        held_out = fold_of_image == fold
        combination = fit_combination(method, logits[:, ~held_out], labels[~held_out], temperature)
        probs[held_out] = combination.predict(logits[:, held_out])
    return probs


@dataclass
class EnsembleResult:
    method: str  # the method used for the submission
    weights: dict[str, float]  # backbone -> weight (stacking: share of the coefficient norm), summing to 1
    temperatures: dict[str, float] | None
    stacking: dict | None  # for stacking: the regularisation C and the coefficients' shape
    oof_probs: np.ndarray  # (n_train, n_classes) of the chosen method, fitted on all OOF rows
    test_probs: np.ndarray  # (n_test, n_classes)
    metrics: dict  # cv_accuracy and the method submitted; per backbone and per method: OOF and nested-CV figures
    notes: list[str]  # plain statements for the report (e.g. a fallback)
    best_backbone: str  # the one `best` picks on all OOF rows: the highest accuracy, log loss breaking ties

    def summary(self) -> dict:
        """What a submission made from it is: the method, the backbones, the nested-CV accuracy (the record's
        facts, and the Kaggle submission's description)."""
        return {"method": self.method, "backbones": list(self.weights),
                "nested_cv_accuracy": self.metrics["cv_accuracy"]}  # fmt: skip

    def weights_json(self) -> dict:
        """What weights.json records: enough to tell how the test probabilities were made."""
        weights_kind = "coefficient_norm_share" if self.method == STACKING else "softmax_average"
        return {"method": self.method, "weights_kind": weights_kind, "weights": self.weights,
                "temperatures": self.temperatures, "stacking": self.stacking}  # fmt: skip


def build_ensemble(
    method: str, backbones: list[str], oof_logits: np.ndarray, labels: np.ndarray, fold_of_image: np.ndarray,
    test_logits: np.ndarray, *, temperature: bool = False, fallback: bool = True,
) -> EnsembleResult:  # fmt: skip
    """Score every method (OOF and nested CV), then weight `test_logits` `(n_backbones, n_test, c)` by `method`.

    With `fallback`, a `method` whose nested-CV accuracy is below the best single backbone's gives way to
    `best`, and the notes say so.
    """
    if not len(backbones) == len(oof_logits) == len(test_logits):
        raise ValueError(f"{len(backbones)} backbone names for {len(oof_logits)} backbones' OOF logits and"
                         f" {len(test_logits)} backbones' test logits")  # fmt: skip
    # the headline first: `dvc exp show` lists a metrics file's keys in order, so its first columns answer "which
    # experiment scores best" (the nested-CV accuracy of what is submitted)
    metrics: dict = {"cv_accuracy": None, "submitted": method, "backbones": {}, "methods": {}}
    for i, backbone in enumerate(backbones):
        member = oof_logits[i : i + 1]
        nested = nested_cv_probs("best", member, labels, fold_of_image, temperature)
        metrics["backbones"][backbone] = {**logits_metrics(oof_logits[i], labels), **_nested(nested, labels)}
    fitted = {}
    for candidate in METHODS:
        fitted[candidate] = fit_combination(candidate, oof_logits, labels, temperature)
        in_sample = probs_metrics(fitted[candidate].predict(oof_logits), labels)
        nested = nested_cv_probs(candidate, oof_logits, labels, fold_of_image, temperature)
        metrics["methods"][candidate] = {**in_sample, **_nested(nested, labels)}

    notes = []
    chosen = method
    best_single = metrics["methods"]["best"]["nested_cv_accuracy"]
    if method != "best" and metrics["methods"][method]["nested_cv_accuracy"] < best_single:
        notes.append(
            f"{method} weights do not beat the best single backbone in nested CV"
            f" ({metrics['methods'][method]['nested_cv_accuracy']:.4f} < {best_single:.4f})"
            + ("; the submission uses the best single backbone instead." if fallback else ".")
        )
        chosen = "best" if fallback else method
    combination = fitted[chosen]
    metrics["cv_accuracy"], metrics["submitted"] = metrics["methods"][chosen]["nested_cv_accuracy"], chosen
    stacker = combination.stacker
    return EnsembleResult(
        method=chosen,
        weights={bb: float(w) for bb, w in zip(backbones, combination.weights, strict=True)},
        temperatures=None
        if combination.temperatures is None
        else {bb: float(t) for bb, t in zip(backbones, combination.temperatures, strict=True)},
        stacking=None if stacker is None else {"C": stacker.C, "coef_shape": list(stacker.model.coef_.shape)},
        oof_probs=combination.predict(oof_logits),
        test_probs=combination.predict(test_logits),
        metrics=metrics,
        notes=notes,
        best_backbone=backbones[best_member(oof_logits, labels)],
    )


def _nested(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {f"nested_cv_{k}": v for k, v in probs_metrics(probs, labels).items()}
