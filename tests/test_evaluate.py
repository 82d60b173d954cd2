"""Evaluation: figures on hand-checkable data, checkpoint choice, metrics.json and plots, errors, training's report."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mgdist import checkpoint, evaluate, synthetic
from mgdist.checkpoint import CheckpointError
from mgdist.config import Config
from mgdist.data import Dataset, discover
from mgdist.evaluate import dataset_for, load_model, write_report
from mgdist.model import QuantileModel
from mgdist.trainer import train
from mgdist.worker import build_model

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (0.1, 0.5, 0.9)


def save_checkpoint(directory: Path, ds: Dataset, step: int = 1, bias: tuple | None = None, **config) -> QuantileModel:
    """A checkpoint with the manifest fields the trainer writes, of a fresh model for `ds`;
    with `bias`, a model that predicts exactly these quantiles for every row."""
    config = Config(**dict(data=ds.uri, quantiles=LEVELS, hidden=(8,)) | config)
    model = build_model(config, len(ds.features))
    if bias is not None:
        model.params[:] = 0
        model.net.layers[-1].b.data[:] = bias
    checkpoint.save(str(directory), step, {"params": model.params},
                    {"config": config.to_dict(), "dataset": ds.fingerprint(), "model": model.describe()})
    return model


def evaluate_job(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs/evaluate.py"), *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def four_rows(tmp_path) -> Dataset:
    """y = -2, -1, 0.5, 3 in two row groups, with two features (which a constant model ignores)."""
    table = pa.table({"f0": np.zeros(4, np.float32), "f1": np.ones(4, np.float32),
                      "y": np.array([-2, -1, 0.5, 3], np.float32)})
    pq.write_table(table, tmp_path / "four.parquet", row_group_size=2)
    return discover(str(tmp_path / "four.parquet"))


def test_figures_by_hand(four_rows, tmp_path, monkeypatch, capsys):
    save_checkpoint(tmp_path / "ckpt", four_rows, bias=(-1, 0, 1))
    model, manifest = load_model(str(tmp_path / "ckpt"))
    monkeypatch.setattr(evaluate, "EVAL_ROWS", 3)  # two chunks, whose sums add up
    metrics = write_report(model, dataset_for(manifest, four_rows.uri), str(tmp_path / "report"))
    # pinball per level over y - p:  q=0.1, p=-1: 0.9 + 0 + 0.15 + 0.4;  q=0.5, p=0: 1 + 0.5 + 0.25 + 1.5;
    # q=0.9, p=1: 0.3 + 0.2 + 0.05 + 1.8
    figures = metrics["model"]
    assert figures["pinball_per_level"] == pytest.approx({"0.1": 1.45 / 4, "0.5": 3.25 / 4, "0.9": 2.35 / 4})
    assert figures["pinball"] == pytest.approx((1.45 + 3.25 + 2.35) / 12)
    assert figures["coverage"] == {"0.1": 0.5, "0.5": 0.5, "0.9": 0.75}  # y <= -1, 0, 1: 2, 2 and 3 rows
    assert figures["intervals"] == {"0.1-0.9": {"coverage": 0.5, "nominal": 0.8, "mean_width": 2.0}}
    assert figures["rows"] == 4 and figures["crossing_rate"] == 0 and metrics["oracle"] is None
    saved = json.loads((tmp_path / "report/metrics.json").read_text())
    assert saved == {"data": four_rows.uri, "model": metrics["model"], "oracle": None}
    assert "no loss curve: no training metrics log (--metrics)" in capsys.readouterr().err

    save_checkpoint(tmp_path / "ckpt", four_rows, step=2, bias=(1, 0, -1))  # every row's quantiles cross
    done = evaluate_job("--checkpoint", tmp_path / "ckpt", "--data", four_rows.uri, "--report", tmp_path / "r2")
    crossed = json.loads((tmp_path / "r2/metrics.json").read_text())
    assert done.returncode == 0 and crossed["step"] == 2 and crossed["checkpoint"] == str(tmp_path / "ckpt")
    assert crossed["model"]["crossing_rate"] == 1.0 and crossed["model"]["intervals"]["0.1-0.9"]["mean_width"] == -2.0
    assert "crossing rate" in done.stdout and "oracle" not in done.stdout


def test_checkpoint_directory_or_one_manifest(four_rows, tmp_path):
    for step, bias in [(1, (-1, 0, 1)), (2, (-2, 0, 2)), (3, (-3, 0, 3))]:
        save_checkpoint(tmp_path / "ckpt", four_rows, step, bias=bias)
    model, manifest = load_model(str(tmp_path / "ckpt/ckpt-000000001.json"))
    assert manifest["step"] == 1 and model.predict(np.zeros((1, 2), np.float32)).tolist() == [[-1, 0, 1]]
    newest = json.loads((tmp_path / "ckpt/ckpt-000000003.json").read_text())["npz"]
    (tmp_path / "ckpt" / newest).write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="skipping checkpoint: .*checksum mismatch"):
        model, manifest = load_model(str(tmp_path / "ckpt"))
    assert manifest["step"] == 2 and model.predict(np.zeros((1, 2), np.float32)).tolist() == [[-2, 0, 2]]
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_model(str(tmp_path))
    checkpoint.save(str(tmp_path / "bare"), 5, {"params": np.zeros(3, np.float32)}, {})
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_model(str(tmp_path / "bare"))


def _drawn(png: Path) -> float:
    """Share of the image's pixels that are not white."""
    from matplotlib.image import imread
    return float((imread(png)[..., :3] < 0.95).any(axis=-1).mean())


