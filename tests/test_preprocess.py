"""Preprocessing inside the run: statistics merged from uneven shards equal one process's, standardized
features and target, one-hot categories built across shards, columns refused or dropped, all
through a checkpoint. Real Ray, real Parquet, the real S3 test server."""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import ray

import mgdist
from micrograd import Value
from micrograd.losses import mse
from micrograd.nn import MLP
from mgdist.data import DataError, discover, filesystem, load_shard
from mgdist.evaluate import score
from mgdist.predict import predict
from mgdist.preprocess import ColumnStats, Preprocessing, ShardSummary
from mgdist.workloads.classification import Classifier
from mgdist.workloads.quantile import QuantileMLP

CARRIERS = np.array(["AA", "B6", "DL", "UA", "WN"])


class Linear:
    """y ~ X w + b, MSE: standardized or not, the same line in the data's units."""
    standardize_target = True

    def __init__(self, features: int, seed: int = 0):
        self.net = MLP(features, [], 1, "tanh", seed)
        X, y = Value.placeholder("X", (None, features)), Value.placeholder("y", (None,))
        self.prediction = self.net(X)[:, 0]
        self.loss = mse(self.prediction, y)

    def parameters(self):
        return self.net.parameters()


@pytest.fixture(scope="module")
def ray_local(s3):
    with pytest.MonkeyPatch.context() as env:  # Ray's workers inherit the S3 settings Ray starts with
        for name, value in s3.env().items():
            env.setenv(name, value)
        ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False)
    yield
    ray.shutdown()


def flights(rows: int, seed: int) -> pa.Table:
    """Unscaled numbers (a delay in minutes, a distance in miles), an integer code, a carrier
    string; y = 3 delay + 0.01 distance + a carrier's offset + 1000: exactly linear in the one-hot inputs."""
    rng = np.random.default_rng(seed)
    delay = rng.normal(15, 40, rows)
    distance = rng.uniform(100, 2500, rows)
    carrier = CARRIERS[rng.integers(0, len(CARRIERS), rows)]
    offset = {c: 50.0 * k for k, c in enumerate(CARRIERS)}
    y = 3 * delay + 0.01 * distance + np.array([offset[c] for c in carrier]) + 1000
    return pa.table({"delay": delay, "distance": distance, "constant": np.full(rows, 7.0),
                     "origin": rng.integers(1, 4, rows).astype(np.int64), "carrier": carrier, "y": y})


