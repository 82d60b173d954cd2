"""Quality of predicted quantiles: pinball loss, coverage, intervals, crossing.

Everything is kept as sums, so the figures of several workers' rows simply add up.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def pinball_sums(y: np.ndarray, pred: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Per level, the summed pinball loss max(q*(y-p), (q-1)*(y-p)) over rows (float64)."""
    diff = y.reshape(-1, 1).astype(np.float64) - pred
    q = np.asarray(levels, np.float64)
    return np.maximum(q * diff, (q - 1) * diff).sum(axis=0)


def symmetric_pairs(levels: Sequence[float]) -> list[tuple[int, int]]:
    """Index pairs (lo, hi) of levels q and 1-q with q < 0.5, e.g. 0.1 and 0.9."""
    index = {round(q, 9): i for i, q in enumerate(levels)}
    return [(i, index[round(1 - q, 9)]) for i, q in enumerate(levels) if q < 0.5 and round(1 - q, 9) in index]


class QuantileStats:
    """Sums over rows of predictions (n, Q) against targets (n,); add() and merge() accumulate."""

    def __init__(self, levels: Sequence[float]):
        self.levels = tuple(levels)
        self.pairs = symmetric_pairs(levels)
        self.rows, self.crossing = 0, 0
        self.pinball = np.zeros(len(levels))
        self.below = np.zeros(len(levels))
        self.inside = np.zeros(len(self.pairs))
        self.width = np.zeros(len(self.pairs))

    def add(self, y: np.ndarray, pred: np.ndarray) -> QuantileStats:
        y = y.reshape(-1)
        self.rows += len(y)
        self.pinball += pinball_sums(y, pred, self.levels)
        self.below += (y[:, None] <= pred).sum(axis=0)
        self.crossing += int((np.diff(pred, axis=1) < 0).any(axis=1).sum())
        for k, (lo, hi) in enumerate(self.pairs):
            self.inside[k] += ((pred[:, lo] <= y) & (y <= pred[:, hi])).sum()
            self.width[k] += (pred[:, hi].astype(np.float64) - pred[:, lo]).sum()
        return self

    def merge(self, other: QuantileStats) -> QuantileStats:
        self.rows += other.rows
        self.crossing += other.crossing
        for name in ("pinball", "below", "inside", "width"):
            getattr(self, name).__iadd__(getattr(other, name))
        return self

    def summary(self) -> dict:
        """Mean pinball loss (overall and per level), coverage per level, intervals, crossing rate."""
        n = max(self.rows, 1)
        name = [f"{q:g}" for q in self.levels]
        return {
            "rows": self.rows,
            "pinball": float(self.pinball.sum() / (n * len(self.levels))),
            "pinball_per_level": dict(zip(name, (self.pinball / n).tolist())),
            "coverage": dict(zip(name, (self.below / n).tolist())),
            "intervals": {f"{name[lo]}-{name[hi]}": {"coverage": float(self.inside[k] / n),
                                                     "nominal": round(self.levels[hi] - self.levels[lo], 9),
                                                     "mean_width": float(self.width[k] / n)}
                          for k, (lo, hi) in enumerate(self.pairs)},
            "crossing_rate": self.crossing / n,
        }