def test_report_with_oracle_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    synthetic.write(str(tmp_path / "data"), 4000, 6, files=2, row_group_rows=1000, seed=4, progress=False)
    save_checkpoint(tmp_path / "ckpt", discover(str(tmp_path / "data")), hidden=(16, 8), non_crossing=True)
    log = tmp_path / "m.jsonl"
    log.write_text("".join(json.dumps({"step": s, "epoch": s / 10, "train_loss": 1 / s}) + "\n" for s in (5, 10, 15)))
    done = evaluate_job("--checkpoint", tmp_path / "ckpt", "--data", tmp_path / "data", "--report", tmp_path / "r",
                        "--metrics", log)
    assert done.returncode == 0, done.stderr
    assert "report: wrote metrics.json, loss.png, calibration.png, fan.png" in done.stderr
    metrics = json.loads((tmp_path / "r/metrics.json").read_text())
    model, oracle = metrics["model"], metrics["oracle"]
    assert model["rows"] == oracle["rows"] == 4000 and model["crossing_rate"] == 0  # non-crossing model
    assert oracle["pinball"] < model["pinball"]  # an untrained model is worse than the truth
    assert [oracle["coverage"][f"{q:g}"] for q in LEVELS] == pytest.approx(LEVELS, abs=0.03)
    assert oracle["intervals"]["0.1-0.9"]["coverage"] == pytest.approx(0.8, abs=0.03)
    header, *lines = done.stdout.splitlines()[1:]
    assert header.split() == ["model", "oracle"] and lines[0].split() == ["pinball", f"{model['pinball']:.4f}",
                                                                           f"{oracle['pinball']:.4f}"]
    for name in ("loss.png", "calibration.png", "fan.png"):
        assert _drawn(tmp_path / "r" / name) > 0.02, name


def test_without_matplotlib_metrics_only(four_rows, tmp_path, monkeypatch, capsys):
    save_checkpoint(tmp_path / "ckpt", four_rows)
    model, manifest = load_model(str(tmp_path / "ckpt"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib... raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    write_report(model, dataset_for(manifest, four_rows.uri), str(tmp_path / "r"))
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["metrics.json"]
    err = capsys.readouterr().err
    assert "no plots: matplotlib is not installed (pip install -e '.[plot]')" in err
    assert err.splitlines()[-1] == f"report: wrote metrics.json to {tmp_path / 'r'}"


def test_checkpoint_for_other_features_is_a_clear_error(tmp_path):
    synthetic.write(str(tmp_path / "six"), 1000, 6, seed=1, progress=False)
    synthetic.write(str(tmp_path / "four"), 1000, 4, seed=1, progress=False)
    save_checkpoint(tmp_path / "ckpt", discover(str(tmp_path / "six")))
    done = evaluate_job("--checkpoint", tmp_path / "ckpt", "--data", tmp_path / "four")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"error: the checkpoint's model takes 6 features (f0, f1, f2, f3, f4, f5) but {tmp_path / 'four'} "
                           "has 4 (f0, f1, f2, f3): no numeric column f4, f5\n")
    done = evaluate_job("--checkpoint", tmp_path / "nowhere", "--data", tmp_path / "six")
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1


def test_training_job_writes_the_same_report(ray_local, tmp_path):
    synthetic.write(str(tmp_path / "data"), 3000, 6, files=2, row_group_rows=500, seed=2, progress=False)
    config = Config(data=str(tmp_path / "data"), hidden=(16,), batch_size=500, steps=8, log_every=2,
                    checkpoint_dir=str(tmp_path / "ckpt"), metrics=str(tmp_path / "m.jsonl"), report=str(tmp_path / "r"))
    train(config)
    from_training = json.loads((tmp_path / "r/metrics.json").read_text())
    assert from_training["step"] == 8 and from_training["model"]["rows"] == 3000
    done = evaluate_job("--checkpoint", config.checkpoint_dir, "--data", config.data, "--report", tmp_path / "again")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "again/metrics.json").read_text()) == from_training
    plots = {"loss.png", "calibration.png", "fan.png"} if importlib.util.find_spec("matplotlib") else set()
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"metrics.json"} | plots
