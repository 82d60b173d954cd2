"""Optimisers over one flat float32 parameter vector, and learning-rate schedules.

The parameter server keeps every parameter in one contiguous array and calls
`opt.step(params, grads)` once per global batch. The updates are PyTorch's documented
formulas (torch.optim.SGD without dampening, Adam, AdamW), computed in place in float32
with preallocated scratch buffers, so a step allocates nothing the size of the model.
"""
import math
from typing import Callable

import numpy as np

Schedule = Callable[[int], float]  # number of steps already taken -> learning rate


def constant(lr: float) -> Schedule:
    """The same learning rate at every step."""
    return lambda step: lr


def warmup_linear(lr: float, warmup: int) -> Schedule:
    """lr * (step + 1) / warmup for the first `warmup` steps, then lr."""
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    return lambda step: lr * (step + 1) / warmup if step < warmup else lr


def warmup_cosine(lr: float, warmup: int, total: int, min_lr: float = 0.0) -> Schedule:
    """Warm-up as in warmup_linear, then cosine decay from lr to min_lr at step `total`."""
    if not 0 <= warmup < total:
        raise ValueError(f"need 0 <= warmup < total, got warmup={warmup}, total={total}")
    ramp = warmup_linear(lr, warmup)

    def schedule(step: int) -> float:
        if step < warmup:
            return ramp(step)
        progress = min(1.0, (step - warmup) / (total - warmup))
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    return schedule


class Optimizer:
    """Shared part: lr schedule, step count, argument checks, state as a dict of arrays."""

    def __init__(self, size: int, lr: float | Schedule, weight_decay: float):
        if (not callable(lr) and lr < 0) or weight_decay < 0:
            raise ValueError(f"need lr >= 0 and weight_decay >= 0, got {lr}, {weight_decay}")
        self.size, self.weight_decay, self.steps = size, weight_decay, 0
        self.schedule = lr if callable(lr) else constant(lr)
        self.buffers: dict[str, np.ndarray] = {}  # float32 state, saved by state_dict
        self._g = np.empty(size, np.float32)  # scratch: the gradient actually applied

    def _begin(self, params: np.ndarray, grads: np.ndarray, l2: bool) -> tuple[float, np.ndarray]:
        """Check the arguments; return this step's lr and grads (+ weight_decay*params if l2)."""
        for name, a in (("params", params), ("grads", grads)):
            if a.shape != (self.size,) or a.dtype != np.float32:
                raise ValueError(f"{name}: want float32 ({self.size},), got {a.dtype} {a.shape}")
        if l2 and self.weight_decay:
            np.multiply(params, self.weight_decay, out=self._g)
            self._g += grads
        else:
            np.copyto(self._g, grads)
        return float(self.schedule(self.steps)), self._g

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the step count and the buffers."""
        state = {k: v.copy() for k, v in self.buffers.items()}
        return state | {"steps": np.array(self.steps, np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore a state_dict(); ValueError, changing nothing, if it does not fit."""
        want = self.state_dict()
        if set(state) != set(want):
            raise ValueError(f"optimizer state keys {sorted(state)}, want {sorted(want)}")
        for key, ref in want.items():
            got = np.asarray(state[key])
            if got.shape != ref.shape or got.dtype != ref.dtype:
                raise ValueError(f"optimizer state {key!r}: want {ref.dtype} {ref.shape}, "
                                 f"got {got.dtype} {got.shape}")
        if state["steps"] < 0:
            raise ValueError(f"optimizer state 'steps' is negative: {state['steps']}")
        for key, buf in self.buffers.items():
            np.copyto(buf, state[key])
        self.steps = int(state["steps"])


class SGD(Optimizer):
    """g = grad + wd*p;  b = mu*b + g;  g = g + mu*b if nesterov else b;  p -= lr*g."""

    def __init__(self, size: int, lr: float | Schedule, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(size, lr, weight_decay)
        if momentum < 0 or (nesterov and momentum == 0):
            raise ValueError(f"need momentum >= 0, and > 0 for Nesterov; got {momentum}")
        self.momentum, self.nesterov = momentum, nesterov
        if momentum:
            self.buffers["momentum"] = np.zeros(size, np.float32)
        self._tmp = np.empty(size, np.float32) if nesterov else None

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        """Update params in place; grads are left unchanged."""
        lr, g = self._begin(params, grads, l2=True)
        if self.momentum:
            b = self.buffers["momentum"]
            b *= self.momentum
            b += g
            if self.nesterov:
                g += np.multiply(b, self.momentum, out=self._tmp)
            else:
                g[:] = b
        g *= lr
        params -= g
        self.steps += 1


class Adam(Optimizer):
    """Adam with bias correction; weight_decay adds wd*p to the gradient (L2).

    m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;  p -= lr * m^ / (sqrt(v^) + eps),
    with m^ = m / (1 - b1^t) and v^ = v / (1 - b2^t) at step t = 1, 2, ...
    """
    decoupled = False  # AdamW: decay p directly instead of through the gradient

    def __init__(self, size: int, lr: float | Schedule = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(size, lr, weight_decay)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1 and eps >= 0):
            raise ValueError(f"need 0 <= betas < 1 and eps >= 0, got {betas}, {eps}")
        self.betas, self.eps = betas, eps
        self.buffers.update(m=np.zeros(size, np.float32), v=np.zeros(size, np.float32))
        self._tmp = np.empty(size, np.float32)

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        """Update params in place; grads are left unchanged."""
        lr, g = self._begin(params, grads, l2=not self.decoupled)
        (b1, b2), t, tmp = self.betas, self.steps + 1, self._tmp
        m, v = self.buffers["m"], self.buffers["v"]
        if self.decoupled:
            params *= 1 - lr * self.weight_decay
        np.multiply(g, g, out=tmp)
        tmp *= 1 - b2
        v *= b2
        v += tmp
        g *= 1 - b1
        m *= b1
        m += g
        np.sqrt(v, out=tmp)  # tmp = sqrt(v^) + eps, then the update
        tmp /= math.sqrt(1 - b2**t)
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= lr / (1 - b1**t)
        params -= tmp
        self.steps += 1


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr*wd, no L2."""
    decoupled = True

    def __init__(self, size: int, lr: float | Schedule = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(size, lr, betas, eps, weight_decay)


def make(name: str, size: int, lr: float | Schedule, **kw) -> Optimizer:
    """Build an optimiser by name: "sgd", "adam" or "adamw"; kw go to its constructor."""
    kinds = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
    if name not in kinds:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(kinds)}")
    return kinds[name](size, lr, **kw)
