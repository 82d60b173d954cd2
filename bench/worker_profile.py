"""Where a 1-CPU worker's time goes: its gradient sum in a Ray actor, outside Ray, and by hand.

Times, on the same rows (each worker's shard of a synthetic dataset, its epoch order, its share
of each global batch; weights fixed) with 1 BLAS thread, in interleaved rounds, first worker 0
alone, then both workers at once (the plain processes started together at a barrier):
(a) mgdist's Worker.grad() in a Ray actor placed as mgdist places a worker (1 CPU, 2 slots);
(b) the same Worker class in a plain process, no Ray; (c) HandLoop, the quantile MLP
(64 -> 128 tanh -> 9, pinball loss) written out in NumPy with every buffer preallocated,
gathering and computing in the same 512-row passes as GradSum, in a plain process.
Prints rows/s (summed over the processes) and its ratio to (c), rows per CPU-second of the
computing thread (what a loaded machine's preemption does not stretch), each thread's niceness
(a raylet starts workers at 15), BLAS and Python threads; then for (a) and (b) the top functions
by own time (cProfile, a run of its own: the timed ones are not profiled). bench/scaling.py
uses HandLoop and plain_bound() for its two-process bound.

    python bench/worker_profile.py [--rows 1000000] [--batch 65536] [--steps 30] [--rounds 5]
Run it inside a loopback-only network namespace, as README.md says.
"""
from __future__ import annotations

import argparse
import atexit
import cProfile
import io
import multiprocessing
import os
import pstats
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np

from micrograd.parallel import BLOCK
from mgdist.config import TrainConfig
from mgdist.data import Dataset
from mgdist.model import ModelSpec
from mgdist.preprocess import Preprocessing
from mgdist.worker import Worker


class HandLoop:
    """Gradient sum (over rows, of the loss averaged over levels) and loss sum of the quantile
    MLP by hand, in `block`-row passes: the rows of each pass gathered into a buffer, forward,
    backward, the pass's gradients added into one flat vector laid out as flatten() lays out
    MLP.parameters() (W1, b1, W2, b2)."""

    def __init__(self, features: int, hidden: int, levels: np.ndarray, block: int = BLOCK):
        self.levels, self.block = np.asarray(levels, np.float32), block
        q = len(self.levels)
        self.shapes = [(features, hidden), (hidden,), (hidden, q), (q,)]
        self.cuts = np.cumsum([0] + [int(np.prod(s)) for s in self.shapes])
        self.grad = np.zeros(self.cuts[-1], np.float32)
        self.part = np.zeros_like(self.grad)  # one pass's gradients
        self.x, self.y = np.empty((block, features), np.float32), np.empty(block, np.float32)
        self.h, self.dh = np.empty((block, hidden), np.float32), np.empty((block, hidden), np.float32)
        self.diff, self.slope = np.empty((block, q), np.float32), np.empty((block, q), np.float32)
        self.below = np.empty((block, q), bool)
        self.ones = np.ones(block, np.float32)

    def views(self, flat: np.ndarray) -> list[np.ndarray]:
        return [flat[i:j].reshape(s) for i, j, s in zip(self.cuts[:-1], self.cuts[1:], self.shapes)]

    def __call__(self, X: np.ndarray, y: np.ndarray, rows: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, float]:
        W1, c1, W2, c2 = self.views(params)
        dW1, dc1, dW2, dc2 = self.views(self.part)
        W2t = np.ascontiguousarray(W2.T)
        self.grad[:], loss, scale = 0, 0.0, np.float32(-1 / len(self.levels))
        for lo in range(0, len(rows), self.block):
            r = rows[lo:lo + self.block]
            m = len(r)
            x, yb, h, dh = self.x[:m], self.y[:m], self.h[:m], self.dh[:m]
            diff, slope, below, ones = self.diff[:m], self.slope[:m], self.below[:m], self.ones[:m]
            np.take(X, r, axis=0, out=x)
            np.take(y, r, out=yb)
            np.matmul(x, W1, out=h)
            h += c1
            np.tanh(h, out=h)
            np.matmul(h, W2, out=diff)
            diff += c2
            np.subtract(yb[:, None], diff, out=diff)
            np.less(diff, 0, out=below)
            np.subtract(self.levels, below, out=slope)
            loss += float(np.vdot(diff, slope))
            slope *= scale  # d (row's loss summed over levels / levels) / d prediction
            np.matmul(h.T, slope, out=dW2)
            np.matmul(ones, slope, out=dc2)
            np.matmul(slope, W2t, out=dh)
            np.multiply(h, h, out=h)
            np.subtract(1, h, out=h)
            dh *= h
            np.matmul(x.T, dh, out=dW1)
            np.matmul(ones, dh, out=dc1)
            self.grad += self.part
        return self.grad, loss / len(self.levels)


