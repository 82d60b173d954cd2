"""Layers built from engine ops, and flattening parameters into one vector."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from micrograd import engine
from micrograd.engine import Value, embedding

ACTIVATIONS = ("tanh", "relu", "sigmoid", "softplus")


class Module:
    def parameters(self) -> list[Value]:
        return []


class Linear(Module):
    """y = x @ W + b, with W drawn uniformly in +-1/sqrt(nin) (as PyTorch does)."""

    def __init__(self, nin: int, nout: int, rng: np.random.Generator, bias: bool = True):
        bound = 1 / np.sqrt(nin)
        self.W = Value(rng.uniform(-bound, bound, (nin, nout)), name="W")
        self.b = Value(rng.uniform(-bound, bound, nout), name="b") if bias else None

    def __call__(self, x: Value, activation: str | None = None) -> Value:
        """The layer's output, with `activation` (one of engine.FUSABLE) fused into it."""
        if self.b is not None:
            return x.affine(self.W, self.b, activation)
        y = x @ self.W
        return y if activation is None else getattr(y, activation)()

    def parameters(self) -> list[Value]:
        return [self.W] if self.b is None else [self.W, self.b]


class Embedding(Module):
    """A table of `count` vectors of `dim` numbers, drawn from N(0, 1) (as PyTorch does); called
    with integer codes (n,) or (n, k), it returns their vectors (n, dim) or (n, k, dim)."""

    def __init__(self, count: int, dim: int, rng: np.random.Generator):
        self.table = Value(rng.standard_normal((count, dim)), name="table")

    def __call__(self, codes) -> Value:
        return embedding(self.table, codes)

    def parameters(self) -> list[Value]:
        return [self.table]


class MLP(Module):
    """Linear layers with an activation between them (none after the last); tanh, relu and
    sigmoid are applied inside the layer's affine op, in place."""

    def __init__(self, nin: int, hidden: Sequence[int], nout: int, activation: str = "tanh", seed: int = 0):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        rng = np.random.default_rng(seed)
        sizes = [nin, *hidden, nout]
        self.layers = [Linear(i, o, rng) for i, o in zip(sizes[:-1], sizes[1:])]
        self.activation = activation

    def __call__(self, x: Value) -> Value:
        fused = self.activation in engine.FUSABLE
        for layer in self.layers[:-1]:
            x = layer(x, self.activation) if fused else getattr(layer(x), self.activation)()
        return self.layers[-1](x)

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]


def flatten(params: Sequence[Value], data: np.ndarray | None = None,
            grad: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Move every parameter's data and grad into views of two contiguous vectors; return them.

    With `data` (another flattening's weight vector, e.g. of a replica of the same model) the
    parameters become views of it as they are, their own values dropped; with `grad` their
    gradients are views of that vector (zeroed), else of a new one."""
    size = sum(p.data.size for p in params)
    for name, given in (("parameters", data), ("gradients", grad)):
        if given is not None and (given.shape != (size,) or given.dtype != engine.DTYPE):
            raise ValueError(f"flatten: the {name} need a {engine.DTYPE} vector of {size}, got {given.dtype} {given.shape}")
    shared = data is not None
    data = data if shared else np.empty(size, engine.DTYPE)
    if grad is None:
        grad = np.zeros(size, engine.DTYPE)
    else:
        grad[:] = 0
    offset = 0
    for p in params:
        n, shape = p.data.size, p.data.shape
        if not shared:
            data[offset:offset + n] = p.data.ravel()
        p.data = data[offset:offset + n].reshape(shape)
        p.grad = grad[offset:offset + n].reshape(shape)
        offset += n
    return data, grad
