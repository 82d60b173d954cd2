"""jobs/quantile.py's parse_args, and training runs that use the flags no other test uses, each checked for its effect."""
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from mgdist import checkpoint, data
from mgdist.config import TrainConfig
from mgdist.errors import TrainingError
from mgdist.model import ModelSpec
from mgdist.trainer import run as train
from mgdist.workloads import synthetic
from mgdist.workloads.quantile import QuantileMLP, parse_args
from reference import single_process_params

DEFAULT_MODEL = {"levels": [0.1, 0.5, 0.9], "hidden": [64, 64], "activation": "relu", "non_crossing": False, "seed": 0}


def test_defaults_are_the_configs():
    assert parse_args([]) == (ModelSpec(QuantileMLP, DEFAULT_MODEL), TrainConfig(batch_size=4096, epochs=40.0))


def test_every_flag_reaches_its_setting():
    spec, c = parse_args(["--data", "s3://b/p", "--features", "f*", "--target", "t", "--nonfinite", "drop",
                    "--val-fraction", "0.2", "--s3-endpoint", "http://h:1", "--quantiles", "0.05,0.5,0.95",
                    "--hidden", "32,8", "--activation", "relu", "--non-crossing", "--optimizer", "adamw", "--lr", "0.3",
                    "--schedule", "linear", "--warmup-steps", "7", "--weight-decay", "0.01", "--batch-size", "99",
                    "--epochs", "2.5", "--steps", "11", "--seed", "4", "--workers", "3", "--cpus-per-worker", "0.5",
                    "--servers", "2", "--balance", "speed", "--address", "ray://x:1", "--placement-timeout", "9", "--step-timeout", "8",
                    "--checkpoint-dir", "/c", "--checkpoint-every", "6", "--keep-checkpoints", "5", "--resume",
                    "--resume-changes", "--max-failures", "2", "--on-nonfinite", "skip", "--log-every", "3", "--metrics", "m.jsonl",
                    "--summary-json", "s.json", "--report", "r"])
    assert spec.args == {"levels": [0.05, 0.5, 0.95], "hidden": [32, 8], "activation": "relu", "non_crossing": True,
                         "seed": 4}
    assert c == TrainConfig(data="s3://b/p", features="f*", target="t", nonfinite="drop", val_fraction=0.2,
                       s3_endpoint="http://h:1", optimizer="adamw", lr=0.3, schedule="linear", warmup_steps=7, weight_decay=0.01,
                       batch_size=99, epochs=2.5, steps=11, seed=4, workers=3, cpus_per_worker=0.5, servers=2, balance="speed",
                       address="ray://x:1", placement_timeout=9, step_timeout=8, checkpoint_dir="/c", checkpoint_every=6,
                       keep_checkpoints=5, resume=True, resume_changes=True, max_failures=2, on_nonfinite="skip", log_every=3,
                       metrics="m.jsonl", summary_json="s.json", report="r")
    assert c.storage.s3_endpoint == "http://h:1"


def test_a_worker_range_makes_an_elastic_run_and_one_number_a_fixed_one():
    assert (parse_args(["--workers", "2:5"])[1].min_workers, parse_args(["--workers", "2:5"])[1].workers) == (2, 5)
    assert (parse_args(["--workers", "3"])[1].min_workers, parse_args(["--workers", "3"])[1].workers) == (0, 3)
    assert parse_args(["--workers", "4:4"])[1].min_workers == 0  # MIN = MAX: a fixed run


def test_arch_workers_set_the_number_of_workers():
    _, c = parse_args(["--arch-workers", "x86_64=2,aarch64=3", "--workers", "1"])
    assert c.arch_workers == {"x86_64": 2, "aarch64": 3} and c.workers == 5


