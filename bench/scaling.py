"""Data-parallel scaling of the quantile MLP (64 -> 128 tanh -> 9, Adam) on a local Ray.

Prints, in one run, for each global batch size: the two-process bound, one plain process per
worker (no Ray, no communication, 1 BLAS thread each, niceness 0) running the hand-written NumPy
loop (bench/worker_profile.py's HandLoop) on the rows that worker computes, in the same 512-row
passes, all at once, rows/s summed; mgdist with 2 Ray workers (1 CPU each), in rounds interleaved
with the bound, its rows/s, ratio to the bound and the share of each step spent outside the gradient
compute of the worker that held the step up (parameter server, transfers, driver), and outside
the mean worker's (which adds the faster worker's wait for the slower); then 1 worker, and one
process (2 BLAS threads) training on the same rows.

    python bench/scaling.py [--rows 1000000] [--batches 2048,8192,65536] [--epochs 2] [--rounds 3]
(`--rows 2000000` for the issue's size.) Run it inside a loopback-only network namespace, as README.md says.

    python bench/scaling.py --sweep [bench/sweep.py's options]
measures the framework instead, with almost no compute: workers x parameters x server shards (bench/sweep.py).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time

import numpy as np
import ray

import mgdist
from micrograd.optim import Adam
from micrograd.parallel import GradSum
from mgdist import data
from mgdist.worker import epoch_order
from mgdist.workloads.quantile import QuantileMLP
from worker_profile import LEVELS, bench_data, plain_bound, ray_init, setup


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


def mgdist_run(path: str, batch: int, steps: int, workers: int) -> dict:
    """The summary of an mgdist.train run (on the local Ray that main() starts)."""
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines and summary
        return mgdist.train(QuantileMLP, path, model_args={"levels": LEVELS, "hidden": [128], "activation": "tanh"},
                            workers=workers, batch_size=batch, steps=steps, lr=1e-3, schedule="constant",
                            val_fraction=0.01, log_every=steps).summary


def main() -> None:
    if "--sweep" in sys.argv[1:]:
        import sweep
        sweep.main([a for a in sys.argv[1:] if a != "--sweep"])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batches", default="2048,8192,65536", help="global batch sizes, comma-separated")
    p.add_argument("--epochs", type=float, default=2, help="steps of each run: this many epochs (at least 20)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the bound and the 2-worker runs")
    p.add_argument("--data", help="existing dataset (default: write one to a temp dir)")
    args = p.parse_args()
    path = bench_data(args.data, args.rows, "mgdist-scaling-")
    print(f"{args.rows:,} rows x 64 features, {args.epochs:g} epochs a run, {args.rounds} rounds, cpus={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.2f}; medians (min-max) over rounds, ratios to the same round's bound")
    ray_init()
    for batch in (int(b) for b in args.batches.split(",")):
        steps = max(20, int(args.epochs * args.rows) // batch)
        s = setup(path, batch)
        bounds, summaries, loads = [], [], []
        for _ in range(args.rounds):
            bounds.append(plain_bound(s, steps)[0])
            summaries.append(mgdist_run(path, batch, steps, 2))
            loads.append(os.getloadavg()[0])
        print(f"batch {batch:,} ({s.batches} rows a worker), {steps} steps; load average {min(loads):.1f}-{max(loads):.1f}")
        print(f"  two-process NumPy bound                  {np.median(bounds) / 1e6:5.2f}M rows/s "
              f"({min(bounds) / 1e6:.2f}-{max(bounds) / 1e6:.2f})")
        rate = np.array([x["rows_per_s"] for x in summaries])
        ratio = rate / np.array(bounds)
        outside = [100 * x["outside_compute"] for x in summaries]
        mean = [100 * (1 - x["worker_busy"]) for x in summaries]
        print(f"  ray, 2 workers x 1 CPU                   {np.median(rate) / 1e6:5.2f}M rows/s  "
              f"{np.median(ratio):4.2f}x of the bound ({ratio.min():.2f}-{ratio.max():.2f})  outside compute: "
              f"{np.median(outside):4.1f}% ({min(outside):.1f}-{max(outside):.1f}) of step time (the slowest "
              f"worker's; the mean worker's: {np.median(mean):4.1f}%)")
        one = mgdist_run(path, batch, steps, 1)
        print(f"  ray, 1 worker x 1 CPU                    {one['rows_per_s'] / 1e6:5.2f}M rows/s  outside compute: "
              f"{100 * one['outside_compute']:4.1f}%  load average {os.getloadavg()[0]:.1f}")
        base = single_process(path, batch, min(steps, 300))
        print(f"  single process (2 BLAS threads)          {base / 1e6:5.2f}M rows/s  load average {os.getloadavg()[0]:.1f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
