"""Which rows a worker trains on, in which order, and how many of each batch: properties and
hand-computed examples of split_rows, epoch_order, split_batch, plan_rows and plan_shards."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from mgdist.data import plan_rows, plan_shards
from mgdist.fleet import split_batch
from mgdist.worker import SHUFFLE_BLOCK, epoch_order, split_rows


@given(n=st.integers(0, 3000), fraction=st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.5]), seed=st.integers(0, 2**31),
       rank=st.integers(0, 63))
def test_split_rows_holds_out_a_share_and_trains_on_the_rest(n, fraction, seed, rank):
    train, val = split_rows(n, fraction, seed, rank)
    assert len(val) == round(n * fraction)
    assert not set(train.tolist()) & set(val.tolist())  # no row both trained and validated
    assert sorted(train.tolist() + val.tolist()) == list(range(n))
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()
    again = split_rows(n, fraction, seed, rank)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)


def test_split_rows_differs_by_seed_and_rank_and_is_not_the_first_rows():
    val = {key: split_rows(1000, 0.1, *key)[1].tolist() for key in [(0, 0), (0, 1), (1, 0)]}
    assert len({tuple(v) for v in val.values()}) == 3
    assert all(v != list(range(100)) and v != list(range(900, 1000)) for v in val.values())
    assert max(val[0, 0]) - min(val[0, 0]) > 800  # spread over the shard


@given(n=st.integers(0, 500), seed=st.integers(0, 2**31), rank=st.integers(0, 15), epoch=st.integers(0, 100))
def test_epoch_order_is_a_permutation_of_the_training_rows_in_runs(n, seed, rank, epoch):
    train = np.sort(np.random.default_rng(n).choice(10 * n + 1, n, replace=False))  # gaps, as after holding out
    order = epoch_order(train, seed, rank, epoch)
    assert sorted(order.tolist()) == train.tolist()
    position = {row: i for i, row in enumerate(train.tolist())}
    i, starts = 0, []
    while i < n:  # the order is runs of SHUFFLE_BLOCK consecutive training rows, each starting at a multiple of it
        first = position[int(order[i])]
        length = min(SHUFFLE_BLOCK, n - first)
        assert first % SHUFFLE_BLOCK == 0 and order[i:i + length].tolist() == train[first:first + length].tolist()
        starts.append(first)
        i += length
    assert sorted(starts) == list(range(0, n, SHUFFLE_BLOCK))
    assert np.array_equal(epoch_order(train, seed, rank, epoch), order)


def test_epoch_order_shuffles_and_differs_by_epoch_rank_and_seed():
    train = np.arange(0, 2000, 2)
    orders = {key: epoch_order(train, *key).tolist() for key in [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0)]}
    assert len({tuple(o) for o in orders.values()}) == 4
    for order in orders.values():
        assert order != train.tolist()
        assert order[:SHUFFLE_BLOCK] != train[:SHUFFLE_BLOCK].tolist() or order[-1] != train[-1]
    runs = [order[i] for order in orders.values() for i in range(0, len(train), SHUFFLE_BLOCK)]
    assert len(set(runs)) > 100  # the runs really move


def test_epoch_order_keeps_a_short_last_run():
    train = np.arange(10, 30)  # 20 rows: runs of 8, 8 and 4
    order = epoch_order(train, 3, 0, 0).tolist()
    assert sorted(order) == train.tolist()
    starts = [order.index(r) for r in (10, 18, 26)]
    assert order[starts[2]:starts[2] + 4] == [26, 27, 28, 29]
    assert all(order[s:s + 8] == list(range(r, r + 8)) for s, r in zip(starts[:2], (10, 18)))


@pytest.mark.parametrize("batch, rows, expected", [
    (10, [1, 1, 1], [4, 3, 3]),          # equal remainders: the lower rank first
    (10, [3, 3, 1], [4, 4, 2]),          # 4.29, 4.29, 1.43: the remainder to the largest fraction
    (7, [5, 1], [6, 1]),                 # 5.83, 1.17
    (100, [2, 3, 5], [20, 30, 50]),      # exact
    (9, [1, 1, 1, 1], [3, 2, 2, 2]),
    (5, [1000, 1, 1], [5, 0, 0]),
    (11, [6, 5, 4], [4, 4, 3]),          # 4.4, 3.67, 2.93: +1 for ranks 1 and 2
])
def test_split_batch_examples(batch, rows, expected):
    assert split_batch(batch, rows) == expected


@given(batch=st.integers(1, 100_000), rows=st.lists(st.integers(1, 10**6), min_size=1, max_size=12))
def test_split_batch_sums_to_the_batch_and_the_largest_remainders_win(batch, rows):
    share = split_batch(batch, rows)
    exact = [batch * r / sum(rows) for r in rows]
    assert sum(share) == batch
    assert all(s - 1 < x <= s + 1e-9 or s <= x < s + 1 for s, x in zip(share, exact))
    up = [i for i in range(len(rows)) if share[i] > exact[i] + 1e-9]  # rounded up
    down = [i for i in range(len(rows)) if share[i] <= exact[i] + 1e-9 and i not in up]
    if up and down:
        assert min(exact[i] - int(exact[i]) for i in up) >= max(exact[i] - int(exact[i]) for i in down) - 1e-9


def test_row_plan_cuts_at_the_nearest_row():
    assert plan_rows(10, 3) == [(0, 3), (3, 7), (7, 10)]  # thirds end at 3.33 and 6.67
    assert plan_rows(40, 2, weights=[1, 3]) == [(0, 10), (10, 40)]
    assert plan_rows(9, 2, weights=[5, 4]) == [(0, 5), (5, 9)]
    assert plan_rows(3, 2, weights=[1, 100]) == [(0, 1), (1, 3)]  # 0.03 rows is raised to one
    assert plan_rows(3, 3) == [(0, 1), (1, 2), (2, 3)]


def test_plan_cuts_at_the_nearest_boundary_not_the_one_below():
    # 16 rows: half is 8; the boundaries are at 5, 10, 15: 10 is nearer than 5
    assert plan_shards([5, 5, 5, 1], 2) == [[0, 1], [2, 3]]
    # thirds of 30 rows are 10 and 20; boundaries 6, 13, 19, 24, 30: nearest 13 (not 6) and 19 (not 24)
    assert plan_shards([6, 7, 6, 5, 6], 3) == [[0, 1], [2], [3, 4]]
    # weights 1:3 of 40 rows: the cut is at 10; boundaries 9 and 12: 9 is nearer (the one below)
    assert plan_shards([9, 3, 28], 2, weights=[1, 3]) == [[0], [1, 2]]


@given(groups=st.lists(st.integers(1, 50), min_size=2, max_size=30), k=st.integers(2, 4))
def test_plan_cuts_are_each_the_nearest_boundary_when_free(groups, k):
    """Each cut is the boundary nearest its ideal place, unless that would leave a shard empty."""
    if len(groups) < k:
        return
    shards = plan_shards(groups, k)
    ends = np.cumsum(groups)
    cuts = [shard[-1] + 1 for shard in shards[:-1]]  # groups before each cut
    for s, cut in enumerate(cuts):
        ideal = ends[-1] * (s + 1) / k
        nearest = min(abs(e - ideal) for e in ends)
        lowest, highest = (cuts[s - 1] + 1 if s else 1), len(groups) - (k - 1 - s)
        if lowest <= 1 + int(np.argmin(np.abs(ends - ideal))) <= highest:
            assert abs(ends[cut - 1] - ideal) == nearest, (groups, k, shards)
