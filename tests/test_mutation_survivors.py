"""Tests written to kill mutants that the rest of the suite let survive (bench/mutation.py):
graph labels and buffers of every op, ties, argument checks and their messages, the documented
row-order rules, repeated add() of stats, partial checkpoint files of other processes."""
import os
import re

import numpy as np
import pytest

from micrograd import Value, concat, optim, tensordot, where
from micrograd.losses import pinball
from mgdist import checkpoint
from mgdist.config import TrainConfig
from mgdist.data import DataError, plan_shards
from mgdist.fleet import split_batch
from mgdist.workloads.quantile import QuantileStats
from mgdist.server import make_optimizer
from mgdist.worker import epoch_order, split_rows
from reference import epoch_rows, held_out, shares

RNG = np.random.default_rng(0)
A = (RNG.random((3, 4)) * 0.8 + 0.1).astype(np.float32)  # in (0.1, 0.9): every op is defined there
B = (RNG.random((3, 4)) * 0.8 + 0.1).astype(np.float32)
W = (RNG.standard_normal((4, 2))).astype(np.float32)
BIAS = np.array([0.5, -0.5], np.float32)

OPS = {  # op label: the graph over placeholders a, b (3, 4), w (4, 2), bias (2,)
    "add": lambda a, b, w, c: a + b, "sub": lambda a, b, w, c: a - b, "mul": lambda a, b, w, c: a * b,
    "div": lambda a, b, w, c: a / b, "maximum": lambda a, b, w, c: a.maximum(b),
    "minimum": lambda a, b, w, c: a.minimum(b), "matmul": lambda a, b, w, c: a @ w,
    "affine": lambda a, b, w, c: a.affine(w, c), "tensordot": lambda a, b, w, c: a.tensordot(w, axes=1),
    "transpose": lambda a, b, w, c: a.transpose(), "reshape": lambda a, b, w, c: a.reshape(12),
    "getitem": lambda a, b, w, c: a[1:], "sum": lambda a, b, w, c: a.sum(axis=0), "mean": lambda a, b, w, c: a.mean(axis=1),
    "max": lambda a, b, w, c: a.max(axis=1), "cumsum": lambda a, b, w, c: a.cumsum(axis=1),
    "relu": lambda a, b, w, c: (a - 0.5).relu(), "tanh": lambda a, b, w, c: a.tanh(), "sigmoid": lambda a, b, w, c: a.sigmoid(),
    "softplus": lambda a, b, w, c: a.softplus(), "exp": lambda a, b, w, c: a.exp(), "log": lambda a, b, w, c: a.log(),
    "log1p": lambda a, b, w, c: a.log1p(), "sqrt": lambda a, b, w, c: a.sqrt(), "abs": lambda a, b, w, c: (a - 0.5).abs(),
    "arcsin": lambda a, b, w, c: a.arcsin(), "arcsinh": lambda a, b, w, c: a.arcsinh(),
    "arctanh": lambda a, b, w, c: a.arctanh(), "concat": lambda a, b, w, c: concat([a, b], axis=1),
    "where": lambda a, b, w, c: where(A > 0.5, a, b), "pow3": lambda a, b, w, c: a ** 3,
}


def graph(op: str):
    a, b = Value.placeholder("a", (None, 4)) + Value(np.zeros(4, np.float32)), Value(B)  # a needs a gradient too
    w, c = Value(W), Value(BIAS)
    return OPS[op](a, b, w, c), (b, w, c)


@pytest.mark.parametrize("op", OPS)
def test_every_op_labels_its_node(op):
    out, _ = graph(op)
    assert out.op == op and out.requires_grad
    assert repr(out) == f"Value(op={op!r}, name='', shape=None)"  # not computed yet: a placeholder feeds it


BUFFERED = ["add", "sub", "mul", "div", "maximum", "minimum", "matmul", "affine", "relu", "tanh", "sigmoid", "softplus",
            "exp", "log", "log1p", "sqrt", "abs", "arcsin", "arcsinh", "arctanh", "pow3"]  # ops that write into buffers


