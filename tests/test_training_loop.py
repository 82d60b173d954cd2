"""The loop around the steps on a real local Ray: validation rounds, lr, best checkpoint, early
stopping, outputs next to the checkpoints (local and the real S3 test server), trackers."""
import json
import math
import os
import struct

import numpy as np
import pytest
import s3fs

from mgdist import checkpoint, data
from mgdist.config import TrainConfig
from mgdist.errors import TrainingError
from mgdist.preprocess import Preprocessing
from mgdist.model import ModelSpec, Trained
from mgdist.trainer import run
from mgdist.worker import split_rows
from mgdist.workloads import synthetic
from mgdist.workloads.quantile import QuantileMLP

LEVELS = (0.1, 0.5, 0.9)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("loop") / "data")
    synthetic.write(path, rows=1200, features=6, files=2, row_group_rows=300, seed=4, progress=False)
    return path


def spec(hidden=(16,)) -> ModelSpec:
    return ModelSpec(QuantileMLP, dict(levels=LEVELS, hidden=hidden, seed=3))


def config(data_path: str, **kw) -> TrainConfig:
    base = dict(data=data_path, batch_size=200, steps=12, lr=0.02, schedule="cosine", warmup_steps=3,
                val_fraction=0.25, seed=3, log_every=4, report="", standardize="none")  # raw, as held_out_pinball
    return TrainConfig(**base | kw)


def records(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def held_out_pinball(params: np.ndarray, cfg: TrainConfig, hidden=(16,), workers: int = 2) -> float:
    """Mean pinball loss over every worker's held-out rows, computed here from the files."""
    ds = data.discover(cfg.data)
    X, y = [], []
    for rank, span in enumerate(data.plan_rows(ds.rows, workers)):
        Xs, ys, _ = data.load_rows(ds, *span)
        val = split_rows(len(Xs), cfg.val_fraction, cfg.seed, rank)[1]
        X.append(Xs[val])
        y.append(ys[val])
    pred = Trained(spec(hidden), Preprocessing(ds.features), params).predict(np.concatenate(X)).astype(np.float64)
    diff = np.concatenate(y)[:, None] - pred
    q = np.array(LEVELS)
    return float(np.maximum(q * diff, (q - 1) * diff).mean())


def cosine_lr(cfg: TrainConfig, update: int) -> float:
    """The lr of update number `update` (0-based) of warm-up then cosine decay to 5% of lr."""
    if update < cfg.warmup_steps:
        return cfg.lr * (update + 1) / cfg.warmup_steps
    lo = 0.05 * cfg.lr
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * (update - cfg.warmup_steps) / (cfg.steps - cfg.warmup_steps)))


