"""run(spec, config): data-parallel training on Ray, one loop from data plan to final report.

Each step the parameter server sends the weights to every worker, each worker returns the
gradient sum of its slice of the global batch, and the server averages them by rows and
steps the optimiser. The server (--servers S shards of the parameters, mgdist/shards.py)
drives the steps itself, over a socket to each worker; the driver asks it to run up to the
next log or checkpoint point, and when a worker or a shard is lost, replaces it and replays
from the last state, so no step is lost and none is applied twice. Nothing here knows the
model: it comes as a ModelSpec.

Every --val-every steps (and at the end) the workers score the weights on their held-out rows
and the driver merges their figures (a validation round): into the progress line, the metrics
log and the trackers, into the best step so far (--keep-best protects its checkpoint from
pruning; --early-stop ends the run after so many rounds without improvement), and to an
`on_validation` callback (mgdist.tune reports them to Ray Tune).
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import ray

from micrograd.nn import flatten
from mgdist import checkpoint, data
from mgdist.config import TrainConfig
from mgdist.errors import CheckpointError, SaveFailed, TrainingError
from mgdist.evaluate import check_report_dir, write_report
from mgdist.fleet import LOST, Fleet, ray_get, ship_by_value
from mgdist.lease import Lease
from mgdist.model import ModelSpec, Trained
from mgdist.preprocess import Preprocessing
from mgdist.report import MetricsLog, Progress, format_summary, write_json
from mgdist.server import STEP_LOG, ServerState, make_optimizer, step_log
from mgdist.shards import Shards
from mgdist.tracking import open_trackers
from mgdist.worker import Evaluation


@dataclass
class TrainResult:
    """What a run gives back: the trained model, the summary figures, where the checkpoints are."""
    trained: Trained
    summary: dict[str, Any]
    checkpoint_dir: str | None

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The trained model's predictions for rows X (n, features)."""
        return self.trained.predict(X)

    @property
    def best_checkpoint(self) -> str | None:
        """The manifest of the best validation step's checkpoint (kept with --keep-best), if saved."""
        step = self.summary.get("best_step")
        return f"{self.checkpoint_dir.rstrip('/')}/ckpt-{step:09d}.json" if self.checkpoint_dir and step else None


@dataclass
class Best:
    """The best validation round so far, and how many rounds came after it; checkpoints record it."""
    step: int = 0
    val_loss: float = math.inf
    rounds_since: int = 0

    def update(self, step: int, val_loss: float) -> None:
        if val_loss < self.val_loss:  # NaN never improves
            self.step, self.val_loss, self.rounds_since = step, val_loss, 0
        else:
            self.rounds_since += 1


@dataclass
class Validation:
    """One validation round, as given to an on_validation callback."""
    step: int
    figures: dict[str, Any]  # lr, train_loss, val_loss and the model's own figures
    best: Best
    checkpoint: str | None  # the manifest of the checkpoint saved at this step, if one was


def merge_evaluations(evaluations: list[Evaluation]) -> dict[str, Any]:
    """Every worker's validation figures as one: the mean loss over all held-out rows, val_loss
    (NaN when there are none), and the model's own figures over the same rows."""
    metrics = evaluations[0].metrics
    for e in evaluations[1:]:
        if metrics is not None:
            metrics.merge(e.metrics)
    rows = sum(e.rows for e in evaluations)
    return {"val_loss": sum(e.loss_sum for e in evaluations) / rows if rows else float("nan"),
            **(metrics.summary() if metrics is not None else {})}


def _next_stop(step: int, total: int, config: TrainConfig, steps_per_epoch: int) -> int:
    """The next step at which to log, validate or checkpoint; or, when the run may grow, to end an epoch."""
    every = [config.log_every] + ([config.checkpoint_every] if config.checkpoint_dir and config.checkpoint_every else []) \
        + ([config.val_every] if config.val_every else []) + ([steps_per_epoch] if config.min_workers else [])
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


