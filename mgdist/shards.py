"""The parameter server shards of a run as the driver sees them: started, connected, run, restored.

Shard s is a ParameterServer actor owning the range server.shard_ranges(size, S)[s] of the flat
parameters and the same slice of the optimiser state. The driver opens a listener on every shard,
starts each worker's serve() with all their addresses, and runs every shard to the next stop;
the shards' states joined (server.join_states) are the run's state. After a failure every shard
is brought back to one common state, so that the replayed steps are applied exactly once.
"""
from __future__ import annotations

import uuid

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mgdist import link
from mgdist.config import TrainConfig
from mgdist.fleet import LOST, ray_get
from mgdist.server import ParameterServer, ServerState, join_states, shard_ranges, split_state

HUNG_ROUNDS = 3  # a shard that takes no step in this many --step-timeout periods is hung


class Shards:
    """The S shards; every actor started is also appended to `started`, for the caller to stop."""

    def __init__(self, config: TrainConfig, total_steps: int, state: ServerState, started: list):
        self.config, self.total, self.started = config, total_steps, started
        self.secret = link.Secret.new()  # for the shards' links to the workers: handed over by Ray only
        self.ranges = shard_ranges(state.params.size, config.servers)
        self.actors: list = [None] * config.servers
        self.workers: list = []  # the workers whose serve() calls (self.serving) hold links to every shard
        self.serving: list[ray.ObjectRef] = []
        self.runs: list[ray.ObjectRef] = []  # the shards' last run() calls
        self.restore(state, range(config.servers))

    def restore(self, state: ServerState, which) -> None:
        """Kill these shards and start them again from their parts of `state`; the links then open anew."""
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        for s in which:
            if self.actors[s] is not None:
                ray.kill(self.actors[s])
            part = split_state(state, *self.ranges[s])
            self.actors[s] = ray.remote(ParameterServer).options(
                num_cpus=0, scheduling_strategy=here, name=f"mgdist-server-{s}-{uuid.uuid4().hex[:8]}",
                max_concurrency=2).remote(  # run() and progress()
                self.config, part.params, self.total, self.secret, part.step, part.optimizer)
            self.started.append(self.actors[s])
        self.workers = []

    def ready(self) -> None:
        """Once every shard has started."""
        ray_get([a.progress.remote() for a in self.actors])

    def run(self, stop: int, workers: list, batches: list[int], steps_per_epoch: int) -> ServerState:
        """Every shard's steps until `stop` (worker w computing batches[w] rows of each), watched:
        the joined state. New workers, or a worker whose serve() has ended (its link timed out),
        get new links first. A lost worker or shard raises as in ParameterServer.run, the error
        of the shard that failed first; so does a hung one (GetTimeoutError)."""
        if workers != self.workers or ray.wait(self.serving, timeout=0)[0]:
            addresses = ray_get([a.listen.remote() for a in self.actors], timeout=self.config.step_timeout)
            self.serving = [w.serve.remote(addresses, i, self.secret) for i, w in enumerate(workers)]
            self.workers = list(workers)
        self.runs = [a.run.remote(stop, self.serving, batches, steps_per_epoch) for a in self.actors]
        try:
            return join_states(self._watched(self.runs))
        except BaseException:
            self.workers = []  # the shards closed their links, or are lost: the next run connects anew
            raise

    def _watched(self, runs: list[ray.ObjectRef]) -> list[ServerState]:
        """The results of every shard's run() call, once all have ended; meanwhile each busy shard
        must take a step in every HUNG_ROUNDS x step_timeout seconds (a step waits at most
        step_timeout for each worker, and as long again for Ray to say why one is gone), else
        GetTimeoutError, as for a lost worker. The first to fail raises its error."""
        timeout = self.config.step_timeout
        pending, ended = dict(enumerate(runs)), []
        last, still = [None] * len(runs), [0] * len(runs)
        while pending:
            done, _ = ray.wait(list(pending.values()), num_returns=1, timeout=timeout)
            if done:
                ended += [s for s, ref in pending.items() if ref in done]
                pending = {s: ref for s, ref in pending.items() if ref not in done}
                continue
            asked = {s: self.actors[s].progress.remote() for s in pending}
            ray.wait(list(asked.values()), num_returns=len(asked), timeout=timeout)
            for s, ref in asked.items():
                try:
                    step = ray.get(ref, timeout=0)
                except LOST:  # no answer yet, or the shard died: its run() call says so next
                    step = last[s]
                still[s] = still[s] + 1 if step == last[s] else 0
                last[s] = step
                if still[s] >= HUNG_ROUNDS:
                    shard = f" shard {s}" if len(runs) > 1 else ""
                    raise ray.exceptions.GetTimeoutError(f"the parameter server{shard} took no step in {HUNG_ROUNDS} x "
                                                         f"{timeout:g} s (--step-timeout): hung")
        for s in ended:  # the first error, in the order the calls ended
            ray_get(runs[s])
        return ray_get(runs)

    def recover(self, last: ServerState) -> tuple[ServerState, tuple[int, ...], list[int]]:
        """After a failed run: (the state every shard is now at, the workers named late, the shards
        restarted). If every shard's run() has ended and each answers within step_timeout at one
        step, that is their joined state; else the shards not at `last` (the driver's newest state),
        and those still in a run() (hung), are killed and started again from it, the others being
        at it already."""
        ended = [not self.runs or bool(ray.wait([self.runs[s]], timeout=0)[0]) for s in range(len(self.actors))]
        asked = {s: a.state.remote() for s, a in enumerate(self.actors) if ended[s]}
        if asked:
            ray.wait(list(asked.values()), num_returns=len(asked), timeout=self.config.step_timeout)
        got = {}
        for s, ref in asked.items():
            try:
                got[s] = ray_get(ref, timeout=0)
            except LOST:
                pass
        late = tuple(sorted({w for state in got.values() for w in state.late}))
        if len(got) == len(self.actors) and len({state.step for state in got.values()}) == 1:
            return join_states([got[s] for s in range(len(self.actors))]), late, []
        lost = [s for s in range(len(self.actors)) if s not in got or got[s].step != last.step]
        self.restore(last, lost)
        return last, late, lost
