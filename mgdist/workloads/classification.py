"""Classification: an MLP from features to class probabilities, softmax cross-entropy.

Two classes: one logit, binary cross-entropy on it (softplus(z) - y z, stable for any z), the
prediction P(class 1). More: one logit per class, softmax cross-entropy, the prediction every
class's probability (exp of log_softmax). Labels are the target column's
values 0, 1, ..., classes - 1. Written with the public model contract only (docs/models.md);
on mgdist's synthetic data with class thresholds the true class probabilities are known,
so the figures include the Bayes rate and the true model's log loss.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from micrograd import Value
from micrograd.losses import binary_cross_entropy_with_logits, cross_entropy
from micrograd.nn import MLP
from mgdist.data import Dataset
from mgdist.workloads import synthetic

EPS = 1e-12  # probabilities are clipped to [EPS, 1] in the log loss figure


class Classifier:
    """Labels 0..classes-1 ~ MLP(x); `classes` >= 2."""

    def __init__(self, features: int, classes: int = 2, hidden: Sequence[int] = (64, 64), activation: str = "tanh",
                 seed: int = 0):
        if classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {classes}")
        self.classes = classes
        self.net = MLP(features, hidden, 1 if classes == 2 else classes, activation, seed)
        X = Value.placeholder("X", (None, features))
        logits = self.net(X)
        if classes == 2:
            z = logits[:, 0]
            self.loss = binary_cross_entropy_with_logits(z, Value.placeholder("y", (None,)))
            self.prediction = z.sigmoid()
            self.outputs = ["p1"]
        else:  # labels 0..classes-1, fed as the target column's floats
            self.loss = cross_entropy(logits, Value.placeholder("y", (None,), integer=True))
            self.prediction = logits.log_softmax(axis=1).exp()
            self.outputs = [f"p{k}" for k in range(classes)]

    def parameters(self) -> list[Value]:
        return self.net.parameters()

    def metrics(self, dataset: Dataset) -> ClassificationMetrics:
        known = synthetic.known(dataset)
        oracle = known.thresholds if known is not None and len(known.thresholds) + 1 == self.classes else None
        return ClassificationMetrics(self.classes, oracle)


def probabilities(pred: np.ndarray, classes: int) -> np.ndarray:
    """(n, classes) class probabilities from a prediction: P(class 1) for 2 classes, else every class's."""
    pred = pred.reshape(len(pred), -1).astype(np.float64)
    return np.column_stack([1 - pred[:, 0], pred[:, 0]]) if classes == 2 else pred


class ClassificationMetrics:
    """Accuracy and log loss over rows; with known class thresholds, the true model's beside them."""

    def __init__(self, classes: int, thresholds: Sequence[float] | None):
        self.classes, self.thresholds = classes, thresholds
        self.rows, self.correct, self.log_loss = 0, 0, 0.0
        self.oracle_correct, self.oracle_log_loss = 0, 0.0

    def _count(self, p: np.ndarray, labels: np.ndarray) -> tuple[int, float]:
        picked = p[np.arange(len(labels)), labels]
        return int((p.argmax(axis=1) == labels).sum()), float(-np.log(np.clip(picked, EPS, 1)).sum())

    def add(self, X: np.ndarray, y: np.ndarray, pred: np.ndarray) -> None:
        labels = y.astype(np.int64)
        self.rows += len(y)
        correct, loss = self._count(probabilities(pred, self.classes), labels)
        self.correct, self.log_loss = self.correct + correct, self.log_loss + loss
        if self.thresholds is not None:
            correct, loss = self._count(synthetic.class_probabilities(X, self.thresholds), labels)
            self.oracle_correct, self.oracle_log_loss = self.oracle_correct + correct, self.oracle_log_loss + loss

    def merge(self, other: ClassificationMetrics) -> None:
        for name in ("rows", "correct", "log_loss", "oracle_correct", "oracle_log_loss"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> dict[str, float]:
        n = max(self.rows, 1)
        figures = {"accuracy": self.correct / n, "log_loss": self.log_loss / n}
        if self.thresholds is not None:
            figures |= {"oracle_loss": self.oracle_log_loss / n, "oracle_accuracy": self.oracle_correct / n}
        return figures