@dataclass
class Timing:
    """One timed run of `steps` gradient sums: seconds of each, rows each, and what the process looked like."""
    name: str
    rows: int
    seconds: list[float]      # wall-clock
    cpu_seconds: list[float]  # of the computing thread (time.thread_time): what preemption does not stretch
    blas_threads: list[int]  # num_threads of each BLAS library threadpoolctl sees
    threads: int             # Python threads alive in the process
    niceness: int            # of the computing thread (a raylet starts its workers at 15)
    profile: str = ""        # top functions by own time, when profiled

    @property
    def rows_per_s(self) -> float:
        return self.rows * len(self.seconds) / sum(self.seconds)

    @property
    def rows_per_cpu_s(self) -> float:
        return self.rows * len(self.cpu_seconds) / sum(self.cpu_seconds)


class ProfiledWorker(Worker):
    """mgdist's Worker with a method that times its own grad() (or HandLoop on its rows)."""

    def timed(self, engine: str, batch: int, steps_per_epoch: int, steps: int, profile: bool = False,
              start: threading.Barrier | None = None) -> Timing:
        """`steps` calls of grad() (engine "micrograd") or of HandLoop (engine "hand") on this
        worker's `batch` rows of steps 1, 2, ... (step 0 is a warm-up), weights fixed; the second
        run under cProfile when `profile`. `start`: a barrier to pass before timing."""
        from threadpoolctl import threadpool_info
        weights, spe = self.grads.params.copy(), steps_per_epoch
        if engine == "micrograd":
            def step(s: int) -> None:
                self.grad(weights, s, batch, spe)
        elif engine == "hand":
            hand = HandLoop(self.X.shape[1], self.grads.model.net.layers[0].W.data.shape[1], self.grads.model.levels)

            def step(s: int) -> None:
                np.copyto(self.grads.params, weights)
                hand(self.X, self.y, self._rows(s, batch, spe), self.grads.params)
        else:
            raise ValueError(f"timed: engine must be 'micrograd' or 'hand', got {engine!r}")
        step(0)
        if start is not None:
            start.wait()
        seconds, cpu_seconds = [], []
        for s in range(1, steps + 1):
            t, c = time.perf_counter(), time.thread_time()
            step(s)
            seconds.append(time.perf_counter() - t)
            cpu_seconds.append(time.thread_time() - c)
        text = ""
        if profile:
            prof = cProfile.Profile()
            prof.runcall(lambda: [step(s) for s in range(1, steps + 1)])
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
            text = out.getvalue()
        blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        return Timing(f"{engine} pid {os.getpid()}", batch, seconds, cpu_seconds, blas, threading.active_count(),
                      os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), text)


@dataclass(frozen=True)
class Setup:
    """What builds worker `rank` of a run: as mgdist.train builds it (shards, preprocessing, settings)."""
    spec: ModelSpec
    config: TrainConfig
    dataset: Dataset
    shards: list[tuple[int, int]]
    prep: Preprocessing
    batches: list[int]  # each worker's rows of a global batch
    steps_per_epoch: int

    def worker(self, rank: int) -> ProfiledWorker:
        return ProfiledWorker(self.spec, self.config, self.dataset, self.shards[rank], rank, self.prep)


LEVELS = tuple(np.round(np.linspace(0.1, 0.9, 9), 2).tolist())


def setup(path: str, batch: int, workers: int = 2, val_fraction: float = 0.01) -> Setup:
    """The quantile MLP 64 -> 128 tanh -> 9 on the dataset at `path`, split over `workers` as mgdist splits it."""
    from mgdist import data
    from mgdist.fleet import split_batch
    from mgdist.preprocess import ShardSummary
    from mgdist.worker import split_rows
    from mgdist.workloads.quantile import QuantileMLP
    config = TrainConfig(data=path, workers=workers, batch_size=batch, val_fraction=val_fraction)
    ds = data.discover(path)
    shards = data.plan_rows(ds.rows, workers)
    summaries = [ShardSummary.of(*data.load_rows(ds, *s)) for s in shards]
    summary = summaries[0]
    for other in summaries[1:]:
        summary = summary.merge(other)
    prep = Preprocessing.from_summary(summary, ds.features, ds.categorical, True, True)
    train = [len(split_rows(stop - start, val_fraction, config.seed, r)[0])
             for r, (start, stop) in enumerate(shards)]
    spec = ModelSpec(QuantileMLP, {"levels": LEVELS, "hidden": [128], "activation": "tanh"})
    batches = split_batch(batch, train)
    return Setup(spec, config, ds, shards, prep, batches, min(t // b for t, b in zip(train, batches)))


def _serve(conn, s: Setup, rank: int, start: threading.Barrier | None) -> None:
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=1, user_api="blas")  # as Worker.prepare() sets it for 1 CPU
    worker = s.worker(rank)
    conn.send("ready")
    while (request := conn.recv()) is not None:
        engine, batch, steps, profile, sync = request
        conn.send(worker.timed(engine, batch, s.steps_per_epoch, steps, profile, start if sync else None))


class Plain:
    """Worker `rank` of `s` in a plain process (spawned: no Ray in it), answering timed() calls."""

    def __init__(self, s: Setup, rank: int, start=None):
        ctx = multiprocessing.get_context("spawn")
        self.conn, theirs = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(theirs, s, rank, start), daemon=True)
        self.process.start()
        if self.conn.recv() != "ready":
            raise RuntimeError(f"worker {rank}'s plain process did not start")

    def submit(self, engine: str, batch: int, steps: int, profile: bool = False, sync: bool = False) -> None:
        self.conn.send((engine, batch, steps, profile, sync))

    def result(self) -> Timing:
        return self.conn.recv()

    def timed(self, engine: str, batch: int, steps: int, profile: bool = False) -> Timing:
        self.submit(engine, batch, steps, profile)
        return self.result()

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(30)


