"""Losses: pinball (quantile) loss for many quantiles at once, mean squared error, cross-entropy."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from micrograd import engine
from micrograd.engine import Value, lift


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
        slope = np.subtract(q, diff < 0, dtype=engine.DTYPE)
        out.data = np.asarray(np.vdot(diff, slope) / diff.size, dtype=engine.DTYPE)

    def pinball_backward():
        scale = out.grad / slope.size
        if pred.requires_grad:
            pred.add_grad(np.multiply(slope, -scale, out=out.scratch(0, slope.shape)))
        if target.requires_grad:
            target.add_grad(slope.sum(axis=1).reshape(target.data.shape) * scale)
    return out.define(pinball_forward, pinball_backward)


def mse(pred: Value, target: Value) -> Value:
    """Mean squared error; a (n,) target is compared with a (n, 1) prediction column-wise."""
    target = lift(target)
    if len(target.shape) == 1:  # pred.T puts the rows last; its shape is unknown in a lazy graph
        return ((pred.T - target) ** 2).mean()
    return ((pred - target) ** 2).mean()


def cross_entropy(logits: Value, labels: Value) -> Value:
    """Mean over rows of -log softmax(logits)[label], computed stably (the row's max subtracted).

    logits is (n, C); labels is (n,), holding the classes 0..C-1 (as floats, like any target);
    labels get no gradient.
    """
    labels = lift(labels)
    out = Value.node("cross_entropy", logits, labels)
    prob, picked = None, None  # softmax of each row and (rows, label) indices, kept from forward for backward

    def cross_entropy_forward():
        nonlocal prob, picked
        z, c = logits.data, labels.data
        if z.ndim != 2 or c.shape != (z.shape[0],):
            raise ValueError(f"cross_entropy: logits {z.shape} and labels {c.shape}: need (n, classes) and (n,)")
        index = c.astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= z.shape[1] or (index != c).any()):
            bad = c[(index < 0) | (index >= z.shape[1]) | (index != c)][0]
            raise ValueError(f"cross_entropy: labels must be integers in [0, {z.shape[1]}), got {bad}")
        shifted = z - z.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        picked = (np.arange(len(index)), index)
        out.data = np.asarray((log_norm[:, 0] - shifted[picked]).mean(), dtype=engine.DTYPE)
        prob = np.exp(shifted - log_norm)

    def cross_entropy_backward():
        if logits.requires_grad:
            g = prob.copy()
            g[picked] -= 1
            logits.add_grad(g * (out.grad / len(g)))
    return out.define(cross_entropy_forward, cross_entropy_backward)
