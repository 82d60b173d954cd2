"""Does a worker use every CPU it is given? The quantile MLP (64 -> 128 tanh -> 9) on a local Ray:

1. one worker actor with --cpus-per-worker 2 against one with 1, each timing its gradient sum
   of a 65,536-row step on its own shard (Worker.speed), alternating, median of the rounds;
2. whole runs: 1 worker x 2 CPUs against 2 workers x 1 CPU, same data and global batch, rows/s.

    python bench/worker_cpus.py [--rows 400000] [--rounds 5] [--steps 60]
Inside a loopback-only network namespace, as README.md says.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics

import numpy as np
import ray

import mgdist
from mgdist import data
from mgdist.config import TrainConfig
from mgdist.fleet import Fleet, ray_get
from mgdist.model import ModelSpec
from mgdist.workloads import synthetic
from mgdist.workloads.quantile import QuantileMLP
from worker_profile import scratch_dir

LEVELS = tuple(np.round(np.linspace(0.1, 0.9, 9), 2))
MODEL = {"levels": LEVELS, "hidden": [128], "activation": "tanh"}
BATCH = 65536


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()
    path = os.path.join(scratch_dir("mgdist-cpus-"), "data")
    synthetic.write(path, rows=args.rows, features=64, files=4, row_group_rows=BATCH, progress=False)
    ray.init(address="local", num_cpus=3, object_store_memory=400 * 2**20, include_dashboard=False,
             log_to_driver=False)  # 3 logical CPUs: both workers of part 1 alive at once, timed in turn
    spec, ds = ModelSpec(QuantileMLP, MODEL), data.discover(path)
    print(f"{args.rows:,} rows x 64 features; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")

    fleets = {cpus: Fleet(spec, TrainConfig(data=path, workers=1, cpus_per_worker=cpus, seed=0), ds)
              for cpus in (1, 2)}
    for fleet in fleets.values():
        fleet.start()
    speeds: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for cpus, fleet in fleets.items():
            speeds[cpus].append(ray_get(fleet.actors[0].speed.remote(BATCH)))
    for fleet in fleets.values():
        fleet.stop()
    one, two = statistics.median(speeds[1]), statistics.median(speeds[2])
    print(f"a worker's {BATCH:,}-row gradient sum: 1 CPU {one:,.0f} rows/s, 2 CPUs {two:,.0f} rows/s: "
          f"{two / one:.2f}x (target >= 1.7x; rounds: {', '.join(f'{b / a:.2f}' for a, b in zip(speeds[1], speeds[2]))})")

    runs: dict[str, list[float]] = {"1 x 2 CPUs": [], "2 x 1 CPU": []}
    for _ in range(2):
        for name, (workers, cpus) in {"1 x 2 CPUs": (1, 2), "2 x 1 CPU": (2, 1)}.items():
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                summary = mgdist.train(QuantileMLP, path, model_args=MODEL, workers=workers, cpus_per_worker=cpus,
                                       batch_size=BATCH, steps=args.steps, lr=1e-3, schedule="constant",
                                       val_fraction=0.01, log_every=args.steps).summary
            runs[name].append(summary["rows_per_s"])
    a, b = (max(v) for v in runs.values())
    print(f"runs of {args.steps} steps of {BATCH:,} rows, best of 2 alternating: 1 worker x 2 CPUs {a:,.0f} rows/s, "
          f"2 workers x 1 CPU {b:,.0f} rows/s: {a / b:.2f}x (target >= 1.0x)")
    ray.shutdown()


if __name__ == "__main__":
    main()
