"""Quantile regression: an MLP from features to one output per quantile level, pinball loss.

The flagship workload, written with the public model contract only (docs/models.md). Its
validation figures are pinball loss, coverage per level, symmetric intervals and crossing,
next to the true quantiles' figures on mgdist's synthetic data.
"""
from __future__ import annotations

import argparse
import os
from typing import Sequence

import numpy as np

from micrograd import Value, concat
from micrograd.losses import pinball
from micrograd.nn import MLP
from mgdist.cli import add_train_arguments, config_from, run_train
from mgdist.config import TrainConfig
from mgdist.data import Dataset
from mgdist.model import ModelSpec
from mgdist.workloads import synthetic

FAN_ROWS = 200  # rows kept for the fan chart
DEFAULT_DATA = dict(rows=400_000, features=16, files=4, row_group_rows=16384, seed=0)
JOB_DEFAULTS = dict(batch_size=4096, epochs=40.0)  # jobs/quantile.py's settings where they differ from
# TrainConfig's: on the real flights of bench/realdata.py, 4x the steps of 16,384-row batches took the
# test pinball loss from 1.07x to 1.05x of the best tree model's


class QuantileMLP:
    """Predicts every level of `levels` at once; with `non_crossing`, the lowest level plus positive steps up."""
    standardize_target = True  # it learns the standardized target; mgdist turns its predictions back into y's units

    def __init__(self, features: int, levels: Sequence[float] = (0.1, 0.5, 0.9), hidden: Sequence[int] = (64, 64),
                 activation: str = "relu", non_crossing: bool = False, seed: int = 0):
        self.levels = check_levels(levels)
        self.net = MLP(features, hidden, len(self.levels), activation, seed)
        X, y = Value.placeholder("X", (None, features)), Value.placeholder("y", (None,))
        out = self.net(X)
        if non_crossing and len(self.levels) > 1:
            out = concat([out[:, :1], out[:, :1] + out[:, 1:].softplus().cumsum(axis=1)], axis=1)
        self.prediction = out
        self.loss = pinball(out, y, self.levels)
        self.outputs = [f"q{q:g}" for q in self.levels]

    def parameters(self) -> list[Value]:
        return self.net.parameters()

    def metrics(self, dataset: Dataset) -> QuantileMetrics:
        known = synthetic.known(dataset)
        return QuantileMetrics(self.levels, oracle=known is not None and known.target == "y")


class QuantileMetrics:
    """The model's QuantileStats, the true quantiles' beside them on synthetic data, and a few rows for plots."""

    def __init__(self, levels: Sequence[float], oracle: bool):
        self.levels = tuple(levels)
        self.model = QuantileStats(levels)
        self.oracle = QuantileStats(levels) if oracle else None
        self.fan = (np.empty(0, np.float32), np.empty((0, len(levels)), np.float32))

    def add(self, X: np.ndarray, y: np.ndarray, pred: np.ndarray) -> None:
        self.model.add(y, pred)
        if self.oracle is not None:
            self.oracle.add(y, synthetic.true_quantile(X, self.levels))
        self._keep_fan(y, pred)

    def merge(self, other: QuantileMetrics) -> None:
        self.model.merge(other.model)
        if self.oracle is not None:
            self.oracle.merge(other.oracle)
        self._keep_fan(*other.fan)

    def _keep_fan(self, y: np.ndarray, pred: np.ndarray) -> None:
        room = FAN_ROWS - len(self.fan[0])
        if room > 0:
            self.fan = np.concatenate([self.fan[0], y[:room]]), np.concatenate([self.fan[1], pred[:room]])

    def summary(self) -> dict:
        figures = self.model.summary()
        del figures["rows"]
        if self.oracle is not None:
            oracle = self.oracle.summary()
            figures |= {"oracle_loss": oracle["pinball"], "oracle_coverage": oracle["coverage"]}
        return figures

    def plot(self, out: str) -> list[str]:
        """calibration.png and fan.png under `out`; their names. ImportError without matplotlib."""
        from mgdist.workloads.quantile_plots import calibration, fan
        calibration(out, self.levels, self.summary())
        fan(out, self.levels, *self.fan)
        return ["calibration.png", "fan.png"]


