"""Gradient sums over many rows: a model's graph run in cache-sized passes of rows, on threads.

A model here is anything with a scalar `loss` Value (the mean over the rows it is fed) and
`parameters()`. GradSum flattens those parameters into one weight vector and returns the
gradient of the loss summed (not averaged) over the rows, so that sums from several workers,
threads or passes simply add up.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from micrograd.nn import flatten

BLOCK = 512  # rows per forward/backward pass on one thread: the activations stay in cache (65,536 rows: 66 ms in one pass, 52 ms in 512s)
THREAD_BLOCK = 4096  # rows per pass on several threads: longer NumPy calls hand the GIL over less often (65,536 rows on 2 threads: 27 ms in 1,024s, 25 in 2,048s, 24 in 4,096s)


def set_blas_threads(cpus: int, threads: int = 1) -> int:
    """Give BLAS cpus // threads threads (at least 1), so that `threads` engine threads each
    running BLAS fit `cpus`; returns that number. Needs threadpoolctl."""
    from threadpoolctl import threadpool_limits
    blas = max(1, cpus // threads)
    threadpool_limits(limits=blas, user_api="blas")
    return blas


class Replica:
    """One copy of the model with its own graph, gradient vector and gathered-row buffers."""

    def __init__(self, model: Any, grads: np.ndarray):
        self.model, self.grads = model, grads
        self.fed: dict[str, np.ndarray] = {}  # rows gathered for a pass, reused across passes

    def gather(self, feeds: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `rows` (checked in range by the caller) of every feed, copied into this replica's
        buffers (no allocation per pass)."""
        fed = {}
        for name, a in feeds.items():
            buf = self.fed.get(name)
            if buf is None or len(buf) < len(rows) or buf.shape[1:] != a.shape[1:] or buf.dtype != a.dtype:
                buf = self.fed[name] = np.empty((len(rows),) + a.shape[1:], a.dtype)
            fed[name] = np.take(a, rows, axis=0, out=buf[:len(rows)], mode="clip")  # "raise" copies through a buffer
        return fed

    def run(self, feeds: dict[str, np.ndarray], rows: np.ndarray | None, passes: range, block: int) -> float:
        """Sum into `grads` (zeroed first) the gradient over the passes `passes` (block numbers);
        returns their loss sum."""
        n = len(next(iter(feeds.values()))) if rows is None else len(rows)
        self.grads[:], loss = 0, 0.0
        for i in passes:
            lo, hi = i * block, min(n, (i + 1) * block)
            fed = {name: a[lo:hi] for name, a in feeds.items()} if rows is None else self.gather(feeds, rows[lo:hi])
            loss += float(self.model.loss.forward(**fed)) * (hi - lo)
            self.model.loss.backward(seed=hi - lo, accumulate=True, keep_data=False)  # the mean's gradient times the rows
        return loss


class GradSum:
    """The summed gradient of `model.loss` over fed rows, at most `block` rows per pass (BLOCK on
    one thread, THREAD_BLOCK on several), on `threads` threads; `build()` makes the model (once per
    thread), and `params` is the flat weight vector that every thread's copy reads (write new
    weights into it).

    Passes are made smaller when there are too few to give every thread one. Thread t takes passes
    t, t + threads, ... and sums them in order; the threads' sums are then added in thread order,
    so a given number of threads and of rows always gives the same bits. With several threads, let
    BLAS run one thread each (set_blas_threads). The passes run backward(keep_data=False): after
    a call, the replicas' intermediate arrays no longer hold the forward's values."""

    def __init__(self, build: Callable[[], Any], block: int | None = None, threads: int = 1):
        block = (BLOCK if threads == 1 else THREAD_BLOCK) if block is None else block
        if block < 1 or threads < 1:
            raise ValueError(f"GradSum: need block >= 1 and threads >= 1, got block={block}, threads={threads}")
        self.block, self.threads = block, threads
        self.model = build()
        self.params, grads = flatten(self.model.parameters())
        self.replicas = [Replica(self.model, grads)]
        for _ in range(threads - 1):
            model = build()
            self.replicas.append(Replica(model, flatten(model.parameters(), self.params)[1]))
        self.total = grads if threads == 1 else np.zeros_like(grads)
        self.pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="gradsum") if threads > 1 else None

    def __call__(self, feeds: dict[str, np.ndarray], rows: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """(gradient sum, loss sum) over rows `rows` of every feed (all rows when None); each
        pass's rows are gathered just before it runs. The gradient is this object's buffer,
        overwritten by the next call."""
        available = len(next(iter(feeds.values())))
        n = available if rows is None else len(rows)
        if rows is not None and n:
            low, high = rows.min(), rows.max()
            if low < 0 or high >= available:
                raise IndexError(f"GradSum: row {low if low < 0 else high} is out of range for feeds of {available} rows")
        T = self.threads
        block = max(1, min(self.block, -(-n // T)))
        passes = -(-n // block)
        if T == 1:
            return self.total, self.replicas[0].run(feeds, rows, range(passes), block)
        done = [self.pool.submit(r.run, feeds, rows, range(t, passes, T), block)
                for t, r in enumerate(self.replicas[1:], start=1)]
        losses = [self.replicas[0].run(feeds, rows, range(0, passes, T), block)] + [f.result() for f in done]
        np.copyto(self.total, self.replicas[0].grads)
        for r in self.replicas[1:]:
            self.total += r.grads
        return self.total, sum(losses)
