import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st

from mgdist.data import DataError, Storage, discover, load_rows, load_shard, plan_rows, plan_shards
from mgdist.workloads import synthetic
from mgdist.workloads.synthetic import sample, write

ROOT = Path(__file__).resolve().parents[1]


def write_table(path: Path, row_group_size: int | None = None, **columns) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    """3 files of float32 f0..f5 and y: 5,000 rows in row groups of 500 (3, 3 and 4 groups)."""
    write(str(tmp_path / "d"), 5000, 6, files=3, row_group_rows=500, seed=1, progress=False)
    return tmp_path / "d"


# Discovery

def test_discover_directory_file_glob_and_file_uri(dataset_dir):
    ds = discover(str(dataset_dir))
    assert [Path(f.path).name for f in ds.files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [f.row_groups for f in ds.files] == [(500,) * 3, (500,) * 3, (500,) * 4]
    assert ds.rows == 5000 and ds.group_rows == [500] * 10
    assert ds.features == ("f0", "f1", "f2", "f3", "f4", "f5") and ds.target == "y"
    assert all(f.size == Path(f.path).stat().st_size for f in ds.files)
    assert discover(f"file://{dataset_dir}").files == ds.files
    assert discover(str(dataset_dir / "part-0000[12].parquet")).files == ds.files[1:]
    assert discover(str(dataset_dir / "part-00001.parquet")).files == ds.files[1:2]


def test_synthetic_data_is_recognised(dataset_dir, tmp_path):
    assert synthetic.known(discover(str(dataset_dir))) == synthetic.Known("y", ())  # so its true quantiles can be used
    assert synthetic.known(discover(str(dataset_dir), "f1,f2,f3,f4")) is None
    path = write_table(tmp_path / "a.parquet", f0=[1.0], f1=[1.0], f2=[1.0], f3=[1.0], y=[1.0])
    assert synthetic.known(discover(str(path))) is None


def test_feature_selection(tmp_path):
    cols = {f"f{j}": np.arange(4, dtype=np.float32) + j for j in range(12)}
    path = write_table(tmp_path / "a.parquet", **cols, name=["a", "b", "c", "d"], target=np.arange(4))
    assert discover(str(path), target="target").features == tuple(f"f{j}" for j in range(12))  # no "name"
    assert discover(str(path), "f1*", target="target").features == ("f1", "f10", "f11")
    assert discover(str(path), "f11, f2", target="target").features == ("f11", "f2")
    assert discover(str(path), ["f3"], target="f4").features == ("f3",)


def test_dataset_is_small_picklable_and_fingerprinted(dataset_dir, tmp_path):
    ds = discover(str(dataset_dir))
    assert pickle.loads(pickle.dumps(ds)) == ds and len(pickle.dumps(ds)) < 2000
    fingerprint = json.loads(json.dumps(ds.fingerprint()))
    assert fingerprint == ds.fingerprint() and fingerprint["files"][1]["row_groups"] == [500] * 3
    write(str(tmp_path / "copy"), 5000, 6, files=3, row_group_rows=500, seed=1, progress=False)
    assert discover(str(tmp_path / "copy")).fingerprint() == ds.fingerprint()  # same data elsewhere
    write(str(tmp_path / "other"), 5000, 6, files=3, row_group_rows=250, seed=1, progress=False)
    assert discover(str(tmp_path / "other")).fingerprint() != ds.fingerprint()
    assert discover(str(dataset_dir), "f0,f1").fingerprint() != ds.fingerprint()


# Loading

def test_shards_put_every_row_back_in_order(dataset_dir):
    ds = discover(str(dataset_dir))
    shards = [load_shard(ds, groups) for groups in plan_shards(ds.group_rows, 3)]
    for X, y, _ in shards:
        assert X.dtype == y.dtype == np.float32 and X.flags.c_contiguous and y.flags.c_contiguous
        assert X.shape == (len(y), 6)
    X0, y0 = sample(5000, 6, seed=1)
    assert np.array_equal(np.concatenate([X for X, _, _ in shards]), X0)
    assert np.array_equal(np.concatenate([y for _, y, _ in shards]), y0)
    X, y, _ = load_shard(ds, [6, 2])  # any groups, in the order given
    assert np.array_equal(y, np.concatenate([y0[3000:3500], y0[1000:1500]]))


def test_row_shards_cut_inside_row_groups_and_across_files(dataset_dir):
    ds = discover(str(dataset_dir))
    X0, y0 = sample(5000, 6, seed=1)
    for start, stop in [(0, 5000), (1234, 1235), (250, 3999), (1499, 1501), (4500, 5000)]:
        X, y, _ = load_rows(ds, start, stop)
        assert np.array_equal(X, X0[start:stop]) and np.array_equal(y, y0[start:stop]) and X.flags.c_contiguous
    shards = [load_rows(ds, *span) for span in plan_rows(ds.rows, 3)]
    assert [len(y) for _, y, _ in shards] == [1667, 1666, 1667]
    assert np.array_equal(np.concatenate([y for _, y, _ in shards]), y0)
    for start, stop in [(0, 0), (-1, 5), (10, 5), (4999, 5001)]:
        with pytest.raises(DataError, match=rf"a shard needs rows within \[0, 5000\), got \[{start}, {stop}\)$"):
            load_rows(ds, start, stop)


def test_a_cut_row_group_names_its_own_row_and_drops_only_the_shards_rows(tmp_path):
    y = np.array([0, 1, 2, 3, np.nan, 5, 6, np.inf], np.float32)
    path = write_table(tmp_path / "a.parquet", x=np.arange(8, dtype=np.float32), y=y, row_group_size=4)
    ds = discover(str(path))
    with pytest.raises(DataError, match=rf"^{path} row group 1, column 'y', row 0: value nan \("):
        load_rows(ds, 3, 6)
    assert load_rows(ds, 1, 4)[1].tolist() == [1, 2, 3]  # the NaN after the cut is not read into the shard
    X, y, _ = load_rows(ds, 3, 8, nonfinite="drop")
    assert X[:, 0].tolist() == y.tolist() == [3, 5, 6]
    with pytest.raises(DataError, match=r"no finite rows in rows \[4, 5\)$"):
        load_rows(ds, 4, 5, nonfinite="drop")


def test_columns_of_any_numeric_type_become_float32(tmp_path):
    values = np.array([0, 1, 2, 200], dtype=np.uint8)
    path = write_table(tmp_path / "a.parquet", i8=values.astype(np.int8), u8=values, i64=values.astype(np.int64) * 10**4,
                       f16=values.astype(np.float16), f64=values / 3, y=values.astype(np.int32))
    assert discover(str(path)).features == ("f16", "f64")  # integer columns only when named
    X, y, _ = load_shard(discover(str(path), "i8,u8,i64,f16,f64"), [0])
    expected = np.column_stack([values.astype(np.int8), values, values * 1e4, values, values / 3]).astype(np.float32)
    assert np.array_equal(X, expected) and np.array_equal(y, values.astype(np.float32))


def test_load_reads_only_the_shards_files_and_columns(dataset_dir, tmp_path):
    path = write_table(tmp_path / "a" / "a.parquet", x=np.arange(6.0), y=np.arange(6.0),
                       unused=[1.0, np.nan, 3, 4, 5, 6], row_group_size=3)
    x, y, _ = load_shard(discover(str(path.parent), "x"), [1])  # "unused" holds a NaN, never read
    assert x.ravel().tolist() == y.tolist() == [3, 4, 5]
    ds = discover(str(dataset_dir))
    Path(ds.files[2].path).write_bytes(b"garbage " * 10)
    assert len(load_shard(ds, [0, 1, 2, 3, 4, 5])[1]) == 3000
    with pytest.raises(DataError, match=f"{ds.files[2].path}: .*magic bytes"):
        load_shard(ds, [9])


def test_nonfinite_values_are_errors_or_dropped(tmp_path):
    x = np.arange(8, dtype=np.float32)
    f1 = pa.array([0, 1, 2, 3, 4, None, 6, 7], pa.float32())
    y = np.array([0, 1, 2, np.inf, 4, 5, 6, 7], np.float32)
    path = write_table(tmp_path / "a.parquet", f0=x, f1=f1, y=y, row_group_size=4)
    ds = discover(str(path))
    with pytest.raises(DataError, match=rf"^{path} row group 0, column 'y', row 3: value inf \("):
        load_shard(ds, [0])
    with pytest.raises(DataError, match=rf"^{path} row group 1, column 'f1', row 1: value null"):
        load_shard(ds, [1])
    X, y, _ = load_shard(ds, [0, 1], nonfinite="drop")
    assert X[:, 0].tolist() == y.tolist() == [0, 1, 2, 4, 6, 7] and X.flags.c_contiguous
    with pytest.raises(ValueError, match="nonfinite must be"):
        load_shard(ds, [0], nonfinite="zero")


def test_all_rows_dropped_or_no_groups_is_an_error(tmp_path):
    path = write_table(tmp_path / "a.parquet", x=[1.0, np.nan], y=[np.nan, 2.0])
    ds = discover(str(path))
    with pytest.raises(DataError, match="no finite rows"):
        load_shard(ds, [0], nonfinite="drop")
    for groups in ([], [1], [-1]):
        with pytest.raises(DataError, match=r"row groups in \[0, 1\)"):
            load_shard(ds, groups)


# Validation at discovery

def test_bad_paths_and_empty_datasets(tmp_path):
    with pytest.raises(DataError, match=f"^{tmp_path}/nowhere: not found"):
        discover(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no parquet here")
    with pytest.raises(DataError, match="empty: no Parquet files$"):
        discover(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="no Parquet files$"):
        discover(str(tmp_path / "*.parquet"))
    path = write_table(tmp_path / "zero.parquet", x=np.zeros(0), y=np.zeros(0))
    with pytest.raises(DataError, match="has no rows"):
        discover(str(path))
    (tmp_path / "text" / "a.parquet").parent.mkdir()
    (tmp_path / "text" / "a.parquet").write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match=f"^{tmp_path}/text/a.parquet: .*not a parquet file"):
        discover(str(tmp_path / "text"))


def test_missing_and_non_numeric_columns(tmp_path):
    path = write_table(tmp_path / "a.parquet", x=[1.0], name=["a"], flag=[True], y=[2.0])
    with pytest.raises(DataError, match=f"^{path}: no column 'z' \\(columns: x, name, flag, y\\)"):
        discover(str(path), ["x", "z"])
    with pytest.raises(DataError, match="no column 'label'"):
        discover(str(path), target="label")
    with pytest.raises(DataError, match=f"^{path}: column 'name' is string, not a number"):
        discover(str(path), "x,name")
    with pytest.raises(DataError, match="column 'flag' is bool, not a number"):
        discover(str(path), target="flag")
    with pytest.raises(DataError, match="no column matches 'g\\*'"):
        discover(str(path), "g*")
    with pytest.raises(DataError, match="target 'y' is also listed as a feature"):
        discover(str(path), ["x", "y"])
    only_target = write_table(tmp_path / "b.parquet", name=["a"], y=[2.0])
    with pytest.raises(DataError, match="no floating-point feature columns besides 'y'"):
        discover(str(only_target))


def test_schema_must_match_between_files(tmp_path):
    write_table(tmp_path / "a.parquet", x=np.ones(2, np.float32), y=np.ones(2))
    bad = write_table(tmp_path / "b.parquet", x=np.ones(2, np.float64), y=np.ones(2))
    with pytest.raises(DataError, match=f"^{bad}: columns differ from {tmp_path}/a.parquet: x double, x float$"):
        discover(str(tmp_path))
    write_table(tmp_path / "b.parquet", y=np.ones(2), x=np.ones(2, np.float32))  # order does not matter
    assert discover(str(tmp_path)).rows == 4
    write_table(tmp_path / "c.parquet", x=np.ones(2, np.float32), y=np.ones(2), extra=np.ones(2))
    with pytest.raises(DataError, match="c.parquet: columns differ from .*: extra double$"):
        discover(str(tmp_path))


# Shard plans

@st.composite
def group_plans(draw):
    group_rows = draw(st.lists(st.integers(0, 1000), min_size=1, max_size=60))
    k = draw(st.integers(1, 8))
    weights = draw(st.none() | st.lists(st.floats(0.1, 10), min_size=k, max_size=k))
    return group_rows, k, weights


@settings(max_examples=300, deadline=None)
@given(group_plans())
def test_plan_covers_every_row_once_and_balances(plan):
    group_rows, k, weights = plan
    nonempty = [i for i, r in enumerate(group_rows) if r > 0]
    if len(nonempty) < k:
        with pytest.raises(DataError, match=f"{len(nonempty)} non-empty row groups cannot be split among {k}"):
            plan_shards(group_rows, k, weights)
        return
    shards = plan_shards(group_rows, k, weights)
    assert plan_shards(list(group_rows), k, weights) == shards  # deterministic
    assert len(shards) == k and all(shards)
    assert [g for shard in shards for g in shard] == nonempty  # each row in one shard, files read in order
    w = np.ones(k) if weights is None else np.array(weights)
    ideal = sum(group_rows) * w / w.sum()
    rows = np.array([sum(group_rows[g] for g in shard) for shard in shards])
    biggest = max(group_rows)
    assert np.all(rows <= ideal + biggest)
    if ideal.min() > biggest:
        assert np.all(rows >= ideal - biggest)


def test_plan_examples():
    assert plan_shards([10] * 12, 4) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    shards = plan_shards([10] * 100, 3, weights=[1, 2, 1])
    assert [10 * len(s) for s in shards] == [250, 500, 250]
    assert plan_shards([5, 0, 5], 2) == [[0], [2]]
    with pytest.raises(DataError, match="positive finite weights"):
        plan_shards([5, 5], 2, weights=[1, 0])
    with pytest.raises(DataError, match="positive finite weights"):
        plan_shards([5, 5], 2, weights=[1])


@settings(max_examples=300, deadline=None)
@given(rows=st.integers(0, 100_000), k=st.integers(1, 64), weights=st.none() | st.lists(st.floats(0.1, 10), min_size=64))
def test_row_plan_covers_every_row_once_within_a_row_of_its_share(rows, k, weights):
    weights = None if weights is None else weights[:k]
    if rows < k:
        with pytest.raises(DataError, match=f"^{rows} rows cannot be split among {k} workers: use fewer workers$"):
            plan_rows(rows, k, weights)
        return
    spans = plan_rows(rows, k, weights)
    assert spans == plan_rows(rows, k, None if weights is None else list(weights))  # deterministic
    assert spans[0][0] == 0 and spans[-1][1] == rows and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    sizes = np.array([stop - start for start, stop in spans])
    assert len(spans) == k and sizes.min() >= 1
    w = np.ones(k) if weights is None else np.array(weights)
    ideal = rows * w / w.sum()
    if ideal.min() >= 2:  # no shard was raised to its one row
        assert np.all(np.abs(sizes - ideal) < 1 + 1e-9)


# S3

def make_data(out: str, *options: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "jobs/make_data.py"), "--out", out, "--rows", "6000", "--features", "8",
           "--files", "2", "--row-group-rows", "1000", "--seed", "5", *options]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_s3_shards_equal_the_local_copy_bit_for_bit(s3_env, tmp_path, monkeypatch):
    uri = f"s3://{s3_env.bucket}/same"
    assert make_data(str(tmp_path / "local")).returncode == 0
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")  # the endpoint from the options instead
    storage = Storage(s3_endpoint=s3_env.endpoint)
    assert make_data(uri, "--s3-endpoint", s3_env.endpoint).returncode == 0
    local, remote = discover(str(tmp_path / "local")), discover(uri, storage=storage)
    assert [f.path for f in remote.files] == [f"{uri}/part-00000.parquet", f"{uri}/part-00001.parquet"]
    assert remote.fingerprint() == local.fingerprint()
    remote = pickle.loads(pickle.dumps(remote))  # as shipped to a worker
    for groups in plan_shards(local.group_rows, 4):
        X, y, _ = load_shard(local, groups)
        X3, y3, _ = load_shard(remote, groups)
        assert X.tobytes() == X3.tobytes() and y.tobytes() == y3.tobytes()