@pytest.mark.parametrize("op", BUFFERED)
def test_every_op_reuses_its_buffers_from_step_to_step(op):
    """The second forward and backward on a batch of the same size write into the arrays of the
    first: the node's data and its backward's scratch arrays stay where they were."""
    out, _ = graph(op)
    loss = (out * out).sum()
    where_ = []
    for _ in range(2):
        loss.forward(a=A.copy())
        loss.backward()
        where_.append({"data": out.data.__array_interface__["data"][0]}
                      | {key: s.__array_interface__["data"][0] for key, s in out._scratch.items()})
    assert where_[1] == where_[0]
    if op in ("matmul", "affine"):  # each gradient of its own scratch array: one per input (affine: and W.T)
        assert len(out._scratch) == {"matmul": 2, "affine": 4}[op]


def test_pinball_reuses_its_buffers_and_labels_its_node():
    pred, y = Value.placeholder("p", (None, 3)) + Value(np.zeros(3)), Value.placeholder("y", (None,))  # pred needs a grad
    loss = pinball(pred, y, (0.1, 0.5, 0.9))
    assert loss.op == "pinball"
    seen = []
    for _ in range(2):
        loss.forward(p=np.ones((5, 3), np.float32), y=np.zeros(5, np.float32))
        loss.backward()
        seen.append(sorted((k, s.__array_interface__["data"][0], s.shape) for k, s in loss._scratch.items()))
    assert seen[0] == seen[1] and len(seen[0]) == 4  # forward: difference, sign mask, slopes; backward: the gradient


def test_pinball_gradient_at_a_zero_residual_is_minus_q():
    """At y == prediction the loss has a kink; the gradient taken there is -q (the right derivative)."""
    pred = Value(np.zeros((2, 3), np.float32))
    pinball(pred, Value(np.zeros(2, np.float32)), (0.1, 0.5, 0.9)).backward()
    np.testing.assert_allclose(pred.grad, -np.array([[0.1, 0.5, 0.9]] * 2) / 6, rtol=1e-6)


def test_pinball_rejects_mismatched_targets():
    with pytest.raises(ValueError, match=r"^pinball: prediction shape \(4, 3\) does not match 5 targets x 3 quantile levels$"):
        pinball(Value(np.zeros((4, 3))), Value(np.zeros(5)), (0.1, 0.5, 0.9))


def test_maximum_and_minimum_share_the_gradient_at_ties():
    for op in ("maximum", "minimum"):
        a, b = Value(np.array([1.0, 2.0, 3.0])), Value(np.array([1.0, 1.0, 4.0]))
        getattr(a, op)(b).sum().backward()
        big = op == "maximum"
        assert a.grad.tolist() == [0.5, 1.0 if big else 0.0, 0.0 if big else 1.0]
        assert b.grad.tolist() == [0.5, 0.0 if big else 1.0, 1.0 if big else 0.0]


def test_concat_and_tensordot_defaults():
    a, b = np.ones((2, 3), np.float32), np.ones((1, 3), np.float32)
    assert concat([Value(a), Value(b)]).data.shape == (3, 3)  # axis 0
    x, y = np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.ones((3, 4, 5), np.float32)
    np.testing.assert_array_equal(tensordot(Value(x), Value(y)).data, np.tensordot(x, y))  # the last two axes of x
    np.testing.assert_array_equal(Value(x).tensordot(Value(y)).data, np.tensordot(x, y, axes=2))


def test_repr_of_leaves_and_placeholders():
    assert repr(Value(np.zeros((2, 3)), name="w")) == "Value(op='leaf', name='w', shape=(2, 3))"
    assert repr(Value.placeholder("X", (None, 3))) == "Value(op='placeholder', name='X', shape=None)"


def test_placeholder_shape_errors_name_the_wildcards():
    x = Value.placeholder("X", (None, 3))
    with pytest.raises(ValueError, match=r"^placeholder 'X' expects shape \(None, 3\), got \(2, 4\)$"):
        x.feed(np.zeros((2, 4)))


# ---- optimisers and schedules: the boundaries of their argument checks, and their messages ----

