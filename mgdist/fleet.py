"""The worker actors of a run: placed by CPUs and architecture, replaced when lost."""
from __future__ import annotations

import sys
import time
import uuid
from typing import Sequence

import ray
from ray.autoscaler.sdk import request_resources
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from mgdist import data
from mgdist.config import TrainConfig
from mgdist.errors import MgdistError, TrainingError
from mgdist.model import ModelSpec
from mgdist.preprocess import Preprocessing
from mgdist.worker import ShardInfo, Worker, versions

LOST = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError,
        ray.exceptions.NodeDiedError, ray.exceptions.GetTimeoutError)  # failures a run recovers from


def ray_get(refs, timeout: float | None = None):
    """ray.get, with our own errors raised inside an actor surfacing as themselves."""
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, MgdistError):
            raise e.cause from None
        raise


def ship_by_value(spec: ModelSpec) -> None:
    """Have Ray send the model's module to the workers by value, unless it is mgdist's own: a
    model in a notebook, a test file or the caller's directory need not be importable there."""
    module = spec.cls.__module__
    if module != "__main__" and module.split(".")[0] not in ("mgdist", "micrograd"):
        ray.cloudpickle.register_pickle_by_value(sys.modules[module])


def split_batch(batch: int, rows: list[int]) -> list[int]:
    """Rows per step of each worker: `batch` split in proportion to `rows` (largest remainder)."""
    exact = [batch * r / sum(rows) for r in rows]
    share = [int(x) for x in exact]
    for i in sorted(range(len(rows)), key=lambda i: share[i] - exact[i])[:batch - sum(share)]:
        share[i] += 1
    return share


def _cpus(arch: str | None) -> float:
    """CPUs of the live nodes that offer `arch` (every live node when None)."""
    return sum(n["Resources"].get("CPU", 0) for n in ray.nodes()
               if n["Alive"] and (arch is None or n["Resources"].get(f"arch_{arch}", 0) > 0))


def elastic_count(config: TrainConfig, rows: int, running: int = 0) -> int:
    """With --workers MIN:MAX, `running` of them placed: how many the run can have now, those
    running and as many more as the cluster's free CPUs hold, up to MAX and the dataset's rows."""
    free = ray.available_resources().get("CPU", 0.0)
    return min(config.workers, rows, running + int(free / config.cpus_per_worker + 1e-9))


def _worker_options(config: TrainConfig, count: int | None = None) -> list[dict]:
    """Ray options of each worker (CPUs, architecture resource, spread over nodes), once the
    cluster has room for them all; an autoscaler may still be adding nodes, so wait a while.
    Inside a placement group with a bundle per worker (its last ones), worker i takes bundle i.
    `count`: options for that many workers of any architecture (an elastic run's)."""
    archs = [None] * count if count is not None else \
        [a for a, n in sorted(config.arch_workers.items()) for _ in range(n)] or [None] * config.workers
    deadline = time.monotonic() + config.placement_timeout
    while short := {a or "any": (archs.count(a) * config.cpus_per_worker, _cpus(a)) for a in set(archs)
                    if archs.count(a) * config.cpus_per_worker > _cpus(a)}:
        if time.monotonic() > deadline:
            raise TrainingError("the cluster cannot place the workers: " + "; ".join(
                f"{arch} nodes need {need:g} CPUs, have {have:g}" for arch, (need, have) in sorted(short.items()))
                + f" (waited {config.placement_timeout:g} s for nodes)")
        time.sleep(1)
    group = ray.util.get_current_placement_group()  # e.g. a Ray Tune trial's, from mgdist.tune.trial_resources
    if group is not None and config.min_workers:
        raise TrainingError(f"--workers {config.min_workers}:{config.workers} cannot grow inside a placement "
                            "group (a Ray Tune trial's): give a fixed number")
    first = len(group.bundle_specs) - len(archs) if group is not None else -1  # the workers' bundles are the last
    return [dict(num_cpus=config.cpus_per_worker, resources={f"arch_{a}": 0.001} if a else {},
                 scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=first + i)
                 if first >= 0 else "SPREAD") for i, a in enumerate(archs)]


def _check_versions(infos: list[ShardInfo]) -> None:
    """Every worker's node runs the driver's Python, Ray and mgdist, or TrainingError names the odd one."""
    here = dict(versions())
    for info in infos:
        odd = [(name, v) for name, v in info.versions if here.get(name) != v]
        if odd:
            raise TrainingError(f"node {info.node} ({info.arch}) runs " + ", ".join(f"{n} {v}" for n, v in odd)
                                + " where the driver runs " + ", ".join(f"{n} {here.get(n)}" for n, _ in odd)
                                + ": every node of a run needs the same versions")


