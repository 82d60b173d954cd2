"""Use a trained model: load it from a checkpoint, score it on a dataset, write metrics.json and plots.

The figures (mgdist.metrics) are pinball loss, coverage per level, symmetric intervals and
crossing rate, next to the true quantiles' figures on synthetic data. Plots need matplotlib
(pip install -e '.[plot]'): loss.png (training loss from the --metrics log), calibration.png
(coverage against level) and fan.png (predicted quantiles around the actual target).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import numpy as np

from mgdist import checkpoint
from mgdist.checkpoint import CheckpointError
from mgdist.config import Config
from mgdist.data import Dataset, Storage, discover, load_shard, plan_shards
from mgdist.metrics import QuantileStats
from mgdist.model import QuantileModel
from mgdist.synthetic import true_quantile
from mgdist.worker import build_model

EVAL_ROWS = 1 << 20  # rows loaded and scored at a time
FAN_ROWS = 200       # rows shown in the fan chart


def load_model(path: str, storage: Storage = Storage()) -> tuple[QuantileModel, dict]:
    """The model of a checkpoint and its manifest; `path` is a checkpoint directory (its newest
    valid checkpoint is used) or one manifest, .../ckpt-NNNNNNNNN.json."""
    name = checkpoint.MANIFEST.match(os.path.basename(path))
    if name:
        arrays, manifest = checkpoint.load(os.path.dirname(path) or ".", int(name[1]), storage)
    else:
        found = checkpoint.load_latest(path, storage)
        if found is None:
            raise CheckpointError(f"{path}: no checkpoint here (give a checkpoint directory or a ckpt-NNNNNNNNN.json)")
        arrays, manifest = found
    if not {"config", "dataset", "model"} <= manifest.keys():
        raise CheckpointError(f"{path} (step {manifest['step']}): not a training checkpoint: "
                              "its manifest has no config, dataset or model")
    return build(manifest, arrays["params"]), manifest


def build(manifest: dict, params: np.ndarray) -> QuantileModel:
    """The model that a checkpoint's manifest describes, holding `params`."""
    model = build_model(Config.from_dict(manifest["config"]), manifest["model"]["layers"][0])
    if model.describe() != manifest["model"]:
        raise CheckpointError(f"checkpoint step {manifest['step']}: its config builds {model.describe()}, "
                              f"not the saved {manifest['model']}")
    np.copyto(model.params, params)
    return model


def _names(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) <= 8 else f"{', '.join(names[:3])}, ..., {', '.join(names[-2:])}"


def dataset_for(manifest: dict, uri: str, storage: Storage = Storage(), labelled: bool = True) -> Dataset:
    """The columns a checkpoint's model was trained on, in its order, found in the dataset at `uri`
    (and its target column, if `labelled`)."""
    trained = tuple(manifest["dataset"]["features"])
    target = manifest["dataset"]["target"] if labelled else None
    numeric = discover(uri, None, target, storage).features  # every numeric column but the target
    missing = [n for n in trained if n not in numeric]
    if missing:
        raise CheckpointError(f"the checkpoint's model takes {len(trained)} features ({_names(trained)}) but {uri} "
                              f"has {len(numeric)} ({_names(numeric)}): no numeric column {_names(missing)}")
    return discover(uri, trained, target, storage)


