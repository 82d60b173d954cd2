"""Distributed training on a real local Ray: k workers equal one process on the same global batches."""
import numpy as np
import pytest
import ray

from micrograd.nn import flatten
from micrograd.optim import Optimizer
from micrograd.parallel import BLOCK, GradSum
from mgdist import checkpoint, data
from mgdist.config import TrainConfig
from mgdist.errors import TrainingError
from mgdist.fleet import Fleet, split_batch
from mgdist.model import ModelSpec
from mgdist.server import make_optimizer
from mgdist.trainer import run
from mgdist.worker import epoch_order, split_rows
from mgdist.workloads import synthetic
from mgdist.workloads.quantile import QuantileMLP


@pytest.fixture(scope="module")
def ray_local():
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def uneven_data(tmp_path_factory):
    """Two files whose row groups differ in size, so shards are uneven."""
    root = tmp_path_factory.mktemp("uneven")
    synthetic.write(str(root / "a"), rows=3000, features=6, files=1, row_group_rows=1000, seed=1, progress=False)
    synthetic.write(str(root / "b"), rows=2100, features=6, files=1, row_group_rows=700, seed=2, progress=False)
    return str(root)


def small_config(data_path: str, tmp_path, **kw) -> TrainConfig:
    base = dict(data=data_path, batch_size=600, steps=12, lr=0.01, schedule="cosine", warmup_steps=3,
                val_fraction=0.1, seed=3, log_every=4, checkpoint_dir=str(tmp_path / "ckpt"),
                standardize="none")  # raw inputs, as single_process_params' (test_preprocess.py checks standardizing)
    return TrainConfig(**base | kw)


def quantile(hidden=(16,)) -> ModelSpec:
    return ModelSpec(QuantileMLP, dict(levels=(0.1, 0.5, 0.9), hidden=hidden, seed=3))


def train(config: TrainConfig, hidden=(16,)) -> dict:
    return run(quantile(hidden), config).summary


