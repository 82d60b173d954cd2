"""Preprocessing inside the distributed run: standardized features and target, one-hot categories.

Every worker summarises its own shard (`ShardSummary.of`: per-column count, mean and M2, the
distinct values of each categorical column); the driver merges the summaries exactly (Chan's
parallel formula, sorted union of the values) into one `Preprocessing`, which the checkpoint
stores and which the workers, evaluate, predict and `Trained.predict` apply. The model's
inputs are the standardized numeric features, then one 0/1 column per category of each
categorical column. A category not seen in training gets all-zero columns; a constant
column (standard deviation 0) is only centred.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from mgdist.errors import DataError

STANDARDIZE = ("none", "features", "all")  # TrainConfig.standardize: "all" adds the target, if the model allows


@dataclass(frozen=True)
class ColumnStats:
    """Count, means and sums of squared deviations (M2) of columns, float64; merged exactly."""
    count: int
    mean: np.ndarray  # (columns,)
    m2: np.ndarray    # (columns,)

    @classmethod
    def of(cls, X: np.ndarray) -> ColumnStats:
        """The statistics of the rows of X (n, columns) or (n,)."""
        X = np.asarray(X, np.float64).reshape(len(X), -1)
        mean = X.mean(axis=0) if len(X) else np.zeros(X.shape[1])
        return cls(len(X), mean, ((X - mean) ** 2).sum(axis=0))

    def merge(self, other: ColumnStats) -> ColumnStats:
        """The statistics of both sets of rows (Chan, Golub and LeVeque's pairwise update)."""
        n = self.count + other.count
        if n == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta ** 2 * (self.count * other.count / n)
        return ColumnStats(n, mean, m2)

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation of each column."""
        return np.sqrt(self.m2 / max(self.count, 1))


@dataclass(frozen=True)
class ShardSummary:
    """What a worker reports of its shard: statistics of features and target, distinct categories."""
    features: ColumnStats
    target: ColumnStats
    categories: tuple[tuple, ...]  # sorted distinct values of each categorical column

    @classmethod
    def of(cls, X: np.ndarray, y: np.ndarray, categories: Sequence[np.ndarray]) -> ShardSummary:
        return cls(ColumnStats.of(X), ColumnStats.of(y), tuple(tuple(np.unique(c).tolist()) for c in categories))

    def merge(self, other: ShardSummary) -> ShardSummary:
        return ShardSummary(self.features.merge(other.features), self.target.merge(other.target),
                            tuple(tuple(sorted(set(a) | set(b))) for a, b in zip(self.categories, other.categories)))


def _scale(stats: ColumnStats) -> np.ndarray:
    """Standard deviations to divide by: 1 where a column is constant (its spread no more than
    float32 rounding of its mean), so that it is centred, never divided by zero."""
    std = stats.std
    return np.where(std > 1e-6 * np.abs(stats.mean), std, 1.0) if stats.count else np.ones_like(std)


@dataclass(frozen=True)
class Preprocessing:
    """How raw columns become the model's inputs and its outputs the target's units."""
    features: tuple[str, ...]               # numeric feature columns, in order
    mean: tuple[float, ...] = ()            # subtracted from each feature (empty: none)
    scale: tuple[float, ...] = ()           # then divided by (empty: none)
    categorical: tuple[str, ...] = ()       # categorical columns, in order
    categories: tuple[tuple, ...] = ()      # each one's vocabulary, sorted: its one-hot columns
    target_mean: float = 0.0                # the model learns (y - target_mean) / target_scale
    target_scale: float = 1.0

    @classmethod
    def from_summary(cls, summary: ShardSummary, features: Sequence[str], categorical: Sequence[str],
                     standardize_features: bool, standardize_target: bool) -> Preprocessing:
        f, t = summary.features, summary.target
        return cls(tuple(features),
                   tuple(f.mean.tolist()) if standardize_features else (),
                   tuple(_scale(f).tolist()) if standardize_features else (),
                   tuple(categorical), summary.categories,
                   float(t.mean[0]) if standardize_target else 0.0,
                   float(_scale(t)[0]) if standardize_target else 1.0)

    @property
    def inputs(self) -> int:
        """Columns of the model's input: numeric features plus every category's one-hot column."""
        return len(self.features) + sum(len(v) for v in self.categories)

    @property
    def columns(self) -> tuple[str, ...]:
        """The raw columns it reads: numeric features, then categorical ones."""
        return self.features + self.categorical

    def inputs_of(self, X: np.ndarray, categories: Sequence[np.ndarray] = ()) -> np.ndarray:
        """The model's float32 inputs (n, inputs) for numeric features X (n, features) and the raw
        values of each categorical column; X is standardized in place when it is float32."""
        X = np.asarray(X, np.float32)
        if self.mean:
            X -= np.asarray(self.mean, np.float32)
            X /= np.asarray(self.scale, np.float32)
        if not self.categorical:
            return X
        out = np.zeros((len(X), self.inputs), np.float32)
        out[:, :X.shape[1]] = X
        start = X.shape[1]
        for name, vocab, values in zip(self.categorical, self.categories, categories):
            codes = self.codes(name, vocab, values)
            rows = np.flatnonzero(codes >= 0)  # an unseen value: all of its block's columns stay 0
            out[rows, start + codes[rows]] = 1.0
            start += len(vocab)
        return out

    @staticmethod
    def codes(name: str, vocab: tuple, values: np.ndarray) -> np.ndarray:
        """Index of each value in `vocab`, -1 for a value not in it."""
        values = np.asarray(values)
        if not vocab:
            return np.full(len(values), -1)
        known = np.asarray(vocab)
        if values.dtype == object:  # e.g. strings from pandas or pyarrow
            values = values.astype(str if known.dtype.kind == "U" else np.int64)
        if known.dtype.kind != values.dtype.kind and not (known.dtype.kind in "iu" and values.dtype.kind in "iu"):
            raise DataError(f"categorical column {name!r} holds {values.dtype} values, its vocabulary {known.dtype}")
        codes = np.searchsorted(known, values)
        hit = codes < len(known)
        hit[hit] = known[codes[hit]] == values[hit]
        return np.where(hit, codes, -1)

    def target_in(self, y: np.ndarray) -> np.ndarray:
        """The target as the model learns it."""
        if self.target_scale == 1.0 and self.target_mean == 0.0:
            return y
        return ((np.asarray(y, np.float64) - self.target_mean) / self.target_scale).astype(np.float32)

    def target_out(self, pred: np.ndarray) -> np.ndarray:
        """A prediction back in the target's units: pred * target_scale + target_mean."""
        if self.target_scale == 1.0 and self.target_mean == 0.0:
            return pred
        return (np.asarray(pred, np.float64) * self.target_scale + self.target_mean).astype(np.float32)

    def to_dict(self) -> dict:
        """JSON values, for a checkpoint's manifest (floats round-trip exactly)."""
        return {"features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                "categorical": list(self.categorical), "categories": [list(v) for v in self.categories],
                "target_mean": self.target_mean, "target_scale": self.target_scale}

    @classmethod
    def from_dict(cls, d: Mapping) -> Preprocessing:
        return cls(tuple(d["features"]), tuple(d["mean"]), tuple(d["scale"]), tuple(d["categorical"]),
                   tuple(tuple(v) for v in d["categories"]), float(d["target_mean"]), float(d["target_scale"]))
