"""train(config): data-parallel training on Ray, one loop from data plan to final report.

Each step the parameter server sends the weights to every worker, each worker returns the
gradient sum of its slice of the global batch, and the server averages them by rows and
steps the optimiser. The server drives the steps itself, over a socket to each worker; the
driver asks it to run up to the next log or checkpoint point, and when a worker or the
server is lost, replaces it and replays from the server's last state, so no step is lost
and none is applied twice.
"""
from __future__ import annotations

import json
import math
import os
import time
import uuid

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mgdist import checkpoint, data, link, synthetic
from mgdist.config import Config
from mgdist.evaluate import write_report
from mgdist.fleet import LOST, Fleet, ray_get
from mgdist.lease import Lease
from mgdist.metrics import QuantileStats
from mgdist.model import QuantileModel
from mgdist.report import Progress, format_summary
from mgdist.server import ParameterServer, TrainingError, make_optimizer
from mgdist.worker import build_model

DEFAULT_DATA = dict(rows=400_000, features=16, files=4, row_group_rows=16384, seed=0)


def default_dataset() -> str:
    """A small synthetic dataset in ~/.cache/mgdist, made on first use."""
    d = DEFAULT_DATA
    path = os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")), "mgdist",
                        f"synthetic-{d['rows']}x{d['features']}-seed{d['seed']}")
    if not os.path.isdir(path):
        tmp = f"{path}.tmp-{os.getpid()}"
        synthetic.write(tmp, **d, progress=False)
        os.replace(tmp, path)
    return path


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


def _restore(config: Config, ds: data.Dataset, model: QuantileModel) -> dict | None:
    """The state to resume from, checked against this run's model and dataset; None to start fresh."""
    if not config.checkpoint_dir:
        return None
    storage = config.storage
    existing = checkpoint.steps(config.checkpoint_dir, storage)
    if existing and not config.resume:
        raise checkpoint.CheckpointError(
            f"{config.checkpoint_dir} already holds checkpoints (newest: step {existing[-1]}); pass --resume "
            "to continue from them, or choose another --checkpoint-dir")
    found = checkpoint.load_latest(config.checkpoint_dir, storage) if config.resume else None
    if found is None:
        return None
    arrays, manifest = found
    where = f"checkpoint step {manifest['step']} in {config.checkpoint_dir}"
    if manifest.get("model") != model.describe():
        raise checkpoint.CheckpointError(f"{where} is for model {manifest.get('model')}, "
                                         f"not this run's {model.describe()}")
    if manifest.get("dataset") != ds.fingerprint():
        raise checkpoint.CheckpointError(f"{where} was trained on other data than {ds.uri} "
                                         "(files, sizes or columns differ)")
    optimizer = {k.removeprefix("opt."): v for k, v in arrays.items() if k.startswith("opt.")}
    try:  # here, not in the server, where it would fail again on every restart
        make_optimizer(config, model.params.size, total_steps=1).load_state_dict(optimizer)
    except ValueError as e:
        raise checkpoint.CheckpointError(f"{where} does not fit --optimizer {config.optimizer}: {e}") from None
    return {"step": manifest["step"], "params": arrays["params"], "optimizer": optimizer}


def _save(config: Config, ds: data.Dataset, model: QuantileModel, fleet: Fleet, state: dict, lease: Lease,
          retry_s: float) -> None:
    arrays = {"params": state["params"], **{f"opt.{k}": v for k, v in state["optimizer"].items()}}
    meta = {"epoch": state["step"] / fleet.steps_per_epoch, "config": config.to_dict(),
            "dataset": ds.fingerprint(), "model": model.describe(),
            "data_order": {"seed": config.seed, "workers": len(fleet.actors), "shards": fleet.shards,
                           "batches": fleet.batches, "steps_per_epoch": fleet.steps_per_epoch}}
    checkpoint.save(config.checkpoint_dir, state["step"], arrays, meta, config.keep_checkpoints, config.storage,
                    lease, retry_s)


def train(config: Config) -> dict:
    """Train as `config` says; return (and print, and optionally save) the final summary."""
    lease = Lease(config.checkpoint_dir, config.storage) if config.checkpoint_dir else None
    took_over = lease and lease.acquire(take_over=config.resume)  # a second run on the directory stops here
    try:
        return _train(config, lease, took_over)
    finally:
        if lease:
            lease.release()


