"""Worker actor: one shard of the data and a model replica; gradient sums of its part of each step."""
from __future__ import annotations

import contextlib
import os
import platform
import time
from dataclasses import dataclass

import numpy as np
import ray

import mgdist
from micrograd.parallel import FORKS, GradSum, ProcessGradSum, set_blas_threads
from mgdist import link
from mgdist.config import TrainConfig
from mgdist.data import Dataset, load_rows
from mgdist.errors import BadMessage
from mgdist.model import Metrics, ModelSpec, loss_sum, make_metrics, predict
from mgdist.preprocess import Preprocessing, ShardSummary
from mgdist.server import shard_ranges


@dataclass(frozen=True)
class ShardInfo:
    """A worker's facts once its shard is loaded: its rows and where it runs."""
    rows: int
    train: int
    val: int
    features: int
    node: str
    arch: str
    node_id: str
    pid: int
    versions: tuple[tuple[str, str], ...]  # (name, version) of Python, Ray, mgdist on its node


@dataclass
class Evaluation:
    """A worker's validation figures: the loss summed over its held-out rows, and the model's own metrics."""
    loss_sum: float
    rows: int
    metrics: Metrics | None


def versions() -> tuple[tuple[str, str], ...]:
    """What every node of a run must agree on: Python, Ray and mgdist versions."""
    return ("Python", platform.python_version()), ("Ray", ray.__version__), ("mgdist", mgdist.__version__)


