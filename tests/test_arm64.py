"""A real AArch64 Ray node on this x86_64 machine (cluster/local-arm64.sh: a Debian arm64 root
under qemu-user), joined to a local x86_64 head: it joins, jobs/quantile.py trains across both
architectures, and a worker computes the same gradient on either from the same weights and rows.

Slow and root-only: the first build takes ~10 min (debootstrap, wheels installed under
emulation), later runs ~2 min. `python -m pytest -m slow tests/test_arm64.py -s` prints the
timings. Ray on the pair needs Python 3.11.2 (Debian's) while this test may run on another
Python, so everything that talks to it runs through `local-arm64.sh exec` (the head venv's
python, inside the pair's loopback-only network namespace).
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from mgdist import checkpoint
from mgdist.workloads import synthetic
from mgdist.workloads.quantile import parse_args
from reference import single_process_params

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "cluster" / "local-arm64.sh"
TIMINGS: dict[str, float] = {}

NODES = """
import json, ray
ray.init()
print(json.dumps([{"alive": n["Alive"], "resources": n["Resources"]} for n in ray.nodes()]))
"""

# One Worker actor on each architecture, both with the same config, dataset, rows and rank,
# so that each step picks the same rows; both get the same (trained-looking) weights.
GRADIENTS = """
import json, sys
import numpy as np
import ray
from mgdist import data
from micrograd.nn import flatten
from mgdist.config import TrainConfig
from mgdist.model import ModelSpec
from mgdist.preprocess import Preprocessing
from mgdist.worker import Worker
from mgdist.workloads.quantile import QuantileMLP

path, out = sys.argv[1:]
ray.init()
ds = data.discover(path)
config = TrainConfig(data=path, seed=7)
spec = ModelSpec(QuantileMLP, {"hidden": [64, 64], "seed": 7})
params, _ = flatten(spec.build(len(ds.features)).parameters())
weights = params + np.float32(0.3) * np.random.default_rng(11).standard_normal(params.size, np.float32)
workers = {arch: ray.remote(Worker).options(num_cpus=1, resources={f"arch_{arch}": 0.001}).remote(
               spec, config, ds, (0, ds.rows), 0, Preprocessing(ds.features)) for arch in ("x86_64", "aarch64")}