def _restore(config: TrainConfig, model: dict, size: int,
             found: tuple[dict, dict] | None) -> tuple[ServerState, Best] | None:
    """The state and best validation round of checkpoint `found` (see _latest), checked against this
    run's model and settings; None to start fresh."""
    if found is None:
        return None
    arrays, manifest = found
    where = f"checkpoint step {manifest['step']} in {config.checkpoint_dir}"
    changed = config.changed(manifest.get("config", {}))
    if changed and not config.resume_changes:
        name, saved, now = changed[0]
        flag = name.replace("_", "-")
        raise CheckpointError(f"{where} was trained with --{flag} {saved}, this run has --{flag} {now}: "
                              "pass --resume-changes to resume with other settings")
    if manifest.get("model") != model:
        raise CheckpointError(f"{where} is for model {manifest.get('model')}, not this run's {model}")
    optimizer = {k.removeprefix("opt."): v for k, v in arrays.items() if k.startswith("opt.")}
    try:  # here, not in the server, where it would fail again on every restart
        make_optimizer(config, size, total_steps=1).load_state_dict(optimizer)
    except ValueError as e:
        raise CheckpointError(f"{where} does not fit --optimizer {config.optimizer}: {e}") from None
    log = arrays.get("steplog", step_log())  # checkpoints from before the step log have none
    if log.dtype != STEP_LOG or log.ndim != 1 or len(log) > manifest["step"]:
        raise CheckpointError(f"{where} has a step log of {log.dtype} x {log.shape}, not of at most "
                              f"{manifest['step']} {STEP_LOG} records")
    return ServerState(manifest["step"], arrays["params"], optimizer, log=log), Best(**manifest.get("best", {}))


def _save(config: TrainConfig, ds: data.Dataset, model: dict, fleet: Fleet, state: ServerState, log: np.ndarray,
          best: Best, lease: Lease | None, retry_s: float) -> str:
    arrays = {"params": state.params, **{f"opt.{k}": v for k, v in state.optimizer.items()}, "steplog": log}
    meta = {"epoch": state.step / fleet.steps_per_epoch, "config": config.to_dict(),
            "dataset": ds.fingerprint(), "model": model, "best": dataclasses.asdict(best),
            "preprocessing": fleet.prep.to_dict(),
            "data_order": {"seed": config.seed, "workers": len(fleet.actors), "shards": fleet.shards,
                           "batches": fleet.batches, "steps_per_epoch": fleet.steps_per_epoch}}
    protect = [best.step] if config.keep_best and best.step else []
    return checkpoint.save(config.checkpoint_dir, state.step, arrays, meta, config.keep_checkpoints, config.storage,
                           lease, retry_s, protect)


def run(spec: ModelSpec, config: TrainConfig,
        on_validation: Callable[[Validation], None] | None = None) -> TrainResult:
    """Train the model of `spec` as `config` says; print the summary and return the result.
    `on_validation` is called after each validation round (and its checkpoint, if any).
    Every actor it started is stopped, and the checkpoint directory's lease released, when it
    returns, fails or is interrupted."""
    t_start = time.perf_counter()
    config.check()
    if config.data is None:
        raise TrainingError("no data: give a Parquet dataset (dir, file, glob, file:// or s3://)")
    config = config.with_outputs()
    if config.report:
        check_report_dir(config.report)  # before training, not after it
    if not ray.is_initialized():
        ray.init(address=config.address)
    lease = Lease(config.checkpoint_dir, config.storage) if config.checkpoint_dir else None
    took_over = lease and lease.acquire(take_over=config.resume)  # a second run on the directory stops here
    try:
        return _run(spec, config, lease, took_over, t_start, on_validation)
    finally:
        if lease:
            lease.release()


