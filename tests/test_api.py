"""The public API with a model that exists only in this test file: mgdist.train, the result,
checkpoints that rebuild it in a fresh process, and cleanup on errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

import mgdist
from micrograd import Value
from micrograd.losses import mse
from micrograd.nn import MLP, flatten

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


class TinyRegressor:
    """An MLP with MSE: the kind of model a user writes, defined here and nowhere in mgdist."""

    def __init__(self, features: int, hidden=(8,), seed=0):
        self.net = MLP(features, hidden, 1, "tanh", seed)
        X, y = Value.placeholder("X", (None, features)), Value.placeholder("y", (None,))
        self.prediction = self.net(X)[:, 0]
        self.loss = mse(self.prediction, y)

    def parameters(self):
        return self.net.parameters()


class NoLoss:
    def __init__(self, features: int):
        self.prediction = Value.placeholder("X", (None, features)).sum(axis=1)

    def parameters(self):
        return []


def noiseless(X: np.ndarray) -> np.ndarray:
    return (np.sin(X[:, 0]) + 0.5 * X[:, 1] - 0.25 * X[:, 2] * X[:, 3]).astype(np.float32)


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> str:
    """1,200 rows, y a noiseless function of 4 features, in 6 row groups of 200 over two files."""
    root = tmp_path_factory.mktemp("noiseless")
    X = np.random.default_rng(5).standard_normal((1200, 4)).astype(np.float32)
    for k in range(2):
        part = slice(600 * k, 600 * (k + 1))
        table = pa.table({**{f"x{j}": X[part, j] for j in range(4)}, "y": noiseless(X[part])})
        pq.write_table(table, root / f"part-{k}.parquet", row_group_size=200)
    return str(root)


def gradient_descent(data: str, steps: int, lr: float) -> np.ndarray:
    """The reference: plain full-batch gradient descent on every row, p <- p - lr * mean gradient."""
    table = pq.read_table(data)
    X = np.column_stack([table.column(f"x{j}").to_numpy() for j in range(4)]).astype(np.float32)
    y = table.column("y").to_numpy()
    model = TinyRegressor(4, hidden=(8,), seed=2)
    params, grads = flatten(model.parameters())
    for _ in range(steps):
        model.loss.forward(X=X, y=y)
        model.loss.backward()
        params -= np.float32(lr) * grads
    return params


@pytest.mark.parametrize("workers", [2, 3])
def test_user_model_trains_through_the_api_like_one_process(ray_local, rows, tmp_path, workers):
    # every row in every step (batch = all rows, none held out): the global batch is the whole data whatever
    # the shards, so k workers must give plain gradient descent's weights; SGD, so the gradient's scale counts;
    # raw inputs, as the reference's (tests/test_preprocess.py checks the standardized ones)
    result = mgdist.train(TinyRegressor, rows, model_args={"hidden": [8], "seed": 2}, workers=workers, standardize="none",
                          cpus_per_worker=2 / workers, batch_size=1200, val_fraction=0.0, steps=25,
                          optimizer="sgd", lr=0.1, schedule="constant", log_every=5,
                          checkpoint_dir=str(tmp_path / "ckpt"))
    np.testing.assert_allclose(result.trained.params, gradient_descent(rows, 25, 0.1), rtol=1e-4, atol=1e-5)
    assert result.summary["workers"] == workers and result.summary["steps"] == 25
    assert result.checkpoint_dir == str(tmp_path / "ckpt")
    X = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    reference = TinyRegressor(4, hidden=(8,), seed=2)
    params, _ = flatten(reference.parameters())
    params[:] = result.trained.params
    np.testing.assert_array_equal(result.predict(X), reference.prediction.forward(X=X))
    loaded = mgdist.load(str(tmp_path / "ckpt"))
    np.testing.assert_array_equal(loaded.predict(X), result.predict(X))


def test_trained_model_fits_the_noiseless_function(ray_local, rows, tmp_path):
    result = mgdist.train(TinyRegressor, rows, model_args={"hidden": [16]}, workers=2, batch_size=200,
                          val_fraction=0.2, epochs=60, lr=0.02, log_every=100)
    X = np.random.default_rng(9).standard_normal((2000, 4)).astype(np.float32)
    y = noiseless(X)
    assert np.mean((result.predict(X) - y) ** 2) < 0.05 * np.var(y)  # noiseless: far below the variance
    assert result.summary["val_loss"] < 0.05 * np.var(y)


def fresh(*args: str) -> subprocess.CompletedProcess:
    """A new Python process that can import this file's model (as a user's working directory can)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


