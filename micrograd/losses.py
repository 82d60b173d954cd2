"""Losses, each the mean over rows: pinball (quantile) loss for many quantiles at once, mean
squared error, Huber, softmax cross-entropy, and binary cross-entropy on logits."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from micrograd import engine
from micrograd.engine import Value, lift, minimum, stable_logsumexp


def pinball(pred: Value, target: Value, levels: Sequence[float]) -> Value:
    """Mean over rows and levels of max(q*(y - p), (q-1)*(y - p)).

    pred is (n, Q), one column per level q in `levels`; target is (n,) or (n, 1).
    """
    target = lift(target)
    q = np.asarray(levels, dtype=engine.DTYPE)
    out = Value.node("pinball", pred, target)
    slope = None  # d loss / d diff for each element, kept from forward for backward

    def pinball_forward():
        nonlocal slope
        y = target.data.reshape(-1, 1)
        if pred.data.ndim != 2 or pred.data.shape != (y.shape[0], q.size):
            raise ValueError(f"pinball: prediction shape {pred.data.shape} does not match "
                             f"{y.shape[0]} targets x {q.size} quantile levels")
        diff = np.subtract(y, pred.data, out=out.scratch(1, pred.data.shape))  # reused across steps
        below = np.less(diff, 0, out=out.scratch(2, diff.shape, bool))
        slope = np.subtract(q, below, out=out.scratch(3, diff.shape))
        out.data = np.asarray(np.vdot(diff, slope) / diff.size, dtype=engine.DTYPE)

    def pinball_backward():
        scale = out.grad / slope.size
        if pred.requires_grad:
            pred.add_grad(np.multiply(slope, -scale, out=out.scratch(0, slope.shape)))
        if target.requires_grad:
            target.add_grad(slope.sum(axis=1).reshape(target.data.shape) * scale)
    return out.define(pinball_forward, pinball_backward)


def residual(pred: Value, target: Value) -> Value:
    """pred - target; a (n,) target is compared with a (n, 1) prediction column-wise."""
    target = lift(target)
    if len(target.shape) == 1:  # pred.T puts the rows last; its shape is unknown in a lazy graph
        return pred.T - target
    return pred - target


def mse(pred: Value, target: Value) -> Value:
    """Mean squared error."""
    return (residual(pred, target) ** 2).mean()


def huber(pred: Value, target: Value, delta: float = 1.0) -> Value:
    """Mean Huber loss: d^2/2 where |d| <= delta, else delta*(|d| - delta/2), for d = pred - target."""
    if delta <= 0:
        raise ValueError(f"huber: delta must be > 0, got {delta}")
    size = residual(pred, target).abs()
    inside = minimum(size, delta)  # = |d| up to delta: the quadratic part, the rest is linear
    return (0.5 * inside * inside + delta * (size - inside)).mean()


def binary_cross_entropy_with_logits(logits: Value, target: Value) -> Value:
    """Mean of -y log(sigmoid(z)) - (1-y) log(1 - sigmoid(z)) = softplus(z) - y*z, for logits z
    and targets y in [0, 1]; stable for logits of any size (softplus never overflows)."""
    target = lift(target)
    z = logits.T if len(target.shape) == 1 else logits  # as residual(): (n, 1) logits, (n,) targets
    return (z.softplus() - z * target).mean()


def cross_entropy(logits: Value, labels) -> Value:
    """Mean over rows of -log softmax(logits)[label]: logits (n, C), labels (n,) integers in [0, C)
    (an array, or an integer placeholder). Stable for logits of any size."""
    labels = Value.indices(labels)
    out = Value.node("cross_entropy", logits, labels)
    lse = None  # logsumexp of each row, kept from forward for backward

    def cross_entropy_forward():
        nonlocal lse
        z, k = logits.data, labels.data
        if z.ndim != 2 or k.shape != (z.shape[0],):
            raise ValueError(f"cross_entropy: logits {z.shape} need to be (n, classes) and labels {k.shape} (n,)")
        if k.size and (k.min() < 0 or k.max() >= z.shape[1]):
            bad = k.min() if k.min() < 0 else k.max()
            raise ValueError(f"cross_entropy: label {bad} out of range for {z.shape[1]} classes")
        lse = stable_logsumexp(z, axis=1)
        picked = np.take_along_axis(z, k[:, None], axis=1)
        out.data = np.asarray((lse.sum() - picked.sum()) / len(k), dtype=engine.DTYPE)

    def cross_entropy_backward():  # (softmax - one_hot(label)) / n
        z, k = logits.data, labels.data
        p = np.subtract(z, lse[:, None], out=out.scratch(0, z.shape))
        np.exp(p, out=p)
        p[np.arange(len(k)), k] -= 1
        logits.add_grad(np.multiply(p, out.grad / len(k), out=p))
    return out.define(cross_entropy_forward, cross_entropy_backward)
