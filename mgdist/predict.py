"""Batch prediction on Ray: tasks predict runs of row groups and write them next to their key columns.

The output columns are the model's `outputs` (docs/models.md): q0.1, q0.5, ... for quantiles.
Each task reads its row groups (the model's features and the kept columns, in one read), predicts
them and writes one Parquet file per input file it touches: part-FFFFF-GGGGGG.parquet, named after
the input file's index in the dataset and the task's first row group in it, with one output row
group per input row group. Sorted by name, the outputs hold the rows in input order. The
predictions are in the target's units (the run's preprocessing, stored in the checkpoint, is
applied). Rows with a missing or non-finite feature, or a null category, get NaN predictions; a
category unseen in training gets all-zero one-hot inputs (docs/models.md).
"""
from __future__ import annotations

from itertools import groupby
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from mgdist.data import (DataError, Dataset, Storage, category_values, check_exact, copy_columns, filesystem,
                         plan_shards, reraise)
from mgdist.evaluate import dataset_for, load
from mgdist.fleet import ray_get, ship_by_value
from mgdist.model import Trained, output_names, predict as model_predict

TASK_ROWS = 1 << 18  # rows per task, at most a row group more: the progress bar moves a task at a time


def _output_names(trained: Trained) -> list[str]:
    """The prediction's column names, from one row's prediction."""
    columns = model_predict(trained.model, np.zeros((1, trained.features), np.float32)).reshape(1, -1).shape[1]
    return output_names(trained.model, columns)


def _output_schema(ds: Dataset, keep: Sequence[str] | None, names: Sequence[str]) -> pa.Schema:
    """Kept columns (default: every column but the features) with their input types, then the predictions."""
    first = ds.files[0].path
    fs, path = filesystem(first, ds.storage)
    with reraise(first):
        schema = pq.read_schema(path, filesystem=fs)
    keep = [n for n in schema.names if n not in ds.features + ds.categorical] if keep is None else list(keep)
    for name in keep:
        if name not in schema.names:
            raise DataError(f"{first}: no column {name!r} to keep (columns: {', '.join(schema.names)})")
    if set(keep) & set(names):
        raise ValueError(f"kept columns {sorted(set(keep) & set(names))} would clash with the prediction columns")
    return pa.schema([schema.field(n) for n in keep] + [pa.field(n, pa.float32()) for n in names])


@ray.remote(num_cpus=1)
def _predict_groups(trained: Trained, ds: Dataset, groups: list[int], schema: pa.Schema, predicted: int,
                    out: str) -> list[str]:
    """Predict row groups (indices into ds.group_rows); write one file per input file; return their paths."""
    keep = schema.names[:len(schema) - predicted]
    columns = list(dict.fromkeys([*ds.features, *ds.categorical, *keep]))
    located = [(f, g) for f, info in enumerate(ds.files) for g in range(len(info.row_groups))]
    out_fs, root = filesystem(out, ds.storage)
    prefix, written = "s3://" if out.startswith("s3://") else "", []
    for f, run in groupby((located[g] for g in groups), key=lambda fg: fg[0]):
        run = [g for _, g in run]
        source = ds.files[f].path
        path = f"{root.rstrip('/')}/part-{f:05d}-{run[0]:06d}.parquet"
        in_fs, in_path = filesystem(source, ds.storage)
        file_schema = schema.with_metadata({**schema.metadata, "mgdist.source": source})
        with reraise(f"{source} -> {prefix}{path}"), pq.ParquetFile(in_path, filesystem=in_fs) as pf, \
                out_fs.open(path, "wb") as sink, pq.ParquetWriter(sink, file_schema) as writer:
            for g in run:
                table = pf.read_row_group(g, columns=columns)
                check_exact(table, ds.features, f"{source} row group {g}")
                X = np.empty((table.num_rows, len(ds.features)), np.float32)
                copy_columns(table, ds.features, X)
                pred = trained.predict_raw(X, [category_values(table, n) for n in ds.categorical]).reshape(len(X), -1)
                for name in ds.categorical:  # a null category: no prediction, like a missing feature
                    pred[table.column(name).is_null().to_numpy(zero_copy_only=False)] = np.nan
                writer.write_table(pa.table([*table.select(keep).columns, *pred.T], schema=file_schema))
        written.append(prefix + path)
    return written


def predict(checkpoint: str, data: str, out: str, keep: Sequence[str] | None = None,
            storage: Storage = Storage(), address: str | None = None, progress: bool = True) -> list[str]:
    """Predict every row of `data` with a checkpoint's model on Ray; write Parquet under `out`
    (local or s3://, which must hold no files yet). Returns the files written, in row order."""
    trained, manifest = load(checkpoint, storage)
    ds = dataset_for(manifest, data, storage, labelled=False)  # new data need no target column
    names = _output_names(trained)
    schema = _output_schema(ds, keep, names).with_metadata({"mgdist.checkpoint": checkpoint})
    fs, root = filesystem(out, storage)
    with reraise(out):
        if fs.exists(root) and fs.find(root):
            raise DataError(f"{out} already holds files: write to a new place")
    if not ray.is_initialized():
        ray.init(address=address)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    tasks = min(sum(rows > 0 for rows in ds.group_rows), max(cpus, -(-ds.rows // TASK_ROWS)))
    ship_by_value(trained.spec)
    model = ray.put(trained)
    pending = {_predict_groups.remote(model, ds, groups, schema, len(names), out):
               sum(ds.group_rows[g] for g in groups) for groups in plan_shards(ds.group_rows, tasks)}
    written = []
    with tqdm(total=ds.rows, unit="rows", unit_scale=True, disable=not progress) as bar:
        while pending:
            [done], _ = ray.wait(list(pending))
            written += ray_get(done)
            bar.update(pending.pop(done))
    return sorted(written)