def test_validation_rounds_lr_and_outputs_next_to_checkpoints(ray_local, small_data, tmp_path):
    cfg = config(small_data, val_every=8, checkpoint_dir=str(tmp_path / "ckpt"), report=None)
    summary = run(spec(), cfg).summary
    log = records(tmp_path / "ckpt" / "metrics.jsonl")  # by default next to the checkpoints
    assert [r["step"] for r in log] == [4, 8, 12]
    assert [("val_loss" in r) for r in log] == [False, True, True]  # rounds at 8 and at the end
    for r in log:
        assert r["lr"] == pytest.approx(cosine_lr(cfg, r["step"] - 1), rel=1e-6)
    assert {"pinball", "coverage", "crossing_rate"} <= log[1].keys()  # the model's own figures
    arrays, _ = checkpoint.load(cfg.checkpoint_dir, 12)
    assert log[2]["val_loss"] == pytest.approx(held_out_pinball(arrays["params"], cfg), rel=1e-5)
    assert summary["val_loss"] == log[2]["val_loss"] and summary["stopped"] == "steps done"
    assert summary["best_step"] == min((8, 12), key=lambda s: log[s // 4 - 1]["val_loss"])
    saved = json.loads((tmp_path / "ckpt" / "summary.json").read_text())
    assert saved["steps"] == 12 and saved["val_loss"] == pytest.approx(summary["val_loss"])
    report = json.loads((tmp_path / "ckpt" / "report" / "metrics.json").read_text())
    assert report["step"] == 12 and report["rows"] == 1200


def test_keep_best_and_early_stop(ray_local, small_data, tmp_path):
    cfg = config(small_data, steps=120, lr=0.2, schedule="constant", val_fraction=0.5, log_every=10,
                 val_every=10, keep_best=True, keep_checkpoints=1, early_stop=2, checkpoint_dir=str(tmp_path / "ckpt"))
    result = run(spec((32,)), cfg)
    rounds = [(r["step"], r["val_loss"]) for r in records(tmp_path / "ckpt" / "metrics.jsonl")]
    best, since, stop = (0, math.inf), 0, None
    for step, loss in rounds:  # the rule, applied here to the logged figures
        best, since = ((step, loss), 0) if loss < best[1] else (best, since + 1)
        if since == 2:
            stop = step
            break
    assert stop is not None and stop < 120, rounds  # these settings overfit: the rule fires
    assert rounds[-1][0] == stop == result.summary["steps"]
    assert result.summary["stopped"] == "early stop after 2 rounds without improvement"
    assert (result.summary["best_step"], result.summary["best_val_loss"]) == best
    assert checkpoint.steps(cfg.checkpoint_dir) == [best[0], stop]  # the best kept besides the newest one
    arrays, manifest = checkpoint.load(cfg.checkpoint_dir, best[0])
    assert manifest["best"]["step"] == best[0]
    assert result.best_checkpoint.endswith(f"ckpt-{best[0]:09d}.json")
    assert held_out_pinball(arrays["params"], cfg, (32,)) == pytest.approx(best[1], rel=1e-5)


def test_resume_carries_the_best_round(ray_local, small_data, tmp_path):
    """A resumed run knows the best round before it and keeps protecting its checkpoint."""
    cfg = config(small_data, steps=8, val_every=4, keep_best=True, keep_checkpoints=1,
                 checkpoint_dir=str(tmp_path / "ckpt"))
    run(spec(), cfg)
    second = run(spec(), config(small_data, steps=16, val_every=4, keep_best=True, keep_checkpoints=1, lr=5.0,
                                checkpoint_dir=cfg.checkpoint_dir, resume=True, resume_changes=True)).summary  # lr 5: worse rounds
    log = records(tmp_path / "ckpt" / "metrics.jsonl")
    assert [r["step"] for r in log] == [4, 8, 12, 16]  # the resumed run's records follow the first's
    best = min(log, key=lambda r: r["val_loss"])
    assert best["step"] <= 8, log  # the test's premise: the best round was before the resume
    assert (second["best_step"], second["best_val_loss"]) == (best["step"], best["val_loss"])
    assert checkpoint.steps(cfg.checkpoint_dir) == [best["step"], 16]


def test_outputs_next_to_checkpoints_on_s3(ray_local, small_data, s3_env):
    ckpt = f"s3://{s3_env.bucket}/loop-run"
    cfg = config(small_data, val_every=4, steps=8, checkpoint_dir=ckpt, report=None)
    run(spec(), cfg)
    run(spec(), config(small_data, val_every=4, steps=12, checkpoint_dir=ckpt, resume=True, report=None))
    fs = s3fs.S3FileSystem()
    root = f"{s3_env.bucket}/loop-run"
    log = [json.loads(line) for line in fs.cat_file(f"{root}/metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in log] == [4, 8, 12] and all("val_loss" in r and "lr" in r for r in log)
    assert json.loads(fs.cat_file(f"{root}/summary.json"))["steps"] == 12
    report = json.loads(fs.cat_file(f"{root}/report/metrics.json"))
    assert report["step"] == 12 and report["checkpoint"] == ckpt
    assert fs.exists(f"{root}/report/loss.png")  # the loss curve, read from the S3 metrics log


def test_outputs_can_be_turned_off(ray_local, small_data, tmp_path):
    cfg = config(small_data, steps=4, checkpoint_dir=str(tmp_path / "ckpt"), metrics="", summary_json="")
    run(spec(), cfg)
    assert checkpoint.steps(cfg.checkpoint_dir) == [4]
    assert not {"metrics.jsonl", "summary.json", "report"} & set(os.listdir(tmp_path / "ckpt"))


def test_settings_that_cannot_work():
    with pytest.raises(TrainingError, match="--early-stop 3 needs validation rounds: --val-every"):
        config("x", early_stop=3).check()
    with pytest.raises(TrainingError, match="--keep-best needs --checkpoint-dir"):
        config("x", keep_best=True).check()


def test_prune_spares_protected_steps(tmp_path):
    arrays = {"params": np.arange(3, dtype=np.float32)}
    for step in range(1, 6):
        checkpoint.save(str(tmp_path), step, arrays, {}, keep=1, protect=[2])
    assert checkpoint.steps(str(tmp_path)) == [2, 5]
    checkpoint.save(str(tmp_path), 6, arrays, {}, keep=1, protect=[5])
    assert checkpoint.steps(str(tmp_path)) == [5, 6]  # 2 is no longer protected


def tensorboard_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TFRecord event files in `logdir`: (length, crc, event, crc) records."""
    from tensorboardX.proto.event_pb2 import Event
    found: dict[str, list] = {}
    for name in sorted(os.listdir(logdir)):
        with open(os.path.join(logdir, name), "rb") as f:
            blob = f.read()
        at = 0
        while at < len(blob):
            (length,) = struct.unpack("<Q", blob[at:at + 8])
            event = Event.FromString(blob[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def test_tensorboard_and_mlflow_get_the_records(ray_local, small_data, tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed")
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants a database, but still writes files
    uri = f"file:{tmp_path / 'mlruns'}"
    cfg = config(small_data, val_every=8, metrics=str(tmp_path / "m.jsonl"), tensorboard=str(tmp_path / "tb"),
                 mlflow=uri, mlflow_experiment="loop-test")
    run(spec(), cfg)
    log = records(tmp_path / "m.jsonl")
    tb = tensorboard_scalars(tmp_path / "tb")
    assert tb["train_loss"] == [(r["step"], pytest.approx(r["train_loss"])) for r in log]
    assert tb["lr"] == [(r["step"], pytest.approx(r["lr"])) for r in log]
    assert tb["val_loss"] == [(r["step"], pytest.approx(r["val_loss"])) for r in log if "val_loss" in r]
    assert [s for s, _ in tb["coverage/0.9"]] == [8, 12] and "rows_per_s" in tb

    client = mlflow.MlflowClient(tracking_uri=uri)
    (found,) = client.search_runs([client.get_experiment_by_name("loop-test").experiment_id])
    assert found.info.status == "FINISHED"
    assert found.data.params["lr"] == "0.02" and found.data.params["model.class"].endswith(":QuantileMLP")
    history = client.get_metric_history(found.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["val_loss"])) for r in log
                                                      if "val_loss" in r]
    assert [m.step for m in client.get_metric_history(found.info.run_id, "lr")] == [4, 8, 12]

    def fail(_):
        raise RuntimeError("stopped by the test")
    with pytest.raises(RuntimeError, match="stopped by the test"):
        run(spec(), config(small_data, steps=8, val_every=4, mlflow=uri, mlflow_experiment="loop-fail"), fail)
    (failed,) = client.search_runs([client.get_experiment_by_name("loop-fail").experiment_id])
    assert failed.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(failed.info.run_id, "val_loss")] == [4]
