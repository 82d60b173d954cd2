"""Sharding the parameters without Ray: the split of the flat vector, a state split and joined
again, and S shards of ParameterServer stepping exactly as one server (the optimisers are elementwise)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from mgdist import link
from mgdist.config import TrainConfig
from mgdist.errors import TrainingError
from mgdist.server import ParameterServer, ServerState, join_states, shard_ranges, split_state, step_log


@given(st.integers(1, 10_000), st.integers(1, 64))
def test_shard_ranges_cover_the_vector_in_order_and_balanced(size, servers):
    servers = min(servers, size)
    ranges = shard_ranges(size, servers)
    assert len(ranges) == servers and ranges[0][0] == 0 and ranges[-1][1] == size
    assert all(hi == lo for (_, hi), (lo, _) in zip(ranges, ranges[1:]))  # contiguous, in order
    lengths = [hi - lo for lo, hi in ranges]
    assert min(lengths) >= 1 and max(lengths) - min(lengths) <= 1
    assert lengths == sorted(lengths, reverse=True)  # the longer ones first


def test_shard_ranges_of_ten_over_three():
    assert shard_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert shard_ranges(5, 1) == [(0, 5)]


def servers(config: TrainConfig, params: np.ndarray, count: int) -> list[ParameterServer]:
    state = ServerState(0, params, None)
    return [ParameterServer(config, split_state(state, lo, hi).params, 10, link.Secret.new())
            for lo, hi in shard_ranges(params.size, count)]


@pytest.mark.parametrize("optimizer, weight_decay", [("sgd", 0.0), ("sgd", 0.1), ("adam", 0.0), ("adam", 0.1),
                                                     ("adamw", 0.1)])
def test_shards_step_exactly_as_one_server_and_their_states_join_into_its(optimizer, weight_decay):
    config = TrainConfig(optimizer=optimizer, lr=0.05, schedule="cosine", warmup_steps=2, weight_decay=weight_decay)
    rng = np.random.default_rng(0)
    params = rng.standard_normal(11).astype(np.float32)
    one, three = servers(config, params, 1), servers(config, params, 3)
    ranges = shard_ranges(11, 3)
    for _ in range(4):
        grads = [rng.standard_normal(11).astype(np.float32) for _ in range(2)]  # two workers' sums
        for ps, (lo, hi) in zip(one + three, [(0, 11)] + ranges):
            ps.apply([(g[lo:hi].copy(), rows, 0.5 * rows, 0.0) for g, rows in zip(grads, (3, 5))])
    whole, parts = one[0].state(), [ps.state() for ps in three]
    joined = join_states(parts)
    np.testing.assert_array_equal(joined.params, whole.params)  # bit for bit: the same float32 ops on each element
    assert joined.optimizer.keys() == whole.optimizer.keys()
    for key, value in whole.optimizer.items():
        np.testing.assert_array_equal(joined.optimizer[key], value)
    assert joined.step == 4 and joined.log.tolist() == whole.log.tolist()
    again = [split_state(joined, lo, hi) for lo, hi in ranges]  # and split again, each shard's own
    for part, before in zip(again, parts):
        np.testing.assert_array_equal(part.params, before.params)
        assert {k: v.tolist() for k, v in part.optimizer.items()} == {k: v.tolist() for k, v in before.optimizer.items()}


def test_shards_that_disagree_do_not_join():
    def state(step, log):
        return ServerState(step, np.zeros(2, np.float32), {"steps": np.array(step)}, log=step_log(log))
    with pytest.raises(TrainingError, match=r"^parameter server shard 1 is at step 3, shard 0 at 2$"):
        join_states([state(2, []), state(3, [])])
    with pytest.raises(TrainingError, match=r"^parameter server shard 2's step log disagrees with shard 0's before step 2$"):
        join_states([state(2, [(1, 8, 1.0, True)]), state(2, [(1, 8, 2.0, True)]), state(2, [(1, 8, 1.0, False)])])
