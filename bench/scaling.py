"""Data-parallel scaling of the quantile MLP (64 -> 128 tanh -> 9, Adam) on a local Ray.

Prints, in one run: single-process micrograd steps/s on the same rows; 1 and 2 Ray workers
(1 CPU each) steps/s; and the share of each step spent outside the gradient compute of
the worker that held the step up (parameter server, transfers, driver), and outside the
mean worker's (which adds the faster worker's wait for the slower).

    python bench/scaling.py [--rows 2000000] [--batch 65536] [--steps 150]
Run it inside a loopback-only network namespace, as README.md says.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import ray

import mgdist
from micrograd.optim import Adam
from micrograd.parallel import GradSum
from mgdist import data
from mgdist.worker import epoch_order
from mgdist.workloads import synthetic
from mgdist.workloads.quantile import QuantileMLP

LEVELS = tuple(np.round(np.linspace(0.1, 0.9, 9), 2))


def single_process(path: str, batch: int, steps: int) -> float:
    """Steps/s of one process training on the same data, rows chosen and gathered as a worker does."""
    ds = data.discover(path)
    X, y, _ = data.load_shard(ds, range(len(ds.group_rows)))
    grads = GradSum(lambda: QuantileMLP(X.shape[1], LEVELS, (128,), "tanh"))
    opt = Adam(grads.params.size, 1e-3)
    order = epoch_order(np.arange(len(X)), seed=0, rank=0, epoch=0)
    t = time.perf_counter()
    for step in range(steps):
        grad, _ = grads({"X": X, "y": y}, order[(step * batch) % (len(X) - batch):][:batch])
        opt.step(grads.params, grad / np.float32(batch))
    return steps / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--batch", type=int, default=65536)
    p.add_argument("--steps", type=int, default=150, help="5 epochs of 2M rows: warm-up and epoch starts amortised")
    p.add_argument("--data", help="existing dataset (default: write one to a temp dir)")
    args = p.parse_args()
    path = args.data or os.path.join(tempfile.mkdtemp(prefix="mgdist-scaling-"), "data")
    if not args.data:
        synthetic.write(path, rows=args.rows, features=64, files=8, row_group_rows=65536)
    print(f"{args.rows:,} rows x 64 features, batch {args.batch:,}, {args.steps} steps, cpus={os.cpu_count()}")
    base = single_process(path, args.batch, args.steps)
    print(f"single process          {base:6.2f} steps/s  {base * args.batch / 1e6:5.2f}M rows/s")
    ray.init(address="local", num_cpus=2, object_store_memory=500 * 2**20, include_dashboard=False, log_to_driver=False)
    results = {}
    for workers in (1, 2):
        s = mgdist.train(QuantileMLP, path, model_args={"levels": LEVELS, "hidden": [128], "activation": "tanh"},
                         workers=workers,
                         batch_size=args.batch, steps=args.steps, lr=1e-3, schedule="constant", val_fraction=0.01,
                         log_every=args.steps).summary
        results[workers] = rate = s["rows_per_s"] / args.batch
        print(f"ray, {workers} worker(s)      {rate:6.2f} steps/s  {s['rows_per_s'] / 1e6:5.2f}M rows/s  "
              f"outside compute: {100 * s['outside_compute']:4.1f}% of step time (the slowest worker's; "
              f"the mean worker's: {100 * (1 - s['worker_busy']):4.1f}%)")
    print(f"2 workers / 1 worker: {results[2] / results[1]:.2f}x;  2 workers / single process: {results[2] / base:.2f}x")
    ray.shutdown()


if __name__ == "__main__":
    main()