def _train(config: Config, lease: Lease | None, took_over: str | None) -> dict:
    t_start = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=config.address)
    ds = data.discover(config.data or default_dataset(), config.features, config.target, config.storage)
    model = build_model(config, len(ds.features))
    state = _restore(config, ds, model) or {"step": 0, "params": model.params.copy(), "optimizer": None}
    saved = state["step"] if config.resume and state["step"] else None  # the newest step safely saved
    fleet = Fleet(config, ds)
    spe = fleet.steps_per_epoch
    total = config.steps if config.steps is not None else max(1, math.ceil(config.epochs * spe))

    def new_server(s: dict):
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        return ray.remote(ParameterServer).options(num_cpus=0, scheduling_strategy=here, name=f"mgdist-server-{uuid.uuid4().hex[:8]}").remote(
            config, s["params"], total, secret, s["step"], s["optimizer"])

    secret = link.Secret.new()  # for the server's links to its workers: handed over by Ray only
    server = new_server(state)
    ray_get(server.state.remote())  # started, so the clock below measures training alone
    progress = Progress(total, state["step"], config.batch_size, spe, config.metrics)
    progress.log(f"{ds.rows:,} rows x {len(ds.features)} features in {len(ds.files)} files; {len(fleet.actors)} "
                 f"workers on {sorted({i['node'] + '/' + i['arch'] for i in fleet.info})}; steps {state['step']}"
                 f"..{total} of {config.batch_size} rows ({spe} per epoch)")
    if took_over:
        progress.log(took_over)
    if config.balance == "speed" and len(fleet.actors) > 1:
        progress.log("measured speeds (rows/s): " + ", ".join(f"{s:,.0f}" for s in fleet.speeds)
                     + f"; rows per step: {fleet.batches}")

    failures, train_loss, skips_logged = 0, float("nan"), set()
    while state["step"] < total:
        step, stop = state["step"], _next_stop(state["step"], total, config)
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
                progress.log(f"failure {failures} at step {state['step']}: {_one_line(e)}")
            except LOST:
                ray.kill(server)
                server = new_server(state)
                progress.log(f"failure {failures}: {_one_line(e)}; parameter server lost: restored step "
                             f"{state['step']}, replaying from there")
            progress.log(fleet.heal())
            continue
        for message in state["skips"]:  # all so far: a replay or a discarded state loses none
            if message not in skips_logged:
                progress.log(message)
                skips_logged.add(message)
        train_loss = state["train_loss"]
        progress.update(stop, train_loss=train_loss)
        if lease:
            lease.keep_alive()
        if config.checkpoint_dir and (stop == total or config.checkpoint_every and stop % config.checkpoint_every == 0):
            try:  # a save held up for longer than a step may take is given up until the next one
                _save(config, ds, model, fleet, state, lease,
                      checkpoint.FINAL_SAVE_S if stop == total else config.step_timeout)
                saved = stop
            except checkpoint.SaveFailed as e:
                if stop == total:
                    raise checkpoint.SaveFailed(f"{e}; the newest step safely saved is "
                                                f"{saved if saved is not None else 'none'}") from None
                progress.log(f"{e}; training goes on, the next save tries again")
    final = state["params"]
    loop_s = time.perf_counter() - progress.t0
    slowest_s, mean_s = state.get("compute_s", (0.0, 0.0))  # of this server's steps: fewer after a server loss
    progress.close()

    model_stats, oracle_stats = QuantileStats(config.quantiles), QuantileStats(config.quantiles)
    for m, o in ray_get([w.evaluate.remote(final) for w in fleet.actors]):
        model_stats.merge(m)
        if o is not None:
            oracle_stats.merge(o)
    val, oracle = model_stats.summary(), (oracle_stats.summary() if ds.synthetic else None)
    summary = {
        "steps": total, "epochs": round(total / fleet.steps_per_epoch, 4), "workers": len(fleet.actors),
        "rows_per_s": progress.rows_per_s(total),
        "wall_s": time.perf_counter() - t_start,
        "train_loss": train_loss, "val_loss": val["pinball"], "oracle_loss": oracle and oracle["pinball"],
        "coverage": val["coverage"], "oracle_coverage": oracle and oracle["coverage"],
        "crossing_rate": val["crossing_rate"], "failures_survived": failures,
        "worker_busy": mean_s / loop_s,  # share of the loop's time the mean worker spent computing
        "outside_compute": 1 - slowest_s / loop_s,  # share spent outside each step's slowest worker's compute
    }
    print(format_summary(summary), flush=True)
    if config.summary_json:
        with open(config.summary_json, "w") as f:
            json.dump(summary, f, indent=2)
    fleet.stop()
    ray.kill(server)
    if config.report:  # the final model scored in this process on all of the training data
        np.copyto(model.params, final)
        write_report(model, ds, config.report, config.metrics, config.nonfinite,
                     {"checkpoint": config.checkpoint_dir, "step": total})
    return summary
