"""Ray Tune over mgdist runs: a function trainable, one mgdist run per trial, that reports every
validation round (and the checkpoint saved with it) to Tune, so that ASHA can stop bad trials.

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    import mgdist.tune

    settings = dict(data="s3://bucket/rows", steps=2000, val_every=100, workers=2, cpus_per_worker=1)
    trainable = tune.with_resources(
        tune.with_parameters(mgdist.tune.trainable, model="mgdist.workloads.quantile:QuantileMLP", **settings),
        mgdist.tune.trial_resources(**settings))   # a bundle per worker; the trial itself needs none
    tuner = tune.Tuner(trainable,
        param_space={"lr": tune.loguniform(1e-3, 3e-2),
                     "model_args": {"hidden": tune.choice([[64], [128, 128]])}},
        tune_config=tune.TuneConfig(
            metric="val_loss", mode="min", num_samples=16,
            scheduler=ASHAScheduler(time_attr="step", max_t=2000, grace_period=200)))
    best = tuner.fit().get_best_result()
    mgdist.load(best.checkpoint.path)   # its newest checkpoint's model

A trial's search values are TrainConfig settings by name, and "model_args", a dict merged over
the fixed model_args. Each trial's workers are placed like any run's (CPUs per worker, their
architecture, spread over nodes), in the trial's placement group: trial_resources() gives it
one bundle per worker and an empty head bundle (the trial only drives its run), so Tune starts
a trial only when all its workers fit, and runs as many at once as the cluster holds.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import mgdist
from mgdist.data import Storage, filesystem


def trial_resources(workers: int = 2, cpus_per_worker: float = 1.0, arch_workers: dict[str, int] | None = None,
                    **_: Any):
    """Tune's resources for one trial of a run with these settings (other settings are ignored):
    an empty head bundle, then one bundle per worker of its CPUs (and architecture), SPREAD."""
    from ray import tune
    archs = [a for a, n in sorted((arch_workers or {}).items()) for _ in range(n)] or [None] * workers
    return tune.PlacementGroupFactory([{}] + [{"CPU": cpus_per_worker, **({f"arch_{a}": 0.001} if a else {})}
                                              for a in archs], strategy="SPREAD")


def _copy_checkpoint(manifest: str, storage: Storage, into: str) -> None:
    """The manifest and .npz of one mgdist checkpoint (local or S3) copied into the local dir `into`."""
    fs, path = filesystem(manifest, storage)
    meta = json.loads(fs.cat_file(path))
    for name in (os.path.basename(path), meta["npz"]):
        fs.get_file(f"{os.path.dirname(path)}/{name}", os.path.join(into, name))


def trainable(search: dict[str, Any], *, model: type | str, data: str | None = None,
              model_args: dict[str, Any] | None = None, **settings: Any) -> None:
    """One mgdist run with `settings` and the trial's `search` values; every validation round is
    reported to Tune as {"step", "lr", "train_loss", "val_loss", the model's own figures,
    "best_step", "best_val_loss"}, with the checkpoint saved at that step, if any, as a Tune
    Checkpoint (a directory holding that one mgdist checkpoint: mgdist.load reads it).

    A checkpoint is saved at every validation round unless `checkpoint_every` says otherwise, so
    that a trial ASHA stops early has one too. The run's checkpoints go to the trial's directory, or with `checkpoint_dir` (e.g. s3://...) to
    a folder per trial under it, named by trial id; a trial that Tune restarts resumes from them
    (resume=True), as long as it can reach them (the trial's directory is on the node it ran on)."""
    from ray import tune

    chosen = dict(search)
    args = {**(model_args or {}), **chosen.pop("model_args", {})}
    context = tune.get_context()
    under = settings.pop("checkpoint_dir", None)
    settings = {"resume": True, "checkpoint_every": settings.get("val_every", 0), **settings, **chosen, "checkpoint_dir":
                f"{under.rstrip('/')}/{context.get_trial_id()}" if under else os.path.join(context.get_trial_dir(), "mgdist")}
    storage = Storage(s3_endpoint=settings.get("s3_endpoint"))

    def report(v: mgdist.Validation) -> None:
        metrics = {"step": v.step, **v.figures, "best_step": v.best.step, "best_val_loss": v.best.val_loss}
        if v.checkpoint is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as local:  # Tune copies it to its storage before report returns
            _copy_checkpoint(v.checkpoint, storage, local)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(local))

    mgdist.train(model, data, model_args=args, on_validation=report, **settings)