def default_dataset() -> str:
    """A small synthetic dataset in ~/.cache/mgdist (made on first use): what jobs/quantile.py trains on."""
    d = DEFAULT_DATA
    path = os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")), "mgdist",
                        f"synthetic-{d['rows']}x{d['features']}-seed{d['seed']}")
    if not os.path.isdir(path):
        tmp = f"{path}.tmp-{os.getpid()}"
        synthetic.write(tmp, **d, progress=False)
        os.replace(tmp, path)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model's options, for jobs/quantile.py."""
    group = parser.add_argument_group("quantile model")
    group.add_argument("--quantiles", type=_levels, default=(0.1, 0.5, 0.9), help="e.g. 0.1,0.5,0.9")
    group.add_argument("--hidden", type=_widths, default=(64, 64), help="hidden layer widths, e.g. 64,64 or 128")
    group.add_argument("--activation", choices=["tanh", "relu", "sigmoid", "softplus"], default="relu",
                       help="relu: heavy-tailed real features (delays of hours) do not saturate it as they do tanh")
    group.add_argument("--non-crossing", action="store_true", help="quantiles that never cross")


def model_args(args: argparse.Namespace) -> dict:
    """QuantileMLP's keyword arguments from add_arguments()'s options (its seed: the run's --seed)."""
    return {"levels": list(args.quantiles), "hidden": list(args.hidden), "activation": args.activation,
            "non_crossing": args.non_crossing, "seed": args.seed}


def parse_args(argv: list[str] | None = None) -> tuple[ModelSpec, TrainConfig]:
    """The model and settings of a jobs/quantile.py command line; without --data, the default dataset."""
    p = argparse.ArgumentParser(prog="jobs/quantile.py", description="Train a quantile-regression MLP "
                                "data-parallel on Ray (pinball loss, several quantiles at once).")
    add_train_arguments(p)
    add_arguments(p)
    p.set_defaults(data=None, **JOB_DEFAULTS)
    args = p.parse_args(argv)
    config = config_from(args, p)
    return ModelSpec(QuantileMLP, model_args(args)), config


def main(argv: list[str] | None = None) -> int:
    """jobs/quantile.py: train on --data, or on the default dataset (made on first use)."""
    spec, config = parse_args(argv)
    if config.data is None:
        config.data = default_dataset()
    return run_train(lambda: spec, config)


def check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    """The levels as floats if they increase and each lies in (0, 1), else ValueError."""
    levels = tuple(float(q) for q in levels)
    if not levels or any(not 0 < q < 1 for q in levels) or list(levels) != sorted(set(levels)):
        raise ValueError(f"quantiles must be increasing, each in (0, 1): {list(levels)}")
    return levels


def _widths(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x)


def _levels(s: str) -> tuple[float, ...]:
    try:
        return check_levels(float(x) for x in s.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
        """Count rows y (n,) against predicted quantiles pred (n, Q)."""
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
            setattr(self, name, getattr(self, name) + getattr(other, name))  # other's may be read-only (from Ray)
        return self

    def summary(self) -> dict:
        """Mean pinball loss (overall and per level), coverage per level, symmetric intervals' coverage
        (nominal: the levels' difference) and mean width, crossing rate."""
        n = max(self.rows, 1)
        name = [f"{q:g}" for q in self.levels]
        return {
            "rows": self.rows,
            "pinball": float(self.pinball.sum() / (n * len(self.levels))),
            "pinball_per_level": dict(zip(name, (self.pinball / n).tolist())),
            "coverage": dict(zip(name, (self.below / n).tolist())),
            "interval_coverage": {f"{name[lo]}-{name[hi]}": float(self.inside[k] / n) for k, (lo, hi) in enumerate(self.pairs)},
            "interval_width": {f"{name[lo]}-{name[hi]}": float(self.width[k] / n) for k, (lo, hi) in enumerate(self.pairs)},
            "crossing_rate": self.crossing / n,
        }
