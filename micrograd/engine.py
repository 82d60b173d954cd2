"""A tensor autodiff engine over NumPy.

Every operator is a method that makes a graph node and gives it two closures: one that
computes the node's data from its parents' data (forward), one that passes the node's
gradient on to its parents (backward). Graphs are static: build them once over named
placeholders, then call `out.forward(X=..., y=...)` and `out.backward()` every batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

DTYPE = np.dtype(os.environ.get("DTYPE", "float32"))


def set_dtype(dtype) -> None:
    """Set the dtype of every Value created from now on (float32 by default)."""
    global DTYPE
    DTYPE = np.dtype(dtype)


def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum `grad` over the axes that broadcasting added (leading) or stretched (size 1)."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    stretched = tuple(lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1)
    return grad.sum(axis=tuple(range(lead)) + stretched, keepdims=True).reshape(shape)


_ones = np.ones(0, DTYPE)


def ones(n: int) -> np.ndarray:
    """A read-only vector of n ones in DTYPE (a view of one cached array)."""
    global _ones
    if len(_ones) < n or _ones.dtype != DTYPE:
        _ones = np.ones(max(n, 2 * len(_ones)), DTYPE)
        _ones.flags.writeable = False
    return _ones[:n]


def lift(x) -> Value:
    """A Value as it is; anything else (scalar, array) as a constant Value."""
    return x if isinstance(x, Value) else Value(x, requires_grad=False)


class Value:
    """A node of a graph: an array (`data`), its gradient (`grad`) and how both are computed."""

    __slots__ = ("data", "grad", "parents", "op", "name", "spec", "kind", "requires_grad",
                 "_forward", "_backward", "_order", "_feeds", "_fresh", "_keep", "_grad_owned", "_scratch")
    __array_ufunc__ = None  # make `ndarray + Value` call Value.__radd__

    def __init__(self, data=None, requires_grad: bool = True, name: str = "", op: str = ""):
        self.data = None if data is None else np.array(data, dtype=DTYPE)
        self.requires_grad = requires_grad
        self.grad = np.zeros_like(self.data) if requires_grad and data is not None else None
        self.parents: tuple[Value, ...] = ()
        self.op, self.name, self.spec, self.kind = op, name, None, "f"
        self._forward = self._backward = None
        self._order = self._feeds = None
        self._fresh, self._keep, self._grad_owned, self._scratch = False, True, False, {}

    @classmethod
    def placeholder(cls, name: str, shape: Sequence[int | None], integer: bool = False) -> Value:
        """A named input, fed by `forward(name=array)`; a None in `shape` accepts any size.
        An `integer` placeholder (class labels, embedding indices) takes integers and keeps them
        as int64; any other takes numbers and holds them in DTYPE."""
        v = cls(requires_grad=False, name=name, op="placeholder")
        v.spec, v.kind = tuple(shape), "i" if integer else "f"
        return v

    @classmethod
    def indices(cls, index) -> Value:
        """An integer Value as it is, or a constant Value of integer array `index` (kept int64)."""
        if isinstance(index, Value):
            if index.kind != "i":
                raise ValueError(f"indices: {index!r} holds floats; make it Value.placeholder(..., integer=True)")
            return index
        arr = np.asarray(index)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"indices: need an integer array, got dtype {arr.dtype}")
        v = cls(requires_grad=False)
        v.data, v.kind = arr.astype(np.int64, copy=False), "i"
        return v

    def __repr__(self) -> str:
        shape = None if self.data is None else self.data.shape
        return f"Value(op={self.op or 'leaf'!r}, name={self.name!r}, shape={shape})"

    @property
    def shape(self) -> tuple:
        return self.spec if self.data is None else self.data.shape

    # ---- making nodes (also used by losses.py and anyone adding an op) ----

    @classmethod
    def node(cls, op: str, *parents: Value) -> Value:
        """An op node over `parents`; it needs a gradient if any parent does."""
        out = cls(requires_grad=any(p.requires_grad for p in parents), op=op)
        out.parents = parents
        return out

    def define(self, forward: Callable[[], None], backward: Callable[[], None]) -> Value:
        """Attach the op's closures; compute at once when every input already has data."""
        self._forward, self._backward = forward, backward
        if all(p.data is not None for p in self.parents):
            forward()
        return self

    def buffer(self, shape: tuple) -> np.ndarray:
        """This node's data array when it already has `shape` (reused across steps), else a new one."""
        d = self.data
        if d is not None and d.shape == shape and d.dtype == DTYPE:
            return d
        return np.empty(shape, DTYPE)

    def scratch(self, key: int, shape: tuple, dtype=None) -> np.ndarray:
        """A work array of this node's (key tells several apart; DTYPE unless `dtype`), reused across steps."""
        s, dtype = self._scratch.get(key), DTYPE if dtype is None else dtype
        if s is None or s.shape != shape or s.dtype != dtype:
            s = self._scratch[key] = np.empty(shape, dtype)
        return s

    def add_grad(self, g: np.ndarray) -> None:
        """Accumulate `g` (reduced to this node's shape) into this node's gradient for this pass."""
        if g.shape != self.data.shape:
            g = unbroadcast(g, self.data.shape)
        parameter = not (self.parents or self.op)  # its grad is written in place: it may be a view
        if not self._fresh:              # first contribution in this backward pass
            self._fresh = True
            if parameter:
                np.copyto(self.grad, g)
            else:                        # op node: keep g itself, copy only if a second one comes
                self.grad, self._grad_owned = g, False
        elif self._grad_owned or parameter:
            self.grad += g
        else:
            self.grad, self._grad_owned = self.grad + g, True

    # ---- running the graph ----

    def topo(self) -> list[Value]:
        """Every node this one depends on, inputs before outputs (built once, then cached)."""
        if self._order is None:
            order, seen, stack = [], set(), [(self, False)]
            while stack:
                v, done = stack.pop()
                if done:
                    order.append(v)
                elif id(v) not in seen:
                    seen.add(id(v))
                    stack.append((v, True))
                    stack.extend((p, False) for p in v.parents if id(p) not in seen)
            self._order = order
            self._feeds = {v.name: v for v in order if v.op == "placeholder"}
        return self._order

    def forward(self, **feeds) -> np.ndarray:
        """Feed every placeholder by name, recompute the graph, return a copy of this node's data."""
        order = self.topo()
        missing, unknown = self._feeds.keys() - feeds.keys(), feeds.keys() - self._feeds.keys()
        if missing or unknown:
            raise ValueError(f"forward: placeholders not fed: {sorted(missing)}; unknown feeds: {sorted(unknown)}")
        for name, value in feeds.items():
            self._feeds[name].feed(value)
        for v in order:
            if v._forward is not None:
                v._forward()
        return self.data.copy()

    def feed(self, value) -> None:
        """Set a placeholder's data, checking rank, sizes and dtype against its declared shape."""
        arr = np.asarray(value)
        if self.kind == "i" and arr.dtype.kind == "f":  # labels read as floats, like any target column
            whole = arr.astype(np.int64)
            if (whole != arr).any():
                raise ValueError(f"placeholder {self.name!r} takes integers, got {arr[whole != arr][0]}")
            arr = whole
        if arr.dtype.kind not in ("iu" if self.kind == "i" else "biuf"):
            want = "integers" if self.kind == "i" else "numbers"
            raise ValueError(f"placeholder {self.name!r} takes {want}: cannot feed data of dtype {arr.dtype}")
        if arr.ndim != len(self.spec) or any(s is not None and s != n for s, n in zip(self.spec, arr.shape)):
            want = "(" + ", ".join("None" if s is None else str(s) for s in self.spec) + ")"
            raise ValueError(f"placeholder {self.name!r} expects shape {want}, got {arr.shape}")
        dtype = np.int64 if self.kind == "i" else DTYPE
        self.data = arr if arr.dtype == dtype else arr.astype(dtype)

    def backward(self, seed: float = 1.0, accumulate: bool = False, keep_data: bool = True) -> None:
        """Gradients of this node's data (of its sum, if not scalar) times `seed` for every node
        that needs one. With `accumulate`, they are added into the parameters' gradients (zero
        those first) instead of overwriting them: a sum over passes needs no copies. Without
        `keep_data`, an op may overwrite its own data once its backward has run (the fused affine
        turns its activation into the activation's slope there): for passes whose data no one reads."""
        order = self.topo()
        for v in order:  # per graph, not a global count: graphs in other threads run their own passes
            v._fresh, v._keep = accumulate and not (v.parents or v.op), keep_data
        self.add_grad(np.full_like(self.data, seed))
        for v in reversed(order):
            if v._backward is not None and v.requires_grad and v._fresh:
                v._backward()

    # ---- elementwise binary ops (NumPy broadcasting) ----

    def __add__(self, other) -> Value:
        a, b = self, lift(other)
        out = Value.node("add", a, b)

        def add_forward():
            out.data = np.add(a.data, b.data, out=out.buffer(np.broadcast_shapes(a.data.shape, b.data.shape)))

        def add_backward():
            if a.requires_grad:
                a.add_grad(out.grad)
            if b.requires_grad:
                b.add_grad(out.grad)
        return out.define(add_forward, add_backward)

    def __sub__(self, other) -> Value:
        a, b = self, lift(other)
        out = Value.node("sub", a, b)

        def sub_forward():
            out.data = np.subtract(a.data, b.data, out=out.buffer(np.broadcast_shapes(a.data.shape, b.data.shape)))

        def sub_backward():
            if a.requires_grad:
                a.add_grad(out.grad)
            if b.requires_grad:
                b.add_grad(-out.grad)
        return out.define(sub_forward, sub_backward)

    def __mul__(self, other) -> Value:
        a, b = self, lift(other)
        out = Value.node("mul", a, b)

        def mul_forward():
            out.data = np.multiply(a.data, b.data, out=out.buffer(np.broadcast_shapes(a.data.shape, b.data.shape)))

        def mul_backward():
            if a.requires_grad:
                a.add_grad(out.grad * b.data)
            if b.requires_grad:
                b.add_grad(out.grad * a.data)
        return out.define(mul_forward, mul_backward)

    def __truediv__(self, other) -> Value:
        a, b = self, lift(other)
        out = Value.node("div", a, b)

        def div_forward():
            out.data = np.divide(a.data, b.data, out=out.buffer(np.broadcast_shapes(a.data.shape, b.data.shape)))

        def div_backward():
            if a.requires_grad:
                a.add_grad(out.grad / b.data)
            if b.requires_grad:
                b.add_grad(-out.grad * out.data / b.data)
        return out.define(div_forward, div_backward)

    def __radd__(self, other) -> Value:
        return lift(other) + self

    def __rsub__(self, other) -> Value:
        return lift(other) - self

    def __rmul__(self, other) -> Value:
        return lift(other) * self

    def __rtruediv__(self, other) -> Value:
        return lift(other) / self

    def __neg__(self) -> Value:
        return self * -1.0

    def __pow__(self, exponent: float) -> Value:
        a, p = self, float(exponent)
        out = Value.node(f"pow{p:g}", a)

        def pow_forward():
            out.data = np.power(a.data, DTYPE.type(p), out=out.buffer(a.data.shape))

        def pow_backward():
            a.add_grad(out.grad * (p * np.power(a.data, DTYPE.type(p - 1))))
        return out.define(pow_forward, pow_backward)

    def maximum(self, other) -> Value:
        """Elementwise max; on ties the gradient is split evenly."""
        a, b = self, lift(other)
        out = Value.node("maximum", a, b)

        def maximum_forward():
            out.data = np.maximum(a.data, b.data, out=out.buffer(np.broadcast_shapes(a.data.shape, b.data.shape)))

        def maximum_backward():
            share_a = (a.data > b.data) + (a.data == b.data) * DTYPE.type(0.5)
            _split_grad(out.grad, a, b, share_a)
        return out.define(maximum_forward, maximum_backward)

    def minimum(self, other) -> Value:
        """Elementwise min; on ties the gradient is split evenly."""
        a, b = self, lift(other)
        out = Value.node("minimum", a, b)

        def minimum_forward():
            out.data = np.minimum(a.data, b.data, out=out.buffer(np.broadcast_shapes(a.data.shape, b.data.shape)))

        def minimum_backward():
            share_a = (a.data < b.data) + (a.data == b.data) * DTYPE.type(0.5)
            _split_grad(out.grad, a, b, share_a)
        return out.define(minimum_forward, minimum_backward)

    # ---- products ----

    def __matmul__(self, other) -> Value:
        a, b = self, lift(other)
        out = Value.node("matmul", a, b)

        def matmul_forward():
            if a.data.ndim < 2 or b.data.ndim < 2:
                out.data = np.asarray(np.matmul(a.data, b.data))
                return
            batch = np.broadcast_shapes(a.data.shape[:-2], b.data.shape[:-2])
            out.data = np.matmul(a.data, b.data, out=out.buffer(batch + (a.data.shape[-2], b.data.shape[-1])))

        def matmul_backward():
            g = out.grad
            A = a.data if a.data.ndim > 1 else a.data[None, :]
            B = b.data if b.data.ndim > 1 else b.data[:, None]
            g = g if b.data.ndim > 1 else g[..., None]  # first: a 0-d g (1-D @ 1-D) becomes (1,)
            g = g if a.data.ndim > 1 else g[..., None, :]
            if a.requires_grad:
                shape = np.broadcast_shapes(g.shape[:-2], B.shape[:-2]) + (g.shape[-2], B.shape[-2])
                ga = np.matmul(g, B.swapaxes(-1, -2), out=out.scratch(0, shape))
                a.add_grad(ga if a.data.ndim > 1 else ga[..., 0, :])
            if b.requires_grad:
                shape = np.broadcast_shapes(A.shape[:-2], g.shape[:-2]) + (A.shape[-1], g.shape[-1])
                gb = np.matmul(A.swapaxes(-1, -2), g, out=out.scratch(1, shape))
                b.add_grad(gb if b.data.ndim > 1 else gb[..., 0])
        return out.define(matmul_forward, matmul_backward)

    def __rmatmul__(self, other) -> Value:
        return lift(other) @ self

    def affine(self, weight: Value, bias: Value, activation: str | None = None) -> Value:
        """self @ weight + bias in one op (a linear layer): x (..., i), weight (i, o), bias (o,);
        with `activation` ("tanh", "relu" or "sigmoid") applied in place, one array for both."""
        if activation is not None and activation not in FUSABLE:
            raise ValueError(f"affine: activation must be None or one of {sorted(FUSABLE)}, got {activation!r}")
        x, W, b = self, weight, bias
        act = FUSABLE.get(activation)
        out = Value.node("affine" if act is None else f"affine_{activation}", x, W, b)

        def affine_forward():
            y = np.matmul(x.data, W.data, out=out.buffer(x.data.shape[:-1] + W.data.shape[-1:]))
            y += b.data
            out.data = y if act is None else act.apply(y, y)

        def affine_backward():
            g = out.grad  # the activation's slope: into this op's data when no one reads it again
            if act is not None:
                g = act.slope(out.data, g, out.scratch(4, g.shape) if out._keep else out.data)
            rows = g.reshape(-1, g.shape[-1])
            if x.requires_grad:  # BLAS multiplies by a contiguous copy of W.T faster than by the view
                Wt = out.scratch(3, W.data.shape[::-1])
                np.copyto(Wt, W.data.T)
                x.add_grad(np.matmul(g, Wt, out=out.scratch(0, x.data.shape)))
            if W.requires_grad:
                W.add_grad(np.matmul(x.data.reshape(-1, x.data.shape[-1]).T, rows, out=out.scratch(1, W.data.shape)))
            if b.requires_grad:  # the column sums as a BLAS product with ones: faster than a reduction
                b.add_grad(np.matmul(ones(len(rows)), rows, out=out.scratch(2, b.data.shape)))
        return out.define(affine_forward, affine_backward)

    def tensordot(self, other, axes=2) -> Value:
        """np.tensordot with gradients; `axes` an int or a pair of axis lists."""
        a, b = self, lift(other)
        out = Value.node("tensordot", a, b)
        if isinstance(axes, int):
            axes_a, axes_b = list(range(-axes, 0)), list(range(axes))
        else:
            axes_a, axes_b = [list(x) if not isinstance(x, int) else [x] for x in axes]

        def tensordot_forward():
            out.data = np.asarray(np.tensordot(a.data, b.data, axes=(axes_a, axes_b)))

        def tensordot_backward():
            ca = [x % a.data.ndim for x in axes_a]
            cb = [x % b.data.ndim for x in axes_b]
            free_a = [i for i in range(a.data.ndim) if i not in ca]
            free_b = [i for i in range(b.data.ndim) if i not in cb]
            g, na = out.grad, len(free_a)
            if a.requires_grad:  # result axes: a's free axes, then a's contracted axes in b's order
                ga = np.tensordot(g, b.data, axes=(list(range(na, g.ndim)), free_b))
                order = free_a + [ca[cb.index(j)] for j in sorted(cb)]
                a.add_grad(ga.transpose(np.argsort(order)))
            if b.requires_grad:
                gb = np.tensordot(a.data, g, axes=(free_a, list(range(na))))
                order = [cb[ca.index(i)] for i in sorted(ca)] + free_b
                b.add_grad(gb.transpose(np.argsort(order)))
        return out.define(tensordot_forward, tensordot_backward)

    # ---- shape ops (views, no copies) ----

    def transpose(self, axes: Sequence[int] | None = None) -> Value:
        a = self
        out = Value.node("transpose", a)

        def transpose_forward():
            out.data = a.data.transpose(axes)

        def transpose_backward():
            a.add_grad(out.grad.transpose(None if axes is None else np.argsort([i % a.data.ndim for i in axes])))
        return out.define(transpose_forward, transpose_backward)

    @property
    def T(self) -> Value:
        return self.transpose()

    def reshape(self, *shape) -> Value:
        a, shape = self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape
        out = Value.node("reshape", a)

        def reshape_forward():
            out.data = a.data.reshape(shape)

        def reshape_backward():
            a.add_grad(out.grad.reshape(a.data.shape))
        return out.define(reshape_forward, reshape_backward)

    def __getitem__(self, index) -> Value:
        a = self
        out = Value.node("getitem", a)

        def getitem_forward():
            out.data = np.asarray(a.data[index])

        def getitem_backward():
            g = np.zeros_like(a.data)
            np.add.at(g, index, out.grad)
            a.add_grad(g)
        return out.define(getitem_forward, getitem_backward)

    # ---- reductions ----

    def sum(self, axis: int | tuple | None = None, keepdims: bool = False) -> Value:
        a = self
        out = Value.node("sum", a)

        def sum_forward():
            out.data = np.asarray(a.data.sum(axis=axis, keepdims=keepdims))

        def sum_backward():
            g = out.grad if keepdims or axis is None else np.expand_dims(out.grad, axis)
            a.add_grad(np.broadcast_to(g, a.data.shape))
        return out.define(sum_forward, sum_backward)

    def mean(self, axis: int | tuple | None = None, keepdims: bool = False) -> Value:
        a = self
        out = Value.node("mean", a)

        def mean_forward():
            out.data = np.asarray(a.data.mean(axis=axis, keepdims=keepdims))

        def mean_backward():
            g = out.grad if keepdims or axis is None else np.expand_dims(out.grad, axis)
            a.add_grad(np.broadcast_to(g * DTYPE.type(out.data.size / a.data.size), a.data.shape))
        return out.define(mean_forward, mean_backward)

    def max(self, axis: int | tuple | None = None, keepdims: bool = False) -> Value:
        """Maximum over `axis`; tied maxima share the gradient evenly."""
        a = self
        out = Value.node("max", a)

        def max_forward():
            out.data = np.asarray(a.data.max(axis=axis, keepdims=keepdims))

        def max_backward():
            top, g = out.data, out.grad
            if not keepdims and axis is not None:
                top, g = np.expand_dims(top, axis), np.expand_dims(g, axis)
            winners = (a.data == top).astype(a.data.dtype)
            a.add_grad(winners * (g / winners.sum(axis=axis, keepdims=True)))
        return out.define(max_forward, max_backward)

    def logsumexp(self, axis: int | None = None, keepdims: bool = False) -> Value:
        """log(sum(exp(x))) over `axis` (all elements when None), stable for any size of x."""
        a = self
        out = Value.node("logsumexp", a)

        def logsumexp_forward():
            out.data = np.asarray(stable_logsumexp(a.data, axis, keepdims))

        def logsumexp_backward():  # d/dx = exp(x - logsumexp): the softmax along axis
            top, g = out.data, out.grad
            if not keepdims and axis is not None:
                top, g = np.expand_dims(top, axis), np.expand_dims(g, axis)
            share = np.subtract(a.data, top, out=out.scratch(0, a.data.shape))
            np.exp(share, out=share)
            a.add_grad(np.multiply(share, g, out=share))
        return out.define(logsumexp_forward, logsumexp_backward)

    def log_softmax(self, axis: int = -1) -> Value:
        """x - logsumexp(x) along `axis`: log-probabilities, stable for any size of x."""
        a = self
        out = Value.node("log_softmax", a)

        def log_softmax_forward():
            out.data = np.subtract(a.data, stable_logsumexp(a.data, axis, keepdims=True), out=out.buffer(a.data.shape))

        def log_softmax_backward():  # g - softmax * (sum of g along axis)
            g = out.grad
            d = np.exp(out.data, out=out.scratch(0, a.data.shape))
            d *= g.sum(axis=axis, keepdims=True)
            a.add_grad(np.subtract(g, d, out=d))
        return out.define(log_softmax_forward, log_softmax_backward)

    def cumsum(self, axis: int | None = None) -> Value:
        """Running sum along `axis` (of the flattened array when None)."""
        a = self
        out = Value.node("cumsum", a)

        def cumsum_forward():
            out.data = np.cumsum(a.data, axis=axis)

        def cumsum_backward():
            if axis is None:
                a.add_grad(np.cumsum(out.grad[::-1])[::-1].reshape(a.data.shape))
            else:
                a.add_grad(np.flip(np.cumsum(np.flip(out.grad, axis), axis=axis), axis))
        return out.define(cumsum_forward, cumsum_backward)

    # ---- elementwise unary ops ----

    def relu(self) -> Value:
        return self._activation("relu")

    def tanh(self) -> Value:
        return self._activation("tanh")

    def sigmoid(self) -> Value:
        return self._activation("sigmoid")

    def _activation(self, name: str) -> Value:
        """An elementwise op whose gradient follows from its output (FUSABLE)."""
        a, act = self, FUSABLE[name]
        out = Value.node(name, a)

        def activation_forward():
            out.data = act.apply(a.data, out.buffer(a.data.shape))

        def activation_backward():
            a.add_grad(act.slope(out.data, out.grad, out.scratch(0, out.data.shape)))
        return out.define(activation_forward, activation_backward)

    def softplus(self) -> Value:
        a = self
        out = Value.node("softplus", a)

        def softplus_forward():
            out.data = np.logaddexp(a.data, 0, out=out.buffer(a.data.shape))

        def softplus_backward():  # d/dx log(1+e^x) = sigmoid(x)
            a.add_grad(out.grad * (0.5 * (1 + np.tanh(0.5 * a.data))))
        return out.define(softplus_forward, softplus_backward)

    def exp(self) -> Value:
        a = self
        out = Value.node("exp", a)

        def exp_forward():
            out.data = np.exp(a.data, out=out.buffer(a.data.shape))

        def exp_backward():
            a.add_grad(out.grad * out.data)
        return out.define(exp_forward, exp_backward)

    def log(self) -> Value:
        a = self
        out = Value.node("log", a)

        def log_forward():
            out.data = np.log(a.data, out=out.buffer(a.data.shape))

        def log_backward():
            a.add_grad(out.grad / a.data)
        return out.define(log_forward, log_backward)

    def log1p(self) -> Value:
        a = self
        out = Value.node("log1p", a)

        def log1p_forward():
            out.data = np.log1p(a.data, out=out.buffer(a.data.shape))

        def log1p_backward():
            a.add_grad(out.grad / (1 + a.data))
        return out.define(log1p_forward, log1p_backward)

    def sqrt(self) -> Value:
        a = self
        out = Value.node("sqrt", a)

        def sqrt_forward():
            out.data = np.sqrt(a.data, out=out.buffer(a.data.shape))

        def sqrt_backward():
            a.add_grad(out.grad * (0.5 / out.data))
        return out.define(sqrt_forward, sqrt_backward)

    def abs(self) -> Value:
        a = self
        out = Value.node("abs", a)

        def abs_forward():
            out.data = np.abs(a.data, out=out.buffer(a.data.shape))

        def abs_backward():
            a.add_grad(out.grad * np.sign(a.data))
        return out.define(abs_forward, abs_backward)

    def arctanh(self) -> Value:
        a = self
        out = Value.node("arctanh", a)

        def arctanh_forward():
            out.data = np.arctanh(a.data, out=out.buffer(a.data.shape))

        def arctanh_backward():
            a.add_grad(out.grad / (1 - a.data * a.data))
        return out.define(arctanh_forward, arctanh_backward)

    def arcsinh(self) -> Value:
        a = self
        out = Value.node("arcsinh", a)

        def arcsinh_forward():
            out.data = np.arcsinh(a.data, out=out.buffer(a.data.shape))

        def arcsinh_backward():
            a.add_grad(out.grad / np.sqrt(a.data * a.data + 1))
        return out.define(arcsinh_forward, arcsinh_backward)

    def arcsin(self) -> Value:
        a = self
        out = Value.node("arcsin", a)

        def arcsin_forward():
            out.data = np.arcsin(a.data, out=out.buffer(a.data.shape))

        def arcsin_backward():
            a.add_grad(out.grad / np.sqrt(1 - a.data * a.data))
        return out.define(arcsin_forward, arcsin_backward)


