"""Gradient sums over many rows: a model's graph run in cache-sized passes of rows, on threads
(GradSum) or on processes forked from this one (ProcessGradSum).

A model here is anything with a scalar `loss` Value (the mean over the rows it is fed) and
`parameters()`. Both flatten those parameters into one weight vector and return the gradient of
the loss summed (not averaged) over the rows, so that sums from several workers, lanes or passes
simply add up. Lane t (a thread or a process) takes passes t, t + lanes, ... and sums them in
order; the lanes' sums are then added in lane order, so a given number of lanes, block and rows
always gives the same bits, whichever of the two runs them.
"""
from __future__ import annotations

import mmap
import os
import signal
import struct
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


def _rows_of(feeds: dict[str, np.ndarray]) -> int:
    return len(next(iter(feeds.values())))


def _check_rows(rows: np.ndarray | None, available: int) -> None:
    if rows is not None and len(rows):
        low, high = rows.min(), rows.max()
        if low < 0 or high >= available:
            raise IndexError(f"GradSum: row {low if low < 0 else high} is out of range for feeds of {available} rows")


def _add_in_lane_order(total: np.ndarray, lane_grads: list[np.ndarray]) -> np.ndarray:
    """The lanes' gradient sums added into `total` in lane order: the order that fixes the bits."""
    np.copyto(total, lane_grads[0])
    for g in lane_grads[1:]:
        total += g
    return total


