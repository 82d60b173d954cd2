"""Batch prediction on a real local Ray: output equals one process's prediction, locally and on S3.

Equal within float32 rounding, not bit for bit: a task predicts a row group at a time and the
reference all rows at once, and BLAS may round a GEMM of 300 rows differently from one of 1,500
(seen on AMD EPYC: 1 ulp in one value of 4,500)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import s3fs

from mgdist import predict as predict_module
from mgdist.checkpoint import CheckpointError
from mgdist.data import DataError, discover, load_shard
from mgdist.evaluate import dataset_for, load
from mgdist.predict import predict
from mgdist.workloads.synthetic import sample
from test_evaluate import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_local(s3):
    with pytest.MonkeyPatch.context() as env:  # Ray's workers inherit the S3 settings Ray starts with
        for name, value in s3.env().items():
            env.setenv(name, value)
        ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False)  # not a Ray of other tests
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def keyed_data(tmp_path_factory) -> Path:
    """Two files with an id, a name, 6 features and y: 1,000 rows in row groups of 300, 300, 300, 100; then 500."""
    root = tmp_path_factory.mktemp("keyed")
    X, y = sample(1500, 6, seed=7)
    for name, rows, group in [("a.parquet", slice(0, 1000), 300), ("b.parquet", slice(1000, 1500), 500)]:
        ids = np.arange(1500)[rows]
        table = pa.table({"id": ids, "name": [f"row{i}" for i in ids], **{f"f{j}": X[rows, j] for j in range(6)},
                          "y": y[rows]})
        pq.write_table(table, root / name, row_group_size=group)
    return root


@pytest.fixture(scope="module")
def ckpt(keyed_data, tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(directory, discover(str(keyed_data), "f*"), hidden=(16, 8), levels=(0.05, 0.5, 0.95))
    return str(directory)


def single_process(ckpt: str, data: str) -> tuple[pa.Table, np.ndarray]:
    """The input table and one process's prediction of all of it."""
    model, manifest = load(ckpt)
    ds = dataset_for(manifest, data)
    X, _, _ = load_shard(ds, range(len(ds.group_rows)))
    return pq.read_table(data), model.predict(X)


def assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_array_max_ulp(got, expected, maxulp=8)
    assert got.dtype == expected.dtype == np.float32


def quantiles(table: pa.Table) -> np.ndarray:
    return np.column_stack([table.column(n).to_numpy() for n in ("q0.05", "q0.5", "q0.95")])


def test_local_output_equals_one_process(ray_local, keyed_data, ckpt, tmp_path):
    files = predict(ckpt, str(keyed_data), str(tmp_path / "out"), progress=False)
    assert [Path(f).name for f in files] == ["part-00000-000000.parquet", "part-00000-000002.parquet",
                                             "part-00001-000000.parquet"]  # 2 tasks: a's groups 0-1; a's 2-3 and b's 0
    assert [pq.ParquetFile(f).metadata.num_row_groups for f in files] == [2, 2, 1]  # one per input row group
    out = pa.concat_tables([pq.read_table(f) for f in files])
    table, expected = single_process(ckpt, str(keyed_data))
    assert out.schema.names == ["id", "name", "y", "q0.05", "q0.5", "q0.95"]  # every column but the features
    assert out.select(["id", "name", "y"]).equals(table.select(["id", "name", "y"]))
    assert all(out.schema.field(n).type == pa.float32() for n in ("q0.05", "q0.5", "q0.95"))
    assert_same(quantiles(out), expected)
    assert out.schema.metadata[b"mgdist.checkpoint"] == ckpt.encode()
    assert pq.read_schema(files[2]).metadata[b"mgdist.source"] == str(keyed_data / "b.parquet").encode()


def test_s3_output_from_the_job_equals_one_process(ray_local, s3_env, keyed_data, ckpt, tmp_path, monkeypatch):
    out = f"s3://{s3_env.bucket}/predictions"
    monkeypatch.setattr(predict_module, "TASK_ROWS", 1)  # as many tasks as row groups
    files = predict(ckpt, str(keyed_data), out, keep=["id"], progress=False)
    assert len(files) == 5 and all(f.startswith(f"{out}/part-") for f in files)
    fs = s3fs.S3FileSystem()
    remote = pa.concat_tables([pq.read_table(f.removeprefix("s3://"), filesystem=fs) for f in files])
    table, expected = single_process(ckpt, str(keyed_data))
    assert remote.column_names == ["id", "q0.05", "q0.5", "q0.95"] and remote["id"].equals(table["id"])
    assert_same(quantiles(remote), expected)

    job = [sys.executable, str(ROOT / "jobs/predict.py"), "--checkpoint", ckpt, "--data", str(keyed_data),
           "--keep", "", "--address", ray.get_runtime_context().gcs_address]
    done = subprocess.run([*job, "--out", f"{out}-job"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"wrote 3 file(s) under {out}-job"
    assert "1.50k/1.50k" in done.stderr  # the progress bar reached every row
    from_job = pq.read_table(f"{s3_env.bucket}/predictions-job", filesystem=fs)  # a directory, in name order
    assert from_job.column_names == ["q0.05", "q0.5", "q0.95"]
    assert_same(quantiles(from_job), expected)
    done = subprocess.run([*job, "--out", out], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr == f"error: {out} already holds files: write to a new place\n"


def test_columns_found_by_name_and_clear_errors(ray_local, keyed_data, ckpt, tmp_path):
    reordered = tmp_path / "reordered.parquet"  # other column order, an extra numeric column
    table = pq.read_table(keyed_data)
    pq.write_table(table.select(["y", "f5", "f4", "f3", "f2", "f1", "f0", "id"]).append_column("extra", table["y"]),
                   reordered)
    files = predict(ckpt, str(reordered), str(tmp_path / "out"), keep=["id"], progress=False)
    assert_same(quantiles(pq.read_table(files[0])), single_process(ckpt, str(keyed_data))[1])

    unlabelled = tmp_path / "unlabelled.parquet"  # new data to predict: no target column
    pq.write_table(table.drop_columns(["y"]), unlabelled)
    files = predict(ckpt, str(unlabelled), str(tmp_path / "out-unlabelled"), progress=False)
    assert_same(quantiles(pq.read_table(files[0])), single_process(ckpt, str(keyed_data))[1])

    fewer = tmp_path / "fewer.parquet"
    pq.write_table(table.drop_columns(["f4", "f5"]), fewer)
    with pytest.raises(CheckpointError, match=r"^the checkpoint's model takes 6 features \(f0, f1, f2, f3, f4, f5\) "
                       rf"but {fewer} has 6 \(id, f0, f1, f2, f3, y\): no numeric column f4, f5$"):
        predict(ckpt, str(fewer), str(tmp_path / "out2"))
    with pytest.raises(DataError, match=r"a.parquet: no column 'key' to keep \(columns: id, name, f0, "):
        predict(ckpt, str(keyed_data), str(tmp_path / "out3"), keep=["key"])
    clash = tmp_path / "clash.parquet"
    pq.write_table(table.append_column("q0.5", table["y"]), clash)
    with pytest.raises(ValueError, match=r"kept columns \['q0.5'\] would clash with the prediction columns"):
        predict(ckpt, str(clash), str(tmp_path / "out4"))
