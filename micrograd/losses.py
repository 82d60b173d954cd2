"""Losses: pinball (quantile) loss for many quantiles at once, mean squared error."""
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
