"""Parquet datasets, local or on S3, read as float32 NumPy shards.

discover() reads only the files' footers and checks the schema; plan_rows() splits the rows
among workers, at any row; load_rows() reads one worker's rows into X (n, F), y (n,).
plan_shards() and load_shard() do the same in whole row groups (for prediction and evaluation).
Transient storage errors are retried (mgdist/retry.py); every problem with the data or its
location raises a one-line DataError.
"""
from __future__ import annotations

import fnmatch
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import groupby
from typing import Iterator, NamedTuple, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError

from mgdist.errors import DataError
from mgdist.retry import retrying

CHUNK_BYTES = 1 << 19  # rows are copied into X in blocks of about this size, to stay in cache


@dataclass(frozen=True)
class Storage:
    """How to reach the files, beyond the standard AWS settings of the environment."""
    s3_endpoint: str | None = None  # e.g. http://127.0.0.1:8333; None: AWS_ENDPOINT_URL_S3 or AWS
    anon: bool = False              # unsigned requests, for public buckets


def _fs_path(path: str) -> str:
    """`path` as its filesystem names it: s3://bucket/key -> bucket/key; local -> absolute."""
    if path.startswith("s3://"):
        return path.removeprefix("s3://")
    return os.path.abspath(os.path.expanduser(path.removeprefix("file://")))


def filesystem(path: str, storage: Storage = Storage()) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem holding `path` (local, file://, s3://) and the path without its scheme."""
    if path.startswith("s3://"):
        import s3fs
        fs = s3fs.S3FileSystem(anon=storage.anon, endpoint_url=storage.s3_endpoint,
                               skip_instance_cache=True)  # credentials may change between calls
        return fs, _fs_path(path)
    return fsspec.filesystem("file", auto_mkdir=True), _fs_path(path)


@contextmanager
def reraise(where: str) -> Iterator[None]:
    """Turn I/O, S3 and Arrow errors into a one-line DataError that names `where`."""
    try:
        yield
    except DataError:
        raise
    except (OSError, BotoCoreError, pa.ArrowException) as e:
        kind = {FileNotFoundError: "not found", PermissionError: "access denied"}.get(type(e))
        detail = " ".join(str(getattr(e, "strerror", None) or e).split()) or type(e).__name__
        raise DataError(f"{where}: {kind + ': ' if kind else ''}{detail}") from None


@dataclass(frozen=True)
class FileInfo:
    path: str                   # full URI for S3 (s3://bucket/key), absolute path otherwise
    size: int                   # bytes
    row_groups: tuple[int, ...]  # rows of each row group


@dataclass(frozen=True)
class Dataset:
    """Where a dataset is and what to read from it: small and picklable, no open handles."""
    uri: str
    files: tuple[FileInfo, ...]
    features: tuple[str, ...]
    target: str | None          # None: unlabelled data, for prediction only
    storage: Storage = Storage()
    metadata: dict[str, str] = field(default_factory=dict)  # the files' "mgdist.*" key-value metadata, where all agree
    categorical: tuple[str, ...] = ()  # integer or string columns read as categories (preprocess.py)

    @property
    def group_rows(self) -> list[int]:
        """Rows of every row group, in (file, group) order: the list plan_shards() splits."""
        return [rows for f in self.files for rows in f.row_groups]

    @property
    def rows(self) -> int:
        return sum(self.group_rows)

    def fingerprint(self) -> dict:
        """What identifies the data wherever it is stored: file names, sizes, row groups, columns."""
        files = [{"name": os.path.basename(f.path), "size": f.size, "row_groups": list(f.row_groups)}
                 for f in self.files]
        return {"files": files, "features": list(self.features), "categorical": list(self.categorical),
                "target": self.target}


def _listed(path: str, root: str) -> bool:
    """Whether a file found under `root` is part of the dataset: a .parquet file with no name below
    `root` starting with "_" or "." (Spark's _SUCCESS and _temporary/, hidden files), as pyarrow
    datasets have it."""
    parts = path[len(root):].strip("/").split("/")
    return path.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in parts)


