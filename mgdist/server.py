"""ParameterServer actor: one shard of the flat parameters; drives the steps, averages workers'
gradients by rows, steps the optimiser on its shard."""
from __future__ import annotations

import contextlib
import selectors
import socket
import time
from dataclasses import dataclass, field, replace

import numpy as np
import ray

from micrograd import optim
from mgdist import link
from mgdist.config import TrainConfig
from mgdist.errors import BadMessage, NonFiniteError, TrainingError


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


def shard_ranges(size: int, servers: int) -> list[tuple[int, int]]:
    """The range [lo, hi) of a flat vector of `size` that each of `servers` shards owns: contiguous,
    in order, covering it, their lengths differing by at most one (the longer ones first)."""
    short, longer = divmod(size, servers)
    bounds = [s * short + min(s, longer) for s in range(servers + 1)]
    return list(zip(bounds, bounds[1:]))


def split_state(state: ServerState, lo: int, hi: int) -> ServerState:
    """The part of `state` a shard owning [lo, hi) starts from: its slice of the parameters and of
    every optimiser array as long as they (the step count is every shard's)."""
    size = state.params.size
    optimizer = None if state.optimizer is None else \
        {k: v[lo:hi] if v.shape == (size,) else v for k, v in state.optimizer.items()}
    return replace(state, params=state.params[lo:hi], optimizer=optimizer)


def join_states(states: list[ServerState]) -> ServerState:
    """The whole of the shards' states, in shard order: parameters and optimiser arrays concatenated,
    the figures, skips and step log of shard 0, the late workers of any. TrainingError if the shards
    are not at the same step, or their step logs disagree on any step, its rows or whether it was applied."""
    first = states[0]
    for s, other in enumerate(states[1:], 1):
        if other.step != first.step:
            raise TrainingError(f"parameter server shard {s} is at step {other.step}, shard 0 at {first.step}")
        if other.log[["step", "rows", "applied"]].tolist() != first.log[["step", "rows", "applied"]].tolist():
            raise TrainingError(f"parameter server shard {s}'s step log disagrees with shard 0's "
                                f"before step {first.step}")
    joined = {k: np.concatenate([s.optimizer[k] for s in states]) if v.ndim else v
              for k, v in first.optimizer.items()}
    return replace(first, params=np.concatenate([s.params for s in states]), optimizer=joined,
                   late=tuple(sorted({w for s in states for w in s.late})))


def make_optimizer(config: TrainConfig, size: int, total_steps: int) -> optim.Optimizer:
    lr = {"constant": lambda: optim.constant(config.lr),
          "linear": lambda: optim.warmup_linear(config.lr, config.warmup_steps),
          "cosine": lambda: optim.warmup_cosine(config.lr, min(config.warmup_steps, total_steps - 1),
                                                total_steps, 0.05 * config.lr)}[config.schedule]()
    return optim.make(config.optimizer, size, lr, weight_decay=config.weight_decay)


