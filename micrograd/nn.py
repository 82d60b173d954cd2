"""Layers built from engine ops, and flattening parameters into one vector."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from micrograd import engine
from micrograd.engine import Value

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

    def __call__(self, x: Value) -> Value:
        return x @ self.W if self.b is None else x.affine(self.W, self.b)

    def parameters(self) -> list[Value]:
        return [self.W] if self.b is None else [self.W, self.b]


class MLP(Module):
    """Linear layers with an activation between them (none after the last)."""

    def __init__(self, nin: int, hidden: Sequence[int], nout: int, activation: str = "tanh", seed: int = 0):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        rng = np.random.default_rng(seed)
        sizes = [nin, *hidden, nout]
        self.layers = [Linear(i, o, rng) for i, o in zip(sizes[:-1], sizes[1:])]
        self.activation = activation

    def __call__(self, x: Value) -> Value:
        for layer in self.layers[:-1]:
            x = getattr(layer(x), self.activation)()
        return self.layers[-1](x)

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]


def flatten(params: Sequence[Value]) -> tuple[np.ndarray, np.ndarray]:
    """Move every parameter's data and grad into views of two contiguous vectors; return them."""
    size = sum(p.data.size for p in params)
    data, grad = np.empty(size, engine.DTYPE), np.zeros(size, engine.DTYPE)
    offset = 0
    for p in params:
        n, shape = p.data.size, p.data.shape
        data[offset:offset + n] = p.data.ravel()
        p.data = data[offset:offset + n].reshape(shape)
        p.grad = grad[offset:offset + n].reshape(shape)
        offset += n
    return data, grad