def plain_bound(s: Setup, steps: int) -> tuple[float, list[Timing]]:
    """Rows/s summed over one plain process per worker, each running HandLoop on its rows
    at once (started together at a barrier), no communication."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(len(s.shards))
    procs = [Plain(s, r, start) for r in range(len(s.shards))]
    try:
        for p, b in zip(procs, s.batches):
            p.submit("hand", b, steps, sync=True)
        timings = [p.result() for p in procs]
    finally:
        for p in procs:
            p.close()
    return sum(t.rows_per_s for t in timings), timings


def scratch_dir(prefix: str) -> str:
    """A new temp dir, removed when this process exits (the datasets benches write are 100s of MB)."""
    root = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def bench_data(data: str | None, rows: int, prefix: str) -> str:
    """`data`, or a new synthetic dataset of `rows` x 64 features in 8 files under a scratch_dir."""
    if data:
        return data
    from mgdist.workloads import synthetic
    path = os.path.join(scratch_dir(prefix), "data")
    synthetic.write(path, rows=rows, features=64, files=8, row_group_rows=65536)
    return path


def ray_init() -> None:
    """A local Ray of 2 CPUs whose workers can import this file (for ProfiledWorker)."""
    import ray
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=2, object_store_memory=300 * 2**20, include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})


def report(name: str, timings: list[list[Timing]], base: float) -> None:
    """One line: rows/s summed over the processes of each round (median, and its ratio to `base`,
    min-max over rounds), rows per CPU-second of the computing thread, and the processes' settings."""
    wall = [sum(t.rows_per_s for t in r) for r in timings]
    cpu = [np.mean([t.rows_per_cpu_s for t in r]) for r in timings]
    r = np.array(wall) / base
    t = timings[0][0]
    print(f"  {name:<44} {np.median(wall) / 1e6:5.2f}M rows/s {np.median(r):5.2f}x ({r.min():.2f}-{r.max():.2f})  "
          f"{np.median(cpu) / 1e6:5.2f}M rows/CPU-s  nice {t.niceness}, BLAS threads {t.blas_threads}, "
          f"Python threads {t.threads}")


def main() -> None:
    import ray
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=65536, help="global batch, of which each worker computes its share")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (every contender once a round); medians")
    p.add_argument("--data", help="existing dataset (default: write one to a temp dir)")
    args = p.parse_args()
    path = bench_data(args.data, args.rows, "mgdist-profile-")
    s = setup(path, args.batch)
    ray_init()
    remote = ray.remote(ProfiledWorker).options(num_cpus=1, max_concurrency=2)  # as mgdist places a worker
    workers = [remote.remote(s.spec, s.config, s.dataset, s.shards[r], r, s.prep) for r in range(2)]
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    plain = [Plain(s, r, start) for r in range(2)]
    spe, steps = s.steps_per_epoch, args.steps

    def actors(engine: str, ranks, profile: bool = False) -> list[Timing]:
        return ray.get([workers[r].timed.remote(engine, s.batches[r], spe, steps, profile) for r in ranks])

    def plains(engine: str, ranks, profile: bool = False) -> list[Timing]:
        for r in ranks:
            plain[r].submit(engine, s.batches[r], steps, profile, sync=len(ranks) > 1)
        return [plain[r].result() for r in ranks]

    print(f"{args.rows:,} rows x 64 features; worker shares {s.batches} of a global batch of {args.batch:,}, "
          f"{BLOCK}-row passes, {steps} steps x {args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.2f}")
    for title, ranks in (("worker 0 alone", [0]), ("both workers at once", [0, 1])):
        runs: dict[str, list[list[Timing]]] = {
            "(a) Worker.grad, Ray actor": [], "(b) Worker.grad, plain process": [], "(c) HandLoop, plain process": []}
        calls = [lambda: actors("micrograd", ranks), lambda: plains("micrograd", ranks), lambda: plains("hand", ranks)]
        for _ in range(args.rounds):
            for name, call in zip(runs, calls):
                runs[name].append(call())
        base = np.median([sum(t.rows_per_s for t in r) for r in runs["(c) HandLoop, plain process"]])
        print(f"{title}: rows/s (ratio to (c)), rows per CPU-second; load average {os.getloadavg()[0]:.2f}")
        for name, timings in runs.items():
            report(name, timings, base)
    for name, timing in (("(a) in the Ray actor", actors("micrograd", [0], profile=True)[0]),
                         ("(b) in a plain process", plains("micrograd", [0], profile=True)[0])):
        print(f"--- {name}: top functions by own time ---\n{timing.profile}")
    for p in plain:
        p.close()
    ray.shutdown()


if __name__ == "__main__":
    main()
