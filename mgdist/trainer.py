"""train(config): data-parallel training on Ray, one loop from data plan to final report.

The driver only passes object references: each step, every worker gets the latest weights
(one object in Ray's store) and returns the gradient sum of its slice of the global batch;
the parameter server averages them, steps the optimiser and returns the next weights.
"""
from __future__ import annotations

import collections
import json
import math
import os
import time

import numpy as np
import ray

from mgdist import data, synthetic
from mgdist.config import Config
from mgdist.metrics import QuantileStats
from mgdist.report import Progress, format_summary
from mgdist.server import NonFiniteError, ParameterServer, StepError
from mgdist.worker import Worker, build_model

DEFAULT_DATA = dict(rows=400_000, features=16, files=4, row_group_rows=16384, seed=0)
IN_FLIGHT = 3  # steps submitted ahead of the newest finished one


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message says why in one line."""


def default_dataset() -> str:
    """A small synthetic dataset in ~/.cache/mgdist, made on first use."""
    d = DEFAULT_DATA
    path = os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")), "mgdist",
                        f"synthetic-{d['rows']}x{d['features']}-seed{d['seed']}")
    if not os.path.isdir(path):
        tmp = f"{path}.tmp-{os.getpid()}"
        synthetic.write(tmp, **d, progress=False)
        os.replace(tmp, path)
    return path


def split_batch(batch: int, rows: list[int]) -> list[int]:
    """Rows per step of each worker: `batch` split in proportion to `rows` (largest remainder)."""
    exact = [batch * r / sum(rows) for r in rows]
    share = [int(x) for x in exact]
    for i in sorted(range(len(rows)), key=lambda i: share[i] - exact[i])[:batch - sum(share)]:
        share[i] += 1
    return share


def _result(refs, timeout: float | None = None):
    """ray.get, with our own errors raised from inside an actor surfacing as themselves."""
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, (data.DataError, StepError, NonFiniteError)):
            raise e.cause from None
        raise


def _worker_options(config: Config) -> list[dict]:
    """Ray options of each worker: CPUs, architecture resource, restarts, spread over nodes."""
    archs = [a for a, n in sorted(config.arch_workers.items()) for _ in range(n)] or [None] * config.workers
    available = ray.cluster_resources()
    for arch in set(archs) - {None}:
        if available.get(f"arch_{arch}", 0) <= 0:
            raise TrainingError(f"no node offers resource arch_{arch} for --arch-workers "
                                f"(cluster resources: {sorted(k for k in available if k.startswith('arch_'))})")
    need = config.workers * config.cpus_per_worker
    if need > available.get("CPU", 0):
        raise TrainingError(f"{config.workers} workers x {config.cpus_per_worker} CPUs need {need:g} CPUs; "
                            f"the cluster has {available.get('CPU', 0):g}")
    return [dict(num_cpus=config.cpus_per_worker, resources={f"arch_{a}": 0.001} if a else {},
                 max_restarts=config.max_failures, max_task_retries=config.max_failures,
                 scheduling_strategy="SPREAD") for a in archs]


def start_workers(config: Config, ds: data.Dataset) -> tuple[list, list[dict]]:
    """Place one Worker per shard and wait until each has loaded its data."""
    shards = data.plan_shards(ds.group_rows, config.workers)
    remote = ray.remote(Worker)
    workers = [remote.options(**opts).remote(config, ds, shard, rank)
               for rank, (opts, shard) in enumerate(zip(_worker_options(config), shards))]
    refs = [w.ready.remote() for w in workers]
    done, waiting = ray.wait(refs, num_returns=len(refs), timeout=config.placement_timeout)
    if waiting:
        raise TrainingError(f"{len(waiting)} of {len(refs)} workers were not placed and loaded within "
                            f"{config.placement_timeout:g} s; cluster resources: {ray.available_resources()}")
    return workers, _result(refs)


def train(config: Config) -> dict:
    """Train as `config` says; return (and print, and optionally save) the final summary."""
    t_start = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=config.address, log_to_driver=True)
    storage = data.Storage(s3_endpoint=config.s3_endpoint)
    ds = data.discover(config.data or default_dataset(), config.features, config.target, storage)
    workers, shards = start_workers(config, ds)
    features = shards[0]["features"]
    batches = split_batch(config.batch_size, [s["train"] for s in shards])
    if min(batches) < 1:
        raise TrainingError(f"batch size {config.batch_size} leaves a worker with no rows per step")
    steps_per_epoch = min(s["train"] // b for s, b in zip(shards, batches))
    if steps_per_epoch < 1:
        raise TrainingError(f"batch size {config.batch_size} exceeds the training rows {sum(s['train'] for s in shards)}")
    total = config.steps if config.steps is not None else max(1, math.ceil(config.epochs * steps_per_epoch))

    model = build_model(config, features)
    server = ray.remote(ParameterServer).options(num_cpus=0).remote(config, model.params, total)
    progress = Progress(total, 0, config.batch_size, steps_per_epoch, config.metrics)
    progress.log(f"{ds.rows:,} rows x {features} features in {len(ds.files)} files; {config.workers} workers "
                 f"on {sorted({s['node'] + '/' + s['arch'] for s in shards})}; {total} steps of "
                 f"{config.batch_size} rows ({steps_per_epoch} per epoch)")

    t_loop = time.perf_counter()
    weights, in_flight = ray.put(model.params), collections.deque()
    stats = {}
    for step in range(total):
        grads = [w.grad.remote(weights, step, b, steps_per_epoch) for w, b in zip(workers, batches)]
        weights = server.apply.remote(step, *grads)
        in_flight.append(weights)
        if len(in_flight) > IN_FLIGHT:
            ray.wait([in_flight.popleft()], fetch_local=False)
        if (step + 1) % config.log_every == 0 or step + 1 == total:
            stats = _result(server.stats.remote())
            progress.update(step + 1, train_loss=stats["train_loss"])
    final = np.array(_result(weights))
    loop_s = time.perf_counter() - t_loop
    progress.close()

    model_stats, oracle_stats = QuantileStats(config.quantiles), QuantileStats(config.quantiles)
    for m, o in _result([w.evaluate.remote(final) for w in workers]):
        model_stats.merge(m)
        if o is not None:
            oracle_stats.merge(o)
    val, oracle = model_stats.summary(), oracle_stats.summary() if getattr(ds, "synthetic", None) else None
    summary = {
        "steps": total, "epochs": round(total / steps_per_epoch, 4), "workers": config.workers,
        "rows_per_s": total * config.batch_size / loop_s, "wall_s": time.perf_counter() - t_start,
        "train_loss": stats.get("train_loss"), "val_loss": val["pinball"],
        "oracle_loss": oracle["pinball"] if oracle else None,
        "coverage": val["coverage"], "oracle_coverage": oracle["coverage"] if oracle else None,
        "crossing_rate": val["crossing_rate"], "failures_survived": 0,
    }
    print(format_summary(summary), flush=True)
    if config.summary_json:
        with open(config.summary_json, "w") as f:
            json.dump(summary, f, indent=2)
    for w in workers + [server]:
        ray.kill(w)
    return summary
