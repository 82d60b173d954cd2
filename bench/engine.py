"""Epoch time of the quantile MLP (64 -> 128 tanh -> 9, pinball loss, Adam, float32) per engine.

Runs, in one process and in interleaved rounds (every contender once per round, so a passing
load spike hits them alike): the same model as hand-written NumPy forward and backward with
every buffer preallocated (the baseline, 2 BLAS threads, and 1 BLAS thread as a 1-CPU worker
has); micrograd on one full batch per step (the graph as written); micrograd's GradSum in
512-row passes on 1 thread (BLAS 1 thread), in 4,096-row passes on all threads, and (ProcessGradSum,
Linux) in 512-row passes on as many processes as CPUs (BLAS 1 thread each); and where
installed PyTorch eager and torch.compile, JAX jit (a Python loop of steps, and lax.scan over
the epoch) and TensorFlow tf.function. Every contender starts from the same weights and sees
the same batches; compilation is done before timing. Prints the median epoch time, its ratio to
the faster of the two NumPy loops in the same round (median and range over rounds: on a loaded
machine OpenBLAS's 2 threads can be many times slower than 1) and the loss of the last batch.

    python bench/engine.py [--rows 2359296] [--batches 4096,65536] [--rounds 5] [--only micrograd,numpy]
Install the contenders with `pip install -e .[bench]`.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from micrograd import Value
from micrograd.losses import pinball
from micrograd.nn import MLP, flatten
from micrograd.optim import Adam
from micrograd.parallel import BLOCK, FORKS, THREAD_BLOCK, GradSum, ProcessGradSum

FEATURES, HIDDEN, LEVELS = 64, 128, np.linspace(0.1, 0.9, 9, dtype=np.float32)
LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
CPUS = os.cpu_count() or 1

Epoch = Callable[[], float]  # one epoch from the initial weights; returns the last batch's loss


@dataclass
class Contender:
    name: str
    blas: int | None  # BLAS threads while it runs (None: the library manages its own threads)
    epoch: Epoch
    times: list[float] = field(default_factory=list)
    loss: float = float("nan")


class Quantile:
    """The model as mgdist's workers see it: a mean loss over fed rows and its parameters."""

    def __init__(self):
        self.mlp = MLP(FEATURES, [HIDDEN], len(LEVELS), "tanh", seed=0)
        self.loss = pinball(self.mlp(Value.placeholder("X", (None, FEATURES))), Value.placeholder("y", (None,)), LEVELS)

    def parameters(self) -> list[Value]:
        return self.mlp.parameters()


def initial_weights() -> list[np.ndarray]:
    """W1 (64, 128), b1, W2 (128, 9), b2 as micrograd's MLP draws them: every contender starts here."""
    return [p.data.copy() for p in Quantile().parameters()]


def micrograd_full(X, y, size) -> Epoch:
    """The graph fed one whole batch per step."""
    model = Quantile()
    params, grads = flatten(model.parameters())
    start = params.copy()

    def epoch():
        params[:] = start
        opt = Adam(params.size, LR, BETAS, EPS)
        for i in range(0, len(X) - size + 1, size):
            model.loss.forward(X=X[i:i + size], y=y[i:i + size])
            model.loss.backward()
            opt.step(params, grads)
        return float(model.loss.data)
    return epoch


def gradsum_epoch(gs, steps: range, size: int, batch: Callable[[int], tuple]) -> Epoch:
    """An epoch of Adam steps on a GradSum-like `gs`, step i's gradient sum gs(*batch(i)) over `size` rows."""
    start, mean = gs.params.copy(), np.empty_like(gs.params)

    def epoch():
        gs.params[:] = start
        opt = Adam(gs.params.size, LR, BETAS, EPS)
        for i in steps:
            total, loss = gs(*batch(i))
            np.multiply(total, np.float32(1 / size), out=mean)
            opt.step(gs.params, mean)
        return loss / size
    return epoch


def micrograd_passes(X, y, size, threads: int) -> Epoch:
    """GradSum: the batch in passes of its default size on `threads` threads, as mgdist's workers run it."""
    return gradsum_epoch(GradSum(Quantile, threads=threads), range(0, len(X) - size + 1, size), size,
                         lambda i: ({"X": X[i:i + size], "y": y[i:i + size]},))


def micrograd_processes(X, y, size) -> Epoch:
    """ProcessGradSum: the batch in 512-row passes on this process and CPUS - 1 forked ones (1 BLAS
    thread each), gathered from the whole data set, as a worker with CPUS CPUs runs it."""
    feeds, order = {"X": X, "y": y}, np.arange(len(X))
    with threadpool_limits(limits=1, user_api="blas"):  # the forked processes keep it
        gs = ProcessGradSum(Quantile, feeds, CPUS)
    return gradsum_epoch(gs, range(0, len(X) - size + 1, size), size, lambda i: (feeds, order[i:i + size]))