def test_evaluate_and_predict_rebuild_the_model_in_a_fresh_process(ray_local, rows, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    result = mgdist.train("test_api:TinyRegressor", rows, model_args={"hidden": [8]}, workers=2, batch_size=400,
                          steps=30, log_every=10, checkpoint_dir=ckpt)
    done = fresh(str(ROOT / "jobs/evaluate.py"), "--checkpoint", ckpt, "--data", rows, "--report", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r/metrics.json").read_text())
    table = pq.read_table(rows)
    X = np.column_stack([table.column(f"x{j}").to_numpy() for j in range(4)])
    expected = float(np.mean((result.predict(X).astype(np.float64) - table.column("y").to_numpy()) ** 2))
    assert report["model"] == "test_api:TinyRegressor" and report["rows"] == 1200
    assert report["figures"]["loss"] == pytest.approx(expected, rel=1e-5)
    done = fresh("-m", "mgdist", "predict", "--checkpoint", ckpt, "--data", rows, "--out", str(tmp_path / "p"))
    assert done.returncode == 0, done.stderr
    out = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "p").glob("*.parquet"))])
    assert out.column_names == ["y", "prediction"]
    np.testing.assert_array_equal(out.column("prediction").to_numpy(), result.predict(X))


def test_checkpoint_of_a_model_that_cannot_be_imported(ray_local, rows, tmp_path):
    ckpt = tmp_path / "ckpt"
    mgdist.train(TinyRegressor, rows, workers=1, batch_size=400, steps=2, checkpoint_dir=str(ckpt))
    manifest = next(ckpt.glob("ckpt-*.json"))
    saved = json.loads(manifest.read_text())
    saved["model"]["class"] = "nowhere_module:TinyRegressor"
    manifest.write_text(json.dumps(saved))
    with pytest.raises(mgdist.CheckpointError, match="cannot rebuild its model: cannot import model "
                                                     "nowhere_module:TinyRegressor: No module named 'nowhere_module'"):
        mgdist.load(str(ckpt))
    saved["model"]["class"], saved["model"]["args"] = "test_api:TinyRegressor", {"hidden": [3]}
    manifest.write_text(json.dumps(saved))
    with pytest.raises(mgdist.CheckpointError, match="cannot rebuild its model: test_api:TinyRegressor has 19 "
                                                     "parameters, the weights given 49"):
        mgdist.load(str(ckpt))


def test_contract_and_settings_errors_are_one_line(ray_local, rows):
    with pytest.raises(mgdist.ModelError, match=r"test_api:NoLoss has no micrograd Value `loss` \(see docs/models.md\)"):
        mgdist.train(NoLoss, rows, workers=1, steps=1)
    with pytest.raises(mgdist.ModelError, match=r"model arguments of test_api:TinyRegressor must be JSON values"):
        mgdist.train(TinyRegressor, rows, model_args={"hidden": object()})
    with pytest.raises(TypeError, match=r"unknown settings \['wokers'\]"):
        mgdist.train(TinyRegressor, rows, wokers=2)
    with pytest.raises(mgdist.ModelError, match=r"TinyRegressor\(4, \*\*\{'depth': 3\}\) failed"):
        mgdist.train(TinyRegressor, rows, model_args={"depth": 3}, steps=1)


def mgdist_actors() -> list[str]:
    """The live actors that mgdist named (workers and servers); killed ones leave the list at once."""
    return [name for name in ray.util.list_named_actors() if name.startswith("mgdist-")]


def test_actors_stopped_after_an_error_and_a_keyboard_interrupt(ray_local, rows, tmp_path):
    with pytest.raises(mgdist.TrainingError, match="batch size 100000 does not fit"):
        mgdist.train(TinyRegressor, rows, workers=2, batch_size=100_000, steps=3)
    assert mgdist_actors() == []

    log, running = tmp_path / "m.jsonl", []

    def ctrl_c_at_first_round(_) -> None:  # a real SIGINT, as a user's Ctrl-C mid-run, sent at the first
        if not running:  # validation round; its handler raises in the sleep, on this thread
            running.extend(mgdist_actors())
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)

    # Python's own handler, as in a terminal: a process started in the background by a shell
    # without job control (`cmd &`) inherits SIGINT ignored, and Python then installs none
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        mgdist.train(TinyRegressor, rows, workers=2, batch_size=200, steps=20_000, log_every=5, val_every=5,
                     metrics=str(log), on_validation=ctrl_c_at_first_round)
    except KeyboardInterrupt:
        pass
    else:
        pytest.fail("no KeyboardInterrupt")
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert len(log.read_text().splitlines()) == 1  # the first log point, and no other
    assert len(running) == 3 and mgdist_actors() == []  # two workers and the server, then none
    assert ray.is_initialized()  # the caller's Ray session is left running


def test_a_node_with_other_versions_is_named():
    from mgdist.fleet import _check_versions
    from mgdist.worker import ShardInfo, versions
    here = dict(versions())
    same = ShardInfo(10, 9, 1, 4, "node-a", "x86_64", "id-a", 1, versions())
    odd = ShardInfo(10, 9, 1, 4, "node-b", "aarch64", "id-b", 2,
                    (("Python", here["Python"]), ("Ray", "2.59.0"), ("mgdist", here["mgdist"])))
    _check_versions([same])
    with pytest.raises(mgdist.TrainingError, match=rf"^node node-b \(aarch64\) runs Ray 2.59.0 where the driver runs "
                                                   rf"Ray {here['Ray']}: every node of a run needs the same versions$"):
        _check_versions([same, odd])