def _run(spec: ModelSpec, config: TrainConfig, lease: Lease | None, took_over: str | None,
         t_start: float, on_validation: Callable[[Validation], None] | None) -> TrainResult:
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
        if config.servers > params.size:
            raise TrainingError(f"--servers {config.servers} exceeds the model's {params.size} parameters: "
                                "each shard needs at least one")
        state, best = _restore(config, described, params.size, found) or (ServerState(0, params.copy(), None), Best())
        state, summary = _train(config, ds, described, fleet, state, best, servers, lease, took_over, on_validation)
    finally:
        fleet.stop()
        for server in servers:
            ray.kill(server)
    summary["wall_s"] = time.perf_counter() - t_start
    print(format_summary(summary), flush=True)
    if config.summary_json:
        write_json(config.summary_json, summary, config.storage)
    trained = Trained(spec, fleet.prep, state.params)
    if config.report:  # the final model scored in this process on all of the training data
        _report(trained, ds, config, {"checkpoint": config.checkpoint_dir, "step": state.step})
    return TrainResult(trained, summary, config.checkpoint_dir)


def _report(trained: Trained, ds: data.Dataset, config: TrainConfig, about: dict) -> None:
    """write_report into config.report; on S3 through a local directory whose files are then uploaded."""
    if not config.report.startswith("s3://"):
        write_report(trained, ds, config.report, config.metrics, config.nonfinite, about)
        return
    fs, root = data.filesystem(config.report, config.storage)
    with tempfile.TemporaryDirectory() as local, data.reraise(config.report):
        write_report(trained, ds, local, config.metrics, config.nonfinite, about)
        for name in sorted(os.listdir(local)):
            fs.put_file(os.path.join(local, name), f"{root}/{name}")


