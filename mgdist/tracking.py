"""Experiment trackers: the records of a run's log points sent to TensorBoard or MLflow.

Both are sinks of report.Progress (`write(record)`, `close(ok)`), like the metrics log, and get
the same records: step, epoch, rows_per_s, elapsed_s, lr, train_loss and, at validation rounds,
val_loss and the model's own figures (a dict such as coverage per level becomes
coverage/0.1, coverage/0.5, ...). Off unless asked for: `--tensorboard DIR` (pip install
'mgdist[tensorboard]': tensorboardX, no TensorFlow or PyTorch), `--mlflow URI` (pip install
'mgdist[mlflow]'; the run's settings and model arguments become the MLflow run's params).
"""
from __future__ import annotations

import time
from typing import Any

from mgdist.config import TrainConfig
from mgdist.errors import TrainingError
from mgdist.report import Sink


def scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a record by name, nested dicts flattened to name/key; the step is not one."""
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= scalars(value, f"{name}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and name != "step":
            out[name] = float(value)
    return out


def _flat_params(settings: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            out |= _flat_params(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def _need(module: str, extra: str, option: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TrainingError(f"{option} needs {module}: pip install 'mgdist[{extra}]'") from None


class TensorBoard:
    """Scalars into a TensorBoard event file under `logdir` (a local directory)."""

    def __init__(self, logdir: str):
        self.writer = _need("tensorboardX", "tensorboard", "--tensorboard").SummaryWriter(logdir)

    def write(self, record: dict[str, Any]) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, record["step"])
        self.writer.flush()

    def close(self, ok: bool = True) -> None:
        self.writer.close()


class MLflow:
    """One MLflow run at tracking URI `uri` (a server, sqlite:///..., or file:... where MLflow
    allows it): `params` when it opens, each record's figures as metrics at its step; FINISHED
    when the run ends, FAILED when it stops on an error."""

    def __init__(self, uri: str, experiment: str, params: dict[str, Any]):
        self.mlflow = _need("mlflow", "mlflow", "--mlflow")
        self.client = self.mlflow.MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(experiment_id).info.run_id
        params = [self.mlflow.entities.Param(k, v) for k, v in _flat_params(params).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def write(self, record: dict[str, Any]) -> None:
        now, Metric = int(time.time() * 1000), self.mlflow.entities.Metric
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, record["step"])
                                                    for k, v in scalars(record).items()])

    def close(self, ok: bool = True) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def open_trackers(config: TrainConfig, params: dict[str, Any]) -> list[Sink]:
    """The trackers `config` asks for; `params` (settings, model) go to MLflow as the run's params."""
    trackers: list[Sink] = []
    if config.tensorboard:
        trackers.append(TensorBoard(config.tensorboard))
    if config.mlflow:
        trackers.append(MLflow(config.mlflow, config.mlflow_experiment, params))
    return trackers