def numpy_loop(X, y, size) -> Epoch:
    """The same model written out by hand, every buffer preallocated."""
    shapes = [(FEATURES, HIDDEN), (HIDDEN,), (HIDDEN, len(LEVELS)), (len(LEVELS),)]
    start = np.concatenate([w.ravel() for w in initial_weights()])
    params, grads = start.copy(), np.zeros_like(start)
    cuts = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
    W1, c1, W2, c2 = (params[i:j].reshape(s) for i, j, s in zip(cuts[:-1], cuts[1:], shapes))
    dW1, dc1, dW2, dc2 = (grads[i:j].reshape(s) for i, j, s in zip(cuts[:-1], cuts[1:], shapes))
    h, dh = np.empty((size, HIDDEN), np.float32), np.empty((size, HIDDEN), np.float32)
    diff, slope = np.empty((size, len(LEVELS)), np.float32), np.empty((size, len(LEVELS)), np.float32)
    m, v, tmp = np.zeros_like(params), np.zeros_like(params), np.zeros_like(params)

    def epoch():
        nonlocal params, h, dh, diff, slope, m, v, tmp  # updated in place (+= and the like)
        params[:], m[:], v[:] = start, 0, 0
        for step, i in enumerate(range(0, len(X) - size + 1, size), start=1):
            xb, yb = X[i:i + size], y[i:i + size]
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
            m *= BETAS[0]
            m += np.multiply(grads, 1 - BETAS[0], out=tmp)
            v *= BETAS[1]
            v += np.multiply(np.multiply(grads, grads, out=tmp), 1 - BETAS[1], out=tmp)
            np.sqrt(v, out=tmp)
            tmp /= np.sqrt(1 - BETAS[1] ** step)
            tmp += EPS
            np.divide(m, tmp, out=tmp)
            tmp *= LR / (1 - BETAS[0] ** step)
            params -= tmp
        return float(loss)
    return epoch


def torch_contenders(X, y, size) -> list[Contender]:
    import torch
    torch.set_num_threads(CPUS)
    Xt, yt, q = torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(LEVELS)
    W1, b1, W2, b2 = initial_weights()

    def make(compiled: bool) -> Epoch:
        model = torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, len(LEVELS)))

        def loss_of(xb, yb):
            diff = yb[:, None] - model(xb)
            return torch.maximum(q * diff, (q - 1) * diff).mean()
        f = torch.compile(loss_of) if compiled else loss_of

        def epoch():
            with torch.no_grad():
                for p, w in zip(model.parameters(), (W1.T, b1, W2.T, b2)):
                    p.copy_(torch.from_numpy(np.ascontiguousarray(w)))
            opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS)
            for i in range(0, len(X) - size + 1, size):
                loss = f(Xt[i:i + size], yt[i:i + size])
                opt.zero_grad(set_to_none=False)
                loss.backward()
                opt.step()
            return loss.item()
        if compiled:
            epoch()  # compile outside the timing
        return epoch
    v = torch.__version__
    return [Contender(f"PyTorch {v} eager", None, make(False)), Contender(f"torch.compile {v}", None, make(True))]


def jax_contenders(X, y, size) -> list[Contender]:
    import jax
    import jax.numpy as jnp
    steps = len(X) // size
    Xs = jnp.asarray(X[:steps * size].reshape(steps, size, FEATURES))
    ys = jnp.asarray(y[:steps * size].reshape(steps, size))
    q = jnp.asarray(LEVELS)
    start = tuple(jnp.asarray(w) for w in initial_weights())

    def loss_of(p, xb, yb):
        W1, b1, W2, b2 = p
        diff = yb[:, None] - (jnp.tanh(xb @ W1 + b1) @ W2 + b2)
        return jnp.maximum(q * diff, (q - 1) * diff).mean()

    def step(state, batch):  # Adam, as micrograd.optim.Adam computes it
        p, m, v, t = state
        loss, g = jax.value_and_grad(loss_of)(p, *batch)
        t = t + 1
        m = tuple(BETAS[0] * a + (1 - BETAS[0]) * b for a, b in zip(m, g))
        v = tuple(BETAS[1] * a + (1 - BETAS[1]) * b * b for a, b in zip(v, g))
        lr = LR / (1 - BETAS[0] ** t)
        p = tuple(w - lr * a / (jnp.sqrt(b) / jnp.sqrt(1 - BETAS[1] ** t) + EPS) for w, a, b in zip(p, m, v))
        return (p, m, v, t), loss

    def init():
        zeros = tuple(jnp.zeros_like(w) for w in start)
        return start, zeros, zeros, jnp.float32(0)
    jit_step = jax.jit(step)
    scan_epoch = jax.jit(lambda state, Xs, ys: jax.lax.scan(step, state, (Xs, ys)))

    def loop():
        state = init()
        for k in range(steps):
            state, loss = jit_step(state, (Xs[k], ys[k]))
        return float(loss)

    def scan():
        state, losses = scan_epoch(init(), Xs, ys)
        return float(losses[-1])
    loop(), scan()  # compile outside the timing
    return [Contender(f"JAX {jax.__version__} jit, Python loop", None, loop),
            Contender(f"JAX {jax.__version__} jit + lax.scan", None, scan)]