def single_process_params(config: TrainConfig, workers: int, shards: list | None = None, hidden=(16,)) -> np.ndarray:
    """Replay the same global batches in one process: union of every worker's rows each step."""
    ds = data.discover(config.data)
    shards = shards or data.plan_shards(ds.group_rows, workers)
    loaded = [data.load_shard(ds, s) for s in shards]
    trains = [split_rows(len(X), config.val_fraction, config.seed, r)[0] for r, (X, _, _) in enumerate(loaded)]
    batches = split_batch(config.batch_size, [len(t) for t in trains])
    per_epoch = min(len(t) // b for t, b in zip(trains, batches))
    model = quantile(hidden).build(len(ds.features))
    params, grads = flatten(model.parameters())
    opt: Optimizer = make_optimizer(config, params.size, config.steps)
    for step in range(config.steps):
        epoch, i = divmod(step, per_epoch)
        rows = [epoch_order(t, config.seed, r, epoch)[i * b:(i + 1) * b] for r, (t, b) in enumerate(zip(trains, batches))]
        X = np.concatenate([loaded[r][0][rw] for r, rw in enumerate(rows)])
        y = np.concatenate([loaded[r][1][rw] for r, rw in enumerate(rows)])
        model.loss.forward(X=X, y=y)
        model.loss.backward()
        opt.step(params, grads)
    return params


@pytest.mark.parametrize("workers", [2, 3])
def test_k_workers_equal_one_process(ray_local, uneven_data, tmp_path, workers):
    config = small_config(uneven_data, tmp_path, workers=workers, cpus_per_worker=2 / workers, steps=14)  # > 1 epoch
    summary = train(config)
    arrays, manifest = checkpoint.load(config.checkpoint_dir, config.steps)
    assert manifest["data_order"]["workers"] == workers
    assert len(set(manifest["data_order"]["batches"])) > 1  # uneven shards, weighted averaging
    expected = single_process_params(config, workers)
    np.testing.assert_allclose(arrays["params"], expected, rtol=1e-3, atol=5e-4)  # Adam amplifies float32 rounding of tiny gradients
    assert summary["steps"] == config.steps and summary["workers"] == workers
    assert summary["failures_survived"] == 0


def test_summary_figures(ray_local, uneven_data, tmp_path):
    config = small_config(uneven_data, tmp_path, steps=30, summary_json=str(tmp_path / "s.json"),
                          metrics=str(tmp_path / "m.jsonl"))
    summary = train(config)
    import json
    saved = json.loads((tmp_path / "s.json").read_text())
    assert set(saved) == {"steps", "epochs", "workers", "rows_per_s", "wall_s", "train_loss", "val_loss",
                          "pinball", "pinball_per_level", "coverage", "interval_coverage", "interval_width",
                          "crossing_rate", "oracle_loss", "oracle_coverage", "failures_survived",
                          "worker_busy", "outside_compute"}
    assert 0 < saved["worker_busy"] <= 1 - saved["outside_compute"] < 1  # the slowest worker computes the longest
    assert saved["val_loss"] == pytest.approx(summary["val_loss"])
    assert set(saved["coverage"]) == {"0.1", "0.5", "0.9"} == set(saved["oracle_coverage"])
    assert saved["oracle_loss"] < saved["val_loss"] < 2 * saved["oracle_loss"]  # learned, yet not better than truth
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [4, 8, 12, 16, 20, 24, 28, 30]


def test_fleet_rejects_what_no_node_offers(ray_local, uneven_data, tmp_path):
    ds = data.discover(uneven_data)
    with pytest.raises(TrainingError, match="aarch64 nodes need 1 CPUs, have 0"):
        Fleet(quantile(), small_config(uneven_data, tmp_path, arch_workers={"aarch64": 1}, workers=1, placement_timeout=1), ds).start()
    with pytest.raises(TrainingError, match="any nodes need 8 CPUs, have 2"):
        Fleet(quantile(), small_config(uneven_data, tmp_path, workers=4, cpus_per_worker=2, placement_timeout=0), ds).start()


def test_speed_balance_evens_out_a_slow_worker(ray_local, tmp_path_factory, tmp_path):
    path = str(tmp_path_factory.mktemp("balance") / "data")
    synthetic.write(path, rows=48000, features=16, files=4, row_group_rows=1000, progress=False)
    common = dict(batch_size=16000, steps=20, slowdown=(8.0,), val_fraction=0.0, log_every=20)
    equal = train(small_config(path, tmp_path / "equal", **common), hidden=(128,))
    config = small_config(path, tmp_path / "speed", balance="speed", **common)
    fast = train(config, hidden=(128,))
    step_time = {name: config.batch_size / s["rows_per_s"] for name, s in (("equal", equal), ("speed", fast))}
    assert step_time["speed"] <= 0.75 * step_time["equal"], step_time
    arrays, manifest = checkpoint.load(config.checkpoint_dir, config.steps)
    shards = manifest["data_order"]["shards"]
    assert len(shards[0]) < len(shards[1])  # the slow worker got the smaller shard
    np.testing.assert_allclose(arrays["params"], single_process_params(config, 2, shards, hidden=(128,)), rtol=1e-3, atol=5e-4)  # Adam amplifies float32 rounding of tiny gradients


def test_grad_sum_in_micro_batches_equals_one_pass():
    """A worker's gradient, summed BLOCK rows at a time over its rows, is the whole batch's."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3 * BLOCK, 5)).astype(np.float32)
    y = rng.standard_normal(len(X)).astype(np.float32)
    rows = rng.permutation(len(X))[:2 * BLOCK + 123]  # a partial last micro-batch
    model = QuantileMLP(5, (0.1, 0.5, 0.9), (16,), "tanh", seed=1)
    _, grads = flatten(model.parameters())
    model.loss.forward(X=X[rows], y=y[rows])
    model.loss.backward()
    whole_grad, whole_loss = grads * len(rows), float(model.loss.data) * len(rows)
    gs = GradSum(lambda: QuantileMLP(5, (0.1, 0.5, 0.9), (16,), "tanh", seed=1))
    grad, loss = gs({"X": X, "y": y}, rows)
    grad = grad.copy()
    np.testing.assert_allclose(grad, whole_grad, rtol=1e-4, atol=1e-4 * np.abs(whole_grad).max())
    assert loss == pytest.approx(whole_loss, rel=1e-5)
    np.testing.assert_array_equal(gs({"X": X[rows], "y": y[rows]})[0], grad)  # all rows when none given
