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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    dashboard = free_port()
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
                    "--num-cpus=2", "--object-store-memory=200000000", f"--temp-dir={temp}",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    # every port of this head its own, so it never collides with another Ray on the machine
                    f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                    f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                    "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=120)
    yield f"http://127.0.0.1:{dashboard}", env
    stop_by_pid(temp)
    shutil.rmtree(temp, ignore_errors=True)


def test_job_submit_trains_and_reports(ray_head, tmp_path):
    address, env = ray_head
    data = tmp_path / "data"
    synthetic.write(str(data), rows=6000, features=8, files=2, row_group_rows=1000, progress=False)
    summary = tmp_path / "summary.json"
    for attempt in range(30):  # the head's job agent needs a few seconds after `ray start`
        job = subprocess.run(
            [RAY, "job", "submit", f"--address={address}", f"--working-dir={REPO}", f"--submission-id=e2e{attempt}",
             "--", "python", "jobs/quantile.py", "--data", str(data), "--steps", "150", "--batch-size", "512",
             "--lr", "0.01", "--hidden", "16", "--log-every", "10", "--summary-json", str(summary)],
            env=env, capture_output=True, text=True, timeout=300)
        if "No available agent" not in job.stderr:
            break
        time.sleep(2)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert JobSubmissionClient(address).get_job_status(f"e2e{attempt}") == JobStatus.SUCCEEDED
    assert "step 150/150" in job.stdout and "== summary ==" in job.stdout  # progress and report in the job log
    result = json.loads(summary.read_text())
    assert result["steps"] == 150 and result["workers"] == 2
    assert result["oracle_loss"] < result["pinball"] < 1.5 * result["oracle_loss"]  # in y's units
