"""Optimisers against their published update rules, worked out by hand on tiny inputs."""
import functools
import math
import tracemalloc

import numpy as np
import pytest

from micrograd import optim

f32 = np.float32
KINDS = [  # (name, kwargs): every code path of every optimiser
    ("sgd", {}),
    ("sgd", dict(momentum=0.9, weight_decay=0.1)),
    ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("adam", dict(weight_decay=0.1)),
    ("adamw", {}),
]
KIND_IDS = ["sgd", "sgd-momentum", "sgd-nesterov", "adam", "adamw"]


def run(opt, p0, grads) -> np.ndarray:
    """Step opt from params p0 through grads; the params after each step, one row per step."""
    p = np.array(p0, f32)
    out = []
    for g in grads:
        opt.step(p, np.array(g, f32))
        out.append(p.copy())
    return np.array(out)


def close(got: np.ndarray, want: list) -> None:
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_schedules_at_key_steps():
    assert optim.constant(0.3)(0) == optim.constant(0.3)(10**6) == 0.3
    lin = optim.warmup_linear(0.4, warmup=4)
    assert [lin(s) for s in range(6)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    assert optim.warmup_linear(0.4, warmup=0)(0) == 0.4
    cos = optim.warmup_cosine(1.0, warmup=2, total=6, min_lr=0.2)
    # warm-up 0.5, 1.0; then 0.2 + 0.4 * (1 + cos(pi * (s - 2) / 4)) until step 6, then 0.2
    assert [cos(s) for s in (0, 1, 2, 3, 4, 6, 7, 1000)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.2 + 0.4 * (1 + math.sqrt(0.5)), 0.6, 0.2, 0.2, 0.2])
    with pytest.raises(ValueError):
        optim.warmup_cosine(1.0, warmup=5, total=5)
    with pytest.raises(ValueError):
        optim.warmup_linear(1.0, warmup=-1)


def test_sgd_by_hand():
    # p -= 0.1 * g: [1, -2] - [0.05, 0.025] = [0.95, -2.025]; then - [0.1, -0.1]
    got = run(optim.SGD(2, lr=0.1), [1, -2], [[0.5, 0.25], [1, -1]])
    close(got, [[0.95, -2.025], [0.85, -1.925]])


def test_sgd_momentum_by_hand():
    # b = 0.9 b + g: 1, 1.9, 2.71 (and -2, -3.8, -5.42); p -= 0.1 b
    got = run(optim.SGD(2, lr=0.1, momentum=0.9), [1, 0], [[1, -2]] * 3)
    close(got, [[0.9, 0.2], [0.71, 0.58], [0.439, 1.122]])


def test_sgd_nesterov_by_hand():
    # b = 1, 1.9, 2.71; p -= 0.1 (g + 0.9 b) = 0.1 * 1.9, 0.1 * 2.71, 0.1 * 3.439
    got = run(optim.SGD(1, lr=0.1, momentum=0.9, nesterov=True), [1], [[1]] * 3)
    close(got, [[0.81], [0.539], [0.1951]])


def test_sgd_weight_decay_with_momentum_by_hand():
    # g = 1 + 0.1 p: 1.2, 1.188, 1.17012; b = 0.5 b + g: 1.2, 1.788, 2.06412; p -= 0.1 b
    got = run(optim.SGD(1, lr=0.1, momentum=0.5, weight_decay=0.1), [2], [[1]] * 3)
    close(got, [[1.88], [1.7012], [1.494788]])


def test_sgd_follows_schedule():
    # lr 0.1, 0.2, 0.3, 0.4, 0.4 with g = 1
    got = run(optim.SGD(1, lr=optim.warmup_linear(0.4, 4)), [0], [[1]] * 5)
    close(got, [[-0.1], [-0.3], [-0.6], [-1.0], [-1.4]])


ADAM_HAND = dict(lr=0.1, betas=(0.5, 0.75), eps=0.5)
ADAM_GRADS = [[2, 0.5], [-2, 0], [4, -1]]