def test_schedule_boundaries():
    assert optim.warmup_cosine(1.0, 0, 10)(0) == 1.0  # no warm-up is allowed
    assert optim.warmup_cosine(1.0, 2, 10)(2) == 1.0  # warm-up ends at lr, where the cosine starts
    assert optim.warmup_cosine(1.0, 2, 10)(10) == 0.0  # decays to min_lr, 0 by default
    assert optim.warmup_linear(1.0, 0)(0) == 1.0
    for bad, message in [(lambda: optim.warmup_linear(1.0, -1), "warmup must be >= 0, got -1"),
                         (lambda: optim.warmup_cosine(1.0, -1, 10), "need 0 <= warmup < total, got warmup=-1, total=10"),
                         (lambda: optim.warmup_cosine(1.0, 10, 10), "need 0 <= warmup < total, got warmup=10, total=10")]:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            bad()


def test_optimizer_argument_boundaries_and_messages():
    optim.SGD(1, 0.0)  # lr 0 is allowed
    optim.Adam(1, 0.1, betas=(0.0, 0.0), eps=0.0)  # so are betas and eps of 0
    assert optim.Adam(1).schedule(0) == 1e-3 and optim.AdamW(1).schedule(0) == 1e-3
    assert optim.AdamW(1).weight_decay == 0.01
    for bad, message in [
        (lambda: optim.SGD(1, -0.1), "need lr >= 0 and weight_decay >= 0, got -0.1, 0.0"),
        (lambda: optim.SGD(1, 0.1, weight_decay=-1), "need lr >= 0 and weight_decay >= 0, got 0.1, -1"),
        (lambda: optim.SGD(1, 0.1, nesterov=True), "need momentum >= 0, and > 0 for Nesterov; got 0.0"),
        (lambda: optim.Adam(1, 0.1, betas=(1.0, 0.5)), "need 0 <= betas < 1 and eps >= 0, got (1.0, 0.5), 1e-08"),
        (lambda: optim.Adam(1, 0.1, betas=(0.5, 1.0)), "need 0 <= betas < 1 and eps >= 0, got (0.5, 1.0), 1e-08"),
        (lambda: optim.Adam(1, 0.1, betas=(-0.1, 0.5)), "need 0 <= betas < 1 and eps >= 0"),
        (lambda: optim.Adam(1, 0.1, betas=(0.5, -0.1)), "need 0 <= betas < 1 and eps >= 0"),
        (lambda: optim.Adam(1, 0.1, eps=-1.0), "need 0 <= betas < 1 and eps >= 0"),
        (lambda: optim.make("lion", 1, 0.1), "unknown optimizer 'lion'; choose one of ['adam', 'adamw', 'sgd']"),
    ]:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
            bad()


def test_step_argument_messages_name_the_array():
    opt = optim.SGD(2, 0.1)
    with pytest.raises(ValueError, match=r"^params: want float32 \(2,\), got float64 \(2,\)$"):
        opt.step(np.zeros(2), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"^grads: want float32 \(2,\), got float32 \(3,\)$"):
        opt.step(np.zeros(2, np.float32), np.zeros(3, np.float32))


def test_state_steps_is_int64_and_may_be_zero_but_not_negative():
    opt = optim.Adam(2, 0.1)
    state = opt.state_dict()
    assert state["steps"].dtype == np.int64 and state["steps"].shape == ()
    opt.load_state_dict(state)  # 0 steps
    with pytest.raises(ValueError, match=r"^optimizer state 'steps' is negative: -1$"):
        opt.load_state_dict(state | {"steps": np.array(-1, np.int64)})


def test_the_runs_weight_decay_is_what_every_optimizer_gets():
    """--weight-decay is passed as it is: its default 0 turns AdamW's own default (0.01) off too,
    so that a run's decay is the one its config (and checkpoint) says."""
    assert make_optimizer(TrainConfig(optimizer="adamw"), 1, 10).weight_decay == 0.0
    assert make_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.01), 1, 10).weight_decay == 0.01
    assert make_optimizer(TrainConfig(optimizer="adam"), 1, 10).weight_decay == 0.0


# ---- row order and shard planning: the documented rules (tests/reference.py) ----

