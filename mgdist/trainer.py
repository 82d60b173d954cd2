"""run(spec, config): data-parallel training on Ray, one loop from data plan to final report.

Each step the parameter server sends the weights to every worker, each worker returns the
gradient sum of its slice of the global batch, and the server averages them by rows and
steps the optimiser. The server drives the steps itself, over a socket to each worker; the
driver asks it to run up to the next log or checkpoint point, and when a worker or the
server is lost, replaces it and replays from the server's last state, so no step is lost
and none is applied twice. Nothing here knows the model: it comes as a ModelSpec.
"""
from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from micrograd.nn import flatten
from mgdist import checkpoint, data
from mgdist.config import TrainConfig
from mgdist.errors import CheckpointError, TrainingError
from mgdist.evaluate import write_report
from mgdist.fleet import LOST, Fleet, ray_get, ship_by_value
from mgdist.model import ModelSpec, Trained
from mgdist.preprocess import Preprocessing
from mgdist.report import Progress, format_summary
from mgdist.server import ParameterServer, ServerState, make_optimizer


@dataclass
class TrainResult:
    """What a run gives back: the trained model, the summary figures, where the checkpoints are."""
    trained: Trained
    summary: dict[str, Any]
    checkpoint_dir: str | None

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The trained model's predictions for rows X (n, features)."""
        return self.trained.predict(X)


