"""micrograd.parallel: GradSum's sums over passes and threads against one whole-batch pass;
threads sharing one weight vector; repeatable bits; integer feeds; BLAS thread limits;
ProcessGradSum's forked lanes: the threads' bits, shared weights, a killed lane, a dead parent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from micrograd import Value, concat
from micrograd.losses import cross_entropy, pinball
from micrograd.nn import MLP, Embedding, flatten
from micrograd.parallel import FORKS, GradSum, ProcessGradSum, set_blas_threads

LEVELS = (0.1, 0.5, 0.9)


class Quantile:
    """An MLP 5 -> 16 tanh -> 3 with pinball loss: the shape of mgdist's quantile workload."""

    def __init__(self, seed: int = 1):
        self.mlp = MLP(5, [16], len(LEVELS), "tanh", seed=seed)
        self.loss = pinball(self.mlp(Value.placeholder("X", (None, 5))), Value.placeholder("y", (None,)), LEVELS)

    def parameters(self) -> list[Value]:
        return self.mlp.parameters()


class Categories:
    """Class of a row from an embedded code and two numbers: integer feeds through GradSum."""

    def __init__(self):
        rng = np.random.default_rng(2)
        self.embed, self.mlp = Embedding(7, 3, rng), MLP(5, [8], 4, "tanh", seed=2)
        codes = self.embed(Value.placeholder("code", (None,), integer=True))
        x = Value.placeholder("x", (None, 2))
        self.loss = cross_entropy(self.mlp(concat([codes, x], axis=1)), Value.placeholder("label", (None,), integer=True))

    def parameters(self) -> list[Value]:
        return self.embed.parameters() + self.mlp.parameters()


def quantile_data(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"X": rng.standard_normal((rows, 5)).astype(np.float32), "y": rng.standard_normal(rows).astype(np.float32)}