def _list_files(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, int]:
    """{path: size} of the Parquet files that `path` names: a file, a directory tree, a glob."""
    if any(c in path for c in "*?["):
        root = path[:min(path.find(c) for c in "*?[" if c in path)].rpartition("/")[0]
        found = {p: i for p, i in fs.glob(path, detail=True).items() if _listed(p, root)}
    elif fs.isdir(path):
        found = {p: i for p, i in fs.find(path, detail=True).items() if _listed(p, path)}
    else:
        found = {path: fs.info(path)}
    return {p: i["size"] for p, i in sorted(found.items()) if i["type"] == "file"}


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _is_category(t: pa.DataType) -> bool:
    """Integer, string or dictionary (of those) columns can be categorical."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)


def _names(columns: Sequence[str] | str | None) -> list[str]:
    if columns is None:
        return []
    return [n.strip() for n in columns.split(",") if n.strip()] if isinstance(columns, str) else list(columns)


def _choose_features(schema: pa.Schema, features: Sequence[str] | str | None, target: str | None,
                     where: str, categorical: Sequence[str] = ()) -> tuple[str, ...]:
    """Resolve the feature selection against a file's schema; check it, the categorical columns
    and the target. By default only floating-point columns are features: an integer column
    (an ID, a code) is used only when named."""
    for name in categorical:
        if name not in schema.names:
            raise DataError(f"{where}: no categorical column {name!r} (columns: {', '.join(schema.names)})")
        if not _is_category(schema.field(name).type):
            raise DataError(f"{where}: categorical column {name!r} is {schema.field(name).type}, "
                            "not an integer or string column")
    if target in categorical:
        raise DataError(f"{where}: the target {target!r} is also listed as categorical")
    skip = {target, *categorical}
    if isinstance(features, str) and any(c in features for c in "*?["):
        names = [n for n in fnmatch.filter(schema.names, features) if n not in skip]
        if not names:
            raise DataError(f"{where}: no column matches {features!r}")
        features = names
    elif features is None:
        features = [f.name for f in schema if f.name not in skip and pa.types.is_floating(f.type)]
    else:
        features = _names(features)
    for name in [*features, *([target] if target else [])]:
        if name not in schema.names:
            raise DataError(f"{where}: no column {name!r} (columns: {', '.join(schema.names)})")
        if not _is_number(schema.field(name).type):
            hint = " (name it with --categorical to use its values as categories)" \
                if _is_category(schema.field(name).type) and name != target else ""
            raise DataError(f"{where}: column {name!r} is {schema.field(name).type}, not a number{hint}")
    if target in features:
        raise DataError(f"{where}: the target {target!r} is also listed as a feature")
    if set(features) & set(categorical):
        raise DataError(f"{where}: {sorted(set(features) & set(categorical))} listed both as features and categorical")
    if not features and not categorical:
        raise DataError(f"{where}: no floating-point feature columns" + (f" besides {target!r}" if target else "")
                        + " (name integer columns with --features or --categorical)")
    return tuple(features)


@contextmanager
def _open_parquet(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[pq.ParquetFile]:
    with fs.open(path, "rb", cache_type="none") as f:  # pyarrow coalesces its own reads
        yield pq.ParquetFile(f)


def _read_footer(fs: fsspec.AbstractFileSystem, path: str, where: str) -> tuple[pa.Schema, tuple[int, ...]]:
    def read():
        with _open_parquet(fs, path) as pf:
            meta = pf.metadata
            return pf.schema_arrow, tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    with reraise(where):
        return retrying(read)


def _common_metadata(schemas: Sequence[pa.Schema]) -> dict[str, str]:
    """The "mgdist.*" key-value metadata that every file carries with the same value."""
    tagged = [{k.decode(): v.decode() for k, v in (s.metadata or {}).items() if k.startswith(b"mgdist.")}
              for s in schemas]
    return {k: v for k, v in tagged[0].items() if all(t.get(k) == v for t in tagged)}


def schema(uri: str, storage: Storage = Storage()) -> pa.Schema:
    """The columns of the dataset at `uri`, from its first file's footer."""
    fs, path = filesystem(uri, storage)
    with reraise(uri):
        sizes = _list_files(fs, path)
        if not sizes:
            raise DataError(f"{uri}: no Parquet files")
        first = next(iter(sizes))
        return _read_footer(fs, first, ("s3://" if uri.startswith("s3://") else "") + first)[0]