def tensorflow_contenders(X, y, size) -> list[Contender]:
    import tensorflow as tf
    q = tf.constant(LEVELS)
    start = initial_weights()
    p = [tf.Variable(w) for w in start]
    m = [tf.Variable(tf.zeros_like(w)) for w in start]
    v = [tf.Variable(tf.zeros_like(w)) for w in start]
    t = tf.Variable(0.0)
    Xt, yt = tf.constant(X), tf.constant(y)

    @tf.function
    def epoch_graph():
        loss = tf.constant(0.0)
        for i in tf.range(len(X) // size):  # inside tf.function: one graph for the whole epoch
            xb, yb = Xt[i * size:(i + 1) * size], yt[i * size:(i + 1) * size]
            with tf.GradientTape() as tape:
                diff = yb[:, None] - (tf.tanh(xb @ p[0] + p[1]) @ p[2] + p[3])
                loss = tf.reduce_mean(tf.maximum(q * diff, (q - 1) * diff))
            g = tape.gradient(loss, p)
            t.assign_add(1.0)
            lr = LR / (1 - BETAS[0] ** t)
            for w, a, b, gw in zip(p, m, v, g):
                a.assign(BETAS[0] * a + (1 - BETAS[0]) * gw)
                b.assign(BETAS[1] * b + (1 - BETAS[1]) * gw * gw)
                w.assign_sub(lr * a / (tf.sqrt(b) / tf.sqrt(1 - BETAS[1] ** t) + EPS))
        return loss

    def epoch():
        for w, a, b, s in zip(p, m, v, start):
            w.assign(s)
            a.assign(tf.zeros_like(s))
            b.assign(tf.zeros_like(s))
        t.assign(0.0)
        return float(epoch_graph())
    epoch()  # trace and compile outside the timing
    return [Contender(f"TensorFlow {tf.__version__} tf.function", None, epoch)]


def contenders(X, y, size, only: list[str]) -> list[Contender]:
    """Every contender (those whose name has one of the fragments `only`, if any, and the NumPy loops)."""
    out = [Contender("NumPy loop (2 BLAS threads)", CPUS, numpy_loop(X, y, size)),
           Contender("NumPy loop (1 BLAS thread)", 1, numpy_loop(X, y, size)),
           Contender("micrograd, whole batch", CPUS, micrograd_full(X, y, size)),
           Contender(f"micrograd, 1 thread, {BLOCK}-row passes", 1, micrograd_passes(X, y, size, 1)),
           Contender(f"micrograd, {CPUS} threads, {THREAD_BLOCK}-row passes or less", 1, micrograd_passes(X, y, size, CPUS))]
    if FORKS and CPUS > 1:
        out.append(Contender(f"micrograd, {CPUS} processes, {BLOCK}-row passes", 1, micrograd_processes(X, y, size)))
    for kind in (torch_contenders, jax_contenders, tensorflow_contenders):
        library = kind.__name__.removesuffix("_contenders")
        if only and not any(s.lower() in library for s in only):
            continue
        try:
            out += kind(X, y, size)
        except Exception as e:  # not installed, or fails to load here: say so and go on
            print(f"  ({library} skipped: {type(e).__name__}: {str(e)[:100]})")
    return [c for c in out if c.name.startswith("NumPy loop") or not only or any(s.lower() in c.name.lower() for s in only)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2_359_296)
    p.add_argument("--batches", default="4096,65536")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    p.add_argument("--only", default="", help="comma-separated name fragments: run only matching contenders (and the NumPy loops)")
    args = p.parse_args()
    rng = np.random.default_rng(1)
    X = rng.standard_normal((args.rows, FEATURES), dtype=np.float32)
    y = (X[:, 0] + np.sin(X[:, 1]) + rng.standard_normal(args.rows, dtype=np.float32)).astype(np.float32)
    print(f"{args.rows:,} rows x {FEATURES} features, {CPUS} CPUs, {args.rounds} interleaved rounds; ratios to the "
          f"faster NumPy loop of each round (median, and min-max over rounds); load average {os.getloadavg()[0]:.1f}")
    for size in (int(s) for s in args.batches.split(",")):
        field = contenders(X, y, size, [s for s in args.only.split(",") if s])
        for _ in range(args.rounds):  # every contender once per round
            for c in field:
                with threadpool_limits(limits=c.blas, user_api="blas") if c.blas else threadpool_limits(limits=None):
                    t = time.perf_counter()
                    c.loss = c.epoch()
                    c.times.append(time.perf_counter() - t)
        numpy = [c for c in field if c.name.startswith("NumPy loop")]
        base = np.min([c.times for c in numpy], axis=0)  # each round's faster NumPy loop
        print(f"batch {size:,} ({len(X) // size} steps; load average now {os.getloadavg()[0]:.1f})")
        for c in field:
            t = np.array(c.times)
            r = t / base
            print(f"  {c.name:<40} {np.median(t):6.2f} s  {np.median(r):5.2f}x ({r.min():.2f}-{r.max():.2f})  "
                  f"{len(X) / np.median(t) / 1e6:5.2f}M rows/s  loss {c.loss:.5f}")


if __name__ == "__main__":
    main()