@dataclass(frozen=True)
class Activation:
    """An elementwise function whose derivative is a function of its output, so that it can
    overwrite its input (as the fused affine op does): apply(x, out) writes f(x) into out and
    returns it (out may be x); slope(y, g, out) writes g * f'(x) for y = f(x) into out."""
    apply: Callable[[np.ndarray, np.ndarray], np.ndarray]
    slope: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def tanh_apply(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.tanh(x, out=out)


def tanh_slope(y: np.ndarray, g: np.ndarray, out: np.ndarray) -> np.ndarray:  # (1 - y^2) g
    np.multiply(y, y, out=out)
    np.subtract(1, out, out=out)
    return np.multiply(out, g, out=out)


def relu_apply(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, out=out)


def relu_slope(y: np.ndarray, g: np.ndarray, out: np.ndarray) -> np.ndarray:  # g where y > 0: sign(y) is 1 there, else 0
    np.sign(y, out=out)
    return np.multiply(out, g, out=out)


def sigmoid_apply(x: np.ndarray, out: np.ndarray) -> np.ndarray:  # 1/(1+e^-x) = (1+tanh(x/2))/2: no overflow for large |x|
    np.multiply(x, 0.5, out=out)
    np.tanh(out, out=out)
    out += 1
    out *= 0.5
    return out


def sigmoid_slope(y: np.ndarray, g: np.ndarray, out: np.ndarray) -> np.ndarray:  # y (1 - y) g
    np.subtract(1, y, out=out)
    out *= y
    return np.multiply(out, g, out=out)


FUSABLE = {"tanh": Activation(tanh_apply, tanh_slope), "relu": Activation(relu_apply, relu_slope),
           "sigmoid": Activation(sigmoid_apply, sigmoid_slope)}  # what affine(..., activation) can apply in place


def stable_logsumexp(x: np.ndarray, axis: int | None = None, keepdims: bool = False) -> np.ndarray:
    """NumPy log(sum(exp(x))) over `axis` with the max taken out first, so nothing overflows."""
    top = x.max(axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0).astype(x.dtype, copy=False)  # all -inf: log(0) = -inf, not nan
    with np.errstate(divide="ignore"):  # a row of only -inf: log(0) = -inf is the answer
        lse = np.log(np.exp(x - top).sum(axis=axis, keepdims=True)) + top
    return lse if keepdims else (lse.reshape(()) if axis is None else np.squeeze(lse, axis))


def embedding(table: Value, index) -> Value:
    """Rows of `table` (V, ...) picked by the integers `index` (any shape): out[i] = table[index[i]].
    The backward adds each row's gradient into its table row (repeated indices add up)."""
    idx = Value.indices(index)
    out = Value.node("embedding", table, idx)

    def embedding_forward():
        i, rows = idx.data, table.data.shape[0]
        if i.size and (i.min() < 0 or i.max() >= rows):
            bad = i.min() if i.min() < 0 else i.max()
            raise ValueError(f"embedding: index {bad} out of range for a table of {rows} rows")
        out.data = np.take(table.data, i, axis=0, out=out.buffer(i.shape + table.data.shape[1:]))

    def embedding_backward():
        g = out.scratch(0, table.data.shape)
        g.fill(0)
        np.add.at(g, idx.data, out.grad)
        table.add_grad(g)
    return out.define(embedding_forward, embedding_backward)


def _split_grad(g: np.ndarray, a: Value, b: Value, share_a: np.ndarray) -> None:
    """Give `a` the share `share_a` of gradient `g` and `b` the rest."""
    if a.requires_grad:
        a.add_grad(g * share_a)
    if b.requires_grad:
        b.add_grad(g * (1 - share_a))


def where(cond, a, b) -> Value:
    """Elementwise `a` where `cond` else `b`; `cond` is a boolean array or a (constant) Value."""
    c, a, b = cond, lift(a), lift(b)
    parents = (a, b, c) if isinstance(c, Value) else (a, b)
    out = Value.node("where", *parents)

    def mask():
        return (c.data if isinstance(c, Value) else np.asarray(c)).astype(bool)

    def where_forward():
        out.data = np.where(mask(), a.data, b.data)

    def where_backward():
        m = mask()
        if a.requires_grad:
            a.add_grad(np.where(m, out.grad, 0).astype(DTYPE, copy=False))
        if b.requires_grad:
            b.add_grad(np.where(m, 0, out.grad).astype(DTYPE, copy=False))
    return out.define(where_forward, where_backward)


def concat(values: Sequence[Value], axis: int = 0) -> Value:
    """Join Values along an existing axis."""
    values = [lift(v) for v in values]
    out = Value.node("concat", *values)

    def concat_forward():
        out.data = np.concatenate([v.data for v in values], axis=axis)

    def concat_backward():
        cuts = np.cumsum([v.data.shape[axis] for v in values])[:-1]
        for v, g in zip(values, np.split(out.grad, cuts, axis=axis)):
            if v.requires_grad:
                v.add_grad(g)
    return out.define(concat_forward, concat_backward)


def maximum(a, b) -> Value:
    return lift(a).maximum(b)


def minimum(a, b) -> Value:
    return lift(a).minimum(b)


def tensordot(a, b, axes=2) -> Value:
    return lift(a).tensordot(b, axes)