@pytest.mark.parametrize("args, message", [
    (["--quantiles", "0.5,0.1"], "quantiles must be increasing, each in (0, 1): [0.5, 0.1]"),
    (["--quantiles", "0.1,1.0"], "quantiles must be increasing, each in (0, 1): [0.1, 1.0]"),
    (["--quantiles", "0.3,0.3"], "quantiles must be increasing"),
    (["--arch-workers", "riscv=2"], "expected x86_64=N,aarch64=M, got 'riscv=2'"),
    (["--arch-workers", "x86_64=two"], "expected x86_64=N,aarch64=M"),
    (["--workers", "0"], "need at least 1 worker and batch size >= workers, got 0, 4096"),
    (["--workers", "4", "--batch-size", "3"], "need at least 1 worker and batch size >= workers, got 4, 3"),
    (["--workers", "3:2"], "--workers 3:2: need 1 <= MIN <= MAX, and no --arch-workers"),
    (["--workers", "0:2"], "expected N or MIN:MAX with MIN >= 1, got '0:2'"),
    (["--workers", "2:x"], "expected N or MIN:MAX with MIN >= 1, got '2:x'"),
    (["--workers", "1:3", "--arch-workers", "x86_64=2"], "need 1 <= MIN <= MAX, and no --arch-workers"),
    (["--val-fraction", "1"], "val_fraction must be in [0, 1), got 1.0"),
    (["--val-fraction", "-0.1"], "val_fraction must be in [0, 1), got -0.1"),
    (["--schedule", "step"], "invalid choice: 'step'"),
    (["--log-every", "0"], "log_every must be positive, got 0"),
    (["--servers", "0"], "servers must be positive, got 0"),
    (["--step-timeout", "0"], "step_timeout must be positive, got 0.0"),
    (["--checkpoint-every", "-5"], "checkpoint_every must be 0 or more, got -5"),
    (["--keep-checkpoints", "-1"], "keep_checkpoints must be 0 or more, got -1"),
    (["--steps", "0"], "steps must be positive, got 0"),
    (["--lr", "-0.1"], "lr must be positive, got -0.1"),
    (["--hidden", "8,x"], "invalid _widths value: '8,x'"),
])
def test_bad_arguments_exit_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit:
        parse_args(args)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert message in err.splitlines()[-1], err


def test_config_round_trips_through_a_dict():
    _, c = parse_args(["--arch-workers", "x86_64=1", "--steps", "7"])
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert TrainConfig.from_dict(c.to_dict() | {"no_such_setting": 1}) == c  # a newer checkpoint's extra keys


# ---- runs ----


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("cli") / "data")
    synthetic.write(path, rows=4000, features=6, files=2, row_group_rows=500, seed=7, progress=False)
    return path  # 2 files of 2,000 rows: 2 workers hold one each


SHARDS = [(0, 2000), (2000, 4000)]


def run(dataset: str, tmp_path, *args: str) -> tuple[ModelSpec, TrainConfig, dict]:
    spec, config = parse_args(["--data", dataset, "--hidden", "8", "--batch-size", "400", "--seed", "2", "--log-every",
                               "5", "--standardize", "none", "--checkpoint-dir", str(tmp_path / "ckpt"), *args])
    return spec, config, train(spec, config).summary


def final(config: TrainConfig, step: int) -> tuple[np.ndarray, dict]:
    arrays, manifest = checkpoint.load(config.checkpoint_dir, step)
    return arrays["params"], manifest


def test_epochs_set_the_steps(ray_local, dataset, tmp_path):
    spec, config, summary = run(dataset, tmp_path, "--epochs", "2.5", "--schedule", "constant", "--optimizer", "sgd",
                          "--lr", "0.1")
    per_epoch = 1800 // 200  # 2000 rows a shard, 1800 trained, 200 of each batch
    assert summary["steps"] == math.ceil(2.5 * per_epoch) == 23 and summary["epochs"] == pytest.approx(23 / 9, abs=1e-4)
    params, manifest = final(config, 23)
    assert manifest["data_order"]["steps_per_epoch"] == per_epoch
    np.testing.assert_allclose(params, single_process_params(spec, config, SHARDS, steps=23), rtol=1e-4, atol=1e-5)