def score(model: QuantileModel, ds: Dataset, nonfinite: str = "error"
          ) -> tuple[QuantileStats, QuantileStats | None, tuple[np.ndarray, np.ndarray]]:
    """Stats of the model over every row of `ds` and, on synthetic data, of the true quantiles;
    also the first FAN_ROWS rows' targets and predictions."""
    model_stats, oracle = QuantileStats(model.levels), QuantileStats(model.levels) if ds.synthetic else None
    chunks = min(sum(rows > 0 for rows in ds.group_rows), -(-ds.rows // EVAL_ROWS))
    fan = None
    for groups in plan_shards(ds.group_rows, chunks):
        X, y = load_shard(ds, groups, nonfinite)
        pred = model.predict(X)
        model_stats.add(y, pred)
        if oracle is not None:
            oracle.add(y, true_quantile(X, model.levels))
        if fan is None:
            fan = y[:FAN_ROWS].copy(), pred[:FAN_ROWS].copy()
    return model_stats, oracle, fan


def format_table(metrics: dict) -> str:
    """The model's figures, and the oracle's beside them if known, one a line."""
    def figures(s: dict):
        yield "pinball", s["pinball"]
        yield from ((f"pinball q{q}", v) for q, v in s["pinball_per_level"].items())
        yield from ((f"coverage q{q}", v) for q, v in s["coverage"].items())
        for name, i in s["intervals"].items():
            yield f"interval {name} coverage (nominal {i['nominal']:g})", i["coverage"]
            yield f"interval {name} mean width", i["mean_width"]
        yield "crossing rate", s["crossing_rate"]
    columns = [dict(figures(s)) for s in (metrics["model"], metrics["oracle"]) if s]
    w = max(map(len, columns[0])) + 2
    lines = [f"{metrics['model']['rows']:,} rows of {metrics['data']}",
             f"{'':<{w}}{'model':>10}" + (f"{'oracle':>10}" if len(columns) > 1 else "")]
    lines += [f"{k:<{w}}" + "".join(f"{c[k]:>10.4f}" for c in columns) for k in columns[0]]
    return "\n".join(lines)


def _loss_curve(metrics_log: str) -> tuple[list[int], list[float]]:
    """(steps, train losses) of a training --metrics log; a step logged twice (resumed run) keeps its last value."""
    with open(metrics_log) as f:
        records = [json.loads(line) for line in f if line.strip()]
    points = {r["step"]: r["train_loss"] for r in records if "train_loss" in r}
    return sorted(points), [points[s] for s in sorted(points)]


def plot(out: str, metrics: dict, fan: tuple[np.ndarray, np.ndarray], metrics_log: str | None) -> dict:
    """Write loss.png (given a metrics log), calibration.png and fan.png under `out`; return
    {name: matplotlib Figure} of those written. Raises ImportError without matplotlib."""
    from matplotlib.figure import Figure  # Figure.savefig renders PNGs with Agg, no pyplot or display needed

    model, oracle, written = metrics["model"], metrics["oracle"], {}
    levels = [float(q) for q in model["coverage"]]

    def save(fig: Figure, name: str) -> None:
        fig.savefig(os.path.join(out, name), dpi=100)
        written[name] = fig

    if metrics_log:
        steps, losses = _loss_curve(metrics_log)
        fig = Figure(figsize=(8, 4.5), layout="constrained")
        ax = fig.subplots()
        ax.plot(steps, losses, marker=".", label="training loss (batch mean)")
        ax.axhline(model["pinball"], color="C1", ls="--", label=f"final model on this data: {model['pinball']:.4f}")
        if oracle:
            ax.axhline(oracle["pinball"], color="k", ls=":", label=f"true quantiles: {oracle['pinball']:.4f}")
        ax.set(xlabel="step", ylabel="mean pinball loss", title="Training loss")
        ax.legend()
        save(fig, "loss.png")

    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="gray", ls="--", label="perfect calibration")
    ax.plot(levels, list(model["coverage"].values()), marker="o", label="model")
    if oracle:
        ax.plot(levels, list(oracle["coverage"].values()), marker="x", ls=":", color="k", label="true quantiles")
    text = "\n".join(f"{name}: {i['coverage']:.1%} inside (nominal {i['nominal']:.0%}), mean width {i['mean_width']:.3g}"
                     for name, i in model["intervals"].items())
    ax.text(0.98, 0.02, text, ha="right", va="bottom", fontsize=8, transform=ax.transAxes)
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xlabel="quantile level q", ylabel="share of rows with y <= predicted q",
           title="Calibration")
    ax.legend(loc="upper left")
    save(fig, "calibration.png")

    y, pred = fan
    mid = len(levels) // 2
    order = np.argsort(pred[:, mid], kind="stable")
    x = np.arange(len(y))
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    paired = set()
    for name in model["intervals"]:  # nested bands: the overlaps darken towards the middle
        lo, hi = (levels.index(float(q)) for q in name.split("-"))
        ax.fill_between(x, pred[order, lo], pred[order, hi], color="C0", alpha=0.25, lw=0, label=f"{name} interval")
        paired |= {lo, hi}
    for j in sorted(set(range(len(levels))) - paired):
        ax.plot(x, pred[order, j], lw=1.5, label=f"q{levels[j]:g}")
    ax.scatter(x, y[order], s=8, color="k", zorder=3, label="actual")
    ax.set(xlabel=f"row, sorted by predicted q{levels[mid]:g}", ylabel="target",
           title=f"Predicted quantiles of the first {len(y)} rows")
    ax.legend(loc="upper left", fontsize=8)
    save(fig, "fan.png")
    return written


def write_report(model: QuantileModel, ds: Dataset, out: str, metrics_log: str | None = None,
                 nonfinite: str = "error", about: dict | None = None) -> dict:
    """Score `model` on `ds`; write metrics.json (with `about`, e.g. checkpoint and step) and plots
    to the local directory `out`. Returns the metrics."""
    model_stats, oracle, fan = score(model, ds, nonfinite)
    metrics = {**(about or {}), "data": ds.uri, "model": model_stats.summary(),
               "oracle": oracle.summary() if oracle else None}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    if not (metrics_log and os.path.exists(metrics_log)):
        why = f"{metrics_log} does not exist" if metrics_log else "no training metrics log (--metrics)"
        print(f"report: no loss curve: {why}", file=sys.stderr)
        metrics_log = None
    try:
        plots = plot(out, metrics, fan, metrics_log)
    except ImportError:
        print("report: no plots: matplotlib is not installed (pip install -e '.[plot]')", file=sys.stderr)
        plots = []
    print(f"report: wrote {', '.join(['metrics.json', *plots])} to {out}", file=sys.stderr)
    return metrics
