"""Regression: an MLP from features to one number, trained with mean squared error or Huber loss.

Written with the public model contract only (docs/models.md). On mgdist's synthetic data the
true conditional mean is known, so the figures include the loss it scores on the same rows
(for MSE: the noise variance).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from micrograd import Value
from micrograd.losses import huber, mse
from micrograd.nn import MLP
from mgdist.data import Dataset
from mgdist.workloads import synthetic

LOSSES = ("mse", "huber")


def huber_sums(d: np.ndarray, delta: float) -> float:
    """The Huber loss of residuals d summed over rows, in float64 (for the figures)."""
    a = np.abs(d.astype(np.float64))
    m = np.minimum(a, delta)
    return float((0.5 * m * m + delta * (a - m)).sum())


class Regressor:
    """y ~ MLP(x), one output; loss "mse" or "huber" (with `delta`, in the units of the target as the
    model learns it: standard deviations when it is standardized, as by default)."""
    standardize_target = True

    def __init__(self, features: int, hidden: Sequence[int] = (64, 64), activation: str = "tanh",
                 loss: str = "mse", delta: float = 1.0, seed: int = 0):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.kind, self.delta = loss, float(delta)
        self.net = MLP(features, hidden, 1, activation, seed)
        X, y = Value.placeholder("X", (None, features)), Value.placeholder("y", (None,))
        self.prediction = self.net(X)[:, 0]
        self.loss = mse(self.prediction, y) if loss == "mse" else huber(self.prediction, y, self.delta)

    def parameters(self) -> list[Value]:
        return self.net.parameters()

    def metrics(self, dataset: Dataset) -> RegressionMetrics:
        known = synthetic.known(dataset)
        return RegressionMetrics(self.kind, self.delta, oracle=known is not None and known.target == "y")


class RegressionMetrics:
    """MSE, MAE and Huber sums over rows; on synthetic data, the true mean's beside them."""

    def __init__(self, kind: str, delta: float, oracle: bool):
        self.kind, self.delta, self.oracle = kind, delta, oracle
        self.rows, self.sq, self.abs, self.huber = 0, 0.0, 0.0, 0.0
        self.oracle_sq, self.oracle_huber = 0.0, 0.0

    def add(self, X: np.ndarray, y: np.ndarray, pred: np.ndarray) -> None:
        d = pred.reshape(-1).astype(np.float64) - y
        self.rows += len(y)
        self.sq += float(d @ d)
        self.abs += float(np.abs(d).sum())
        self.huber += huber_sums(d, self.delta)
        if self.oracle:
            e = synthetic.true_mean(X) - y
            self.oracle_sq += float(e @ e)
            self.oracle_huber += huber_sums(e, self.delta)

    def merge(self, other: RegressionMetrics) -> None:
        for name in ("rows", "sq", "abs", "huber", "oracle_sq", "oracle_huber"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> dict[str, float]:
        n = max(self.rows, 1)
        figures = {"mse": self.sq / n, "mae": self.abs / n, "huber": self.huber / n}
        if self.oracle:
            figures |= {"oracle_loss": (self.oracle_sq if self.kind == "mse" else self.oracle_huber) / n,
                        "oracle_mse": self.oracle_sq / n}
        return figures
