"""ParameterServer.apply and make_optimizer without Ray: hand-computed row-weighted averages,
the loss window, skipped steps and the learning-rate schedules."""
import math

import numpy as np
import pytest

from mgdist import link
from mgdist.config import TrainConfig
from mgdist.server import NonFiniteError, ParameterServer, make_optimizer


def server(params, **config) -> ParameterServer:
    """The class itself (ray.remote wraps it elsewhere), with SGD at a constant lr: params -= lr * mean grad."""
    config = TrainConfig(**dict(optimizer="sgd", lr=1.0, schedule="constant") | config)
    return ParameterServer(config, np.array(params, np.float32), 10, link.Secret.new())


def answer(grad, rows, loss, seconds=0.0):
    return np.array(grad, np.float32), rows, loss, seconds


def test_gradients_are_averaged_over_rows_not_workers():
    ps = server([1, 2, 3])
    # worker 0: a gradient sum over 3 rows, worker 1 over 5: the mean over 8 rows is [1, 1, 0]
    ps.apply([answer([3, 0, 6], 3, 1.5, 1.0), answer([5, 8, -6], 5, 2.5, 3.0)])
    assert ps.params.tolist() == [0, 1, 3] and ps.step == 1
    ps.apply([answer([8, -16, 4], 8, 4.0, 2.0)])  # one worker: its sum over its 8 rows
    assert ps.params.tolist() == [-1, 3, 2.5]
    state = ps.state()
    assert state.step == 2 and state.params.tolist() == [-1, 3, 2.5]
    assert state.train_loss == pytest.approx((1.5 + 2.5 + 4.0) / 16)  # mean over every row of the window
    assert (state.slowest_s, state.mean_s) == (3.0 + 2.0, 2.0 + 2.0)  # slowest worker per step, mean worker per step
    assert state.skips == () and int(state.optimizer["steps"]) == 2
    assert ps.state().train_loss == state.train_loss  # an empty window keeps the last loss
    assert state.log.tolist() == [(0, 8, 4.0, True), (1, 8, 4.0, True)]  # step, rows, loss sum, applied


def test_the_step_log_records_each_step_once_and_restarts_after_each_state():
    ps = server([0.0], on_nonfinite="skip")
    ps.apply([answer([1], 3, 1.5)])
    first = ps.state()
    ps.apply([answer([np.nan], 2, 1.0)])
    ps.apply([answer([1], 1, 0.25), answer([1], 4, 2.0)])
    second = ps.state()
    assert first.log.tolist() == [(0, 3, 1.5, True)]
    assert second.log.tolist() == [(1, 2, 1.0, False), (2, 5, 2.25, True)]
    assert ps.state().log.tolist() == []


def test_learning_rate_scales_the_mean_gradient():
    ps = server([0, 0], lr=0.5)
    ps.apply([answer([2, 4], 2, 0.0), answer([6, 0], 2, 0.0)])  # mean [2, 1]
    assert ps.params.tolist() == [-1, -0.5]


def test_a_nonfinite_step_stops_or_is_skipped_untouched():
    bad = [answer([1, 1], 1, 0.5), answer([np.nan, 0], 1, 0.5)]
    ps = server([1, 1])
    with pytest.raises(NonFiniteError, match=r"^step 0: non-finite gradient or loss from worker\(s\) \[1\]$"):
        ps.apply(bad)
    ps = server([1, 1], on_nonfinite="skip")
    ps.apply([answer([2, 2], 2, 1.0)])
    ps.apply(bad)
    ps.apply([answer([1, 1], 1, float("inf")), answer([0, 0], 1, 1.0)])  # an infinite loss too
    assert ps.params.tolist() == [0, 0] and ps.step == 3
    state = ps.state()
    assert list(state.skips) == ["step 1: non-finite gradient or loss from worker(s) [1]: step skipped",
                              "step 2: non-finite gradient or loss from worker(s) [0]: step skipped"]
    assert int(state.optimizer["steps"]) == 1 and state.train_loss == 0.5  # skipped steps count nowhere


def test_adam_state_is_restored_and_continues():
    config = TrainConfig(optimizer="adam", lr=0.1, schedule="constant")
    one = ParameterServer(config, np.zeros(2, np.float32), 10, link.Secret.new())
    for g in ([1, -2], [3, 1]):
        one.apply([answer(g, 1, 0.0)])
    saved = one.state()
    two = ParameterServer(config, saved.params, 10, link.Secret.new(), step=saved.step, optimizer_state=saved.optimizer)
    for ps in (one, two):
        ps.apply([answer([-1, 4], 1, 0.0)])
    np.testing.assert_array_equal(one.params, two.params)
    assert two.step == 3
    # Adam by hand: after steps with g = 1, 3, -1 (first component), m and v with bias correction
    m = v = 0.0
    p = 0.0
    for t, g in enumerate([1, 3, -1], start=1):
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        p -= 0.1 * (m / (1 - 0.9**t)) / (math.sqrt(v / (1 - 0.999**t)) + 1e-8)
    assert one.params[0] == pytest.approx(p, rel=1e-5)


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [0.1] * 10),
    ("linear", [0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]),
    # warm-up over 4 steps, then a cosine from 0.1 at step 4 to 0.005 at step 10
    ("cosine", [0.025, 0.05, 0.075, 0.1] + [0.005 + 0.0475 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]),
])
def test_schedules(schedule, expected):
    opt = make_optimizer(TrainConfig(lr=0.1, schedule=schedule, warmup_steps=4), size=1, total_steps=10)
    assert [opt.schedule(s) for s in range(10)] == pytest.approx(expected)
    assert opt.schedule(10) == pytest.approx({"cosine": 0.005}.get(schedule, 0.1))


def test_cosine_warmup_is_cut_to_fit_a_short_run():
    opt = make_optimizer(TrainConfig(lr=0.1, schedule="cosine", warmup_steps=20), size=1, total_steps=3)
    assert [opt.schedule(s) for s in range(4)] == pytest.approx([0.05, 0.1, 0.1, 0.005])  # 2 warm-up steps, 1 of decay


@pytest.mark.parametrize("name, weight_decay, expected", [
    ("sgd", 0.0, 1 - 0.1 * 2),              # p -= lr * g
    ("sgd", 0.5, 1 - 0.1 * (2 + 0.5)),      # L2: g + wd * p
    ("adamw", 0.0, 1 - 0.1),                # --weight-decay 0 means none, not adamw's own default of 0.01
    ("adamw", 0.5, 1 * (1 - 0.1 * 0.5) - 0.1),  # decoupled decay, then Adam's first step: lr * sign(g)
    ("adam", 0.5, 1 - 0.1),                 # L2 inside Adam: the first step is still lr * sign(g + wd * p)
])
def test_optimizer_and_weight_decay_are_the_configs(name, weight_decay, expected):
    opt = make_optimizer(TrainConfig(optimizer=name, lr=0.1, schedule="constant", weight_decay=weight_decay), 1, 10)
    p = np.ones(1, np.float32)
    opt.step(p, np.full(1, 2, np.float32))
    assert p[0] == pytest.approx(expected, rel=1e-6)
    assert opt.weight_decay == weight_decay