def discover(uri: str, features: Sequence[str] | str | None = None, target: str | None = "y",
             storage: Storage = Storage(), categorical: Sequence[str] | str | None = ()) -> Dataset:
    """Find a dataset's files and row groups from their footers and check its columns.

    features: None for every floating-point column but the target and the categorical ones, a
    list of names, "a,b,c", or a glob such as "f*" (in the files' column order). target: None
    for unlabelled data. categorical: integer or string columns ("a,b" or a list) whose values
    are categories.
    """
    categorical = tuple(_names(categorical))
    fs, path = filesystem(uri, storage)
    prefix = "s3://" if uri.startswith("s3://") else ""
    with reraise(uri):
        sizes = retrying(lambda: _list_files(fs, path))
        if not sizes:
            raise DataError(f"{uri}: no Parquet files")
    with ThreadPoolExecutor(8) as pool:  # footers are small reads: overlap their latency
        footers = list(pool.map(lambda p: (p, *_read_footer(fs, p, prefix + p)), sizes))
    (first, schema, _), infos = footers[0], []
    for p, file_schema, groups in footers:
        types, first_types = ({f.name: str(f.type) for f in s} for s in (file_schema, schema))
        if types != first_types:
            diff = sorted(set(types.items()) ^ set(first_types.items()))
            raise DataError(f"{prefix}{p}: columns differ from {prefix}{first}: "
                            + ", ".join(f"{n} {t}" for n, t in diff))
        infos.append(FileInfo(prefix + p, sizes[p], groups))
    chosen = _choose_features(schema, features, target, prefix + first, categorical)
    ds = Dataset(uri, tuple(infos), chosen, target, storage, _common_metadata([s for _, s, _ in footers]), categorical)
    if ds.rows == 0:
        raise DataError(f"{uri}: the dataset has no rows")
    return ds


def _ideal_ends(total: int, k: int, weights: Sequence[float] | None) -> np.ndarray:
    """Where each of k consecutive shards of `total` rows would ideally end, shard i holding
    total * weights[i] / sum(weights) rows (equal shares when weights is None)."""
    weights = [1.0] * k if weights is None else [float(w) for w in weights]
    if k < 1 or len(weights) != k or not all(0 < w < float("inf") for w in weights):
        raise DataError(f"need k >= 1 positive finite weights, got k={k}, weights={weights}")
    return total * np.cumsum(weights) / sum(weights)


def _cuts(wanted: Sequence[int], units: int) -> list[int]:
    """The k + 1 cut points of `units` into k = len(wanted) + 1 consecutive non-empty parts, cut s
    at wanted[s] unless that would leave this part or a later one empty."""
    k = len(wanted) + 1
    cuts = [0]
    for s, want in enumerate(wanted):
        cuts.append(min(max(want, cuts[-1] + 1), units - (k - 1 - s)))
    return cuts + [units]


def plan_rows(rows: int, k: int, weights: Sequence[float] | None = None) -> list[tuple[int, int]]:
    """Split rows [0, rows) (numbered through the row groups in order) into k consecutive spans
    (start, stop): span i gets rows * weights[i] / sum(weights) rows, within one row, and at least one."""
    if rows < k:
        raise DataError(f"{rows} rows cannot be split among {k} workers: use fewer workers")
    cuts = _cuts([int(end) for end in np.rint(_ideal_ends(rows, k, weights)[:-1])], rows)
    return list(zip(cuts, cuts[1:]))


