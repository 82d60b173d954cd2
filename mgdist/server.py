"""ParameterServer actor: drives the steps, averages workers' gradients by rows, steps the optimiser."""
from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass, field

import numpy as np
import ray

from micrograd import optim
from mgdist import link
from mgdist.config import TrainConfig
from mgdist.errors import BadMessage, NonFiniteError


STEP_LOG = np.dtype([("step", "<i8"), ("rows", "<i8"), ("loss", "<f8"), ("applied", "?")])
"""A record of each step a server took: its number, the rows it averaged, their loss sum, and
whether it updated the parameters (False: skipped as non-finite)."""


def step_log(records: list[tuple[int, int, float, bool]] = ()) -> np.ndarray:
    """These (step, rows, loss, applied) records as a STEP_LOG array."""
    return np.array(list(records), STEP_LOG)


@dataclass
class ServerState:
    """What the server hands the driver after each run: a checkpoint's contents and progress figures."""
    step: int
    params: np.ndarray
    optimizer: dict[str, np.ndarray] | None
    train_loss: float = float("nan")  # mean training loss since the previous state (or the last known)
    skips: tuple[str, ...] = ()       # every step skipped so far, and why
    slowest_s: float = 0.0            # compute seconds summed over steps: the slowest worker's of each step
    mean_s: float = 0.0               # and the mean worker's
    late: tuple[int, ...] = ()        # the workers that held up the step that failed last, past --step-timeout
    lr: float = float("nan")          # the learning rate of the last update applied (of the first, before any)
    log: np.ndarray = field(default_factory=step_log)  # STEP_LOG records of the steps since the previous state


def make_optimizer(config: TrainConfig, size: int, total_steps: int) -> optim.Optimizer:
    lr = {"constant": lambda: optim.constant(config.lr),
          "linear": lambda: optim.warmup_linear(config.lr, config.warmup_steps),
          "cosine": lambda: optim.warmup_cosine(config.lr, min(config.warmup_steps, total_steps - 1),
                                                total_steps, 0.05 * config.lr)}[config.schedule]()
    kw = {"weight_decay": config.weight_decay} if config.weight_decay else {}
    return optim.make(config.optimizer, size, lr, **kw)


