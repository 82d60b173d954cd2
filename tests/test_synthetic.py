import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mgdist.data import DataError
from mgdist.workloads.synthetic import rows_for_size, sample, true_quantile, write

ROOT = Path(__file__).resolve().parents[1]
LEVELS = [0.05, 0.25, 0.5, 0.75, 0.95]


def read_all(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(paths)  # a list of files, concatenated in order
    X = np.column_stack([table.column(n).to_numpy() for n in table.column_names[:-1]])
    return X, table.column("y").to_numpy()


def test_sample_is_deterministic_float32_and_independent_of_length():
    X, y = sample(40_000, 6, seed=1)
    assert X.dtype == y.dtype == np.float32 and X.shape == (40_000, 6) and y.shape == (40_000,)
    assert X.flags.c_contiguous
    X2, y2 = sample(40_000, 6, seed=1)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    X3, y3 = sample(20_001, 6, seed=1)  # rows do not depend on how many are asked for
    assert np.array_equal(X3, X[:20_001]) and np.array_equal(y3, y[:20_001])
    assert not np.array_equal(sample(100, 6, seed=2)[1], y[:100])
    with pytest.raises(ValueError, match="at least 4 features"):
        sample(10, 3, seed=0)


def test_true_quantiles_are_calibrated_and_spread_depends_on_features():
    n = 200_000
    X, y = sample(n, 5, seed=0)
    q = true_quantile(X, LEVELS)
    assert q.shape == (n, len(LEVELS)) and q.dtype == np.float32
    coverage = (y[:, None] <= q).mean(axis=0)
    assert np.allclose(coverage, LEVELS, atol=4 * np.sqrt(0.25 / n)), coverage
    spread = q[:, -1] - q[:, 0]
    assert spread.max() > 2.5 * spread.min()  # heteroscedastic: scale goes from 0.5 to 1.5
    assert np.corrcoef(spread, X[:, 1])[0, 1] > 0.9 and abs(np.corrcoef(spread, X[:, 0])[0, 1]) < 0.01


def test_true_quantiles_minimise_pinball_loss():
    X, y = sample(100_000, 4, seed=3)
    levels = np.array(LEVELS)

    def pinball(q):
        d = y[:, None] - q
        return np.maximum(levels * d, (levels - 1) * d).mean()

    q = true_quantile(X, levels)
    for shift in (-0.05, 0.05):
        assert pinball(q) < pinball(q + shift)
    assert pinball(q) < pinball(np.quantile(y, levels)[None, :])  # better than ignoring X


def test_rows_for_size():
    assert rows_for_size("600MB", 64) == 600_000_000 // 260
    assert rows_for_size("1 GiB", 3) == 2**30 // 16
    assert rows_for_size(1600, 3) == rows_for_size("1.6kb", 3) == 100
    for bad in ("", "12 parsecs", "MB"):
        with pytest.raises(ValueError, match="as a size"):
            rows_for_size(bad, 4)


def test_write_is_identical_whatever_the_files(tmp_path):
    one = write(str(tmp_path / "one"), 10_500, 5, files=1, row_group_rows=1000, seed=7, progress=False)
    three = write(str(tmp_path / "three"), 10_500, 5, files=3, row_group_rows=1000, seed=7, progress=False)
    assert [Path(p).name for p in three] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.ParquetFile(p).metadata.num_row_groups for p in three] == [3, 4, 4]
    assert pq.ParquetFile(three[2]).metadata.row_group(3).num_rows == 500
    X, y = sample(10_500, 5, seed=7)
    for paths in (one, three):
        Xw, yw = read_all(paths)
        assert np.array_equal(Xw, X) and np.array_equal(yw, y)
    assert pq.read_schema(one[0]).names == ["f0", "f1", "f2", "f3", "f4", "y"]


def test_write_refuses_a_place_with_files_and_too_many_files(tmp_path):
    write(str(tmp_path), 100, 4, progress=False)
    with pytest.raises(DataError, match="already holds files"):
        write(str(tmp_path), 100, 4, progress=False)
    with pytest.raises(ValueError, match="cannot fill 3 files"):
        write(str(tmp_path / "new"), 100, 4, files=3, row_group_rows=50, progress=False)


def test_make_data_command(tmp_path):
    out = tmp_path / "data"
    cmd = [sys.executable, str(ROOT / "jobs/make_data.py"), "--out", f"file://{out}", "--size", "0.1MB",
           "--features", "4", "--files", "2", "--row-group-rows", "1000", "--seed", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "wrote 5,000 rows x 4 features" in done.stdout
    X, y = read_all(sorted(str(p) for p in out.glob("*.parquet")))
    X0, y0 = sample(5000, 4, seed=3)
    assert np.array_equal(X, X0) and np.array_equal(y, y0)
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode != 0 and again.stderr.strip() == f"error: file://{out} already holds files: write to a new place"
