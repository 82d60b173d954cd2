"""Several Ray nodes on one machine, labelled by architecture: workers land where asked."""
import numpy as np
import pytest
import ray
from ray._private.state import actors as actor_table  # every actor of the cluster, ended ones too
from ray.cluster_utils import Cluster

from mgdist import checkpoint, data
from mgdist.config import TrainConfig
from mgdist.errors import TrainingError
from mgdist.fleet import Fleet
from mgdist.model import ModelSpec
from mgdist.trainer import run
from mgdist.workloads import synthetic
from reference import quantile_run, single_process_params

MB = 2**20


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, object_store_memory=100 * MB,
                                                           include_dashboard=False))
    x86 = c.add_node(num_cpus=1, resources={"arch_x86_64": 1}, object_store_memory=100 * MB)
    arm = c.add_node(num_cpus=1, resources={"arch_aarch64": 1}, object_store_memory=100 * MB)
    ray.init(address=c.address)
    yield {"x86_64": x86.node_id, "aarch64": arm.node_id}
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("d") / "data")
    synthetic.write(path, rows=4000, features=6, files=2, row_group_rows=500, progress=False)
    return path


def config(path: str, **kw) -> tuple[ModelSpec, TrainConfig]:
    return quantile_run(**dict(data=path, hidden=(8,), batch_size=400, steps=20, log_every=10) | kw)


def test_workers_land_on_the_architecture_asked(cluster, small_data):
    fleet = Fleet(*config(small_data, arch_workers={"x86_64": 1, "aarch64": 1}, workers=2), data.discover(small_data))
    fleet.start()
    placed = sorted((info.node_id, opts["resources"]) for info, opts in zip(fleet.info, fleet.options))
    assert placed == sorted([(cluster["aarch64"], {"arch_aarch64": 0.001}), (cluster["x86_64"], {"arch_x86_64": 0.001})])
    fleet.stop()


def test_unsatisfiable_request_fails_clearly(cluster, small_data):
    with pytest.raises(TrainingError, match="aarch64 nodes need 2 CPUs, have 1"):
        Fleet(*config(small_data, arch_workers={"aarch64": 2}, workers=2, placement_timeout=2), data.discover(small_data))


def test_training_across_labelled_nodes(cluster, small_data, tmp_path):
    """Each worker ran on the node of its architecture (ranks in sorted order of architecture: aarch64
    first), and together they produced the weights of one process on the same batches."""
    before = set(actor_table())
    spec, settings = config(small_data, arch_workers={"x86_64": 1, "aarch64": 1}, workers=2, checkpoint_dir=str(tmp_path / "ckpt"))
    summary = run(spec, settings).summary
    assert summary["workers"] == 2 and summary["steps"] == 20
    ran_on = {int(a["Name"].split("-")[2]): a["Address"]["NodeID"] for key, a in actor_table().items()
              if key not in before and a["Name"].startswith("mgdist-worker-")}
    assert ran_on == {0: cluster["aarch64"], 1: cluster["x86_64"]}
    arrays, manifest = checkpoint.load(settings.checkpoint_dir, 20)
    assert manifest["data_order"]["shards"] == [[0, 2000], [2000, 4000]]  # 4,000 rows
    np.testing.assert_allclose(arrays["params"], single_process_params(spec, settings, [(0, 2000), (2000, 4000)]),
                               rtol=1e-3, atol=5e-4)
