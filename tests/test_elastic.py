"""Nodes that join and leave a run, on a real multi-node Ray (ray.cluster_utils.Cluster). An
elastic run (--workers MIN:MAX) starts with the workers the cluster holds and grows at the
next epoch boundary when a node joins, its data order that of a fixed run with the same
sequence of worker counts; a node lost mid-run costs no step and applies none twice."""
import re

import numpy as np
import pytest
import ray
from ray._private.state import actors as actor_table
from ray.cluster_utils import Cluster

from mgdist import checkpoint
from test_faults import Driver, dataset, job_args, lose_node  # noqa: F401 - dataset is a fixture

STEPS = 600
NODE = dict(num_cpus=1, object_store_memory=100 * 2**20)


@pytest.fixture
def cluster():
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=dict(
        num_cpus=0, include_dashboard=False, object_store_memory=100 * 2**20,
        _system_config={"health_check_period_ms": 500, "health_check_failure_threshold": 4}))  # dead in ~2 s
    yield cluster
    cluster.shutdown()


def test_a_run_grows_when_a_node_joins_and_keeps_the_data_order_of_that_worker_sequence(cluster, dataset, tmp_path):
    for _ in range(2):
        cluster.add_node(**NODE)
    assert {n.node_ip_address for n in cluster.list_all_nodes()} == {"127.0.0.1"}  # every node on loopback
    args = lambda ckpt, *more: job_args(dataset, ckpt, "--address", cluster.address, "--steps", str(STEPS),  # noqa: E731
                                        "--checkpoint-every", "0", "--schedule", "linear", *more)  # lr: not of --steps
    run = Driver(tmp_path / "elastic", args(tmp_path / "elastic-ckpt", "--workers", "2:3"))
    run.wait_until(lambda: run.step() >= 30, "step 30", timeout=180)
    cluster.add_node(**NODE)
    assert run.finish() == 0, run.log
    grew = re.findall(r"^step (\d+): grew from 2 to 3 workers \(nodes joined\); shards re-planned$", run.log, re.M)
    assert len(grew) == 1, run.log
    at = int(grew[0])
    assert 30 <= at < STEPS and run.summary["workers"] == 3 and run.summary["failures_survived"] == 0
    elastic, manifest = checkpoint.load(str(tmp_path / "elastic-ckpt"), STEPS)
    assert manifest["data_order"]["workers"] == 3 and at % manifest["data_order"]["steps_per_epoch"] == 0

    # the same sequence of worker counts by hand: 2 fixed workers up to that step, then resumed with 3
    first = Driver(tmp_path / "first", args(tmp_path / "fixed", "--workers", "2", "--steps", str(at)))
    assert first.finish() == 0, first.log
    then = Driver(tmp_path / "then", args(tmp_path / "fixed", "--workers", "3", "--resume", "--resume-changes"))
    assert then.finish() == 0, then.log
    fixed, _ = checkpoint.load(str(tmp_path / "fixed"), STEPS)
    np.testing.assert_allclose(elastic["params"], fixed["params"], rtol=1e-5, atol=1e-7)
    assert elastic["steplog"]["step"].tolist() == list(range(STEPS))
    assert elastic["steplog"]["rows"].tolist() == fixed["steplog"]["rows"].tolist()


def test_an_elastic_run_starts_with_what_the_cluster_holds(cluster, dataset, tmp_path):
    cluster.add_node(**NODE)
    run = Driver(tmp_path, job_args(dataset, tmp_path / "ckpt", "--address", cluster.address, "--steps", "20",
                                    "--workers", "1:4"))
    assert run.finish() == 0, run.log
    assert run.summary["workers"] == 1 and "grew" not in run.log


def test_a_node_lost_mid_run_with_two_server_shards_ends_with_the_uninterrupted_runs_weights(cluster, dataset, tmp_path):
    nodes = [cluster.add_node(**NODE) for _ in range(3)]  # 2 workers, and a spare node for a replacement
    args = lambda ckpt: job_args(dataset, ckpt, "--address", cluster.address, "--steps", "400",  # noqa: E731
                                 "--placement-timeout", "60", "--servers", "2")
    reference = Driver(tmp_path / "reference", args(tmp_path / "reference-ckpt"))
    assert reference.finish() == 0, reference.log
    ray.init(address=cluster.address)
    try:
        run = Driver(tmp_path / "run", args(tmp_path / "ckpt"))
        run.wait_until(lambda: run.step() >= 30, "step 30", timeout=180)
        busy = {a["Address"]["NodeID"] for a in actor_table().values()
                if a["State"] == "ALIVE" and a["Name"].startswith("mgdist-worker-1-")}
        lose_node(cluster, next(n for n in nodes if n.node_id in busy))  # worker 1's
        assert run.finish() == 0, run.log
    finally:
        ray.shutdown()
    assert "replaced worker(s) [1] on their shards" in run.log and run.summary["failures_survived"] >= 1, run.log
    got, _ = checkpoint.load(str(tmp_path / "ckpt"), 400)
    expected, _ = checkpoint.load(str(tmp_path / "reference-ckpt"), 400)
    np.testing.assert_allclose(got["params"], expected["params"], rtol=1e-5, atol=1e-7)
    assert got["steplog"]["step"].tolist() == list(range(400)) and got["steplog"]["applied"].all()