def test_linear_schedule_weight_decay_and_another_activation(ray_local, dataset, tmp_path):
    spec, config, summary = run(dataset, tmp_path, "--steps", "12", "--schedule", "linear", "--warmup-steps", "5",
                          "--optimizer", "adamw", "--weight-decay", "0.3", "--activation", "relu")
    params, manifest = final(config, 12)
    assert manifest["model"]["args"]["activation"] == "relu" and manifest["config"]["weight_decay"] == 0.3
    np.testing.assert_allclose(params, single_process_params(spec, config, SHARDS), rtol=1e-3, atol=5e-4)
    without = single_process_params(spec, TrainConfig.from_dict(config.to_dict() | {"weight_decay": 0.0}), SHARDS)
    assert np.abs(without - params).max() > 1e-3  # the decay mattered


def test_non_crossing_features_and_target(ray_local, dataset, tmp_path):
    spec, config, summary = run(dataset, tmp_path, "--steps", "10", "--non-crossing", "--features", "f3,f0,f1", "--target",
                          "f5", "--quantiles", "0.1,0.3,0.5,0.7,0.9")
    params, manifest = final(config, 10)
    assert manifest["dataset"]["features"] == ["f3", "f0", "f1"] and manifest["dataset"]["target"] == "f5"
    assert manifest["model"]["shapes"] == [[3, 8], [8], [8, 5], [5]] and manifest["model"]["args"]["non_crossing"] is True
    assert summary["crossing_rate"] == 0 and "oracle_loss" not in summary  # not the synthetic target
    np.testing.assert_allclose(params, single_process_params(spec, config, SHARDS), rtol=1e-3, atol=5e-4)


def test_nonfinite_rows_dropped(ray_local, dataset, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for k, name in enumerate(["part-00000.parquet", "part-00001.parquet"]):
        table = pq.read_table(f"{dataset}/{name}")
        y = table.column("y").to_numpy().copy()
        y[[3, 700 + k]] = np.nan
        pq.write_table(table.set_column(table.schema.get_field_index("y"), "y", [y]), bad / name, row_group_size=500)
    spec, config, summary = run(str(bad), tmp_path, "--steps", "10", "--nonfinite", "drop")
    params, _ = final(config, 10)
    assert np.isfinite(params).all() and np.isfinite(summary["val_loss"])
    ds = data.discover(str(bad))
    assert [len(data.load_rows(ds, *s, "drop")[0]) for s in SHARDS] == [1998, 1998]
    np.testing.assert_allclose(params, single_process_params(spec, config, SHARDS), rtol=1e-3, atol=5e-4)
    with pytest.raises(data.DataError, match=r"column 'y', row 3: value nan"):
        run(str(bad), tmp_path / "again", "--steps", "10")


def test_keep_checkpoints(ray_local, dataset, tmp_path):
    spec, config, _ = run(dataset, tmp_path, "--steps", "20", "--checkpoint-every", "4", "--keep-checkpoints", "2")
    assert checkpoint.steps(config.checkpoint_dir) == [16, 20]
    spec, config, _ = run(dataset, tmp_path / "all", "--steps", "8", "--checkpoint-every", "2", "--keep-checkpoints", "0")
    assert checkpoint.steps(config.checkpoint_dir) == [2, 4, 6, 8]


def test_batch_that_does_not_fit_the_shards(ray_local, dataset, tmp_path):
    with pytest.raises(TrainingError, match=r"^batch size 4000 does not fit the training rows of the 2 shards: \[1800, 1800\]$"):
        run(dataset, tmp_path, "--steps", "1", "--batch-size", "4000")


def test_more_server_shards_than_parameters(ray_local, dataset, tmp_path):
    with pytest.raises(TrainingError, match=r"^--servers 500 exceeds the model's \d+ parameters: each shard needs at least one$"):
        run(dataset, tmp_path, "--steps", "1", "--hidden", "4", "--servers", "500")
