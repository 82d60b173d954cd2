"""micrograd now against an earlier commit, in one run: the epoch time of bench/engine.py's
GradSum contenders (the quantile MLP in passes, 1 thread and all threads, 1 BLAS thread each)
with each commit's engine, in alternating child processes (a passing load spike hits both
alike). Prints each median and the ratio earlier / now (above 1: now is faster).

    python bench/engine_ab.py --base fbbcc35 [--rows 589824] [--batches 4096,65536] [--rounds 3]
The earlier commit is checked out into a temporary git worktree, removed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
tree, rows, batches, threads = sys.argv[1], int(sys.argv[2]), [int(b) for b in sys.argv[3].split(",")], int(sys.argv[4])
sys.path[:0] = [tree, tree + "/bench"]
import engine
rng = np.random.default_rng(1)
X = rng.standard_normal((rows, engine.FEATURES), dtype=np.float32)
y = (X[:, 0] + np.sin(X[:, 1]) + rng.standard_normal(rows, dtype=np.float32)).astype(np.float32)
out = {}
with threadpool_limits(limits=1, user_api="blas"):
    for size in batches:
        epoch = engine.micrograd_passes(X, y, size, threads)
        epoch()  # buffers, caches
        t = time.perf_counter()
        epoch()
        out[size] = time.perf_counter() - t
print(json.dumps(out))
"""


def epoch_times(tree: str, rows: int, batches: str, threads: int) -> dict[int, float]:
    """Seconds of one epoch per batch size, with the engine of checkout `tree`, in a child process."""
    done = subprocess.run([sys.executable, "-c", CHILD, tree, str(rows), batches, str(threads)],
                          capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": tree})
    return {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the earlier commit (any git revision)")
    p.add_argument("--rows", type=int, default=589_824)
    p.add_argument("--batches", default="4096,65536")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "base")
        subprocess.run(["git", "-C", HERE, "worktree", "add", "--detach", base, args.base], check=True, capture_output=True)
        try:
            print(f"{args.rows:,} rows; {args.base} against the working tree, {args.rounds} alternating rounds; "
                  f"load average {os.getloadavg()[0]:.1f}")
            for threads in sorted({1, cpus}):
                times: dict[str, list[dict[int, float]]] = {"base": [], "now": []}
                for _ in range(args.rounds):
                    times["base"].append(epoch_times(base, args.rows, args.batches, threads))
                    times["now"].append(epoch_times(HERE, args.rows, args.batches, threads))
                for size in (int(b) for b in args.batches.split(",")):
                    then, now = (statistics.median(r[size] for r in times[k]) for k in ("base", "now"))
                    print(f"  {threads} thread(s), batch {size:>6,}: {args.base} {then:.3f} s, now {now:.3f} s: "
                          f"{then / now:.2f}x faster")
        finally:
            subprocess.run(["git", "-C", HERE, "worktree", "remove", "--force", base], check=False, capture_output=True)


if __name__ == "__main__":
    main()
