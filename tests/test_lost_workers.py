"""Error paths of lost workers on a real Ray cluster: workers that never connect to the server,
and a fleet whose every worker is lost with no node left to replace them."""
import contextlib
import dataclasses
import os
import signal
import time

import pytest
import ray
from ray.cluster_utils import Cluster

from mgdist import data
from mgdist.workloads import synthetic
from mgdist.errors import TrainingError
from mgdist.fleet import Fleet
from mgdist.preprocess import Preprocessing
from mgdist.server import ServerState
from mgdist.shards import Shards
from mgdist.worker import Worker
from reference import initial_params, quantile_run

MB = 2**20


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=0, object_store_memory=100 * MB, include_dashboard=False,
        _system_config={"health_check_period_ms": 500, "health_check_failure_threshold": 4}))  # a lost node dead in ~2 s
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("d") / "data")
    synthetic.write(path, rows=2000, features=6, files=1, row_group_rows=500, progress=False)
    return path


def test_a_worker_that_does_not_connect_is_named(cluster, small_data):
    """A worker frozen (SIGSTOP) before the server opens its links never connects: the server
    gives up after --step-timeout with an error the driver treats as a lost worker."""
    node = cluster.add_node(num_cpus=1, object_store_memory=100 * MB)
    spec, config = quantile_run(data=small_data, hidden=(8,), batch_size=100, steps=5, step_timeout=2)
    ds = data.discover(small_data)
    worker = ray.remote(Worker).options(num_cpus=1, max_concurrency=2).remote(spec, config, ds, (0, 2000), 0,
                                                                               Preprocessing(ds.features))
    pid = ray.get(worker.ready.remote()).pid
    shards = Shards(config, 5, ServerState(0, initial_params(spec, 6), None), started := [])
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(ray.exceptions.GetTimeoutError, match=r"worker\(s\) \[0\] did not connect within 2 s \(--step-timeout\)"):
            shards.run(5, [worker], [100], 10)
        assert ray.get(shards.actors[0].state.remote()).step == 0
    finally:
        os.kill(pid, signal.SIGKILL)
        for actor in started:
            ray.kill(actor)
        cluster.remove_node(node, allow_graceful=False)


def test_every_worker_lost_and_none_replaceable(cluster, small_data):
    node = cluster.add_node(num_cpus=1, object_store_memory=100 * MB)
    spec, config = quantile_run(data=small_data, hidden=(8,), batch_size=100, workers=1, step_timeout=5,
                                placement_timeout=120)
    fleet = Fleet(spec, config, data.discover(small_data))
    fleet.start()
    assert fleet.info[0].node_id == node.node_id
    fleet.config = dataclasses.replace(config, placement_timeout=3)  # the replacement: 3 s to find a node, and none has a CPU
    cluster.remove_node(node, allow_graceful=False)  # no node left with a CPU
    with contextlib.suppress(ProcessLookupError):  # its worker gone at once, not when Ray declares the node dead
        os.kill(fleet.info[0].pid, signal.SIGKILL)
    deadline = time.monotonic() + 60  # until Ray declares the node dead, a replacement could still be sent there
    while any(n["NodeID"] == node.node_id and n["Alive"] for n in ray.nodes()):
        assert time.monotonic() < deadline, "the removed node is still alive after 60 s"
        time.sleep(0.1)
    with pytest.raises(TrainingError, match=r"^every worker was lost and none could be replaced$"):
        fleet.heal()
    fleet.stop()