def write_uneven(root, table: pa.Table, sizes) -> str:
    """Files of row groups of these sizes (uneven shards)."""
    root.mkdir(parents=True, exist_ok=True)
    start = 0
    for i, size in enumerate(sizes):
        pq.write_table(table.slice(start, size), root / f"part-{i:02d}.parquet", row_group_size=max(1, size // 2))
        start += size
    return str(root)


def test_chan_merge_of_uneven_parts_equals_one_pass():
    rng = np.random.default_rng(0)
    X = rng.normal(1e4, 3.0, (1001, 3)) * [1, 1e-3, 1e3]  # large means, small spreads: the naive sum of squares fails
    parts = np.split(X, [1, 7, 500, 501])  # a part of one row, an empty one, uneven ones
    merged = ColumnStats.of(parts[0])
    for part in parts[1:]:
        merged = merged.merge(ColumnStats.of(part))
    assert merged.count == 1001
    np.testing.assert_allclose(merged.mean, X.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(merged.std, X.std(axis=0), rtol=1e-9)


def test_the_runs_statistics_equal_one_process_over_uneven_shards(ray_local, tmp_path):
    """The workers' merged summaries give the mean and std of every training row, in float64."""
    table = flights(3000, seed=1)
    data = write_uneven(tmp_path / "d", table, [200, 2100, 700])  # shards of very different sizes
    result = mgdist.train(Linear, data, workers=3, cpus_per_worker=0.5, batch_size=300, steps=2, log_every=1000,
                          features="delay,distance,constant", categorical="carrier")
    prep = result.trained.prep
    X = np.column_stack([table.column(n).to_numpy().astype(np.float32).astype(np.float64)
                         for n in ("delay", "distance", "constant")])
    np.testing.assert_allclose(prep.mean, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(prep.scale[:2], X.std(axis=0)[:2], rtol=1e-10)
    assert prep.scale[2] == 1.0  # constant: centred, never divided by 0
    y = table.column("y").to_numpy().astype(np.float32).astype(np.float64)
    assert prep.target_mean == pytest.approx(y.mean(), rel=1e-12)
    assert prep.target_scale == pytest.approx(y.std(), rel=1e-10)
    assert prep.categories == (tuple(CARRIERS),)  # every shard's values, merged and sorted
    assert prep.inputs == 3 + len(CARRIERS)


def test_predictions_in_the_targets_units_and_categories_through_a_checkpoint(ray_local, tmp_path, s3_env):
    """Trained on S3 data: the model recovers y in its own units (thousands), standardized inside;
    mgdist.load of the S3 checkpoint predicts the same, and an unseen carrier gets all-zero inputs."""
    table = flights(4000, seed=2)
    data = f"s3://{s3_env.bucket}/prep/data"
    fs, root = filesystem(data)  # the AWS_* settings of s3_env
    for i in range(2):
        with fs.open(f"{root}/part-{i}.parquet", "wb") as f:
            pq.write_table(table.slice(2000 * i, 2000), f, row_group_size=500)
    ckpt = f"s3://{s3_env.bucket}/prep/ckpt"
    result = mgdist.train(Linear, data, workers=2, batch_size=512, epochs=60, lr=0.05, log_every=10000,
                          features="delay,distance", categorical="carrier", checkpoint_dir=ckpt, val_fraction=0.1)
    rows = {"delay": np.array([0.0, 40.0, 40.0]), "distance": np.array([1000.0, 1000.0, 1000.0]),
            "carrier": np.array(["AA", "DL", "ZZ"])}
    pred = result.predict(rows)
    expected = 3 * rows["delay"] + 10 + 1000 + np.array([0.0, 100.0, np.nan])
    np.testing.assert_allclose(pred[:2], expected[:2], rtol=2e-3)  # in y's units: ~1010 and ~1230
    loaded = mgdist.load(ckpt)
    assert loaded.prep == result.trained.prep  # statistics and vocabulary round-trip exactly
    np.testing.assert_array_equal(loaded.predict(rows), pred)
    # unseen "ZZ": its block of one-hot inputs is all zero, which is what the model predicts for it
    inputs = loaded.prep.inputs_of(np.array([[40.0, 1000.0]], np.float32), [np.array(["ZZ"])])
    np.testing.assert_array_equal(inputs[0, 2:], np.zeros(len(CARRIERS)))
    assert inputs[0, :2] == pytest.approx([(40 - loaded.prep.mean[0]) / loaded.prep.scale[0],
                                           (1000 - loaded.prep.mean[1]) / loaded.prep.scale[1]], rel=1e-5)


def test_standardize_none_and_features_leave_the_target_alone(ray_local, tmp_path):
    data = write_uneven(tmp_path / "d", flights(1200, seed=3), [600, 600])
    common = dict(workers=2, batch_size=200, steps=1, log_every=1000, features="delay,distance")
    none = mgdist.train(Linear, data, standardize="none", **common).trained.prep
    assert (none.mean, none.scale, none.target_mean, none.target_scale) == ((), (), 0.0, 1.0)
    features = mgdist.train(Linear, data, standardize="features", **common).trained.prep
    assert len(features.mean) == 2 and (features.target_mean, features.target_scale) == (0.0, 1.0)
    with pytest.raises(mgdist.TrainingError, match="standardize must be one of none, features, all, got 'y'"):
        mgdist.train(Linear, data, standardize="y", **common)


def test_class_labels_are_never_standardized(ray_local, tmp_path):
    """A model without `standardize_target` (the classifier) keeps its target; its features are standardized."""
    table = flights(1200, seed=4)
    table = table.append_column("label", pc.cast(pc.greater(table.column("y"), 1100), pa.float64()))
    data = write_uneven(tmp_path / "d", table, [600, 600])
    prep = mgdist.train(Classifier, data, target="label", features="delay,distance", workers=2, batch_size=200,
                        steps=1, log_every=1000).trained.prep
    assert (prep.target_mean, prep.target_scale) == (0.0, 1.0) and len(prep.mean) == 2


def test_integer_categories_and_unseen_codes():
    summary = ShardSummary.of(np.zeros((3, 0)), np.zeros(3), [np.array([30, 10, 30])]).merge(
        ShardSummary.of(np.zeros((2, 0)), np.zeros(2), [np.array([20, 10])]))
    prep = Preprocessing.from_summary(summary, [], ["origin"], True, True)
    assert prep.categories == ((10, 20, 30),)
    inputs = prep.inputs_of(np.zeros((3, 0), np.float32), [np.array([20, 99, 30])])
    np.testing.assert_array_equal(inputs, [[0, 1, 0], [0, 0, 0], [0, 0, 1]])  # 99 unseen: all zero
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    strings = Preprocessing((), (), (), ("carrier",), (("AA", "DL"),))
    given = np.array(["DL", "XX", "AA"], object)  # as pandas and pyarrow give strings
    np.testing.assert_array_equal(strings.inputs_of(np.zeros((3, 0), np.float32), [given]), [[0, 1], [0, 0], [1, 0]])
    with pytest.raises(DataError, match="categorical column 'carrier' holds int64 values, its vocabulary <U2"):
        strings.inputs_of(np.zeros((1, 0), np.float32), [np.array([3])])


def test_an_id_beyond_float32_is_refused_with_its_file_column_and_value(tmp_path):
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"id": np.array([1, 16777217], np.int64), "x": [0.5, 1.5], "y": [1.0, 2.0]}), path)
    assert discover(str(path)).features == ("x",)  # an integer column is no feature unless named
    ds = discover(str(path), "id,x")
    with pytest.raises(DataError, match=rf"^{path} row group 0, column 'id': integer 16777217 cannot be "
                                        r"represented exactly in float32"):
        load_shard(ds, [0])
    X, _, categories = load_shard(discover(str(path), "x", categorical="id"), [0])  # as a category it is exact
    np.testing.assert_array_equal(categories[0], [1, 16777217])


def test_null_features_and_categories_drop_or_name_their_row(tmp_path):
    path = tmp_path / "gaps.parquet"
    table = pa.table({"x": pa.array([1.0, None, 3.0, 4.0]), "c": pa.array(["a", "b", None, "a"]).dictionary_encode(),
                      "n": pa.array([1, 2, 3, None], pa.int32()), "y": [1.0, 2.0, 3.0, 4.0]})
    pq.write_table(table, path)
    ds = discover(str(path), "x,n", categorical="c")
    with pytest.raises(DataError, match=rf"^{path} row group 0, column 'x', row 1: value null"):
        load_shard(ds, [0])
    with pytest.raises(DataError, match=rf"^{path} row group 0, column 'c', row 2: value null"):
        load_shard(discover(str(path), "n", categorical="c"), [0], "error")
    X, y, (c,) = load_shard(ds, [0], nonfinite="drop")
    np.testing.assert_array_equal(X, [[1.0, 1.0]])  # rows 1 (x), 2 (c) and 3 (n) hold nulls
    assert y.tolist() == [1.0] and c.tolist() == ["a"]


def test_bad_categorical_columns_are_named(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"x": [1.0], "s": ["a"], "y": [1.0]}), path)
    with pytest.raises(DataError, match="no categorical column 'zz'"):
        discover(str(path), categorical="zz")
    with pytest.raises(DataError, match="categorical column 'x' is double, not an integer or string column"):
        discover(str(path), categorical="x")
    with pytest.raises(DataError, match="column 's' is string, not a number \\(name it with --categorical"):
        discover(str(path), "x,s")