class Fleet:
    """The worker actors, one per shard; replaces lost ones, or re-plans the shards over fewer.

    `prep`: the run's Preprocessing (from a checkpoint when resuming); None: start() computes
    it from the workers' summaries of their shards."""

    def __init__(self, spec: ModelSpec, config: TrainConfig, ds: data.Dataset, prep: Preprocessing | None = None):
        self.spec, self.config, self.ds, self.prep = spec, config, ds, prep
        if config.min_workers:  # ask an autoscaler for nodes for all MAX workers; take what comes, when it comes
            request_resources(bundles=[{"CPU": config.cpus_per_worker}] * config.workers)
        self.options = _worker_options(config, max(config.min_workers, elastic_count(config, ds.rows))
                                       if config.min_workers else None)
        self.actors: list = []

    def start(self) -> None:
        """Spawn a worker per shard, wait until every one has loaded it (TrainingError if not)
        and prepared it with the run's Preprocessing."""
        k = len(self.options)
        self.shards = data.plan_rows(self.ds.rows, k)
        self.actors = [self._spawn(rank) for rank in range(k)]
        self.info = self._wait(range(k))
        if self.prep is None:  # statistics merged exactly from the workers' shards: the data stay where they are
            summaries = ray_get([a.summary.remote() for a in self.actors])
            summary = summaries[0]
            for other in summaries[1:]:
                summary = summary.merge(other)
            standardize = self.config.standardize
            self.prep = Preprocessing.from_summary(
                summary, self.ds.features, self.ds.categorical, standardize in ("features", "all"),
                standardize == "all" and bool(getattr(self.spec.cls, "standardize_target", False)))
            ray_get([a.prepare.remote(self.prep) for a in self.actors])
        self._plan_steps()

    def _plan_steps(self) -> None:
        """Each worker's rows per step; with balance "speed", first time every worker and size the
        shards by speed."""
        k = len(self.actors)
        if self.config.balance == "speed" and k > 1:
            probe = max(1, min(self.config.batch_size // k, *(i.train for i in self.info)))
            self.speeds = ray_get([a.speed.remote(probe) for a in self.actors])
            self.shards = data.plan_rows(self.ds.rows, k, weights=self.speeds)
            self.info = ray_get([a.reshard.remote(s) for a, s in zip(self.actors, self.shards)])
        self.batches = split_batch(self.config.batch_size, [s.train for s in self.info])
        self.steps_per_epoch = min(s.train // b if b else 0 for s, b in zip(self.info, self.batches))
        if self.steps_per_epoch < 1:
            raise TrainingError(f"batch size {self.config.batch_size} does not fit the training rows "
                                f"of the {k} shards: {[s.train for s in self.info]}")

    def _spawn(self, rank: int):
        name = f"mgdist-worker-{rank}-{uuid.uuid4().hex[:8]}"  # unique: the lost one may still hold its name
        return ray.remote(Worker).options(**self.options[rank], name=name, max_concurrency=2).remote(  # serve() + calls
            self.spec, self.config, self.ds, self.shards[rank], rank, self.prep)

    def _wait(self, ranks) -> list[ShardInfo]:
        refs = [self.actors[r].ready.remote() for r in ranks]
        _, waiting = ray.wait(refs, num_returns=len(refs), timeout=self.config.placement_timeout)
        if waiting:
            free = {k: v for k, v in ray.available_resources().items() if k == "CPU" or k.startswith("arch_")}
            raise TrainingError(f"{len(waiting)} of {len(refs)} workers were not placed and loaded within "
                                f"{self.config.placement_timeout:g} s; free: {free}")
        infos = ray_get(refs)
        _check_versions(infos)
        return infos

    def heal(self, late: Sequence[int] = ()) -> str:
        """Replace lost workers, and the `late` ones that held up a step past --step-timeout although
        they still answer (same shards; with balance "speed", every worker timed again); if they
        cannot be placed, re-plan over the rest."""
        lost = [rank for rank, actor in enumerate(self.actors) if rank in late or not self._answers(actor)]
        for rank in lost:
            ray.kill(self.actors[rank])
        if not lost:
            return "all workers answer"
        for rank in lost:
            self.actors[rank] = self._spawn(rank)
        try:
            for rank, info in zip(lost, self._wait(lost)):
                self.info[rank] = info
            if self.config.balance == "speed":
                self._plan_steps()
            return f"replaced worker(s) {lost} on their shards"
        except (TrainingError, *LOST):  # not placed in time, or died there (sent to a node that was dying)
            for actor in self.actors:
                ray.kill(actor)
            self.options = [o for rank, o in enumerate(self.options) if rank not in lost]
            if not self.options:
                raise TrainingError("every worker was lost and none could be replaced") from None
            self.start()
            return f"worker(s) {lost} could not be replaced; shards re-planned over {len(self.options)} workers"

    def grow(self) -> str | None:
        """With --workers MIN:MAX: add the workers that the cluster's free CPUs now hold (up to MAX)
        and re-plan the shards over them all. The new ones are placed and loaded first; if they
        cannot be within --placement-timeout, nothing changes. A line saying what it did, or None."""
        old = len(self.actors)
        k = elastic_count(self.config, self.ds.rows, old) if self.config.min_workers else old
        if k <= old:
            return None
        shards, options = self.shards, self.options
        self.shards = data.plan_rows(self.ds.rows, k)
        self.options = options + _worker_options(self.config, k - old)
        self.actors += [self._spawn(rank) for rank in range(old, k)]
        try:
            added = self._wait(range(old, k))
        except (TrainingError, *LOST) as e:
            for actor in self.actors[old:]:
                ray.kill(actor)
            self.actors, self.options, self.shards = self.actors[:old], options, shards
            return f"could not grow from {old} to {k} workers: {type(e).__name__}: {str(e).splitlines()[0]}"
        self.info = ray_get([a.reshard.remote(s) for a, s in zip(self.actors[:old], self.shards)]) + added
        self._plan_steps()
        return f"grew from {old} to {k} workers (nodes joined); shards re-planned"

    def _answers(self, actor) -> bool:
        """Whether a worker answers within --step-timeout (a hung worker does not)."""
        try:
            ray.get(actor.ready.remote(), timeout=self.config.step_timeout)
            return True
        except LOST:
            return False

    def stop(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        if self.config.min_workers:
            request_resources(bundles=[])  # the autoscaler may let the nodes go