def test_s3_wrong_secret_missing_bucket_and_anonymous_access(s3_env, monkeypatch):
    uri = f"s3://{s3_env.bucket}/errors"
    assert make_data(uri).returncode == 0
    ds = discover(uri)
    done = make_data("s3://no-such-bucket/x")
    assert done.returncode == 2 and done.stderr == "error: s3://no-such-bucket/x: not found: The specified bucket does not exist\n"
    with pytest.raises(DataError, match="^s3://no-such-bucket/x: not found: The specified bucket does not exist$"):
        discover("s3://no-such-bucket/x")
    with pytest.raises(DataError, match=f"^{uri}/nothing: not found"):
        discover(f"{uri}/nothing")
    with pytest.raises(DataError, match=f"^{uri}: access denied: Access Denied"):
        discover(uri, storage=Storage(anon=True))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(DataError, match=f"^{uri}: access denied: The request signature we calculated does not match"):
        discover(uri)
    with pytest.raises(DataError, match=f"^{ds.files[0].path}: access denied"):
        load_shard(ds, [0])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    with pytest.raises(DataError, match=f"^{uri}: Unable to locate credentials$"):
        discover(uri)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_walks_and_globs_skip_what_is_not_the_datasets_parquet(where, tmp_path, request):
    """Spark's _SUCCESS and _temporary/, hidden files, other files: left out, as pyarrow datasets do."""
    import fsspec
    if where == "local":
        fs, root = fsspec.filesystem("file", auto_mkdir=True), str(tmp_path / "out")
        prefix = ""
    else:
        s3 = request.getfixturevalue("s3_env")
        from mgdist.data import filesystem
        fs, root = filesystem(f"s3://{s3.bucket}/listing-{tmp_path.name}")
        prefix = "s3://"
    table = pa.table({"f0": np.arange(4.0), "y": np.arange(4.0)})
    dataset = ["part-0.parquet", "sub/part-1.parquet"]
    others = ["_SUCCESS", "_temporary/0/part-0.parquet", ".part-2.parquet", "sub/_part-3.parquet",
              "sub/.hidden/part-4.parquet", "notes.txt", "part-5.parquet.crc"]
    for name in dataset + others:
        with fs.open(f"{root}/{name}", "wb") as f:
            pq.write_table(table, f)
    found = lambda uri: [f.path.removeprefix(f"{prefix}{root}/") for f in discover(uri, features="f0").files]  # noqa: E731
    assert found(f"{prefix}{root}") == dataset
    assert found(f"{prefix}{root}/*.parquet") == ["part-0.parquet"]
    assert found(f"{prefix}{root}/sub/*.parquet") == ["sub/part-1.parquet"]
    assert found(f"{prefix}{root}/**/*.parquet") == dataset
