"""mgdist: data-parallel training of any micrograd model on Ray.

    import mgdist
    result = mgdist.train(MyModel, data="s3://bucket/rows", workers=4, batch_size=16384)
    result.predict(X)

A model is a class that keeps the small contract of docs/models.md; the settings are
TrainConfig's fields (every option of `mgdist train --help`).
"""
__version__ = "0.1.0"

import dataclasses
from typing import Any, Callable

from mgdist.config import TrainConfig
from mgdist.data import Storage
from mgdist.errors import CheckpointError, DataError, MgdistError, ModelError, TrainingError
from mgdist.model import ModelSpec, Trained
from mgdist.trainer import TrainResult, Validation, run

__all__ = ["train", "load", "TrainConfig", "TrainResult", "Validation", "Trained", "ModelSpec", "MgdistError",
           "DataError", "CheckpointError", "ModelError", "TrainingError"]


def train(model: type | str, data: str | None = None, *, model_args: dict[str, Any] | None = None,
          config: TrainConfig | None = None, on_validation: Callable[[Validation], None] | None = None,
          **settings: Any) -> TrainResult:
    """Train `model` (a class, or its import path package.module:Name) built with `model_args`, on
    `data`, with `config` and then `settings` (TrainConfig's fields by name) as its settings;
    `on_validation(Validation)` is called after each validation round (--val-every).

    Connects to Ray (`ray.init()` when not connected; the session is left running), trains,
    prints the summary and returns the trained model, the summary and where the checkpoints are.
    Its actors are stopped on return, on any error and on KeyboardInterrupt.
    """
    unknown = sorted(settings.keys() - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise TypeError(f"train() got unknown settings {unknown} (see mgdist.TrainConfig)")
    spec = ModelSpec.from_path(model, model_args) if isinstance(model, str) else ModelSpec(model, model_args or {})
    config = dataclasses.replace(config or TrainConfig(), **settings, **({"data": data} if data is not None else {}))
    if config.arch_workers:
        config.workers = sum(config.arch_workers.values())
    return run(spec, config, on_validation)


def load(checkpoint: str, s3_endpoint: str | None = None) -> Trained:
    """The trained model of a checkpoint directory (its newest valid checkpoint) or of one manifest."""
    from mgdist.evaluate import load as load_checkpoint
    return load_checkpoint(checkpoint, Storage(s3_endpoint=s3_endpoint))[0]
