"""Nodes that join and leave a run, on a real multi-node Ray (ray.cluster_utils.Cluster). An
elastic run (--workers MIN:MAX) starts with the workers the cluster holds and grows at the
next epoch boundary when a node joins, its data order that of a fixed run with the same
sequence of worker counts; a node lost mid-run costs no step and applies none twice."""
import contextlib
import os
import re
import signal

import numpy as np
import pytest
import ray
from ray._private.state import actors as actor_table
from ray.cluster_utils import Cluster

from mgdist import checkpoint
from test_faults import Driver, dataset, job_args  # noqa: F401 - dataset is a fixture

STEPS = 600
GROW_STEPS = 2400  # ~12 s of steps here: a node takes ~1.1 s to join, and the run must still be going
CHECK_EVERY = 300  # the growing run's checkpoints: the by-hand runs stop at the first after the growth
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
    args = lambda ckpt, *more: job_args(dataset, ckpt, "--address", cluster.address, "--steps", str(GROW_STEPS),  # noqa: E731
                                        "--checkpoint-every", str(CHECK_EVERY), "--keep-checkpoints", "0",
                                        "--schedule", "linear", *more)  # lr: not of --steps
    run = Driver(tmp_path / "elastic", args(tmp_path / "elastic-ckpt", "--workers", "2:3"))
    run.wait_until(lambda: run.step() >= 30, "step 30", timeout=180)
    cluster.add_node(**NODE)
    assert run.finish() == 0, run.log
    grew = re.findall(r"^step (\d+): grew from 2 to 3 workers \(nodes joined\); shards re-planned$", run.log, re.M)
    assert len(grew) == 1, run.log
    at = int(grew[0])
    assert 30 <= at < GROW_STEPS and run.summary["workers"] == 3 and run.summary["failures_survived"] == 0
    elastic, manifest = checkpoint.load(str(tmp_path / "elastic-ckpt"), GROW_STEPS)
    assert manifest["data_order"]["workers"] == 3 and at % manifest["data_order"]["steps_per_epoch"] == 0
    assert elastic["steplog"]["step"].tolist() == list(range(GROW_STEPS))

    # the same sequence of worker counts by hand: 2 fixed workers up to that step, then resumed
    # with 3, up to the elastic run's first checkpoint after it
    upto = (at // CHECK_EVERY + 1) * CHECK_EVERY
    elastic, _ = checkpoint.load(str(tmp_path / "elastic-ckpt"), upto)
    first = Driver(tmp_path / "first", args(tmp_path / "fixed", "--workers", "2", "--steps", str(at)))
    assert first.finish() == 0, first.log
    then = Driver(tmp_path / "then", args(tmp_path / "fixed", "--workers", "3", "--steps", str(upto), "--resume",
                                          "--resume-changes"))
    assert then.finish() == 0, then.log
    fixed, _ = checkpoint.load(str(tmp_path / "fixed"), upto)
    np.testing.assert_allclose(elastic["params"], fixed["params"], rtol=1e-5, atol=1e-7)
    assert elastic["steplog"]["rows"].tolist() == fixed["steplog"]["rows"].tolist()


def test_an_elastic_run_starts_with_what_the_cluster_holds(cluster, dataset, tmp_path):
    cluster.add_node(**NODE)
    run = Driver(tmp_path, job_args(dataset, tmp_path / "ckpt", "--address", cluster.address, "--steps", "20",
                                    "--workers", "1:4"))
    assert run.finish() == 0, run.log
    assert run.summary["workers"] == 1 and "grew" not in run.log


def lose_node(cluster: Cluster, node) -> None:
    """A whole node lost: the processes of its actors killed at once, as when a machine vanishes
    (Ray alone takes ~2 s to declare the node dead, and a worker serving till then could finish a
    short run), and the node removed. Needs this process connected to the cluster (ray.init), so
    not in a module whose tests share an in-process Ray."""
    pids = [a["Pid"] for a in actor_table().values() if a["State"] == "ALIVE" and a["Address"]["NodeID"] == node.node_id]
    cluster.remove_node(node, allow_graceful=False)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_nodes_removed_mid_run_are_replaced_or_the_shards_replanned(cluster, dataset, tmp_path):
    """A node lost while a new one comes up within --placement-timeout: its worker is replaced on the
    same shard. A node lost for good: the shards are re-planned over the workers left."""
    steps = 1500
    nodes = [cluster.add_node(**NODE) for _ in range(3)]
    ray.init(address=cluster.address)
    try:
        run = Driver(tmp_path, job_args(dataset, tmp_path / "ckpt", "--address", cluster.address, "--workers", "3",
                                        "--placement-timeout", "12", "--steps", str(steps)))
        run.wait_until(lambda: run.step() >= 30, "step 30", timeout=180)
        lose_node(cluster, nodes[0])
        cluster.add_node(**NODE)
        run.wait_until(lambda: "on their shards" in run.log or "re-planned" in run.log, "recovery", timeout=120)
        run.wait_until(lambda: run.step() >= 150, "step 150", timeout=120)
        lose_node(cluster, nodes[1])
        assert run.finish() == 0, run.log
    finally:
        ray.shutdown()
    lines = [line for line in run.log.splitlines() if "on their shards" in line or "re-planned" in line]
    assert len(lines) == 2 and lines[0].startswith("replaced worker(s) [") and lines[0].endswith("] on their shards")
    assert lines[1].endswith("could not be replaced; shards re-planned over 2 workers"), run.log
    assert run.summary["workers"] == 2 and run.summary["failures_survived"] == 2
    _, manifest = checkpoint.load(str(tmp_path / "ckpt"), steps)
    assert manifest["data_order"]["workers"] == 2


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