def test_adam_by_hand():
    # first coordinate, g = 2, -2, 4:
    # t=1: m = 1, v = 1; m^ = 1/0.5 = 2, v^ = 1/0.25 = 4; p = 1 - 0.1*2/(2+0.5) = 0.92
    # t=2: m = -0.5, v = 1.75; m^ = -0.5/0.75 = -2/3, v^ = 1.75/0.4375 = 4; p += 0.1*(2/3)/2.5
    # t=3: m = 1.75, v = 5.3125; m^ = 1.75/0.875 = 2, v^ = 5.3125/0.578125; p -= 0.2/(sqrt(v^)+0.5)
    got = run(optim.Adam(2, **ADAM_HAND), [1, -1], ADAM_GRADS)
    close(got, [[0.92, -1.05], [0.9466667, -1.0701452], [0.8900314, -1.0285587]])


def test_adam_l2_weight_decay_by_hand():
    # t=1: g = 2 + 0.5*1 = 2.5; m^ = 2.5, v^ = 6.25; p = 1 - 0.1*2.5/(2.5+0.5) = 0.9166667
    # t=2: g = -2 + 0.5*0.9166667 = -1.5416667; m = -0.1458333, v = 1.7660590;
    #      m^ = -0.1944444, v^ = 4.0367063; p = 0.9166667 + 0.1*0.1944444/(2.0091556+0.5)
    got = run(optim.Adam(1, weight_decay=0.5, **ADAM_HAND), [1], [[2], [-2], [4]])
    close(got, [[0.9166667], [0.9244161], [0.8595376]])


def test_adamw_by_hand():
    # as test_adam_by_hand, but p *= 1 - 0.1*0.5 before each update:
    # 1*0.95 - 0.08 = 0.87; 0.87*0.95 + 0.0266667 = 0.8531667; 0.8531667*0.95 - 0.0566352
    got = run(optim.AdamW(2, weight_decay=0.5, **ADAM_HAND), [1, -1], ADAM_GRADS)
    close(got[:, 0], [0.87, 0.8531667, 0.7538731])


def test_adam_constant_gradient_moves_lr_per_step():
    # with a constant g the bias-corrected moments are exactly g and g^2: each step is
    # lr * g / (|g| + eps), so 10 steps of lr 0.01 move every coordinate by 0.1 against g
    got = run(optim.Adam(3, lr=0.01), [1, 2, 3], [[3, -0.5, 1e-3]] * 10)
    np.testing.assert_allclose(got[-1], [0.9, 2.1, 2.9], atol=1e-5)


@pytest.mark.parametrize("name,kw", KINDS, ids=KIND_IDS)
def test_step_updates_view_in_place_and_keeps_grads(name, kw):
    flat = np.arange(1, 11, dtype=f32)
    view, before = flat[2:8], flat.copy()
    grads = np.linspace(-1, 1, 6, dtype=f32)
    grads_before = grads.copy()
    optim.make(name, 6, 0.1, **kw).step(view, grads)
    assert np.all(flat[2:8] != before[2:8])
    np.testing.assert_array_equal(flat[:2], before[:2])
    np.testing.assert_array_equal(flat[8:], before[8:])
    np.testing.assert_array_equal(grads, grads_before)


@pytest.mark.parametrize("name,kw", KINDS, ids=KIND_IDS)
def test_step_stays_float32_and_allocates_nothing_large(name, kw):
    n = 1_000_000
    opt = optim.make(name, n, optim.warmup_cosine(0.1, 2, 10), **kw)
    p, g = np.ones(n, f32), np.full(n, 0.5, f32)
    opt.step(p, g)
    tracemalloc.start()
    opt.step(p, g)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 1024  # a float32 temporary would be 4 MB, a float64 one 8 MB
    assert p.dtype == f32 and all(b.dtype == f32 for b in opt.buffers.values())


@pytest.mark.parametrize("bad", [np.zeros(4, np.float64), np.zeros(5, f32), np.zeros((4, 1), f32)])
def test_step_rejects_wrong_dtype_or_shape(bad):
    opt = optim.Adam(4)
    with pytest.raises(ValueError, match="float32"):
        opt.step(bad, np.zeros(4, f32))
    with pytest.raises(ValueError, match="float32"):
        opt.step(np.zeros(4, f32), bad)
    assert opt.steps == 0


