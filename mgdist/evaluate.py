"""Use a trained model: load it from a checkpoint, score it on a dataset, write metrics.json and plots.

The figures are the mean loss and whatever the model's own metrics give (docs/models.md);
plots need matplotlib (pip install -e '.[plot]'): loss.png (the training loss from a --metrics
log) and the model's own plots.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import pyarrow as pa

from mgdist import checkpoint
from mgdist.data import Dataset, Storage, discover, filesystem, load_shard, plan_shards, reraise, schema
from mgdist.errors import CheckpointError, DataError, ModelError
from mgdist.model import Metrics, ModelSpec, Trained, loss_sum, make_metrics, predict
from mgdist.preprocess import Preprocessing
from mgdist.report import write_json

EVAL_ROWS = 1 << 20  # rows loaded and scored at a time


def load(path: str, storage: Storage = Storage()) -> tuple[Trained, dict]:
    """The trained model of a checkpoint and its manifest; `path` is a checkpoint directory (its
    newest valid checkpoint is used) or one manifest, .../ckpt-NNNNNNNNN.json."""
    name = checkpoint.MANIFEST.match(os.path.basename(path))
    if name:
        arrays, manifest = checkpoint.load(os.path.dirname(path) or ".", int(name[1]), storage)
    else:
        found = checkpoint.load_latest(path, storage)
        if found is None:
            raise CheckpointError(f"{path}: no checkpoint here (give a checkpoint directory or a ckpt-NNNNNNNNN.json)")
        arrays, manifest = found
    where = f"{path} (step {manifest['step']})"
    saved = manifest.get("model")
    if not {"config", "dataset"} <= manifest.keys() or not isinstance(saved, dict) or "class" not in saved:
        raise CheckpointError(f"{where}: not a training checkpoint: its manifest has no config, dataset or model class")
    try:
        spec = ModelSpec.from_path(saved["class"], saved["args"])
        prep = Preprocessing.from_dict(manifest["preprocessing"]) if "preprocessing" in manifest \
            else Preprocessing(tuple(manifest["dataset"]["features"]))  # saved before preprocessing existed
        trained = Trained(spec, prep, arrays["params"])
    except ModelError as e:
        raise CheckpointError(f"{where}: cannot rebuild its model: {e}") from None
    if spec.describe(trained.model, saved["features"]) != saved:
        raise CheckpointError(f"{where}: {saved['class']} now builds {spec.describe(trained.model, saved['features'])}, "
                              f"not the saved {saved}")
    return trained, manifest


def _names(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) <= 8 else f"{', '.join(names[:3])}, ..., {', '.join(names[-2:])}"


def dataset_for(manifest: dict, uri: str, storage: Storage = Storage(), labelled: bool = True) -> Dataset:
    """The columns a checkpoint's model was trained on, in its order, found in the dataset at `uri`
    (and its target column, if `labelled`)."""
    features = tuple(manifest["dataset"]["features"])
    categorical = tuple(manifest["dataset"].get("categorical", ()))
    target = manifest["dataset"]["target"] if labelled else None
    numeric = [f.name for f in schema(uri, storage) if f.name != target and
               (pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or f.name in categorical)]
    missing = [n for n in features + categorical if n not in numeric]
    if missing:
        raise CheckpointError(f"the checkpoint's model takes {len(features + categorical)} features "
                              f"({_names(features + categorical)}) but {uri} "
                              f"has {len(numeric)} ({_names(numeric)}): no numeric column {_names(missing)}")
    return discover(uri, features, target, storage, categorical)


def score(trained: Trained, ds: Dataset, nonfinite: str = "error") -> tuple[dict, Metrics | None]:
    """The mean loss over every row of `ds` (the model's training loss: on the standardized target
    if it was standardized) and the model's own figures (in the target's units); and its metrics."""
    metrics, rows, total, prep = make_metrics(trained.model, ds), 0, 0.0, trained.prep
    chunks = min(sum(r > 0 for r in ds.group_rows), -(-ds.rows // EVAL_ROWS))
    for groups in plan_shards(ds.group_rows, chunks):
        X, y, categories = load_shard(ds, groups, nonfinite)
        inputs = prep.inputs_of(X, categories)
        rows, total = rows + len(y), total + loss_sum(trained.model, inputs, prep.target_in(y))
        if metrics is not None:
            metrics.add(X, y, prep.target_out(predict(trained.model, inputs)))
    return {"rows": rows, "loss": total / rows, **(metrics.summary() if metrics else {})}, metrics


def format_table(report: dict) -> str:
    """A report's figures, one a line."""
    lines = [f"{report['rows']:,} rows of {report['data']} ({report['model']})"]
    for key, value in report["figures"].items():
        if isinstance(value, dict):
            lines += [f"{f'{key} {k}':<32}{v:>10.4f}" for k, v in value.items()]
        elif key != "rows":
            lines.append(f"{key:<32}{value:>10.4f}")
    return "\n".join(lines)


