"""The report's plots checked through what they draw: the data of their lines, markers and bands."""
import json

import numpy as np
import pytest

from mgdist.evaluate import plot_loss
from mgdist.workloads.quantile import QuantileMetrics

pytest.importorskip("matplotlib")
from mgdist.workloads.quantile_plots import calibration, fan  # noqa: E402 (needs matplotlib)

LEVELS = (0.1, 0.5, 0.9)


@pytest.fixture
def drawn(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.standard_normal(50).astype(np.float32)
    pred = np.sort(rng.standard_normal((50, 3)), axis=1).astype(np.float32)
    metrics = QuantileMetrics(LEVELS, oracle=False)
    metrics.add(np.zeros((50, 4), np.float32), y, pred)
    figures = metrics.summary()
    log = tmp_path / "m.jsonl"
    records = [{"step": 5, "train_loss": 0.9}, {"step": 10, "train_loss": 0.7}, {"step": 5, "train_loss": 0.8},  # resumed: 5 again
               {"step": 15, "epoch": 1.5}, {"step": 20, "train_loss": 0.5}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    drawn = {"loss.png": plot_loss(str(tmp_path), str(log), 0.6, 0.4),
             "calibration.png": calibration(str(tmp_path), LEVELS, figures | {"oracle_coverage": {"0.1": 0.11, "0.5": 0.52, "0.9": 0.88}}),
             "fan.png": fan(str(tmp_path), LEVELS, y, pred)}
    assert metrics.plot(str(tmp_path)) == ["calibration.png", "fan.png"]
    return drawn, figures, y, pred, tmp_path


def test_plots_are_written_and_returned(drawn):
    figures, _, _, _, where = drawn
    assert all((where / name).stat().st_size > 10_000 for name in figures)


def test_loss_curve_draws_the_logged_losses_and_both_levels(drawn):
    figures, *_ = drawn
    ax, = figures["loss.png"].axes
    curve, model, oracle = ax.lines
    assert list(curve.get_xdata()) == [5, 10, 20] and list(curve.get_ydata()) == [0.8, 0.7, 0.5]  # the last value of a step
    assert curve.get_marker() == "."
    assert list(model.get_ydata()) == [0.6] * 2
    assert list(oracle.get_ydata()) == [0.4] * 2
    assert ax.get_xlabel() == "step" and len(ax.get_legend().get_texts()) == 3


def test_calibration_draws_coverage_against_level(drawn):
    figures, summary, *_ = drawn
    ax, = figures["calibration.png"].axes
    diagonal, model, oracle = ax.lines
    assert np.asarray(diagonal.get_xydata()).tolist() == [[0, 0], [1, 1]]
    assert list(model.get_xdata()) == list(LEVELS)
    assert list(model.get_ydata()) == [summary["coverage"][f"{q:g}"] for q in LEVELS]
    assert list(oracle.get_ydata()) == [0.11, 0.52, 0.88]
    assert model.get_marker() == "o" and oracle.get_marker() == "x"
    assert "0.1-0.9: " in ax.texts[0].get_text() and ax.get_xlim() == (0, 1)


def test_fan_draws_rows_sorted_by_the_median_with_their_band_and_targets(drawn):
    figures, _, y, pred, _ = drawn
    ax, = figures["fan.png"].axes
    order = np.argsort(pred[:, 1], kind="stable")
    median, = ax.lines
    np.testing.assert_array_equal(median.get_xdata(), np.arange(50))
    np.testing.assert_array_equal(median.get_ydata(), pred[order, 1])
    band, targets = ax.collections
    np.testing.assert_array_equal(targets.get_offsets(), np.column_stack([np.arange(50), y[order]]))
    corners = {tuple(v) for v in band.get_paths()[0].vertices.round(5).tolist()}
    for x, (lo, hi) in enumerate(pred[order][:, [0, 2]].astype(np.float64).round(5).tolist()):
        assert (x, lo) in corners and (x, hi) in corners