@pytest.mark.parametrize("seed, rank", [(0, 0), (3, 1), (7, 5)])
def test_rows_follow_the_documented_seeds(seed, rank):
    train, val = split_rows(1000, 0.1, seed, rank)
    ref_train, ref_val = held_out(1000, 0.1, seed, rank)
    assert np.array_equal(train, ref_train) and np.array_equal(val, ref_val)
    for epoch in (0, 1, 5):
        assert np.array_equal(epoch_order(train, seed, rank, epoch), epoch_rows(train, seed, rank, epoch))
    assert split_batch(1001, [5, 7, 11]) == shares(1001, [5, 7, 11])


def test_plan_rejects_infinite_weights_and_too_few_groups():
    with pytest.raises(DataError, match=r"^need k >= 1 positive finite weights, got k=2, weights=\[1.0, inf\]$"):
        plan_shards([5, 5], 2, weights=[1, float("inf")])
    with pytest.raises(DataError, match=r"^1 non-empty row groups cannot be split among 2 workers: "
                                        r"write smaller row groups or use fewer workers$"):
        plan_shards([5, 0], 2)


# ---- metrics ----

def test_stats_add_accumulates_over_calls():
    y = np.array([0.0, 1.0, 2.0, 3.0], np.float32)
    pred = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [3.0, 2.0, 1.0], [0.0, 3.0, 3.0]], np.float32)  # rows 1, 2 cross
    twice = QuantileStats((0.1, 0.5, 0.9)).add(y[:2], pred[:2]).add(y[2:], pred[2:]).summary()
    assert twice == QuantileStats((0.1, 0.5, 0.9)).add(y, pred).summary() and twice["crossing_rate"] == 0.5
    column = QuantileStats((0.1, 0.5, 0.9)).add(y.reshape(-1, 1), pred).summary()  # targets as a column
    assert column == twice


def test_stats_of_one_row():
    s = QuantileStats((0.5,)).add(np.array([2.0], np.float32), np.array([[1.0]], np.float32)).summary()
    assert s == {"rows": 1, "pinball": 0.5, "pinball_per_level": {"0.5": 0.5}, "coverage": {"0.5": 0.0},
                 "interval_coverage": {}, "interval_width": {}, "crossing_rate": 0.0}


def test_stats_at_ties():
    """A target on a predicted bound is inside the interval; equal neighbouring quantiles do not cross."""
    y = np.array([1.0, 3.0], np.float32)
    pred = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 3.0]], np.float32)
    s = QuantileStats((0.1, 0.5, 0.9)).add(y, pred).summary()
    assert s["interval_coverage"]["0.1-0.9"] == 1.0 and s["crossing_rate"] == 0.0
    assert s["coverage"] == {"0.1": 0.5, "0.5": 0.5, "0.9": 1.0}  # y <= p, ties included


# ---- checkpoints ----

def test_manifest_format_and_partial_files_of_other_processes(tmp_path):
    d = str(tmp_path / "ck")
    path = checkpoint.save(d, 1, {"params": np.zeros(3, np.float32)}, {}, keep=2)
    assert checkpoint.load(d, 1)[1]["format"] == 1 and path == f"{d}/ckpt-000000001.json"
    theirs, mine = tmp_path / "ck" / ".ckpt-000000002.json.tmp-999999999", tmp_path / "ck" / f".ckpt-x.npz.tmp-{os.getpid()}"
    other = tmp_path / "ck" / "notes.txt"
    for f in (theirs, mine, other):
        f.write_bytes(b"partial")
    checkpoint.save(d + "/", 2, {"params": np.ones(3, np.float32)}, {}, keep=2)  # a trailing slash names the same dir
    assert theirs.exists() and mine.exists() and other.exists()  # a save touches no file but its own checkpoints'
    assert checkpoint.steps(d) == [1, 2]
    assert sorted(checkpoint.sweep(d)) == sorted([theirs.name, mine.name])  # partial files go when the owner sweeps
    assert not theirs.exists() and not mine.exists() and other.exists()


def test_default_keep_is_three_and_directory_names_are_kept_whole(tmp_path):
    d = str(tmp_path / "runX")  # a name ending in a letter that a wrong strip would also remove
    for step in range(1, 6):
        checkpoint.save(d + "/", step, {"params": np.full(2, step, np.float32)}, {})
    assert checkpoint.steps(d) == [3, 4, 5] and sorted(os.listdir(tmp_path)) == ["runX"]
