"""Cluster launcher configs in cluster/: valid for Ray, and each node type's resources
agree with its EC2 instance type. Nothing here contacts AWS."""
import re
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).parents[1] / "cluster"
CONFIGS = sorted(CLUSTER.glob("*.yaml"))
VCPUS = {  # vCPUs of the instance types the configs use
    "m7i.2xlarge": 8, "c7i.4xlarge": 16,
    "m7g.2xlarge": 8, "c7g.4xlarge": 16, "m8g.4xlarge": 16,
}


def arch_of(instance_type: str) -> str:
    """Graviton families have a 'g' right after the generation (m7g, c7gn, r8g, t4g)."""
    return "aarch64" if re.fullmatch(r"[a-z]+\d+g[a-z]*", instance_type.split(".")[0]) else "x86_64"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())  # as `ray up` reads it


def test_arch_of():
    for graviton in ("m7g.large", "c7gn.xlarge", "r8g.2xlarge", "g5g.xlarge", "m8g.4xlarge"):
        assert arch_of(graviton) == "aarch64"
    for x86 in ("m7i.large", "c7a.xlarge", "g5.xlarge", "m7i-flex.large", "c7i.4xlarge"):
        assert arch_of(x86) == "x86_64"


def test_cluster_dir_has_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_ray_validates_config(path):
    validate_config(prepare_config(load(path)))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_node_types_declare_their_arch_and_vcpus(path):
    for name, node in load(path)["available_node_types"].items():
        instance = node["node_config"]["InstanceType"]
        arch = [r.removeprefix("arch_") for r in node["resources"] if r.startswith("arch_")]
        assert arch == [arch_of(instance)], f"{name}: {instance} declares arch {arch}"
        assert node["resources"]["arch_" + arch[0]] == 1, name
        assert node["resources"].get("CPU") == VCPUS[instance], f"{name}: {instance} CPU"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_one_ami_per_arch(path):
    amis: dict[str, set[str]] = {}
    for node in load(path)["available_node_types"].values():
        config = node["node_config"]
        amis.setdefault(arch_of(config["InstanceType"]), set()).add(config["ImageId"])
    assert all(len(ids) == 1 for ids in amis.values()), amis
    assert len(set.union(*amis.values())) == len(amis), f"an AMI is shared across archs: {amis}"


def test_aws_mixes_archs_with_x86_head_and_private_dashboard():
    config = load(CLUSTER / "aws.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert arch_of(head["node_config"]["InstanceType"]) == "x86_64"
    assert {arch_of(t["node_config"]["InstanceType"]) for t in types.values() if t is not head} \
        == {"aarch64", "x86_64"}
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start
    # every node installs the Ray these tests (and the local `ray` CLI) run
    assert f'"ray[default]=={ray.__version__}"' in " ".join(config["setup_commands"])


def test_aws_turns_rays_token_auth_on_with_one_token_file_everywhere():
    config = load(CLUSTER / "aws.yaml")
    token = "~/.ray/mgdist_auth_token"
    assert config["file_mounts"][token] == token
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token} ray start" in " ".join(start.split())
    readme = (CLUSTER / "README.md").read_text()
    assert f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token}" in readme and "RAY_AUTH_MODE=disabled" not in \
        readme.split("## Local AArch64 node")[0]


def test_worker_policy_reads_the_data_and_writes_only_predictions():
    """The documented worker role lets `mgdist predict`'s tasks write where predictions go, and no more."""
    import json
    import re
    text = (CLUSTER / "README.md").read_text()
    policy = json.loads(re.search(r"```json\n(.*?)```", text, re.S)[1])
    writes = [s for s in policy["Statement"] if any(a.startswith("s3:Put") for a in s["Action"])]
    assert [s["Resource"] for s in writes] == ["arn:aws:s3:::BUCKET/PREDICTIONS_PREFIX/*"]
    assert all(s["Effect"] == "Allow" and "*" not in "".join(s["Action"]) for s in policy["Statement"])
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert not actions & {"s3:DeleteObject", "s3:PutBucketPolicy", "s3:*"}
    assert "file://worker-policy.json" in text and "AmazonS3ReadOnlyAccess" not in text