info = {arch: ray.get(w.ready.remote()) for arch, w in workers.items()}
batch = 512
result = {"machine": {arch: i.arch for arch, i in info.items()}, "steps": []}
for step in range(3):
    (g86, n86, l86, _), (garm, narm, larm, _) = ray.get([workers[arch].grad.remote(
        weights, step, batch, info[arch].train // batch) for arch in ("x86_64", "aarch64")])
    result["steps"].append({"rows": [n86, narm], "loss": [l86, larm], "x86_64": g86.tolist(), "aarch64": garm.tolist()})
json.dump(result, open(out, "w"))
"""


def script(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def loopback_only() -> bool:
    """Inside a namespace with no network: the root must have been built outside it."""
    return not subprocess.run(["ip", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def pair():
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, chroot, mounts, network namespaces)")
    missing = [t for t in ("debootstrap", "update-binfmts", "qemu-aarch64-static") if not shutil.which(t)]
    if missing:
        pytest.skip(f"missing {missing}: apt-get install qemu-user-static binfmt-support debootstrap")
    if not loopback_only():
        t = time.monotonic()
        built = script("build", timeout=3600)
        assert built.returncode == 0, built.stderr[-3000:]
        TIMINGS["build_s"] = time.monotonic() - t
        print("\n" + "\n".join(line for line in built.stderr.splitlines() if line.startswith("[local-arm64]")))
    was_up = script("status", timeout=60).returncode == 0  # a developer's pair: use it, leave it up
    t = time.monotonic()
    up = script("up", timeout=900)
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
    TIMINGS["up_s"] = time.monotonic() - t
    # Both nodes read the data at the same path: /tmp is shared with the arm64 root.
    work = Path(tempfile.mkdtemp(prefix="mgarm-test-", dir="/tmp"))
    synthetic.write(str(work / "data"), rows=4000, features=8, files=2, row_group_rows=500, progress=False)
    yield work
    shutil.rmtree(work, ignore_errors=True)
    if not was_up:
        down = script("down", timeout=300)
        assert down.returncode == 0, down.stderr[-2000:]
    print("\nlocal arm64 timings: " + ", ".join(f"{k} {v:.3g}" for k, v in TIMINGS.items()))


def test_aarch64_node_joined(pair):
    nodes = script("exec", "python", "-c", NODES, timeout=300)
    assert nodes.returncode == 0, nodes.stderr[-3000:]
    alive = [n["resources"] for n in json.loads(nodes.stdout.splitlines()[-1]) if n["alive"]]
    assert len(alive) == 2
    arm = [r for r in alive if r.get("arch_aarch64")]
    x86 = [r for r in alive if r.get("arch_x86_64")]
    assert len(arm) == 1 and len(x86) == 1 and arm[0].get("CPU", 0) >= 1 and x86[0].get("CPU", 0) >= 1


def test_quantile_job_trains_across_architectures(pair):
    """Workers on both architectures, and the weights they trained are those of one process (on
    this host, from tests/reference.py) on the same global batches."""
    summary = pair / "summary.json"
    args = ["--data", str(pair / "data"), "--standardize", "none", "--arch-workers", "x86_64=1,aarch64=1", "--steps", "30", "--batch-size", "256",
            "--hidden", "8", "--log-every", "10", "--placement-timeout", "300", "--summary-json", str(summary),
            "--checkpoint-dir", str(pair / "ckpt")]
    t = time.monotonic()
    job = script("exec", "python", "jobs/quantile.py", *args, timeout=900)
    TIMINGS["training_s"] = time.monotonic() - t
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    log = job.stdout + job.stderr  # progress goes to stderr, the summary to stdout
    placed = re.search(r"2 workers on \[([^\]]*)\]", log)  # each worker's node/os.uname().machine
    assert placed and sorted(w.strip("' ").split("/")[-1] for w in placed.group(1).split(",")) == ["aarch64", "x86_64"]
    assert "step 30/30" in log and "== summary ==" in job.stdout
    result = json.loads(summary.read_text())
    assert result["steps"] == 30 and result["workers"] == 2
    arrays, manifest = checkpoint.load(str(pair / "ckpt"), 30)
    expected = single_process_params(*parse_args(args), manifest["data_order"]["shards"])
    np.testing.assert_allclose(arrays["params"], expected, rtol=1e-3, atol=5e-4)  # float32 on two CPUs, through Adam


def test_same_gradient_on_both_architectures(pair):
    out = pair / "gradients.json"
    t = time.monotonic()
    run = script("exec", "python", "-c", GRADIENTS, str(pair / "data"), str(out), timeout=600)
    TIMINGS["gradient_check_s"] = time.monotonic() - t
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["machine"] == {"x86_64": "x86_64", "aarch64": "aarch64"}  # os.uname() where each ran
    worst = worst_abs = 0.0
    for step in result["steps"]:
        g86, garm = np.array(step["x86_64"], np.float32), np.array(step["aarch64"], np.float32)
        assert step["rows"][0] == step["rows"][1] == 512
        assert np.isfinite(garm).all() and np.isfinite(g86).all() and np.abs(g86).max() > 0
        # float32 tolerance: 1e-5 relative per component, and 1e-5 of the gradient's scale for
        # components that are sums over 512 rows with cancellation (BLAS kernels differ by CPU).
        scale = np.abs(g86).max()
        np.testing.assert_allclose(garm, g86, rtol=1e-5, atol=1e-5 * scale)
        np.testing.assert_allclose(step["loss"][1], step["loss"][0], rtol=1e-6)
        diff = float(np.abs(garm - g86).max())
        worst_abs, worst = max(worst_abs, diff), max(worst, diff / scale)
    TIMINGS["max_abs_grad_diff"], TIMINGS["max_grad_diff_over_scale"] = worst_abs, worst