def plan_shards(group_rows: Sequence[int], k: int, weights: Sequence[float] | None = None) -> list[list[int]]:
    """Split row groups (indices into group_rows) into k runs of consecutive groups.

    Shard i gets about total * weights[i] / sum(weights) rows: each cut is the group
    boundary nearest its ideal place, so no shard exceeds its ideal by a row group or more.
    Empty groups are left out; every shard gets at least one non-empty group.
    """
    ideal_ends = _ideal_ends(sum(group_rows), k, weights)
    groups = [i for i, rows in enumerate(group_rows) if rows > 0]
    if len(groups) < k:
        raise DataError(f"{len(groups)} non-empty row groups cannot be split among {k} workers: "
                        "write smaller row groups or use fewer workers")
    ends = np.cumsum([group_rows[i] for i in groups])  # rows up to and including each group
    nearest = [int(np.argmin(np.abs(ends - ideal))) + 1 for ideal in ideal_ends[:-1]]  # groups before each cut
    cuts = _cuts(nearest, len(groups))
    return [groups[a:b] for a, b in zip(cuts, cuts[1:])]


FLOAT32_EXACT = 2 ** 24  # beyond it float32 rounds integers: 16777217 becomes 16777216


def check_exact(table: pa.Table, names: Sequence[str], where: str) -> None:
    """DataError naming the column and value if an integer column of `names` holds a value
    beyond 2**24, which float32 would round."""
    for name in names:
        column = table.column(name)
        if pa.types.is_integer(column.type) and column.type.bit_width > 16 and len(column):
            lo, hi = (v.as_py() for v in pc.min_max(column).values())
            for v in (lo, hi):
                if v is not None and abs(v) > FLOAT32_EXACT:
                    raise DataError(f"{where}, column {name!r}: integer {v} cannot be represented exactly in float32 "
                                    "(|v| > 2**24): leave it out of the features, or name it with --categorical")


def copy_columns(table: pa.Table, names: Sequence[str], out: np.ndarray) -> None:
    """Copy the named columns of `table` into the columns of `out`, converting to float32."""
    columns = [table.column(n).to_numpy() for n in names]  # zero-copy for float32 without nulls
    step = max(1, CHUNK_BYTES // out.strides[0])  # fill X block by block, each block in cache
    for start in range(0, len(out), step):
        block = out[start:start + step]
        for j, column in enumerate(columns):
            block[:, j] = column[start:start + step]


def category_values(table: pa.Table, name: str, keep: np.ndarray | None = None) -> np.ndarray:
    """A categorical column's values (of the rows where `keep`, if given): int64 for integers,
    str for strings and dictionaries of them. Nulls come out as 0 or "None": drop them first."""
    column = table.column(name)
    if keep is not None:
        column = column.filter(pa.array(keep))
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_integer(column.type):
        return column.fill_null(0).to_numpy().astype(np.int64)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=str)


class Shard(NamedTuple):
    """A worker's rows: numeric features X (n, F) and target y (n,) in float32, and the raw
    values of each categorical column (n,)."""
    X: np.ndarray
    y: np.ndarray
    categories: tuple[np.ndarray, ...]


def _nonfinite_error(table: pa.Table, ds: Dataset, bad: np.ndarray, where: str, first: int) -> DataError:
    row, col = np.argwhere(bad)[0]
    name = [*ds.features, ds.target, *ds.categorical][col]
    value = table.column(name)[int(row)].as_py()
    return DataError(f"{where}, column {name!r}, row {first + row}: value {'null' if value is None else value}"
                     " (nonfinite='drop' skips such rows)")


class Piece(NamedTuple):
    """Rows [start, stop) of row group `group` (an index into ds.group_rows)."""
    group: int
    start: int
    stop: int


