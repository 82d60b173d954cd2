"""Epoch time of the quantile MLP (64 -> 128 tanh -> 9, pinball loss, Adam, float32).

Runs, in one process: micrograd; the same model as hand-written NumPy forward and backward
(no autodiff: the practical floor); PyTorch eager on the CPU when installed. Prints each
epoch time and its ratio to the NumPy floor.

    python bench/engine.py [--rows 2000000] [--batches 4096,65536] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from micrograd import Value
from micrograd.losses import pinball
from micrograd.nn import MLP, flatten
from micrograd.optim import Adam

FEATURES, HIDDEN, LEVELS = 64, 128, np.linspace(0.1, 0.9, 9, dtype=np.float32)
LR = 1e-3


def batches(X: np.ndarray, y: np.ndarray, size: int):
    for i in range(0, len(X) - size + 1, size):
        yield X[i:i + size], y[i:i + size]


def epoch_micrograd(X, y, size):
    model = MLP(FEATURES, [HIDDEN], len(LEVELS), "tanh", seed=0)
    loss = pinball(model(Value.placeholder("X", (None, FEATURES))), Value.placeholder("y", (None,)), LEVELS)
    params, grads = flatten(model.parameters())
    opt = Adam(params.size, lr=LR)
    t = time.perf_counter()
    for xb, yb in batches(X, y, size):
        loss.forward(X=xb, y=yb)
        loss.backward()
        opt.step(params, grads)
    return time.perf_counter() - t, float(loss.data)


def epoch_numpy(X, y, size):
    """The same model written out by hand, every buffer preallocated: the floor for any engine."""
    rng = np.random.default_rng(0)
    b1, b2 = 1 / np.sqrt(FEATURES), 1 / np.sqrt(HIDDEN)
    shapes = [(FEATURES, HIDDEN), (HIDDEN,), (HIDDEN, len(LEVELS)), (len(LEVELS),)]
    params = np.concatenate([rng.uniform(-b, b, s).ravel() for b, s in zip((b1, b1, b2, b2), shapes)]).astype(np.float32)
    grads = np.zeros_like(params)
    cuts = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
    W1, c1, W2, c2 = (params[i:j].reshape(s) for i, j, s in zip(cuts[:-1], cuts[1:], shapes))
    dW1, dc1, dW2, dc2 = (grads[i:j].reshape(s) for i, j, s in zip(cuts[:-1], cuts[1:], shapes))
    h, dh = np.empty((size, HIDDEN), np.float32), np.empty((size, HIDDEN), np.float32)
    diff, slope = np.empty((size, len(LEVELS)), np.float32), np.empty((size, len(LEVELS)), np.float32)
    m, v, tmp = np.zeros_like(params), np.zeros_like(params), np.zeros_like(params)
    t = time.perf_counter()
    for step, (xb, yb) in enumerate(batches(X, y, size), start=1):
        np.matmul(xb, W1, out=h)
        h += c1
        np.tanh(h, out=h)
        np.matmul(h, W2, out=diff)
        diff += c2
        np.subtract(yb[:, None], diff, out=diff)
        np.subtract(LEVELS, diff < 0, out=slope)
        loss = np.vdot(diff, slope) / diff.size
        slope *= np.float32(-1 / diff.size)  # now d loss / d prediction
        np.matmul(h.T, slope, out=dW2)
        slope.sum(0, out=dc2)
        np.matmul(slope, W2.T, out=dh)
        np.multiply(h, h, out=h)
        np.subtract(1, h, out=h)
        dh *= h
        np.matmul(xb.T, dh, out=dW1)
        dh.sum(0, out=dc1)
        m *= 0.9
        m += np.multiply(grads, 0.1, out=tmp)
        v *= 0.999
        v += np.multiply(np.multiply(grads, grads, out=tmp), 0.001, out=tmp)
        lr = LR * (1 - 0.999 ** step) ** 0.5 / (1 - 0.9 ** step)
        np.sqrt(v, out=tmp)
        tmp += 1e-8
        np.divide(m, tmp, out=tmp)
        tmp *= lr
        params -= tmp
    return time.perf_counter() - t, float(loss)


def epoch_torch(X, y, size):
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, len(LEVELS)))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    q = torch.from_numpy(LEVELS)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    t = time.perf_counter()
    for i in range(0, len(X) - size + 1, size):
        diff = yt[i:i + size, None] - model(Xt[i:i + size])
        loss = torch.maximum(q * diff, (q - 1) * diff).mean()
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
    return time.perf_counter() - t, loss.item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--batches", default="4096,65536")
    p.add_argument("--repeats", type=int, default=3, help="best of this many epochs per contender")
    args = p.parse_args()
    rng = np.random.default_rng(1)
    X = rng.standard_normal((args.rows, FEATURES), dtype=np.float32)
    y = (X[:, 0] + np.sin(X[:, 1]) + rng.standard_normal(args.rows, dtype=np.float32)).astype(np.float32)
    contenders = {"numpy (floor)": epoch_numpy, "micrograd": epoch_micrograd}
    try:
        import torch
        contenders[f"pytorch {torch.__version__} eager"] = epoch_torch
        torch_threads = torch.get_num_threads()
    except ImportError:
        torch_threads = None
    try:
        from threadpoolctl import threadpool_info
        blas = ", ".join(f"{i['internal_api']} {i.get('version')} {i['num_threads']} threads" for i in threadpool_info())
    except ImportError:
        blas = "threadpoolctl not installed"
    print(f"{args.rows:,} rows x {FEATURES} features, cpus={os.cpu_count()}, BLAS: {blas}, torch threads: {torch_threads}")
    for size in (int(s) for s in args.batches.split(",")):
        times = {name: float("inf") for name in contenders}
        for _ in range(args.repeats):  # round robin, so a passing load spike hits every contender alike
            for name, f in contenders.items():
                times[name] = min(times[name], f(X, y, size)[0])
        floor = times["numpy (floor)"]
        for name, t in times.items():
            print(f"batch {size:>6}  {name:<28} {t:6.2f} s/epoch  {t / floor:5.2f}x numpy  {args.rows / t / 1e6:5.2f}M rows/s")


if __name__ == "__main__":
    main()