@pytest.mark.parametrize("name,kw", KINDS, ids=KIND_IDS)
def test_state_dict_round_trip_continues_identically(name, kw, tmp_path):
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((10, 7)).astype(f32)
    make = functools.partial(optim.make, name, 7, optim.warmup_cosine(0.1, 3, 10), **kw)
    orig, p = make(), rng.standard_normal(7).astype(f32)
    for g in grads[:5]:
        orig.step(p, g)
    state, p_saved = orig.state_dict(), p.copy()
    assert state["steps"] == 5
    for g in grads[5:]:  # keep going: the saved state must not change with it
        orig.step(p, g)
    np.savez(tmp_path / "opt.npz", **state)
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as saved:
        fresh = make()
        fresh.load_state_dict(dict(saved))
    for g in grads[5:]:
        fresh.step(p_saved, g)
    np.testing.assert_array_equal(p_saved, p)
    assert fresh.steps == orig.steps == 10
    for key, value in orig.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[key], value)


def bad_states(good: dict[str, np.ndarray]):
    """Every way a state dict can be wrong for the optimiser that made `good`."""
    for key in good:
        yield {k: v for k, v in good.items() if k != key}  # missing key
        yield good | {key: good[key].astype(np.float64)}  # wrong dtype
        yield good | {key: np.zeros(good[key].size + 1, good[key].dtype)}  # wrong shape
    yield good | {"extra": np.zeros(3, f32)}
    yield good | {"steps": np.array(-1, np.int64)}


@pytest.mark.parametrize("name,kw", KINDS, ids=KIND_IDS)
def test_load_state_dict_rejects_bad_state_and_changes_nothing(name, kw):
    opt = optim.make(name, 3, 0.1, **kw)
    opt.step(np.ones(3, f32), np.ones(3, f32))
    good = opt.state_dict()
    for bad in bad_states({k: v + 1 for k, v in good.items()}):
        with pytest.raises(ValueError, match="optimizer state"):
            opt.load_state_dict(bad)
        for key, value in opt.state_dict().items():
            np.testing.assert_array_equal(value, good[key])


def test_make_and_argument_checks():
    assert type(optim.make("sgd", 3, 0.1, momentum=0.9)) is optim.SGD
    assert type(optim.make("adam", 3, 0.1)) is optim.Adam
    adamw = optim.make("adamw", 3, 0.1, betas=(0.8, 0.9))
    assert type(adamw) is optim.AdamW and adamw.weight_decay == 0.01 and adamw.betas == (0.8, 0.9)
    assert optim.Adam(3).weight_decay == 0.0
    for bad in [lambda: optim.make("lion", 3, 0.1),
                lambda: optim.SGD(3, 0.1, nesterov=True),
                lambda: optim.SGD(3, -0.1),
                lambda: optim.Adam(3, betas=(0.9, 1.0)),
                lambda: optim.AdamW(3, weight_decay=-1.0)]:
        with pytest.raises(ValueError):
            bad()


TORCH_CASES = [  # (name, our kwargs and torch's, schedule or None)
    ("sgd", dict(momentum=0.9, weight_decay=0.05), None),
    ("sgd", dict(momentum=0.8, nesterov=True), optim.warmup_cosine(0.05, 20, 300)),
    ("adam", dict(betas=(0.8, 0.99), weight_decay=0.05), None),
    ("adam", {}, optim.warmup_linear(0.01, 50)),
    ("adamw", dict(weight_decay=0.1), optim.warmup_cosine(0.01, 30, 250, min_lr=1e-3)),
]


@pytest.mark.parametrize("name,kw,schedule", TORCH_CASES)
def test_matches_torch_optim(name, kw, schedule):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    n, lr = 257, 0.01
    p = rng.standard_normal(n).astype(f32)
    theirs = torch.tensor(p, requires_grad=True)
    kinds = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    ref = kinds[name]([theirs], lr=lr, **kw)
    ours = optim.make(name, n, schedule or lr, **kw)
    for step in range(300):
        g = (rng.standard_normal(n) + p).astype(f32)  # depends on p, so errors would compound
        if schedule:
            ref.param_groups[0]["lr"] = schedule(step)
        theirs.grad = torch.from_numpy(g.copy())
        ref.step()
        ours.step(p, g)
    np.testing.assert_allclose(p, theirs.detach().numpy(), rtol=1e-5, atol=1e-5)