def _read_piece(pf: pq.ParquetFile, ds: Dataset, info: FileInfo, g: int, piece: Piece, nonfinite: str,
                X: np.ndarray, y: np.ndarray) -> tuple[int, list[np.ndarray]]:
    """Read a piece of row group `g` of one file into the first rows of X and y: the number of rows
    kept, and the values of each categorical column in those rows."""
    where = f"{info.path} row group {g}"
    table = pf.read_row_group(g, columns=[*ds.features, ds.target, *ds.categorical])
    if table.num_rows != info.row_groups[g]:
        raise DataError(f"{where}: {table.num_rows} rows, not {info.row_groups[g]}: "
                        "the file changed since it was discovered")
    table = table.slice(piece.start, piece.stop - piece.start)
    check_exact(table, [*ds.features, ds.target], where)
    n = table.num_rows
    copy_columns(table, ds.features, X[:n])
    y[:n] = table.column(ds.target).to_numpy()
    bad = np.column_stack([~np.isfinite(X[:n]), ~np.isfinite(y[:n]),
                           *[table.column(name).is_null().to_numpy(zero_copy_only=False) for name in ds.categorical]])
    if not bad.any():
        return n, [category_values(table, name) for name in ds.categorical]
    if nonfinite == "error":
        raise _nonfinite_error(table, ds, bad, where, piece.start)
    finite = ~bad.any(axis=1)
    kept = int(finite.sum())
    X[:kept], y[:kept] = X[:n][finite], y[:n][finite]
    return kept, [category_values(table, name, finite) for name in ds.categorical]


def _load(ds: Dataset, pieces: list[Piece], nonfinite: str, what: str) -> Shard:
    """Read these pieces of row groups, in order, into one Shard; `what` names them in errors."""
    if nonfinite not in ("error", "drop"):
        raise ValueError(f"nonfinite must be 'error' or 'drop', not {nonfinite!r}")
    located = [(f, g) for f, info in enumerate(ds.files) for g in range(len(info.row_groups))]
    n = sum(p.stop - p.start for p in pieces)
    X, y = np.empty((n, len(ds.features)), np.float32), np.empty(n, np.float32)
    categories: list[list[np.ndarray]] = [[] for _ in ds.categorical]
    fs, _ = filesystem(ds.uri, ds.storage)
    filled = 0
    for f, run in groupby(pieces, key=lambda p: located[p.group][0]):
        info, todo = ds.files[f], list(run)

        def read_rest() -> None:  # the pieces of `todo` not read yet; after a transient error, again
            nonlocal filled
            with _open_parquet(fs, _fs_path(info.path)) as pf:
                while todo:
                    piece = todo[0]
                    kept, cats = _read_piece(pf, ds, info, located[piece.group][1], piece, nonfinite,
                                             X[filled:], y[filled:])
                    filled += kept
                    for values, c in zip(categories, cats):
                        values.append(c)
                    todo.pop(0)
                    pa.default_memory_pool().release_unused()  # peak: the shard + about one row group
        with reraise(info.path):
            retrying(read_rest)
    if filled == 0:
        raise DataError(f"{ds.uri}: no finite rows in {what}")
    return Shard(X[:filled], y[:filled], tuple(np.concatenate(c) for c in categories))


def load_shard(ds: Dataset, groups: Sequence[int], nonfinite: str = "error") -> Shard:
    """Read row groups (indices into ds.group_rows) into C-contiguous float32 X (n, F) and y (n,),
    and the values of the categorical columns.

    Only these groups and the dataset's columns are read, one row group at a time, straight
    into the result. nonfinite: "error" raises on a NaN, infinity or null (a null category
    too); "drop" skips its rows. An integer column beyond 2**24 is refused (check_exact).
    """
    if not groups or not all(0 <= g < len(ds.group_rows) for g in groups):
        raise DataError(f"{ds.uri}: a shard needs row groups in [0, {len(ds.group_rows)}), got {list(groups)}")
    return _load(ds, [Piece(g, 0, ds.group_rows[g]) for g in groups], nonfinite, f"row groups {list(groups)}")


def load_rows(ds: Dataset, start: int, stop: int, nonfinite: str = "error") -> Shard:
    """Read rows [start, stop) of the dataset (numbered through its row groups in order), as
    load_shard() does; the row groups they cut are read whole and cut."""
    if not 0 <= start < stop <= ds.rows:
        raise DataError(f"{ds.uri}: a shard needs rows within [0, {ds.rows}), got [{start}, {stop})")
    pieces, first = [], 0
    for g, rows in enumerate(ds.group_rows):
        a, b = max(start, first), min(stop, first + rows)
        if a < b:
            pieces.append(Piece(g, a - first, b - first))
        first += rows
    return _load(ds, pieces, nonfinite, f"rows [{start}, {stop})")
