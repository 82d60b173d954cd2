"""Data-parallel scaling of the quantile MLP (64 -> 128 tanh -> 9, Adam) on a local Ray.

Prints, in one run, for each global batch size: single-process micrograd rows/s on the same
rows; 1 and 2 Ray workers (1 CPU each) rows/s, and the share of each step spent outside the
gradient compute of the worker that held the step up (parameter server, transfers, driver),
and outside the mean worker's (which adds the faster worker's wait for the slower); and the
two-process bound: one plain process per worker (no Ray, no communication, 1 BLAS thread
each) running the hand-written NumPy loop (bench/worker_profile.py's HandLoop) on the rows that
worker computes, in the same 512-row passes, all at once; rows/s summed. 2 workers' ratio to it.

    python bench/scaling.py [--rows 1000000] [--batches 2048,8192,65536] [--epochs 3]
(`--rows 2000000` for the issue's size.) Run it inside a loopback-only network namespace, as README.md says.
"""
from __future__ import annotations

import argparse
import contextlib
import io
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
from worker_profile import LEVELS, plain_bound, ray_init, setup


def single_process(path: str, batch: int, steps: int) -> float:
    """Rows/s of one process training on the same data, rows chosen and gathered as a worker does."""
    ds = data.discover(path)
    X, y, _ = data.load_shard(ds, range(len(ds.group_rows)))
    grads = GradSum(lambda: QuantileMLP(X.shape[1], LEVELS, (128,), "tanh"))
    opt = Adam(grads.params.size, 1e-3)
    order = epoch_order(np.arange(len(X)), seed=0, rank=0, epoch=0)
    t = time.perf_counter()
    for step in range(steps):
        grad, _ = grads({"X": X, "y": y}, order[(step * batch) % (len(X) - batch):][:batch])
        opt.step(grads.params, grad / np.float32(batch))
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batches", default="2048,8192,65536", help="global batch sizes, comma-separated")
    p.add_argument("--epochs", type=float, default=3, help="steps of each run: this many epochs (at least 20)")
    p.add_argument("--data", help="existing dataset (default: write one to a temp dir)")
    args = p.parse_args()
    path = args.data or os.path.join(tempfile.mkdtemp(prefix="mgdist-scaling-"), "data")
    if not args.data:
        synthetic.write(path, rows=args.rows, features=64, files=8, row_group_rows=65536)
    print(f"{args.rows:,} rows x 64 features, {args.epochs:g} epochs a run, cpus={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    ray_init()
    for batch in (int(b) for b in args.batches.split(",")):
        steps = max(20, int(args.epochs * args.rows) // batch)
        print(f"batch {batch:,}, {steps} steps")
        base = single_process(path, batch, min(steps, 300))
        print(f"  single process (2 BLAS threads)  {base / 1e6:5.2f}M rows/s")
        results = {}
        for workers in (1, 2):
            with contextlib.redirect_stdout(io.StringIO()):  # its progress lines and summary
                s = mgdist.train(QuantileMLP, path, model_args={"levels": LEVELS, "hidden": [128], "activation": "tanh"},
                                 workers=workers, batch_size=batch, steps=steps, lr=1e-3, schedule="constant",
                                 val_fraction=0.01, log_every=steps).summary
            results[workers] = s["rows_per_s"]
            print(f"  ray, {workers} worker(s) x 1 CPU          {s['rows_per_s'] / 1e6:5.2f}M rows/s  outside compute: "
                  f"{100 * s['outside_compute']:4.1f}% of step time (the slowest worker's; the mean worker's: "
                  f"{100 * (1 - s['worker_busy']):4.1f}%)  load average {os.getloadavg()[0]:.2f}")
        bound, timings = plain_bound(setup(path, batch), steps)
        print(f"  two-process NumPy bound          {bound / 1e6:5.2f}M rows/s  (per process: "
              f"{', '.join(f'{t.rows_per_s / 1e6:.2f}M' for t in timings)})  load average {os.getloadavg()[0]:.2f}")
        print(f"  2 workers / bound: {results[2] / bound:.2f}x;  2 workers / 1 worker: {results[2] / results[1]:.2f}x;"
              f"  2 workers / single process: {results[2] / base:.2f}x")
    ray.shutdown()


if __name__ == "__main__":
    main()
