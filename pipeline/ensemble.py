"""Softmax averaging of several backbones, with weights on the probability simplex fitted on OOF logits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import softmax

from pipeline.metrics import logits_metrics, probs_metrics


def softmax_average(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of per-backbone softmax probabilities: `(n_backbones, n, c)` logits -> `(n, c)` probs."""
    return np.tensordot(weights, softmax(logits.astype(np.float64), axis=2), axes=1)


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


def choose_weights(method: str, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`fitted` (simplex weights on log loss), `equal`, or `best` (all weight on the lowest-log-loss backbone)."""
    if method == "fitted":
        return fit_weights(logits, labels)
    if method == "equal":
        return np.full(len(logits), 1.0 / len(logits))
    losses = [logits_metrics(member, labels)["log_loss"] for member in logits]
    return np.eye(len(logits))[int(np.argmin(losses))]


@dataclass
class EnsembleResult:
    weights: dict[str, float]  # backbone -> weight, summing to 1
    test_probs: np.ndarray  # (n_test, n_classes)
    metrics: dict  # OOF accuracy and log loss of every backbone, of equal weights, and of the chosen weights


def build_ensemble(
    method: str, backbones: list[str], oof_logits: np.ndarray, labels: np.ndarray, test_logits: np.ndarray
) -> EnsembleResult:
    """Choose weights on `oof_logits` `(n_backbones, n_train, c)`, apply them to `test_logits` `(.., n_test, c)`.

    The OOF scores reported for fitted weights are fitted and judged on the same rows, so slightly optimistic.
    """
    weights = choose_weights(method, oof_logits, labels)
    equal = np.full(len(backbones), 1.0 / len(backbones))
    metrics = {
        "backbones": {bb: logits_metrics(oof_logits[i], labels) for i, bb in enumerate(backbones)},
        "equal_weights": probs_metrics(softmax_average(oof_logits, equal), labels),
        "fitted_weights": probs_metrics(softmax_average(oof_logits, fit_weights(oof_logits, labels)), labels),
        "ensemble": {"method": method, **probs_metrics(softmax_average(oof_logits, weights), labels)},
    }
    return EnsembleResult(
        weights={bb: float(w) for bb, w in zip(backbones, weights, strict=True)},
        test_probs=softmax_average(test_logits, weights),
        metrics=metrics,
    )
