"""Accuracy and log loss of class scores, the two numbers every stage reports."""

from __future__ import annotations

import numpy as np
from scipy.special import softmax
from sklearn.metrics import accuracy_score, log_loss

from pipeline.competition import CLASSES


def probs_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and log loss of probabilities `(n, n_classes)` against class indices `(n,)`."""
    return {
        "accuracy": float(accuracy_score(labels, probs.argmax(1))),
        "log_loss": float(log_loss(labels, probs, labels=list(range(len(CLASSES))))),
    }


def logits_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and log loss of softmax(logits)."""
    return probs_metrics(softmax(logits.astype(np.float64), axis=1), labels)
