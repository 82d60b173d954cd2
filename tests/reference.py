"""One process training on the trainer's global batches, written from the rules the trainer
documents, not with its code: which rows each worker holds out (split_rows), the order of an
epoch (epoch_order), each worker's share of a batch (split_batch), the learning-rate schedule
and the optimiser's update (make_optimizer). A bug in any of those is then on one side only.
"""
from __future__ import annotations

import math

import numpy as np

from micrograd.nn import flatten
from mgdist import data
from mgdist.config import TrainConfig
from mgdist.model import ModelSpec
from mgdist.workloads.quantile import QuantileMLP

MODEL_OPTIONS = {"quantiles": "levels", "hidden": "hidden", "activation": "activation", "non_crossing": "non_crossing"}

BLOCK = 8  # the trainer shuffles training rows in runs of this many


def quantile_run(**settings) -> tuple[ModelSpec, TrainConfig]:
    """A quantile run as jobs/quantile.py's options name it: the model's (quantiles, hidden, activation,
    non_crossing; its seed is the run's) and the TrainConfig of the rest."""
    args = {MODEL_OPTIONS[k]: settings.pop(k) for k in list(settings) if k in MODEL_OPTIONS}
    config = TrainConfig(**{"standardize": "none"} | settings)  # raw inputs, as single_process_params trains on
    return ModelSpec(QuantileMLP, args | {"seed": config.seed}), config


def initial_params(spec: ModelSpec, features: int) -> np.ndarray:
    return flatten(spec.build(features).parameters())[0]


def held_out(n: int, val_fraction: float, seed: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) row indices of a shard of n rows: the first round(n * val_fraction) of a
    permutation seeded by (seed, rank, 1) are held out; both sorted."""
    permuted = np.random.default_rng([seed, rank, 1]).permutation(n)
    n_val = round(n * val_fraction)
    return np.array(sorted(permuted[n_val:]), np.int64), np.array(sorted(permuted[:n_val]), np.int64)


def epoch_rows(train: np.ndarray, seed: int, rank: int, epoch: int) -> np.ndarray:
    """The training rows in the order of `epoch`: runs of BLOCK consecutive training rows (the
    last one shorter), the runs in an order seeded by (seed, rank, 2, epoch)."""
    runs = [train[i:i + BLOCK] for i in range(0, len(train), BLOCK)]
    order = np.random.default_rng([seed, rank, 2, epoch]).permutation(len(runs))
    return np.concatenate([runs[j] for j in order]) if runs else train


def shares(batch: int, rows: list[int]) -> list[int]:
    """`batch` split in proportion to `rows`: each gets the floor of its exact share, and the
    rows left over go one each to the largest fractional parts (ties: lower rank first)."""
    exact = [batch * r / sum(rows) for r in rows]
    out = [math.floor(x) for x in exact]
    for i in sorted(range(len(rows)), key=lambda i: (out[i] - exact[i], i))[:batch - sum(out)]:
        out[i] += 1
    return out


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """--schedule at `step` (0-based): constant; linear warm-up to lr over --warmup-steps; or that
    warm-up (at most total - 1 steps) then a cosine from lr down to 5% of lr at step `total`."""
    lr, warm = config.lr, config.warmup_steps
    if config.schedule == "constant":
        return lr
    if config.schedule == "cosine":
        warm = min(warm, total - 1)
    if step < warm:
        return lr * (step + 1) / warm
    if config.schedule == "linear":
        return lr
    low, progress = 0.05 * lr, min(1.0, (step - warm) / (total - warm))
    return low + (lr - low) * (1 + math.cos(math.pi * progress)) / 2


class Update:
    """--optimizer sgd (no momentum), adam or adamw, with --weight-decay, on float32 parameters."""

    def __init__(self, config: TrainConfig, size: int):
        self.config, self.t = config, 0
        self.m, self.v = np.zeros(size, np.float32), np.zeros(size, np.float32)

    def __call__(self, p: np.ndarray, grad: np.ndarray, lr: float) -> None:
        name, wd = self.config.optimizer, self.config.weight_decay
        g = grad + np.float32(wd) * p if name != "adamw" else grad.copy()
        if name == "sgd":
            p -= np.float32(lr) * g
            return
        self.t += 1
        if name == "adamw":
            p *= np.float32(1 - lr * wd)
        self.m = np.float32(0.9) * self.m + np.float32(0.1) * g
        self.v = np.float32(0.999) * self.v + np.float32(0.001) * g * g
        m_hat, v_hat = self.m / np.float32(1 - 0.9 ** self.t), self.v / np.float32(1 - 0.999 ** self.t)
        p -= np.float32(lr) * m_hat / (np.sqrt(v_hat) + np.float32(1e-8))


def single_process_params(spec: ModelSpec, config: TrainConfig, shards: list[tuple[int, int]],
                          steps: int | None = None) -> np.ndarray:
    """The parameters after `steps` (default config.steps) steps in one process: each step, the
    mean loss over the union of every worker's rows of that global batch."""
    ds = data.discover(config.data, config.features, config.target)
    loaded = [data.load_rows(ds, *s, config.nonfinite) for s in shards]
    trains = [held_out(len(X), config.val_fraction, config.seed, r)[0] for r, (X, _, _) in enumerate(loaded)]
    batches = shares(config.batch_size, [len(t) for t in trains])
    per_epoch = min(len(t) // b for t, b in zip(trains, batches))
    total = steps if steps is not None else config.steps
    model = spec.build(len(ds.features))
    params, grads = flatten(model.parameters())
    update = Update(config, params.size)
    orders: dict[tuple[int, int], np.ndarray] = {}
    for step in range(total):
        epoch, i = divmod(step, per_epoch)
        X, y = [], []
        for r, (train, b) in enumerate(zip(trains, batches)):
            if (r, epoch) not in orders:
                orders[r, epoch] = epoch_rows(train, config.seed, r, epoch)
            rows = orders[r, epoch][i * b:(i + 1) * b]
            X.append(loaded[r][0][rows])
            y.append(loaded[r][1][rows])
        model.loss.forward(X=np.concatenate(X), y=np.concatenate(y))
        model.loss.backward()
        update(params, grads, learning_rate(config, step, total))
    return params.copy()