def whole_batch(model, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """The reference: one forward and backward over all rows, the mean gradient times the rows."""
    _, grads = flatten(model.parameters())
    n = len(next(iter(feeds.values())))
    loss = float(model.loss.forward(**feeds))
    model.loss.backward()
    return grads * n, loss * n


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("given_rows", [False, True], ids=["all rows", "rows given"])
def test_sum_over_passes_and_threads_is_the_whole_batch(threads, given_rows):
    feeds = quantile_data(7 * 64 + 23)  # a partial last pass
    rows = np.random.default_rng(3).permutation(len(feeds["X"]))[:5 * 64 + 11] if given_rows else None
    want, want_loss = whole_batch(Quantile(), feeds if rows is None else {k: a[rows] for k, a in feeds.items()})
    gs = GradSum(Quantile, block=64, threads=threads)
    grad, loss = gs(feeds, rows)
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert loss == pytest.approx(want_loss, rel=1e-5)


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_give_one_threads_sum_and_the_same_bits_every_time(threads):
    feeds, rows = quantile_data(2000), np.random.default_rng(4).permutation(2000)[:1500]
    one = GradSum(Quantile, block=100)(feeds, rows)[0].copy()
    gs = GradSum(Quantile, block=100, threads=threads)
    first = gs(feeds, rows)[0].copy()
    np.testing.assert_allclose(first, one, rtol=1e-5, atol=1e-6 * np.abs(one).max())
    for _ in range(3):  # the order of summation is fixed: however the threads are scheduled
        np.testing.assert_array_equal(gs(feeds, rows)[0], first)


def test_single_thread_sums_pass_by_pass_in_order():
    """threads=1 adds each pass's gradient of its rows' loss sum, in order (what workers rely on)."""
    feeds = quantile_data(250)
    model = Quantile()
    _, grads = flatten(model.parameters())
    want = np.zeros_like(grads)
    for lo in range(0, 250, 100):
        model.loss.forward(**{k: a[lo:lo + 100] for k, a in feeds.items()})
        model.loss.backward(seed=min(100, 250 - lo))
        want += grads
    np.testing.assert_array_equal(GradSum(Quantile, block=100)(feeds)[0], want)


def test_threads_get_smaller_passes_when_the_rows_are_few():
    """Default passes on several threads are long (THREAD_BLOCK rows), but 300 rows still go to
    both threads: each replica sums a part, and together they are the whole batch."""
    feeds = quantile_data(300)
    want, _ = whole_batch(Quantile(), feeds)
    gs = GradSum(Quantile, threads=2)
    grad, _ = gs(feeds)
    assert all(np.abs(r.grads).max() > 0 for r in gs.replicas)
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_rows_out_of_range_are_refused_by_index():
    feeds = quantile_data(50)
    with pytest.raises(IndexError, match="GradSum: row 50 is out of range for feeds of 50 rows"):
        GradSum(Quantile, block=16)(feeds, np.array([3, 50, 7]))
    with pytest.raises(IndexError, match="row -1 is out"):
        GradSum(Quantile, block=16, threads=2)(feeds, np.array([-1, 2]))


def test_every_thread_reads_the_weights_written_into_params():
    feeds = quantile_data(600)
    gs, one = GradSum(Quantile, block=50, threads=3), GradSum(Quantile, block=50)
    new = np.random.default_rng(5).standard_normal(gs.params.size).astype(np.float32) * 0.3
    gs.params[:] = new
    one.params[:] = new
    before = GradSum(Quantile, block=50)(feeds)[0]
    got, want = gs(feeds)[0], one(feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert np.abs(got - before).max() > 1e-3 * np.abs(before).max()  # the new weights were used


def test_integer_feeds_are_gathered_as_integers():
    rng = np.random.default_rng(6)
    feeds = {"code": rng.integers(0, 7, 900), "x": rng.standard_normal((900, 2)).astype(np.float32),
             "label": rng.integers(0, 4, 900)}
    rows = rng.permutation(900)[:700]
    want, want_loss = whole_batch(Categories(), {k: a[rows] for k, a in feeds.items()})
    grad, loss = GradSum(Categories, block=128, threads=2)(feeds, rows)
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert loss == pytest.approx(want_loss, rel=1e-5)


def test_flatten_onto_a_shared_vector_keeps_its_values_and_checks_its_size():
    first, second = Quantile(seed=1), Quantile(seed=9)
    data, grads = flatten(first.parameters())
    kept = data.copy()
    shared, own = flatten(second.parameters(), data)
    assert shared is data and own is not grads
    np.testing.assert_array_equal(data, kept)  # second's own (other) values dropped
    assert all(np.shares_memory(p.data, data) for p in second.parameters())
    with pytest.raises(ValueError, match="flatten: .*vector of"):
        flatten(second.parameters(), data[:-1])


@pytest.mark.parametrize("cpus,threads,blas", [(2, 2, 1), (2, 1, 2), (8, 3, 2), (1, 4, 1)])
def test_set_blas_threads_fits_the_cpus(cpus, threads, blas):
    before = {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    try:
        assert set_blas_threads(cpus, threads) == blas
        assert all(i["num_threads"] == blas for i in threadpool_info() if i["user_api"] == "blas")
    finally:
        for n in set(before.values()):
            threadpool_limits(limits=n, user_api="blas")


def test_gradsum_rejects_a_block_or_thread_count_of_zero():
    with pytest.raises(ValueError, match="GradSum: need block >= 1 and threads >= 1"):
        GradSum(Quantile, block=0)
    with pytest.raises(ValueError, match="threads=0"):
        GradSum(Quantile, threads=0)


forks = pytest.mark.skipif(not FORKS, reason="ProcessGradSum forks: Linux only")


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, exited but not yet waited for, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@forks
@pytest.mark.parametrize("processes", [2, 3])
@pytest.mark.parametrize("given_rows", [False, True], ids=["all rows", "rows given"])
def test_processes_give_the_threads_bits_and_the_whole_batch(processes, given_rows):
    feeds = quantile_data(7 * 64 + 23)
    rows = np.random.default_rng(3).permutation(len(feeds["X"]))[:5 * 64 + 11] if given_rows else None
    want, want_loss = whole_batch(Quantile(), feeds if rows is None else {k: a[rows] for k, a in feeds.items()})
    threads = GradSum(Quantile, block=64, threads=processes)(feeds, rows)
    gs = ProcessGradSum(Quantile, feeds, processes, block=64)
    try:
        for _ in range(2):  # and again: each lane zeroes its gradient, and reads the rows of this call
            grad, loss = gs(feeds, rows)
            np.testing.assert_array_equal(grad, threads[0])
            assert loss == threads[1]
        np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
        assert loss == pytest.approx(want_loss, rel=1e-5)
        assert all(np.abs(g).max() > 0 for g in gs.lane_grads)  # every lane summed a part
    finally:
        gs.close()


@forks
def test_every_process_reads_the_weights_and_the_rows_of_each_call():
    feeds, rng = quantile_data(3000), np.random.default_rng(7)
    gs, one = ProcessGradSum(Quantile, feeds, 2, block=100), GradSum(Quantile, block=100)
    try:
        for _ in range(3):
            new, rows = rng.standard_normal(gs.params.size).astype(np.float32) * 0.3, rng.permutation(3000)[:1700]
            gs.params[:] = new
            one.params[:] = new
            want = one(feeds, rows)[0]
            np.testing.assert_allclose(gs(feeds, rows)[0], want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    finally:
        gs.close()


@forks
def test_integer_feeds_through_processes():
    rng = np.random.default_rng(6)
    feeds = {"code": rng.integers(0, 7, 900), "x": rng.standard_normal((900, 2)).astype(np.float32),
             "label": rng.integers(0, 4, 900)}
    rows = rng.permutation(900)[:700]
    gs = ProcessGradSum(Categories, feeds, 2, block=128)
    try:
        np.testing.assert_array_equal(gs(feeds, rows)[0], GradSum(Categories, block=128, threads=2)(feeds, rows)[0])
    finally:
        gs.close()


@forks
def test_a_killed_lane_is_forked_again_and_the_sum_is_unchanged():
    feeds, rows = quantile_data(2000), np.random.default_rng(8).permutation(2000)[:1500]
    gs = ProcessGradSum(Quantile, feeds, 3, block=100)
    try:
        want = gs(feeds, rows)[0].copy()
        killed = gs._lanes[1].pid
        os.kill(killed, signal.SIGKILL)
        np.testing.assert_array_equal(gs(feeds, rows)[0], want)
        assert gs._lanes[1].pid != killed and alive(gs._lanes[1].pid) and not alive(killed)
    finally:
        gs.close()


@forks
def test_close_ends_the_lanes_and_bad_calls_are_refused():
    feeds = quantile_data(300)
    gs = ProcessGradSum(Quantile, feeds, 2)
    pids = [lane.pid for lane in gs._lanes]
    with pytest.raises(ValueError, match="feeds must be the arrays it was made with"):
        gs({k: a.copy() for k, a in feeds.items()})
    with pytest.raises(ValueError, match="at most 300 rows a call"):
        gs(feeds, np.zeros(301, np.int64))
    with pytest.raises(IndexError, match="row 300 is out of range for feeds of 300 rows"):
        gs(feeds, np.array([0, 300]))
    grad = gs(feeds)[0]  # still in step after the refusals
    np.testing.assert_allclose(grad, GradSum(Quantile)(feeds)[0], rtol=1e-5, atol=1e-6 * np.abs(grad).max())
    gs.close()
    assert not any(alive(p) for p in pids)
    with pytest.raises(RuntimeError, match="closed"):
        gs(feeds)
    with pytest.raises(ValueError, match="processes >= 2"):
        ProcessGradSum(Quantile, feeds, 1)


@forks
def test_the_lanes_end_when_their_parent_is_killed(tmp_path):
    """A worker killed with SIGKILL (Ray's ray.kill, a lost node) runs no close(); its lanes see
    their pipe from it close and exit, so none outlives it."""
    script = tmp_path / "parent.py"
    script.write_text(f"""import sys, time
sys.path[:0] = {[os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))]!r}
from test_parallel import Quantile, quantile_data
from micrograd.parallel import ProcessGradSum
feeds = quantile_data(500)
gs = ProcessGradSum(Quantile, feeds, 3)
gs(feeds)
print(*[lane.pid for lane in gs._lanes], flush=True)
time.sleep(60)
""")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        lanes = [int(p) for p in parent.stdout.readline().split()]
        assert len(lanes) == 2 and all(alive(p) for p in lanes)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in lanes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in lanes)
