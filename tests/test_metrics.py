"""QuantileStats: figures by hand, and merged stats equal to the stats of all the rows at once."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from mgdist.workloads.quantile import QuantileStats, pinball_sums, symmetric_pairs

LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)


def rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.standard_normal(n).astype(np.float32)
    pred = np.sort(rng.standard_normal((n, len(LEVELS))), axis=1).astype(np.float32)
    pred[rng.random(n) < 0.3] *= -1  # some rows cross
    return y, pred


def figures(stats: QuantileStats) -> dict:
    """Every figure of a summary, flattened, so that none is left uncompared."""
    def flat(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from flat(f"{prefix}.{k}", v)
        else:
            yield prefix, value
    return dict(flat("", stats.summary()))


@given(cuts=st.lists(st.integers(0, 300), max_size=4), seed=st.integers(0, 1000))
def test_merged_stats_are_the_stats_of_the_concatenated_rows(cuts, seed):
    y, pred = rows(300, seed)
    bounds = [0, *sorted(cuts), 300]
    merged = QuantileStats(LEVELS)
    for a, b in zip(bounds, bounds[1:]):
        merged.merge(QuantileStats(LEVELS).add(y[a:b], pred[a:b]))
    whole = figures(QuantileStats(LEVELS).add(y, pred))
    got = figures(merged)
    assert got.keys() == whole.keys() and len(whole) == 1 + 1 + 5 + 5 + 2 * 2 + 1  # intervals: coverage, width
    for key, value in whole.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_figures_by_hand():
    y = np.array([0.0, 1.0, 2.0, 3.0], np.float32)
    pred = np.array([[0.5, 1.0, 1.5], [0.5, 1.0, 1.5], [0.5, 1.0, 1.5], [2.0, 1.0, 4.0]], np.float32)
    s = QuantileStats((0.1, 0.5, 0.9)).add(y, pred).summary()
    # q=0.1: y-p = -0.5, 0.5, 1.5, 1 -> 0.45 + 0.05 + 0.15 + 0.1 = 0.75
    # q=0.5: y-p = -1, 0, 1, 2 -> 0.5 + 0 + 0.5 + 1 = 2
    # q=0.9: y-p = -1.5, -0.5, 0.5, -1 -> 0.15 + 0.05 + 0.45 + 0.1 = 0.75
    assert s["pinball_per_level"] == pytest.approx({"0.1": 0.75 / 4, "0.5": 0.5, "0.9": 0.75 / 4})
    assert s["pinball"] == pytest.approx(3.5 / 12)
    assert s["coverage"] == {"0.1": 0.25, "0.5": 0.5, "0.9": 0.75}  # y <= p: rows 0 | 0, 1 | 0, 1, 3
    # inside [p0.1, p0.9]: rows 1 and 3; widths 1, 1, 1, 2
    assert s["interval_coverage"] == {"0.1-0.9": 0.5} and s["interval_width"] == {"0.1-0.9": pytest.approx(1.25)}
    assert s["crossing_rate"] == 0.25 and s["rows"] == 4  # the last row: 2 > 1


def test_pinball_sums_and_pairs():
    assert pinball_sums(np.array([1.0, -1.0]), np.zeros((2, 2)), (0.2, 0.7)).tolist() == pytest.approx([0.2 + 0.8, 0.7 + 0.3])
    assert symmetric_pairs((0.05, 0.1, 0.5, 0.9, 0.95)) == [(0, 4), (1, 3)]
    assert symmetric_pairs((0.1, 0.5, 0.8)) == []
    assert symmetric_pairs((0.3, 0.7)) == [(0, 1)]


def test_empty_stats_summarise_to_zeros():
    s = QuantileStats((0.1, 0.9)).summary()
    assert s["rows"] == 0 and s["pinball"] == 0 and s["crossing_rate"] == 0
    assert s["interval_coverage"] == {"0.1-0.9": 0.0} and s["interval_width"] == {"0.1-0.9": 0.0}