def _passes(n: int, block: int, lanes: int) -> tuple[int, int]:
    """(rows per pass, passes) for n rows: passes cut smaller when there are too few for every lane."""
    block = max(1, min(block, -(-n // lanes)))
    return block, -(-n // block)


class GradSum:
    """The summed gradient of `model.loss` over fed rows, at most `block` rows per pass (BLOCK on
    one thread, THREAD_BLOCK on several), on `threads` threads; `build()` makes the model (once per
    thread), and `params` is the flat weight vector that every thread's copy reads (write new
    weights into it).

    Passes are made smaller when there are too few to give every thread one; the threads' sums
    are added in a fixed order (module docstring). With several threads, let
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
        available = _rows_of(feeds)
        n = available if rows is None else len(rows)
        _check_rows(rows, available)
        T = self.threads
        block, passes = _passes(n, self.block, T)
        if T == 1:
            return self.total, self.replicas[0].run(feeds, rows, range(passes), block)
        done = [self.pool.submit(r.run, feeds, rows, range(t, passes, T), block)
                for t, r in enumerate(self.replicas[1:], start=1)]
        losses = [self.replicas[0].run(feeds, rows, range(0, passes, T), block)] + [f.result() for f in done]
        return _add_in_lane_order(self.total, [r.grads for r in self.replicas]), sum(losses)

    def close(self) -> None:
        """End the threads (none with one thread)."""
        if self.pool is not None:
            self.pool.shutdown()


ASK = struct.Struct("<qqq?")  # to a lane's process: rows, rows per pass, passes, whether all the feeds' rows
ANSWER = struct.Struct("<dI")  # from it: its loss sum, and the length of the error text that follows (0: none)


class LaneLost(RuntimeError):
    """A lane's process is gone (killed, or out of memory)."""


@dataclass
class _Lane:
    """A forked process running lane `index`: its pid, and the pipes to and from it."""
    index: int
    pid: int
    ask: int
    answers: int

    def request(self, n: int, block: int, passes: int, whole: bool) -> None:
        try:
            os.write(self.ask, ASK.pack(n, block, passes, whole))
        except OSError:  # no reader: the process is gone
            raise LaneLost(self.index) from None

    def answer(self) -> float:
        head = _read(self.answers, ANSWER.size)
        if len(head) < ANSWER.size:
            raise LaneLost(self.index)
        loss, errors = ANSWER.unpack(head)
        if errors:
            raise RuntimeError(f"ProcessGradSum: lane {self.index} failed: {_read(self.answers, errors).decode()}")
        return loss

    def close(self) -> None:
        os.close(self.ask)  # the process exits when it reads the end of this pipe
        os.close(self.answers)
        os.waitpid(self.pid, 0)


def _read(fd: int, size: int) -> bytes:
    """`size` bytes from a pipe, or fewer if it closes first."""
    data = b""
    while len(data) < size and (more := os.read(fd, size - len(data))):
        data += more
    return data


def _shared(shape: int | tuple[int, ...], dtype: Any) -> np.ndarray:
    """A zeroed array in anonymous shared memory: processes forked after this see its changes both ways."""
    count = int(np.prod(shape))
    buffer = mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize))  # MAP_SHARED | MAP_ANONYMOUS
    return np.frombuffer(buffer, dtype, count).reshape(shape)


def _serve(replica: Replica, feeds: dict[str, np.ndarray], rows: np.ndarray, lanes: int, lane: int,
           ask: int, answers: int) -> None:
    """A lane's process: each request, its passes into its gradient vector, until the pipe closes."""
    while len(request := _read(ask, ASK.size)) == ASK.size:
        n, block, passes, whole = ASK.unpack(request)
        try:
            loss = replica.run(feeds, None if whole else rows[:n], range(lane, passes, lanes), block)
            os.write(answers, ANSWER.pack(loss, 0))
        except Exception as e:  # told to the caller, which raises it
            text = f"{type(e).__name__}: {e}".encode()[:2048]
            os.write(answers, ANSWER.pack(0.0, len(text)) + text)


def _fork(replica: Replica, feeds: dict[str, np.ndarray], rows: np.ndarray, lanes: int, lane: int) -> _Lane:
    asks, answers = os.pipe(), os.pipe()
    with warnings.catch_warnings():  # 3.12+ warns when other threads exist; the child runs only NumPy and os calls
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: no descriptor of the parent's (sockets, other lanes' pipes) but stdio and its own
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            keep = sorted((asks[0], answers[1]))
            os.closerange(3, keep[0])
            os.closerange(keep[0] + 1, keep[1])
            os.closerange(keep[1] + 1, os.sysconf("SC_OPEN_MAX"))
            _serve(replica, feeds, rows, lanes, lane, asks[0], answers[1])
        finally:
            os._exit(0)
    os.close(asks[0])
    os.close(answers[1])
    return _Lane(lane, pid, asks[1], answers[0])


FORKS = sys.platform == "linux"  # where ProcessGradSum runs: fork is unsafe with macOS's system libraries


class ProcessGradSum:
    """GradSum's sum on `processes` processes: this one and processes - 1 forked from it, sharing
    (in shared memory) the weight vector `params`, each call's rows and a gradient vector per lane,
    with no GIL between them. Its `feeds` are fixed when it is made: the forked processes read them
    as they were then (copy-on-write, so not copied). Lanes and their order as GradSum's, so it
    gives the bits of GradSum(threads=processes) with the same block. Passes of BLOCK rows: with no
    GIL to hand over, cache-sized passes pay. Linux only (FORKS). The processes end when close()
    is called, this object is collected, or this process dies (their pipe from it closes)."""

    def __init__(self, build: Callable[[], Any], feeds: dict[str, np.ndarray], processes: int, block: int = BLOCK):
        self._lanes: list[_Lane] = []
        if not FORKS:
            raise RuntimeError(f"ProcessGradSum forks, which is safe on Linux only, not on {sys.platform}")
        if block < 1 or processes < 2:
            raise ValueError(f"ProcessGradSum: need block >= 1 and processes >= 2, "
                             f"got block={block}, processes={processes}")
        self.feeds, self.block, self.processes = dict(feeds), block, processes
        self.available = _rows_of(self.feeds)
        models = [build() for _ in range(processes)]
        self.model = models[0]
        start, _ = flatten(self.model.parameters())
        self.params = _shared(start.size, start.dtype)
        self.params[:] = start
        self.lane_grads = _shared((processes, start.size), start.dtype)
        self.replicas = [Replica(m, flatten(m.parameters(), self.params, g)[1])
                         for m, g in zip(models, self.lane_grads)]
        self.total = np.zeros_like(start)
        self._rows = _shared(self.available, np.int64)
        for lane in range(1, processes):
            self._lanes.append(_fork(self.replicas[lane], self.feeds, self._rows, processes, lane))

    def __call__(self, feeds: dict[str, np.ndarray], rows: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """As GradSum's; `feeds` must be the arrays it was made with (its processes read those).
        At most as many rows as the feeds have. A lane whose process is gone is forked again and
        the call done again, once."""
        if feeds.keys() != self.feeds.keys() or any(feeds[k] is not a for k, a in self.feeds.items()):
            raise ValueError("ProcessGradSum: feeds must be the arrays it was made with: its processes read those")
        n = self.available if rows is None else len(rows)
        if n > self.available:
            raise ValueError(f"ProcessGradSum: at most {self.available} rows a call (its feeds' rows), got {n}")
        if not self._lanes:
            raise RuntimeError("ProcessGradSum: closed")
        _check_rows(rows, self.available)
        if rows is not None:
            self._rows[:n] = rows
        try:
            loss = self._sum(n, rows)
        except LaneLost as lost:
            self._restart(lost.args[0])
            loss = self._sum(n, rows)
        return _add_in_lane_order(self.total, self.lane_grads), loss

    def _sum(self, n: int, rows: np.ndarray | None) -> float:
        """The loss sum of every lane's passes; their gradients in lane_grads."""
        block, passes = _passes(n, self.block, self.processes)
        asked, answers, failure = [], [], None
        for lane in self._lanes:
            try:
                lane.request(n, block, passes, rows is None)
                asked.append(lane)
            except LaneLost as e:
                failure = failure or e
        try:
            own = self.replicas[0].run(self.feeds, rows, range(0, passes, self.processes), block)
        finally:  # every lane asked answers, even if these passes failed, so that the next call gets its own
            for lane in asked:
                try:
                    answers.append(lane.answer())
                except RuntimeError as e:  # LaneLost, or what failed there
                    failure = failure or e
        if failure is not None:
            raise failure
        return sum([own] + answers)

    def _restart(self, index: int) -> None:
        lane = self._lanes[index - 1]
        lane.close()
        self._lanes[index - 1] = _fork(self.replicas[index], self.feeds, self._rows, self.processes, index)

    def close(self) -> None:
        """End the lanes' processes (each finishes its request first) and wait for them."""
        lanes, self._lanes = self._lanes, []
        for lane in lanes:
            lane.close()

    def __del__(self) -> None:
        self.close()
