"""ParameterServer actor: drives the steps, averages workers' gradients by rows, steps the optimiser."""
from __future__ import annotations

import numpy as np
import ray

from micrograd import optim
from mgdist.config import Config


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message says why in one line."""


class NonFiniteError(TrainingError):
    """A worker's gradient or loss holds NaN or inf."""


def make_optimizer(config: Config, size: int, total_steps: int) -> optim.Optimizer:
    lr = {"constant": lambda: optim.constant(config.lr),
          "linear": lambda: optim.warmup_linear(config.lr, config.warmup_steps),
          "cosine": lambda: optim.warmup_cosine(config.lr, min(config.warmup_steps, total_steps - 1),
                                                total_steps, 0.05 * config.lr)}[config.schedule]()
    kw = {"weight_decay": config.weight_decay} if config.weight_decay else {}
    return optim.make(config.optimizer, size, lr, **kw)


INLINE_BYTES = 100_000  # weights smaller than this travel inside each task message (Ray's inline limit)


class ParameterServer:
    """Holds the flat parameters and optimiser state, and drives the steps: each step sends the
    weights to every worker and applies what they return. Its own step counter says which step
    comes next, so no step can be applied twice or skipped, whatever the driver retries."""

    def __init__(self, config: Config, params: np.ndarray, total_steps: int, step: int = 0,
                 optimizer_state: dict | None = None):
        self.config, self.step = config, step
        self.params = np.array(params, np.float32)
        self.opt = make_optimizer(config, params.size, total_steps)
        if optimizer_state is not None:
            self.opt.load_state_dict(optimizer_state)
        self.mean_grad = np.empty_like(self.params)
        self.window = [0.0, 0]  # loss sum and rows since the last state() call
        self.loss = float("nan")  # mean training loss of the last window that had steps
        self.skips: list[str] = []  # every step this server skipped, and why
        self.compute_s = [0.0, 0.0]  # per step summed: the slowest worker's compute, the mean worker's

    def run(self, stop: int, workers: list, batches: list[int], steps_per_epoch: int) -> dict:
        """Take steps until step `stop`, worker w computing `batches[w]` rows of each; then state().

        A lost worker raises here (as the Ray error), and so does one that does not answer within
        step_timeout (GetTimeoutError, naming it); the steps before stay applied.
        """
        while self.step < stop:
            weights = self.params if self.params.nbytes < INLINE_BYTES else ray.put(self.params)  # put: one copy, read zero-copy
            refs = [w.grad.remote(weights, self.step, b, steps_per_epoch) for w, b in zip(workers, batches)]
            try:
                results = ray.get(refs, timeout=self.config.step_timeout)
            except ray.exceptions.GetTimeoutError:
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                late = [w for w, ref in enumerate(refs) if ref not in done]
                raise ray.exceptions.GetTimeoutError(f"step {self.step}: worker(s) {late} did not answer within "
                                                     f"{self.config.step_timeout:g} s (--step-timeout)") from None
            self.apply(results)
        return self.state()

    def apply(self, results: list[tuple[np.ndarray, int, float, float]]) -> None:
        """Average (gradient sum, rows, loss sum, seconds) of every worker over rows; step once.

        A step whose gradient or loss is not finite stops training (NonFiniteError), or with
        on_nonfinite="skip" is consumed without touching the parameters or the optimiser: the
        optimiser's step count (its lr schedule and Adam's bias correction) counts only applied
        updates, so `step - opt.steps` is the number of skipped steps, in every saved state too.
        """
        rows = sum(r[1] for r in results)
        loss = sum(r[2] for r in results)
        seconds = [r[3] for r in results]
        self.compute_s[0] += max(seconds)
        self.compute_s[1] += sum(seconds) / len(seconds)
        np.copyto(self.mean_grad, results[0][0])
        for grad, *_ in results[1:]:
            self.mean_grad += grad
        self.mean_grad /= np.float32(rows)
        if not (np.isfinite(loss) and np.isfinite(self.mean_grad).all()):
            bad = [w for w, (g, _, ls, _) in enumerate(results) if not (np.isfinite(ls) and np.isfinite(g).all())]
            message = f"step {self.step}: non-finite gradient or loss from worker(s) {bad}"
            if self.config.on_nonfinite == "error":
                raise NonFiniteError(message)
            self.skips.append(f"{message}: step skipped")
        else:
            self.opt.step(self.params, self.mean_grad)
            self.window[0] += loss
            self.window[1] += rows
        self.step += 1

    def state(self) -> dict:
        """Step, parameters and optimiser state (what a checkpoint holds), the mean training loss
        since the last call (or the last known one), every step skipped so far, and the compute
        seconds so far (the slowest worker's of each step summed, and the mean worker's)."""
        if self.window[1]:
            self.loss = self.window[0] / self.window[1]
        state = {"step": self.step, "params": self.params.copy(), "optimizer": self.opt.state_dict(),
                 "train_loss": self.loss, "skips": list(self.skips), "compute_s": tuple(self.compute_s)}
        self.window = [0.0, 0]
        return state