def _train(config: TrainConfig, ds: data.Dataset, model: dict, fleet: Fleet, state: ServerState, best: Best,
           servers: list, lease: Lease | None, took_over: str | None,
           on_validation: Callable[[Validation], None] | None) -> tuple[ServerState, dict[str, Any]]:
    """The step loop from `state` to the last step (or an early stop), with its validation rounds:
    (final state, summary). Every parameter server it starts is appended to `servers`, for the
    caller to stop. The records of its log points go to the metrics log and the trackers."""
    spe = fleet.steps_per_epoch
    total = config.steps if config.steps is not None else max(1, math.ceil(config.epochs * spe))

    shards = Shards(config, total, state, servers)
    shards.ready()  # started, so the clock below measures training alone
    sinks = ([MetricsLog(config.metrics, config.storage, append=state.step > 0)] if config.metrics else []) \
        + open_trackers(config, {**config.to_dict(), "model": model})
    progress = Progress(total, state.step, config.batch_size, spe, sinks)
    progress.log(f"{ds.rows:,} rows x {len(ds.features) + len(ds.categorical)} columns ({fleet.prep.inputs} "
                 f"model inputs) in {len(ds.files)} files; {len(fleet.actors)} "
                 f"workers on {sorted({i.node + '/' + i.arch for i in fleet.info})}"
                 + (f", {config.servers} parameter server shards" if config.servers > 1 else "") + f"; steps {state.step}"
                 f"..{total} of {config.batch_size} rows ({spe} per epoch)")
    if took_over:
        progress.log(took_over)
    if config.balance == "speed" and len(fleet.actors) > 1:
        progress.log("measured speeds (rows/s): " + ", ".join(f"{s:,.0f}" for s in fleet.speeds)
                     + f"; rows per step: {fleet.batches}")

    failures, skips_logged = 0, set()
    saved = state.step if config.resume and state.step else None  # the newest step safely saved
    val_s = 0.0
    stopped, val = "steps done", {}

    def failed(e: BaseException) -> None:
        nonlocal failures
        failures += 1
        if failures > config.max_failures:
            raise TrainingError(f"giving up after {failures} failures (--max-failures "
                                f"{config.max_failures}); last: {_one_line(e)}") from None

    def validate(params: np.ndarray) -> dict[str, Any]:
        """A validation round on the workers; a lost worker is replaced and the round done again."""
        nonlocal val_s
        t = time.perf_counter()
        while True:
            steps_long = max(1, math.ceil(max(i.val for i in fleet.info) / max(1, min(fleet.batches))))
            try:
                figures = merge_evaluations(ray_get([w.evaluate.remote(params) for w in fleet.actors],
                                                    timeout=config.step_timeout * steps_long))
                val_s += time.perf_counter() - t
                return figures
            except LOST as e:
                failed(e)
                progress.log(f"failure {failures} in validation: {_one_line(e)}")
                progress.log(fleet.heal())

    lineage = [state.log]  # the step log of every state taken, from the first step on (a lost server's later steps: not)

    def taken(s: ServerState) -> ServerState:
        lineage.append(s.log)
        return s

    ok = False
    try:
        while state.step < total:
            try:  # the shards drive the steps up to the next log, validation or checkpoint point
                if state.step % fleet.steps_per_epoch == 0 and (grown := fleet.grow()):  # elastic: nodes joined
                    progress.log(f"step {state.step}: {grown}")
                stop = _next_stop(state.step, total, config, fleet.steps_per_epoch)
                state = taken(shards.run(stop, fleet.actors, fleet.batches, fleet.steps_per_epoch))
            except LOST as e:
                failed(e)
                now, late, lost = shards.recover(state)
                if not lost:
                    state = taken(now)
                    progress.log(f"failure {failures} at step {state.step}: {_one_line(e)}")
                else:
                    which = f" (shard(s) {lost} of {config.servers} started again)" if config.servers > 1 else ""
                    progress.log(f"failure {failures}: {_one_line(e)}; parameter server lost: restored step "
                                 f"{state.step}, replaying from there{which}")
                progress.log(fleet.heal(late))
                continue
            for message in state.skips:  # all so far: a replay or a discarded state loses none
                if message not in skips_logged:
                    progress.log(message)
                    skips_logged.add(message)
            figures: dict[str, Any] = {"lr": state.lr, "train_loss": state.train_loss}
            validating = stop == total or config.val_every and stop % config.val_every == 0
            if validating:
                val = validate(state.params)
                best.update(stop, val["val_loss"])
                figures |= val
                if config.early_stop and best.rounds_since >= config.early_stop and stop < total:
                    stopped = f"early stop after {best.rounds_since} rounds without improvement"
            progress.update(stop, **figures)
            if lease:
                lease.keep_alive()
            manifest = None
            last = stop == total or stopped != "steps done"
            if config.checkpoint_dir and (last or validating and config.keep_best
                                          or config.checkpoint_every and stop % config.checkpoint_every == 0):
                try:  # a save held up for longer than a step may take is given up until the next one
                    manifest = _save(config, ds, model, fleet, state, np.concatenate(lineage), best, lease,
                                     checkpoint.FINAL_SAVE_S if last else config.step_timeout)
                    saved = stop
                except SaveFailed as e:
                    if last:
                        raise SaveFailed(f"{e}; the newest step safely saved is "
                                         f"{saved if saved is not None else 'none'}") from None
                    progress.log(f"{e}; training goes on, the next save tries again")
            if validating and on_validation is not None:
                on_validation(Validation(stop, figures, dataclasses.replace(best), manifest))
            if stopped != "steps done":
                progress.log(f"step {stop}: {stopped}; best step {best.step}, val_loss {best.val_loss:.6g}")
                break
        if not val:  # resumed at the last step: nothing to train, the figures still wanted
            val = validate(state.params)
        ok = True
    finally:
        progress.close(ok)
    loop_s = time.perf_counter() - progress.t0 - val_s  # the compute seconds are this server's steps': fewer after a loss

    summary = {
        "steps": state.step, "epochs": round(state.step / spe, 4), "workers": len(fleet.actors),
        "rows_per_s": progress.rows_per_s(state.step),
        "train_loss": state.train_loss,
        **val,
        "best_step": best.step, "best_val_loss": best.val_loss, "stopped": stopped,
        "failures_survived": failures,
        "worker_busy": state.mean_s / loop_s,  # share of the loop's time (validation rounds aside) the mean worker computed
        "outside_compute": 1 - state.slowest_s / loop_s,  # share outside each step's slowest worker's compute
    }
    return state, summary
