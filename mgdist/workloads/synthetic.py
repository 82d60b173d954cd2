"""Synthetic data whose conditional distribution is known exactly, for every built-in workload.

Features are i.i.d. standard normal; only x0..x3 matter. Given them, y is normal with
    loc(x)   = sin(2 x0) + 0.5 x1 x2 + 0.5 x3
    scale(x) = 0.5 + sigmoid(2 x1)
so its spread depends on x1 and its quantile at level q is loc(x) + scale(x) Phi^-1(q); its
mean is loc(x) and its noise variance scale(x)^2. Written with class thresholds t1 < t2 < ...,
a column `label` holds y's class (how many thresholds lie below y), whose probabilities given
x are differences of Phi((t - loc) / scale).
Rows come in chunks seeded by (seed, chunk index): row i is the same whatever the number
of rows, files or row groups, and memory stays bounded however large the output.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mgdist.data import Dataset, DataError, Storage, filesystem, reraise

CHUNK_ROWS = 16384
MIN_FEATURES = 4


def _loc_scale(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = X[:, :MIN_FEATURES].astype(np.float64)
    loc = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + 0.5 * x[:, 3]
    scale = 0.5 + 1 / (1 + np.exp(-2 * x[:, 1]))
    return loc, scale


@lru_cache(maxsize=2)  # row groups smaller than a chunk reuse it
def _chunk(index: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, index])
    X = rng.standard_normal((CHUNK_ROWS, features), dtype=np.float32)
    loc, scale = _loc_scale(X)
    y = (loc + scale * rng.standard_normal(CHUNK_ROWS)).astype(np.float32)
    return X, y


def _rows(start: int, stop: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows [start, stop) of the infinite sequence for (features, seed)."""
    if features < MIN_FEATURES:
        raise ValueError(f"need at least {MIN_FEATURES} features, got {features}")
    chunks = [_chunk(c, features, seed) for c in range(start // CHUNK_ROWS, -(-stop // CHUNK_ROWS))]
    offset = start // CHUNK_ROWS * CHUNK_ROWS
    X, y = (np.concatenate([c[i] for c in chunks]) for i in (0, 1))
    return X[start - offset:stop - offset], y[start - offset:stop - offset]  # concatenate copied


def sample(rows: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `rows` rows: X (rows, features) and y (rows,), float32."""
    return _rows(0, rows, features, seed)


def true_quantile(X: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """True conditional quantiles of y given each row of X: (n, len(levels)) float32."""
    loc, scale = _loc_scale(X)
    z = np.array([NormalDist().inv_cdf(q) for q in levels])
    return (loc[:, None] + scale[:, None] * z).astype(np.float32)


def true_mean(X: np.ndarray) -> np.ndarray:
    """E[y | x] for each row of X, float64."""
    return _loc_scale(X)[0]


def class_probabilities(X: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """P(label = k | x) for each row of X and class k = 0..len(thresholds): (n, classes) float64."""
    loc, scale = _loc_scale(X)
    cdf = np.vectorize(NormalDist().cdf)(((np.asarray(thresholds)[None, :] - loc[:, None]) / scale[:, None]))
    edges = np.column_stack([np.zeros(len(X)), cdf, np.ones(len(X))])
    return np.diff(edges, axis=1)


@dataclass(frozen=True)
class Known:
    """A dataset written by write(): its target column, and the class thresholds of its labels."""
    target: str
    thresholds: tuple[float, ...]


def known(ds: Dataset) -> Known | None:
    """What is known of `ds` if write() made it and it is read as written (f0..f3 first), else None."""
    tag = ds.metadata.get("mgdist.synthetic")
    if not tag or ds.features[:MIN_FEATURES] != tuple(f"f{j}" for j in range(MIN_FEATURES)):
        return None
    thresholds = tuple(json.loads(tag).get("thresholds", ())) if tag.startswith("{") else ()
    return Known(ds.target, thresholds) if ds.target == "y" or ds.target == "label" and thresholds else None


def rows_for_size(size: str | int, features: int) -> int:
    """Rows whose float32 features and target take `size` bytes: 600MB, 1.5GiB, 10000..."""
    units = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    match = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", str(size))
    if not match or match[2].upper() not in units:
        raise ValueError(f"cannot read {size!r} as a size such as 600MB or 2GiB")
    return max(1, int(float(match[1]) * units[match[2].upper()]) // (4 * (features + 1)))


def write(out: str, rows: int, features: int, files: int = 1, row_group_rows: int = 65536, seed: int = 0,
          storage: Storage = Storage(), progress: bool = True, thresholds: Sequence[float] = ()) -> list[str]:
    """Write the first `rows` rows as columns f0..f{features-1} and y (and with class `thresholds`,
    label) to `files` Parquet files (part-00000.parquet, ...) under `out`, local or s3://, which
    must hold no files yet."""
    groups = -(-rows // row_group_rows)
    if not 1 <= files <= groups:
        raise ValueError(f"{rows} rows in row groups of {row_group_rows} cannot fill {files} files")
    fs, root = filesystem(out, storage)
    thresholds = [float(t) for t in thresholds]
    if thresholds != sorted(set(thresholds)):
        raise ValueError(f"class thresholds must increase, got {thresholds}")
    names = [f"f{j}" for j in range(features)] + ["y"] + (["label"] if thresholds else [])
    tag = json.dumps({"version": 1, "thresholds": thresholds}) if thresholds else "1"
    schema = pa.schema([(n, pa.float32()) for n in names], metadata={"mgdist.synthetic": tag})
    prefix, paths = ("s3://" if out.startswith("s3://") else ""), []
    with reraise(out):
        if fs.find(root):  # also fails early on a missing bucket
            raise DataError(f"{out} already holds files: write to a new place")
        with tqdm(total=rows, unit="rows", unit_scale=True, disable=not progress) as bar:
            for k in range(files):
                path = f"{root.rstrip('/')}/part-{k:05d}.parquet"
                paths.append(prefix + path)
                # random floats do not compress: plain, uncompressed pages are the fastest to read
                with fs.open(path, "wb") as f, \
                        pq.ParquetWriter(f, schema, compression="none", use_dictionary=False) as writer:
                    for g in range(k * groups // files, (k + 1) * groups // files):
                        start, stop = g * row_group_rows, min(rows, (g + 1) * row_group_rows)
                        X, y = _rows(start, stop, features, seed)
                        columns = [*np.ascontiguousarray(X.T), y]
                        if thresholds:
                            columns.append(np.searchsorted(thresholds, y).astype(np.float32))
                        writer.write_table(pa.table(columns, schema=schema), row_group_size=row_group_rows)
                        bar.update(stop - start)
    return paths
