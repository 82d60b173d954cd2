"""The quantile workload's plots (matplotlib): calibration against the levels, and a fan chart."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure  # Figure.savefig renders PNGs with Agg, no pyplot or display needed

from mgdist.workloads.quantile import symmetric_pairs


def calibration(out: str, levels: Sequence[float], figures: dict) -> Figure:
    """calibration.png under `out`: coverage per level (and the true quantiles' on synthetic data)."""
    levels = list(levels)
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="gray", ls="--", label="perfect calibration")
    ax.plot(levels, list(figures["coverage"].values()), marker="o", label="model")
    if "oracle_coverage" in figures:
        ax.plot(levels, list(figures["oracle_coverage"].values()), marker="x", ls=":", color="k", label="true quantiles")
    text = "\n".join(f"{name}: {cov:.1%} inside (nominal {_nominal(name):.0%}), mean width {figures['interval_width'][name]:.3g}"
                     for name, cov in figures["interval_coverage"].items())
    ax.text(0.98, 0.02, text, ha="right", va="bottom", fontsize=8, transform=ax.transAxes)
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xlabel="quantile level q", ylabel="share of rows with y <= predicted q",
           title="Calibration")
    ax.legend(loc="upper left")
    fig.savefig(os.path.join(out, "calibration.png"), dpi=100)
    return fig


def _nominal(interval: str) -> float:
    lo, hi = (float(q) for q in interval.split("-"))
    return hi - lo


def fan(out: str, levels: Sequence[float], y: np.ndarray, pred: np.ndarray) -> Figure:
    """fan.png under `out`: predicted quantiles of some rows, sorted by the middle level, around their targets."""
    levels = list(levels)
    mid = len(levels) // 2
    order = np.argsort(pred[:, mid], kind="stable")
    x = np.arange(len(y))
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    paired = set()
    for lo, hi in symmetric_pairs(levels):  # nested bands: the overlaps darken towards the middle
        ax.fill_between(x, pred[order, lo], pred[order, hi], color="C0", alpha=0.25, lw=0,
                        label=f"{levels[lo]:g}-{levels[hi]:g} interval")
        paired |= {lo, hi}
    for j in sorted(set(range(len(levels))) - paired):
        ax.plot(x, pred[order, j], lw=1.5, label=f"q{levels[j]:g}")
    ax.scatter(x, y[order], s=8, color="k", zorder=3, label="actual")
    ax.set(xlabel=f"row, sorted by predicted q{levels[mid]:g}", ylabel="target",
           title=f"Predicted quantiles of the first {len(y)} rows")
    ax.legend(loc="upper left", fontsize=8)
    fig.savefig(os.path.join(out, "fan.png"), dpi=100)
    return fig
