"""End to end through Ray's job API: `ray start --head` on 127.0.0.1, `ray job submit` of jobs/quantile.py."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from mgdist.workloads import synthetic

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(n: int) -> list[int]:
    """Ports free right now. `ray start` takes its ports as numbers, not 0, so another process may take
    one before Ray binds it: ray_head retries with new ones when Ray cannot bind them."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def stop_by_pid(marker: str) -> None:
    """Kill the processes of one Ray instance (found by its temp dir), never any other Ray."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(pid), signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass


@pytest.fixture
def ray_head():
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    for attempt in range(3):
        gcs, dashboard, agent, agent_grpc, metrics, runtime_env = free_ports(6)
        started = subprocess.run(
            [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=2",
             "--object-store-memory=200000000", f"--temp-dir={temp}", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             # every port of this head its own, so it never collides with another Ray on the machine
             f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
             f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}", "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=120)
        if started.returncode == 0:
            break
        stop_by_pid(temp)  # a port taken meanwhile: start again on new ones
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    yield f"http://127.0.0.1:{dashboard}", env
    stop_by_pid(temp)
    shutil.rmtree(temp, ignore_errors=True)


def test_job_submit_trains_and_reports(ray_head, tmp_path):
    address, env = ray_head
    data = tmp_path / "data"
    synthetic.write(str(data), rows=40000, features=6, files=2, row_group_rows=5000, seed=5, progress=False)
    summary = tmp_path / "summary.json"
    for attempt in range(30):  # the head's job agent needs a few seconds after `ray start`
        job = subprocess.run(
            [RAY, "job", "submit", f"--address={address}", f"--working-dir={REPO}", f"--submission-id=e2e{attempt}",
             "--", "python", "jobs/quantile.py", "--data", str(data), "--steps", "400", "--batch-size", "2048",
             "--lr", "0.02", "--hidden", "64", "--seed", "1", "--log-every", "50", "--summary-json", str(summary)],
            env=env, capture_output=True, text=True, timeout=300)
        if "No available agent" not in job.stderr:
            break
        time.sleep(2)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert JobSubmissionClient(address).get_job_status(f"e2e{attempt}") == JobStatus.SUCCEEDED
    assert "step 400/400" in job.stdout and "== summary ==" in job.stdout  # progress and report in the job log
    result = json.loads(summary.read_text())
    assert result["steps"] == 400 and result["workers"] == 2
    assert result["pinball"] < 1.03 * result["oracle_loss"], result  # issue 4's bar, in y's units
    assert all(abs(share - float(q)) < 0.02 for q, share in result["coverage"].items()), result["coverage"]


FORECASTER = '''
from micrograd import Value
from micrograd.losses import mse
from micrograd.nn import MLP


class Forecaster:
    """A user's model, in the user's working directory only."""

    def __init__(self, features, hidden=(16,)):
        self.net = MLP(features, hidden, 1, "tanh", 0)
        X, y = Value.placeholder("X", (None, features)), Value.placeholder("y", (None,))
        self.prediction = self.net(X)[:, 0]
        self.loss = mse(self.prediction, y)

    def parameters(self):
        return self.net.parameters()
'''


def test_job_submit_of_a_model_in_the_working_directory(ray_head, tmp_path):
    """`ray job submit --working-dir . -- python jobs/train.py --model mymodels:Forecaster`: the model
    exists only in the submitted directory, and the driver and the workers import it from there."""
    address, env = ray_head
    data = tmp_path / "data"
    synthetic.write(str(data), rows=20000, features=6, files=2, row_group_rows=2500, seed=5, progress=False)
    work = tmp_path / "work"
    (work / "jobs").mkdir(parents=True)
    (work / "mymodels.py").write_text(FORECASTER)
    shutil.copy(REPO / "jobs/train.py", work / "jobs/train.py")
    summary = tmp_path / "summary.json"
    for attempt in range(30):  # the head's job agent needs a few seconds after `ray start`
        job = subprocess.run(
            [RAY, "job", "submit", f"--address={address}", f"--working-dir={work}", f"--submission-id=own{attempt}",
             "--", "python", "jobs/train.py", "--model", "mymodels:Forecaster", "--model-args", '{"hidden": [16]}',
             "--data", str(data), "--steps", "100", "--batch-size", "1024", "--log-every", "50",
             "--summary-json", str(summary)], env=env, capture_output=True, text=True, timeout=300)
        if "No available agent" not in job.stderr:
            break
        time.sleep(2)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert JobSubmissionClient(address).get_job_status(f"own{attempt}") == JobStatus.SUCCEEDED
    result = json.loads(summary.read_text())
    assert result["steps"] == 100 and result["workers"] == 2
    _, y = synthetic.sample(20000, 6, seed=5)
    assert result["val_loss"] < 0.9 * float(y.var())  # it learned: better than predicting the mean