def _next_stop(step: int, total: int, config: Config) -> int:
    """The next step at which to log or checkpoint."""
    every = [config.log_every] + ([config.checkpoint_every] if config.checkpoint_dir and config.checkpoint_every else [])
    return min([total] + [(step // n + 1) * n for n in every])


def _one_line(e: BaseException) -> str:
    """Type and first line of an error; of its root cause for Ray's task errors, with the actor it names."""
    while isinstance(e, ray.exceptions.RayTaskError) and e.cause is not None:
        e = e.cause
    lines = str(e).strip().splitlines() or [""]
    actor = next((line.split(":", 1)[1].strip() for line in lines if line.strip().startswith("name:")), "")
    return f"{type(e).__name__}: {lines[0]}{f' ({actor})' if actor else ''}"


def _latest(config: TrainConfig, ds: data.Dataset) -> tuple[dict, dict] | None:
    """The checkpoint (arrays, manifest) to resume from, checked against this run's dataset
    before any worker starts; None to start fresh."""
    if not config.checkpoint_dir:
        return None
    existing = checkpoint.steps(config.checkpoint_dir, config.storage)
    if existing and not config.resume:
        raise CheckpointError(
            f"{config.checkpoint_dir} already holds checkpoints (newest: step {existing[-1]}); pass --resume "
            "to continue from them, or choose another --checkpoint-dir")
    found = checkpoint.load_latest(config.checkpoint_dir, config.storage) if config.resume else None
    if found is not None and found[1].get("dataset") != ds.fingerprint():
        raise CheckpointError(f"checkpoint step {found[1]['step']} in {config.checkpoint_dir} was trained on other "
                              f"data than {ds.uri} (files, sizes or columns differ)")
    return found


def _restore(config: TrainConfig, model: dict, size: int, found: tuple[dict, dict] | None) -> ServerState | None:
    """The state of checkpoint `found` (see _latest), checked against this run's model; None to start fresh."""
    if found is None:
        return None
    arrays, manifest = found
    where = f"checkpoint step {manifest['step']} in {config.checkpoint_dir}"
    if manifest.get("model") != model:
        raise CheckpointError(f"{where} is for model {manifest.get('model')}, not this run's {model}")
    optimizer = {k.removeprefix("opt."): v for k, v in arrays.items() if k.startswith("opt.")}
    try:  # here, not in the server, where it would fail again on every restart
        make_optimizer(config, size, total_steps=1).load_state_dict(optimizer)
    except ValueError as e:
        raise CheckpointError(f"{where} does not fit --optimizer {config.optimizer}: {e}") from None
    return ServerState(manifest["step"], arrays["params"], optimizer)


def _save(config: TrainConfig, ds: data.Dataset, model: dict, fleet: Fleet, state: ServerState) -> None:
    arrays = {"params": state.params, **{f"opt.{k}": v for k, v in state.optimizer.items()}}
    meta = {"epoch": state.step / fleet.steps_per_epoch, "config": config.to_dict(),
            "dataset": ds.fingerprint(), "model": model, "preprocessing": fleet.prep.to_dict(),
            "data_order": {"seed": config.seed, "workers": len(fleet.actors), "shards": fleet.shards,
                           "batches": fleet.batches, "steps_per_epoch": fleet.steps_per_epoch}}
    checkpoint.save(config.checkpoint_dir, state.step, arrays, meta, config.keep_checkpoints, config.storage)


def run(spec: ModelSpec, config: TrainConfig) -> TrainResult:
    """Train the model of `spec` as `config` says; print the summary and return the result.
    Every actor it started is stopped when it returns, fails or is interrupted."""
    t_start = time.perf_counter()
    config.check()
    if not ray.is_initialized():
        ray.init(address=config.address)
    ds = data.discover(config.data, config.features, config.target, config.storage, config.categorical)
    found = _latest(config, ds)  # resuming: the checkpoint's preprocessing, not new statistics
    prep = Preprocessing.from_dict(found[1]["preprocessing"]) if found and "preprocessing" in found[1] else None
    ship_by_value(spec)
    fleet, servers = Fleet(spec, config, ds, prep), []
    try:
        fleet.start()  # the workers load their shards; their statistics make the run's preprocessing
        features = fleet.prep.inputs
        model = spec.build(features)
        params, _ = flatten(model.parameters())
        described = spec.describe(model, features)
        state = _restore(config, described, params.size, found) or ServerState(0, params.copy(), None)
        state, summary = _train(config, ds, described, fleet, state, servers)
    finally:
        fleet.stop()
        for server in servers:
            ray.kill(server)
    summary["wall_s"] = time.perf_counter() - t_start
    print(format_summary(summary), flush=True)
    if config.summary_json:
        with open(config.summary_json, "w") as f:
            json.dump(summary, f, indent=2)
    trained = Trained(spec, fleet.prep, state.params)
    if config.report:  # the final model scored in this process on all of the training data
        write_report(trained, ds, config.report, config.metrics, config.nonfinite,
                     {"checkpoint": config.checkpoint_dir, "step": state.step})
    return TrainResult(trained, summary, config.checkpoint_dir)


def _train(config: TrainConfig, ds: data.Dataset, model: dict, fleet: Fleet, state: ServerState,
           servers: list) -> tuple[ServerState, dict[str, Any]]:
    """The step loop from `state` to the last step, then the validation figures: (final state, summary).
    Every parameter server it starts is appended to `servers`, for the caller to stop."""
    spe = fleet.steps_per_epoch
    total = config.steps if config.steps is not None else max(1, math.ceil(config.epochs * spe))

    def new_server(s: ServerState):
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        servers.append(ray.remote(ParameterServer).options(
            num_cpus=0, scheduling_strategy=here, name=f"mgdist-server-{uuid.uuid4().hex[:8]}").remote(
            config, s.params, total, s.step, s.optimizer))
        return servers[-1]

    server = new_server(state)
    ray_get(server.state.remote())  # started, so the clock below measures training alone
    progress = Progress(total, state.step, config.batch_size, spe, config.metrics)
    progress.log(f"{ds.rows:,} rows x {len(ds.features) + len(ds.categorical)} columns ({fleet.prep.inputs} "
                 f"model inputs) in {len(ds.files)} files; {len(fleet.actors)} "
                 f"workers on {sorted({i.node + '/' + i.arch for i in fleet.info})}; steps {state.step}"
                 f"..{total} of {config.batch_size} rows ({spe} per epoch)")
    if config.balance == "speed" and len(fleet.actors) > 1:
        progress.log("measured speeds (rows/s): " + ", ".join(f"{s:,.0f}" for s in fleet.speeds)
                     + f"; rows per step: {fleet.batches}")

    failures, skips_logged = 0, set()
    try:
        while state.step < total:
            step, stop = state.step, _next_stop(state.step, total, config)
            try:  # the server drives the steps up to the next log or checkpoint point
                state = ray_get(server.run.remote(stop, fleet.actors, fleet.batches, fleet.steps_per_epoch),
                                timeout=config.step_timeout * (stop - step))
            except LOST as e:
                failures += 1
                if failures > config.max_failures:
                    raise TrainingError(f"giving up after {failures} failures (--max-failures "
                                        f"{config.max_failures}); last: {_one_line(e)}") from None
                try:
                    state = ray_get(server.state.remote(), timeout=30)
                    progress.log(f"failure {failures} at step {state.step}: {_one_line(e)}")
                except LOST:
                    ray.kill(server)
                    server = new_server(state)
                    progress.log(f"failure {failures}: {_one_line(e)}; parameter server lost: restored step "
                                 f"{state.step}, replaying from there")
                progress.log(fleet.heal())
                continue
            for message in state.skips:  # all so far: a replay or a discarded state loses none
                if message not in skips_logged:
                    progress.log(message)
                    skips_logged.add(message)
            progress.update(stop, train_loss=state.train_loss)
            if config.checkpoint_dir and (stop == total or config.checkpoint_every and stop % config.checkpoint_every == 0):
                _save(config, ds, model, fleet, state)
    finally:
        progress.close()
    loop_s = time.perf_counter() - progress.t0  # the compute seconds are this server's steps': fewer after a loss

    evaluations = ray_get([w.evaluate.remote(state.params) for w in fleet.actors])
    metrics = evaluations[0].metrics
    for e in evaluations[1:]:
        if metrics is not None:
            metrics.merge(e.metrics)
    val_rows = sum(e.rows for e in evaluations)
    summary = {
        "steps": total, "epochs": round(total / spe, 4), "workers": len(fleet.actors),
        "rows_per_s": progress.rows_per_s(total),
        "train_loss": state.train_loss,
        "val_loss": sum(e.loss_sum for e in evaluations) / val_rows if val_rows else float("nan"),
        **(metrics.summary() if metrics is not None else {}),
        "failures_survived": failures,
        "worker_busy": state.mean_s / loop_s,  # share of the loop's time the mean worker spent computing
        "outside_compute": 1 - state.slowest_s / loop_s,  # share outside each step's slowest worker's compute
    }
    return state, summary
