"""Shard loading: mgdist.data.load_shard against plain pyarrow, from local disk and local S3.

Writes a synthetic dataset (default 600 MB of float32, 64 features) under /tmp, copies it to
a SeaweedFS S3 server on 127.0.0.1, then loads it as 1, 2 and 4 shards, one shard at a time,
each reader in a fresh process so its peak memory can be measured; best time of
--repeats runs. The floor is plain
pyarrow.parquet reading the same row groups and columns to NumPy (read_row_groups, then
np.column_stack); "Table" is pyarrow's read alone, without making NumPy arrays.
Run inside a loopback-only network namespace, e.g. `ip netns exec mg python bench/data.py`.
"""
import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mgdist.data import Dataset, discover, filesystem, load_shard, plan_shards
from mgdist.workloads.synthetic import rows_for_size, write

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import s3server  # noqa: E402


def read_pyarrow(ds: Dataset, groups: list[int], to_numpy: bool):
    """The floor: pyarrow reads the shard's row groups, file by file, then NumPy stacks the columns."""
    fs, _ = filesystem(ds.uri, ds.storage)
    located = [(f, g) for f, info in enumerate(ds.files) for g in range(len(info.row_groups))]
    tables = []
    for f in sorted({located[g][0] for g in groups}):
        in_file = [located[g][1] for g in groups if located[g][0] == f]
        source = pq.ParquetFile(filesystem(ds.files[f].path)[1], filesystem=fs)
        tables.append(source.read_row_groups(in_file, columns=[*ds.features, ds.target]))
    table = pa.concat_tables(tables)
    if to_numpy:
        return np.column_stack([table.column(n).to_numpy() for n in ds.features]), table.column(ds.target).to_numpy()
    return table


READERS = {"mgdist": load_shard,
           "pyarrow->NumPy": lambda ds, groups: read_pyarrow(ds, groups, to_numpy=True),
           "pyarrow Table": lambda ds, groups: read_pyarrow(ds, groups, to_numpy=False)}


def measure(reader: str, ds: Dataset, shards: list[list[int]], env: dict) -> tuple[float, int]:
    """In a fresh process: seconds to load every shard in turn, and peak bytes above the start."""
    os.environ.update(env)
    filesystem(ds.uri, ds.storage)  # imports and S3 client set up before the start
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    rss_before = memory("VmHWM")
    start = time.perf_counter()
    for groups in shards:
        shard = READERS[reader](ds, groups)
        del shard
    seconds = time.perf_counter() - start
    return seconds, memory("VmHWM") - rss_before


def memory(field: str) -> int:
    """A size from /proc/self/status in bytes, e.g. VmHWM: this process's peak resident memory."""
    line = next(line for line in open("/proc/self/status") if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="600MB")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mgdist-bench-data-"))
    server = s3server.start(workdir / "s3")
    try:
        rows = rows_for_size(args.size, args.features)
        print(f"writing {rows:,} rows x {args.features} features to {workdir} and S3 ...")
        write(str(workdir / "data"), rows, args.features, args.files, seed=0)
        env = server.env()
        os.environ.update(env)
        fs, _ = filesystem("s3://")
        fs.put(str(workdir / "data"), f"{server.bucket}/data", recursive=True)
        sources = {"local": discover(str(workdir / "data")), "S3": discover(f"s3://{server.bucket}/data")}
        row_bytes = 4 * (args.features + 1)
        print(f"{rows * row_bytes / 1e6:.0f} MB float32 in {len(sources['local'].group_rows)} row groups;"
              f" throughput in MB/s of float32 delivered, peak memory as a multiple of the largest shard")
        print(f"{'source':6} {'shards':>6} | {'mgdist':>7} {'pyarrow->NumPy':>15} {'ratio':>6} {'pyarrow Table':>14}"
              f" | {'peak mgdist':>11} {'peak pyarrow':>12}")
        spawn = multiprocessing.get_context("spawn")
        for name, ds in sources.items():
            for k in (1, 2, 4):
                shards = plan_shards(ds.group_rows, k)
                biggest = max(sum(ds.group_rows[g] for g in s) for s in shards) * row_bytes
                seconds, peak = {}, {}
                for _ in range(args.repeats):  # readers take turns, so a busy machine slows all alike
                    for reader in READERS:
                        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                            t, p = pool.submit(measure, reader, ds, shards, env).result()
                        seconds[reader], peak[reader] = min(t, seconds.get(reader, t)), p
                result = {r: (rows * row_bytes / 1e6 / seconds[r], peak[r] / biggest) for r in READERS}
                (ours, ours_peak), (floor, floor_peak), (table, _) = result.values()
                print(f"{name:6} {k:6} | {ours:7.0f} {floor:15.0f} {ours / floor:6.2f} {table:14.0f}"
                      f" | {ours_peak:10.2f}x {floor_peak:11.2f}x", flush=True)
    finally:
        s3server.stop(server)
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