def test_batch_prediction_applies_the_checkpoints_preprocessing(ray_local, tmp_path):
    """`mgdist predict` on Ray gives Trained.predict's values in y's units; an unseen carrier is
    predicted with all-zero category inputs, a null one gets NaN."""
    data = write_uneven(tmp_path / "d", flights(1200, seed=5), [600, 600])
    ckpt = str(tmp_path / "ckpt")
    trained = mgdist.train(Linear, data, workers=2, batch_size=200, steps=20, log_every=1000,
                           features="delay,distance", categorical="carrier", checkpoint_dir=ckpt).trained
    new = pa.table({"delay": [10.0, 20.0, 30.0], "distance": [500.0, 600.0, 700.0],
                    "carrier": pa.array(["DL", "ZZ", None]).dictionary_encode(), "y": [0.0, 0.0, 0.0]})
    (tmp_path / "new").mkdir()
    pq.write_table(new, tmp_path / "new/part-0.parquet")
    files = predict(ckpt, str(tmp_path / "new"), str(tmp_path / "out"), progress=False)
    out = pq.read_table(files).column("prediction").to_numpy()
    expected = trained.predict({"delay": np.array([10.0, 20.0]), "distance": np.array([500.0, 600.0]),
                                "carrier": np.array(["DL", "ZZ"])})
    np.testing.assert_array_equal(out[:2], expected)
    assert np.isnan(out[2]) and out[0] > 500  # in y's units (about 1000 + 30 + 5 + 100)


def test_evaluate_scores_in_the_targets_units(ray_local, tmp_path):
    """score() of a quantile model trained on a standardized target: its pinball loss is that of
    Trained.predict on the raw rows, in y's units (thousands), and its loss the standardized one."""
    table = flights(2000, seed=6)
    data = write_uneven(tmp_path / "d", table, [1000, 1000])
    trained = mgdist.train(QuantileMLP, data, workers=2, batch_size=400, steps=30, log_every=1000,
                           features="delay,distance", categorical="carrier", model_args={"hidden": [8]}).trained
    figures, _ = score(trained, discover(data, "delay,distance", categorical="carrier"))
    pred = trained.predict(table).astype(np.float64)
    y = table.column("y").to_numpy().astype(np.float32).astype(np.float64)[:, None]
    q = np.array([0.1, 0.5, 0.9])
    pinball = np.maximum(q * (y - pred), (q - 1) * (y - pred)).mean()
    assert figures["pinball"] == pytest.approx(pinball, rel=1e-5)
    assert figures["loss"] == pytest.approx(pinball / trained.prep.target_scale, rel=1e-4)  # pinball scales with y