class ParameterServer:
    """Holds the flat parameters and optimiser state, and drives the steps: each step sends the
    weights to every worker and applies what they return, over a link (mgdist/link.py) to each.
    Its own step counter says which step comes next, so no step can be applied twice or
    skipped, whatever the driver retries."""

    def __init__(self, config: TrainConfig, params: np.ndarray, total_steps: int, secret: link.Secret, step: int = 0,
                 optimizer_state: dict | None = None):
        self.config, self.step, self.secret = config, step, secret
        self.dropped: list[str] = []  # every peer that connected but was not let in, and why
        self.params = np.array(params, np.float32)
        self.opt = make_optimizer(config, params.size, total_steps)
        if optimizer_state is not None:
            self.opt.load_state_dict(optimizer_state)
        self.mean_grad = np.empty_like(self.params)
        self.window = [0.0, 0]  # loss sum and rows since the last state() call
        self.loss = float("nan")  # mean training loss of the last window that had steps
        self.skips: list[str] = []  # every step this server skipped, and why
        self.late: tuple[int, ...] = ()  # the workers that did not answer within step_timeout, last time
        self.compute_s = [0.0, 0.0]  # per step summed: the slowest worker's compute, the mean worker's
        self.log: list[tuple[int, int, float, bool]] = []  # STEP_LOG records since the last state() call
        self.workers: list = []  # those the links below lead to, and their serve() calls
        self.links: list[socket.socket | None] = []
        self.serving: list[ray.ObjectRef] = []
        self.checked = 0.0  # when Ray was last asked whether every serve() call is still running

    def run(self, stop: int, workers: list, batches: list[int], steps_per_epoch: int) -> ServerState:
        """Take steps until step `stop`, worker w computing `batches[w]` rows of each; then state().

        A lost worker raises here (as the Ray error), and so does one that does not answer within
        step_timeout (GetTimeoutError, naming it); the steps before stay applied. Any error
        closes the links; the next run opens new ones.
        """
        timeout = self.config.step_timeout
        try:
            if workers != self.workers or ray.wait(self.serving, timeout=0)[0]:  # new workers, or one's link timed out
                self._connect(workers)
            received = [np.empty_like(self.params) for _ in workers]
            while self.step < stop:
                answers, w = [], 0
                try:
                    for w, (sock, b) in enumerate(zip(self.links, batches)):
                        link.send(sock, (self.step, b, steps_per_epoch), self.params)
                    for w, (sock, grad) in enumerate(zip(self.links, received)):
                        self._await(sock, time.monotonic() + timeout)
                        rows, loss, seconds = link.recv(sock, grad)
                        if not (0 <= rows <= batches[w] and rows == int(rows) and 0 <= seconds < float("inf")):
                            raise BadMessage(f"step {self.step}: worker {w} sent {rows:g} rows and {seconds:g} s "
                                             f"of compute, where it was asked for {batches[w]} rows")
                        answers.append((grad, int(rows), loss, seconds))
                except TimeoutError:
                    self.late = (w,)
                    self._raise_lost([w], f"step {self.step}: worker(s) [{w}] did not answer within "
                                          f"{timeout:g} s (--step-timeout)", wait=0)
                except OSError:  # its end closed: its serve() call says why (its actor died, or it failed)
                    self._raise_lost([w], f"step {self.step}: worker(s) [{w}] closed its link", wait=timeout)
                self.apply(answers)
        except BaseException:
            self._disconnect()
            raise
        return self.state()

    def _connect(self, workers: list) -> None:
        """A link to each worker: it connects to this server and serves steps until the link closes.
        Links to other workers close first, which ends their serve() calls. Peers that do not prove
        they are this run's workers are dropped (link.accept), each noted in self.dropped."""
        self._disconnect()
        host, timeout = ray.util.get_node_ip_address(), self.config.step_timeout
        with socket.create_server((host, 0)) as listener:
            self.workers = list(workers)
            self.serving = [w.serve.remote(host, listener.getsockname()[1], i, self.secret) for i, w in enumerate(workers)]
            self.links, dropped = link.accept(listener, self.secret, len(workers), time.monotonic() + timeout, timeout,
                                              poll=lambda: ray.get(ray.wait(self.serving, timeout=0)[0]))
        for line in dropped:
            print(line, flush=True)  # to this actor's log
        self.dropped += dropped
        missing = [i for i, s in enumerate(self.links) if s is None]
        if missing:
            self._raise_lost(missing, f"worker(s) {missing} did not connect within {timeout:g} s (--step-timeout)", wait=0)

    def _await(self, sock: socket.socket, deadline: float) -> None:
        """Wait until `sock` has an answer; meanwhile, and once a second in any case, ask Ray
        whether a worker's serve() has ended (its actor died, or its node was declared dead:
        a vanished machine closes no socket). TimeoutError after `deadline`."""
        while True:
            if time.monotonic() >= self.checked + 1:
                self.checked = time.monotonic()
                ray.get(ray.wait(self.serving, num_returns=1, timeout=0)[0])  # raises an ended one's error
            if select.select([sock], [], [], 1)[0]:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError

    def _raise_lost(self, ranks: list[int], message: str, wait: float):
        """Raise the error of the first of these workers' serve() calls to have ended within
        `wait` seconds; else GetTimeoutError(message), which the driver treats as a lost worker."""
        done, _ = ray.wait([self.serving[w] for w in ranks], num_returns=1, timeout=wait)
        ray.get(done)
        raise ray.exceptions.GetTimeoutError(message)

    def _disconnect(self) -> None:
        for sock in self.links:
            if sock is not None:
                sock.close()
        self.workers, self.links, self.serving = [], [], []

    def apply(self, results: list[tuple[np.ndarray, int, float, float]]) -> None:
        """Average (gradient sum, rows, loss sum, seconds) of every worker over rows; step once.

        A step whose gradient or loss is not finite stops training (NonFiniteError), or with
        on_nonfinite="skip" is consumed without touching the parameters or the optimiser: the
        optimiser's step count (its lr schedule and Adam's bias correction) counts only applied
        updates, so `step - opt.steps` is the number of skipped steps, in every saved state too.
        """
        rows = sum(r[1] for r in results)
        if rows < 1:
            raise BadMessage(f"step {self.step}: the workers sent {rows} rows in all")
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
            self.log.append((self.step, rows, loss, False))
        else:
            self.opt.step(self.params, self.mean_grad)
            self.window[0] += loss
            self.window[1] += rows
            self.log.append((self.step, rows, loss, True))
        self.step += 1

    def progress(self) -> int:
        """The next step to take; answered while run() is busy (the actor has a second slot), so
        that the driver can tell a server that steps from one that hangs."""
        return self.step

    def state(self) -> ServerState:
        """This server's state now; the training loss is the mean since the last call, and so is the log."""
        if self.window[1]:
            self.loss = self.window[0] / self.window[1]
        self.window = [0.0, 0]
        state = ServerState(self.step, self.params.copy(), self.opt.state_dict(), self.loss, tuple(self.skips),
                            *self.compute_s, self.late, lr=float(self.opt.schedule(max(self.opt.steps - 1, 0))),
                            log=step_log(self.log))
        self.late, self.log = (), []
        return state