class ParameterServer:
    """Holds one shard of the flat parameters (all of them when it is the only one) and its slice of
    the optimiser state, and drives the steps: each step sends its slice of the weights to every
    worker and applies what they return for it, over a link (mgdist/link.py) to each, all links at
    once. Its own step counter says which step comes next, so no step can be applied twice or
    skipped, whatever the driver retries. The optimisers are elementwise (micrograd/optim.py: no
    global norm), so S shards step exactly as one server would."""

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
        self.listener: socket.socket | None = None  # open from listen() until the next run() has accepted
        self.links: list[socket.socket | None] = []  # to the workers whose serve() calls are self.serving
        self.serving: list[ray.ObjectRef] = []
        self.selector: selectors.BaseSelector | None = None  # the links, non-blocking, all on this thread
        self.checked = 0.0  # when Ray was last asked whether every serve() call is still running

    def listen(self) -> tuple[str, int]:
        """Close the links (which ends the workers' serve() calls), open a listener and return its
        (host, port): the workers' serve() calls that the next run() is given connect there."""
        self._disconnect()
        self.listener = socket.create_server((ray.util.get_node_ip_address(), 0))
        return self.listener.getsockname()[:2]

    def run(self, stop: int, serving: list[ray.ObjectRef], batches: list[int], steps_per_epoch: int) -> ServerState:
        """Take steps until step `stop`, worker w computing `batches[w]` rows of each; then state().

        `serving`: worker w's serve() call, for each w. After listen() their links are accepted
        first; else the links of the last run() go on. A lost worker raises here (as the Ray
        error), and so does one that does not answer within step_timeout (GetTimeoutError, naming
        it); the steps before stay applied. Any error closes the links; listen() opens new ones.
        """
        try:
            if self.listener is not None:
                self._accept(serving)
            elif not self.links:
                raise TrainingError("the parameter server has no links to workers: listen() first")
            received = [np.empty_like(self.params) for _ in self.links]
            while self.step < stop:
                self.apply(self._exchange(received, batches, steps_per_epoch))
        except BaseException:
            self._disconnect()
            raise
        return self.state()

    def _accept(self, serving: list[ray.ObjectRef]) -> None:
        """The link of each worker's serve() call: each connects to this server's listener. Peers
        that do not prove they are this run's workers are dropped (link.accept), each noted in
        self.dropped."""
        timeout, self.serving = self.config.step_timeout, list(serving)
        with self.listener:
            self.links, dropped = link.accept(self.listener, self.secret, len(serving), time.monotonic() + timeout,
                                              timeout, poll=lambda: ray.get(ray.wait(self.serving, timeout=0)[0]))
        self.listener = None
        for line in dropped:
            print(line, flush=True)  # to this actor's log
        self.dropped += dropped
        missing = [i for i, s in enumerate(self.links) if s is None]
        if missing:
            self._raise_lost(missing, f"worker(s) {missing} did not connect within {timeout:g} s (--step-timeout)", wait=0)
        self.selector = selectors.DefaultSelector()
        for w, sock in enumerate(self.links):
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, w)

    def _exchange(self, received: list[np.ndarray], batches: list[int],
                  steps_per_epoch: int) -> list[tuple[np.ndarray, int, float, float]]:
        """One step's messages: the weights to every worker and its answer, (gradient sum into
        `received[w]`, rows, loss sum, seconds), all links at once on this one thread: each send
        goes as far as its socket takes it, then whatever link is ready next moves on (a selector),
        so no worker waits for another's transfer and no thread is woken per link. Meanwhile, and
        once a second in any case, Ray is asked whether a worker's serve() has ended (its actor
        died, or its node was declared dead: a vanished machine closes no socket). A worker whose
        link closes raises; one that has not answered within step_timeout is `late` and raises."""
        timeout = self.config.step_timeout
        deadline = time.monotonic() + timeout
        sending = {w: link.Outgoing((self.step, b, steps_per_epoch), self.params) for w, b in enumerate(batches)}
        receiving = {w: link.Incoming(grad) for w, grad in enumerate(received)}
        answers: dict[int, tuple[float, float, float]] = {}

        def advance(w: int, message: link.Outgoing | link.Incoming) -> bool:
            try:
                return message.advance(self.links[w])
            except OSError:  # its end closed (LinkClosed too): its serve() call says why (its actor died, or it failed)
                self._raise_lost([w], f"step {self.step}: worker(s) [{w}] closed its link", wait=timeout)

        for w in list(sending):
            if advance(w, sending[w]):
                del sending[w]
            else:
                self.selector.modify(self.links[w], selectors.EVENT_READ | selectors.EVENT_WRITE, w)
        while receiving or sending:  # a worker that answered early still gets all of this step's weights
            self._poll()
            if (now := time.monotonic()) >= deadline:
                w = min(receiving or sending)
                self.late = (w,)
                self._raise_lost([w], f"step {self.step}: worker(s) [{w}] did not answer within "
                                      f"{timeout:g} s (--step-timeout)", wait=0)
            for key, events in self.selector.select(min(1.0, deadline - now)):
                w = key.data
                if events & selectors.EVENT_WRITE and w in sending and advance(w, sending[w]):
                    del sending[w]
                    self.selector.modify(key.fileobj, selectors.EVENT_READ, w)
                if events & selectors.EVENT_READ and w in receiving and advance(w, receiving[w]):
                    answers[w] = receiving.pop(w).numbers
        out = []
        for w, grad in enumerate(received):
            rows, loss, seconds = answers[w]
            if not (0 <= rows <= batches[w] and rows == int(rows) and 0 <= seconds < float("inf")):
                raise BadMessage(f"step {self.step}: worker {w} sent {rows:g} rows and {seconds:g} s "
                                 f"of compute, where it was asked for {batches[w]} rows")
            out.append((grad, int(rows), loss, seconds))
        return out

    def _poll(self) -> None:
        """At most once a second, raise the error of a worker's serve() call that has ended."""
        if time.monotonic() >= self.checked + 1:
            self.checked = time.monotonic()
            ray.get(ray.wait(self.serving, num_returns=1, timeout=0)[0])

    def _raise_lost(self, ranks: list[int], message: str, wait: float):
        """Raise the error of the first of these workers' serve() calls to have ended within
        `wait` seconds; else GetTimeoutError(message), which the driver treats as a lost worker."""
        done, _ = ray.wait([self.serving[w] for w in ranks], num_returns=1, timeout=wait)
        ray.get(done)
        raise ray.exceptions.GetTimeoutError(message)

    def _disconnect(self) -> None:
        """Close the listener and the links (which ends the workers' serve() calls)."""
        if self.selector is not None:
            self.selector.close()
        for sock in [self.listener, *self.links]:
            if sock is not None:
                with contextlib.suppress(OSError):  # not connected
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self.listener, self.links, self.serving, self.selector = None, [], [], None

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