def loss_curve(metrics_log: str, storage: Storage = Storage()) -> tuple[list[int], list[float]]:
    """(steps, train losses) of a training --metrics log (local or S3); a step logged twice (resumed
    run) keeps its last value."""
    fs, root = filesystem(metrics_log, storage)
    with reraise(metrics_log):
        records = [json.loads(line) for line in fs.cat_file(root).decode().splitlines() if line.strip()]
    points = {r["step"]: r["train_loss"] for r in records if "train_loss" in r}
    return sorted(points), [points[s] for s in sorted(points)]


def _exists(path: str, storage: Storage) -> bool:
    fs, root = filesystem(path, storage)
    return fs.exists(root)


def plot_loss(out: str, metrics_log: str, final_loss: float, oracle_loss: float | None = None,
              storage: Storage = Storage()):
    """loss.png under `out`: the training loss of a --metrics log, the final model's on the scored data,
    and the best possible (the oracle's), if known. Returns the matplotlib Figure."""
    from matplotlib.figure import Figure  # Figure.savefig renders PNGs with Agg, no pyplot or display needed
    steps, losses = loss_curve(metrics_log, storage)
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(steps, losses, marker=".", label="training loss (batch mean)")
    ax.axhline(final_loss, color="C1", ls="--", label=f"final model on this data: {final_loss:.4f}")
    if oracle_loss is not None:
        ax.axhline(oracle_loss, color="k", ls=":", label=f"true distribution: {oracle_loss:.4f}")
    ax.set(xlabel="step", ylabel="mean loss", title="Training loss")
    ax.legend()
    fig.savefig(os.path.join(out, "loss.png"), dpi=100)
    return fig


def check_report_dir(out: str) -> None:
    """A report goes into a new or empty directory, or over an earlier report; else DataError."""
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, "metrics.json")):
        raise DataError(f"{out} holds other files and no earlier report: give a new or empty report directory")


def write_report(trained: Trained, ds: Dataset, out: str, metrics_log: str | None = None,
                 nonfinite: str = "error", about: dict | None = None) -> dict:
    """Score `trained` on `ds`; write metrics.json (with `about`, e.g. checkpoint and step) and plots
    to the local directory `out`. Returns the report."""
    check_report_dir(out)
    figures, metrics = score(trained, ds, nonfinite)
    report = {**(about or {}), "data": ds.uri, "model": trained.spec.path, "rows": figures["rows"], "figures": figures}
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "metrics.json"), report)
    if not (metrics_log and _exists(metrics_log, ds.storage)):
        why = f"{metrics_log} does not exist" if metrics_log else "no training metrics log (--metrics)"
        print(f"report: no loss curve: {why}", file=sys.stderr)
        metrics_log = None
    try:
        plots = []
        if metrics_log:
            plot_loss(out, metrics_log, figures["loss"], figures.get("oracle_loss"), ds.storage)
            plots.append("loss.png")
        plots += metrics.plot(out) if callable(getattr(metrics, "plot", None)) else []
    except ImportError:
        print("report: no plots: matplotlib is not installed (pip install -e '.[plot]')", file=sys.stderr)
        plots = []
    print(f"report: wrote {', '.join(['metrics.json', *plots])} to {out}", file=sys.stderr)
    return report
