"""Helpers shared by the engine and nn/losses tests: finite-difference gradient checks
(float64), the same gradients from torch autograd, and a dtype check over a whole graph."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

import micrograd
from micrograd import engine
from micrograd.engine import Value

H = 1e-6                             # central-difference step (float64)
TOLERANCE = dict(rtol=1e-5, atol=1e-6)


@contextlib.contextmanager
def default_dtype(dtype):
    """Values created inside are of `dtype`; the dtype before is restored after."""
    previous = engine.DTYPE
    micrograd.set_dtype(dtype)
    try:
        yield
    finally:
        micrograd.set_dtype(previous)


@pytest.fixture
def float64():
    """Run the test with float64 Values (as every finite-difference check needs)."""
    with default_dtype(np.float64):
        yield


def numeric_grad(loss: Value, leaf: Value, h: float = H, **feeds) -> np.ndarray:
    """d loss / d leaf by central differences: perturb leaf.data in place, re-run loss.forward()."""
    x = leaf.data
    grad = np.zeros(x.shape)
    for i in np.ndindex(x.shape):
        saved = x[i]
        x[i] = saved + h
        up = loss.forward(**feeds)
        x[i] = saved - h
        down = loss.forward(**feeds)
        x[i] = saved
        grad[i] = (up - down) / (2 * h)
    loss.forward(**feeds)
    return grad


def assert_grads_match(loss: Value, leaves, **feeds) -> None:
    """loss.backward() gives every leaf (of its own shape) the gradient finite differences give."""
    value = loss.forward(**feeds)
    assert value.shape == () and value.dtype == np.float64, "gradient checks need a float64 scalar loss"
    loss.backward()
    analytic = [leaf.grad.copy() for leaf in leaves]
    for k, (leaf, grad) in enumerate(zip(leaves, analytic)):
        assert grad.shape == leaf.data.shape, f"leaf {k}: grad shape {grad.shape} != data shape {leaf.data.shape}"
        np.testing.assert_allclose(grad, numeric_grad(loss, leaf, **feeds), **TOLERANCE,
                                   err_msg=f"gradient of leaf {k} {leaf!r}")


def output_weights(shape: tuple, seed: int = 0) -> np.ndarray:
    """Fixed random weights contracting an output to a scalar: each element gets its own seed
    gradient, so a gradient sent to the wrong element cannot hide behind a uniform seed."""
    return np.random.default_rng(seed).standard_normal(shape)


def check_grads(fn, *args) -> Value:
    """Gradient check of `sum(weights * fn(*args))` for every trainable Value among args;
    other args (Python scalars, arrays, constant Values) pass as they are. Returns fn's output."""
    out = fn(*args)
    loss = (out * output_weights(out.shape)).sum()
    assert_grads_match(loss, [a for a in args if isinstance(a, Value) and a.requires_grad])
    return out


def torch_grads(fn, *arrays, weights=1.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Output of fn over float64 torch tensors made from arrays, and the gradient of
    sum(weights * output) for each of them, by torch autograd (skips when torch is absent)."""
    torch = pytest.importorskip("torch")
    tensors = [torch.tensor(np.asarray(a, np.float64), requires_grad=True) for a in arrays]
    out = fn(*tensors)
    (out * torch.as_tensor(weights, dtype=torch.float64)).sum().backward()
    return out.detach().numpy(), [t.grad.numpy() for t in tensors]


def assert_graph_dtype(out: Value, dtype) -> None:
    """Every node's data, and every gradient present, in the graph of `out` has `dtype`
    (integer inputs, such as embedding indices, aside)."""
    for v in out.topo():
        if v.kind == "i":
            continue
        assert v.data.dtype == dtype, f"data of {v!r} is {v.data.dtype}"
        assert v.grad is None or v.grad.dtype == dtype, f"grad of {v!r} is {v.grad.dtype}"