def split_rows(n: int, val_fraction: float, seed: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val) of a shard of n rows: a seeded random share held out."""
    order = np.random.default_rng([seed, rank, 1]).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


SHUFFLE_BLOCK = 8  # rows shuffled in runs of 8: gathering a batch then costs a third of single rows


def epoch_order(train: np.ndarray, seed: int, rank: int, epoch: int) -> np.ndarray:
    """A worker's training rows in the order of `epoch` (blocks of SHUFFLE_BLOCK consecutive
    training rows, the blocks shuffled); step i of the epoch takes slice i."""
    blocks = np.random.default_rng([seed, rank, 2, epoch]).permutation(-(-len(train) // SHUFFLE_BLOCK))
    order = (blocks[:, None] * SHUFFLE_BLOCK + np.arange(SHUFFLE_BLOCK)).ravel()
    return train[order[order < len(train)]]


class Worker:
    """Loads its shard where it runs; a lost worker is replaced by a new one on the same shard (fleet.py).

    Without `prep` it holds the raw shard until the driver, having merged every worker's
    summary(), sends the run's Preprocessing to prepare(); with it, it prepares at once."""

    def __init__(self, spec: ModelSpec, config: TrainConfig, dataset: Dataset, span: tuple[int, int], rank: int,
                 prep: Preprocessing | None = None):
        self.spec, self.config, self.dataset, self.rank, self.error = spec, config, dataset, rank, None
        self.slowdown = config.slowdown[rank] if rank < len(config.slowdown) else 1.0
        self.prep = prep
        self._load(span)

    def reshard(self, span: tuple[int, int]) -> ShardInfo:
        """Load rows [start, stop) of the dataset as this worker's shard instead; its facts, as ready()."""
        self._load(span)
        return self.ready()

    def _load(self, span: tuple[int, int]) -> None:
        self.error = None
        try:
            self.shard = load_rows(self.dataset, *span, self.config.nonfinite)
            self.train, self.val = split_rows(len(self.shard.y), self.config.val_fraction, self.config.seed, self.rank)
            if self.prep is not None:
                self.prepare(self.prep)
        except Exception as e:  # reported by ready(), where the driver can name it
            self.error = e

    def summary(self) -> ShardSummary:
        """Statistics and distinct categories of every row of this shard (before the validation split)."""
        return ShardSummary.of(self.shard.X, self.shard.y, self.shard.categories)

    def prepare(self, prep: Preprocessing) -> None:
        """Turn the raw shard into the model's inputs and target; build the model replica for them,
        on one process per CPU (forked, on Linux; threads elsewhere), each with 1 BLAS thread.
        The raw features and target of the validation rows are kept, for the model's own metrics."""
        self.prep, shard = prep, self.shard
        self.val_raw = shard.X[self.val], shard.y[self.val]
        self.X = prep.inputs_of(shard.X, shard.categories)
        self.y = prep.target_in(shard.y)
        del self.shard
        lanes = max(1, int(self.config.cpus_per_worker))
        set_blas_threads(lanes, lanes)
        build = lambda: self.spec.build(self.X.shape[1])  # noqa: E731
        if hasattr(self, "grads"):  # resharded: the old shard's processes (or threads) end
            self.grads.close()
        self.grads = ProcessGradSum(build, {"X": self.X, "y": self.y}, lanes) if lanes > 1 and FORKS \
            else GradSum(build, threads=lanes)
        self._order: tuple[int | None, np.ndarray | None] = (None, None)

    def ready(self) -> ShardInfo:
        """Shard facts once loaded; raises the loading error, if any."""
        if self.error is not None:
            raise self.error
        return ShardInfo(len(self.train) + len(self.val), len(self.train), len(self.val),
                         len(self.dataset.features) + len(self.dataset.categorical), os.uname().nodename,
                         os.uname().machine, ray.get_runtime_context().get_node_id(), os.getpid(), versions())

    def _rows(self, step: int, batch: int, steps_per_epoch: int) -> np.ndarray:
        """This worker's `batch` rows (of its shard) of global `step`."""
        epoch, i = divmod(step, steps_per_epoch)
        if self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.train, self.config.seed, self.rank, epoch))
        return self._order[1][i * batch:(i + 1) * batch]

    def _grad_sum(self, rows: np.ndarray) -> tuple[np.ndarray, float]:
        t = time.perf_counter()
        grad, loss = self.grads({"X": self.X, "y": self.y}, rows)
        if self.slowdown > 1:  # test setting: stretch compute as on a slower node
            time.sleep((self.slowdown - 1) * (time.perf_counter() - t))
        return grad, loss

    def grad(self, weights: np.ndarray, step: int, batch: int, steps_per_epoch: int) -> tuple[np.ndarray, int, float, float]:
        """(gradient sum, rows, loss sum, seconds computing) over this worker's `batch` rows of global `step`."""
        t = time.perf_counter()
        rows = self._rows(step, batch, steps_per_epoch)
        if weights is not self.grads.params:  # serve() reads each step's weights into params itself
            np.copyto(self.grads.params, weights)
        grad, loss = self._grad_sum(rows)
        return grad, len(rows), loss, time.perf_counter() - t

    def serve(self, addresses: list[tuple[str, int]], index: int, secret: link.Secret) -> None:
        """Connect to each parameter server shard at these (host, port) as its worker `index` (proved
        with the run's secret), then compute each step they send (step, rows, steps per epoch, and
        each its slice of the weights, server.shard_ranges) and answer every shard with grad()'s
        numbers and its slice of the gradient, until a shard closes its link or sends nothing for
        --step-timeout. A gradient with a non-finite value anywhere goes with a NaN loss to every
        shard, so that all of them skip (or stop at) the same step."""
        weights = self.grads.params  # each step's weights are read straight into the replicas' vector
        ranges = shard_ranges(weights.size, len(addresses))
        with contextlib.ExitStack() as links:
            socks = [links.enter_context(link.connect(host, port, secret, index, timeout=self.config.step_timeout))
                     for host, port in addresses]
            try:
                while True:
                    asked = {link.recv(sock, weights[lo:hi]) for sock, (lo, hi) in zip(socks, ranges)}
                    if len(asked) > 1:
                        raise BadMessage(f"worker {index}: the parameter server shards sent (step, rows, steps "
                                         f"per epoch) {sorted(asked)}, not one step")
                    step, batch, steps_per_epoch = asked.pop()
                    grad, rows, loss, seconds = self.grad(weights, int(step), int(batch), int(steps_per_epoch))
                    if len(socks) > 1 and not np.isfinite(grad).all():
                        loss = float("nan")
                    for sock, (lo, hi) in zip(socks, ranges):
                        link.send(sock, (rows, loss, seconds), grad[lo:hi])
            except OSError:  # a shard closed its link, or is gone (grad() does no I/O)
                return

    def speed(self, batch: int, repeats: int = 3) -> float:
        """Rows per second of gradient compute on `batch` of this shard's rows (best of `repeats`)."""
        rows = self.train[:batch]
        self._grad_sum(rows)  # warm-up: buffers, caches
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            self._grad_sum(rows)
            times.append(time.perf_counter() - t)
        return len(rows) / min(times)

    def evaluate(self, weights: np.ndarray) -> Evaluation:
        """The model with these weights on this shard's validation rows."""
        np.copyto(self.grads.params, weights)
        X, y = self.X[self.val], self.y[self.val]
        metrics = make_metrics(self.grads.model, self.dataset)
        if metrics is not None:  # in the data's own units: raw features and target, the prediction transformed back
            metrics.add(*self.val_raw, self.prep.target_out(predict(self.grads.model, X)))
        return Evaluation(loss_sum(self.grads.model, X, y), len(y), metrics)
