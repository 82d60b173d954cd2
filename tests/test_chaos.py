"""Soak: one long run of jobs/quantile.py, checkpoints on this module's own S3 server, through a
seeded schedule of faults: workers killed (ray.kill and SIGKILL), a parameter server shard (of
MGDIST_CHAOS_SERVERS, default 2) killed and frozen, the S3 server stopped and started again, a
worker starved into a straggler. Each fault is injected once the run has stepped on from the last one's recovery. The run must end
with the uninterrupted run's parameters, and its step log (the server's record of every step
it took, carried through every restore into the checkpoint) must show each step once, with the
rows and loss of the uninterrupted run's.

    python -m pytest -m slow tests/test_chaos.py -s      (or: python bench/chaos.py [--seeds N ...])
Inside a loopback-only network namespace, as README.md says. MGDIST_CHAOS_SEED picks the schedule.
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import ray
from ray._private.state import actors as actor_table

import s3server
from mgdist import checkpoint
from test_faults import Driver, dataset, job_args, ray_address  # noqa: F401 - the last two are fixtures

pytestmark = pytest.mark.slow

STEPS = 1500
SEED = int(os.environ.get("MGDIST_CHAOS_SEED", "7"))
SERVERS = int(os.environ.get("MGDIST_CHAOS_SERVERS", "2"))  # parameter server shards: a fault hits one of them
FAULTS = ["ray.kill worker", "ray.kill worker", "SIGKILL worker", "kill server", "kill server", "freeze server",
          "stop S3", "stop S3", "starve worker"]  # in a seeded order; nine in all


def chaos_args(data_path: str, ckpt: str, address: str) -> list[str]:
    return job_args(data_path, ckpt, "--address", address, "--steps", str(STEPS), "--step-timeout", "2",
                    "--checkpoint-every", "20", "--max-failures", "30", "--servers", str(SERVERS))


@dataclass
class Fault:
    kind: str
    at_step: int          # the metrics log's step when it was injected
    recovered_s: float    # until the run's log showed its recovery
    after_step: int       # the metrics log's step then


def _pid(run: Driver, kind: str, rank: int) -> int:
    """The process id of this run's live worker `rank` (or server shard)."""
    name = f"mgdist-{kind}-{rank}-"
    return next(a["Pid"] for a in actor_table().values()
                if a["State"] == "ALIVE" and a["Name"].startswith(name) and a["Name"] not in run.older)


def _starve(pid: int, done: threading.Event) -> None:
    """Stop `pid` 3 s, let it run 0.5 s, over and over, until `done` or it is gone."""
    with contextlib.suppress(ProcessLookupError):
        while not done.is_set():
            os.kill(pid, signal.SIGSTOP)
            time.sleep(3)
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.5)


def inject(run: Driver, kind: str, rng: random.Random, s3: s3server.S3Server) -> None:
    """Inflict one fault and wait until the run's log shows it dealt with."""
    log = run.log
    count = lambda text: run.log.count(text) > log.count(text)  # noqa: E731 - a new line of this text since now
    rank, shard = rng.randrange(2), rng.randrange(SERVERS)
    if kind in ("ray.kill worker", "SIGKILL worker"):
        if kind == "ray.kill worker":
            ray.kill(run.actors("worker")[rank], no_restart=False)
        else:
            os.kill(_pid(run, "worker", rank), signal.SIGKILL)
        run.wait_until(lambda: count("on their shards"), f"worker {rank} replaced")
    elif kind == "kill server":
        ray.kill(run.actors("server")[shard], no_restart=False)
        run.wait_until(lambda: count("parameter server lost: restored step"), "server restored")
    elif kind == "freeze server":
        pid = _pid(run, "server", shard)
        os.kill(pid, signal.SIGSTOP)
        try:
            run.wait_until(lambda: count("parameter server lost: restored step"), "frozen server replaced")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    elif kind == "stop S3":
        s3server.stop(s3)
        try:
            run.wait_until(lambda: count("training goes on, the next save tries again"), "a save given up")
        finally:
            s3server.start_again(s3)
    elif kind == "starve worker":
        pid, done = _pid(run, "worker", rank), threading.Event()
        threading.Thread(target=_starve, args=(pid, done), daemon=True).start()
        try:
            run.wait_until(lambda: count("on their shards"), f"straggler {rank} replaced")
        finally:
            done.set()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    else:
        raise ValueError(kind)


def survive(run: Driver, schedule: list[str], s3: s3server.S3Server, rng: random.Random,
            gap: Callable[[], int]) -> list[Fault]:
    """Inject each fault of `schedule` once the run has taken `gap()` more steps since the last."""
    faults: list[Fault] = []
    for kind in schedule:
        due = (faults[-1].after_step if faults else 0) + gap()
        at = run.wait_until(lambda: run.step() >= due and run.step(), f"step {due}, for {kind!r}", timeout=180)
        assert at < STEPS - 100, f"the run reached step {at} before fault {len(faults) + 1} of {len(schedule)}"
        t = time.monotonic()
        inject(run, kind, rng, s3)
        faults.append(Fault(kind, at, time.monotonic() - t, run.step()))
    return faults


def test_a_run_through_nine_faults_ends_as_the_uninterrupted_run(ray_address, dataset, own_s3_env, tmp_path):
    reference = Driver(tmp_path / "reference", chaos_args(dataset, str(tmp_path / "reference-ckpt"), ray_address))
    assert reference.finish(timeout=600) == 0, reference.log
    expected, _ = checkpoint.load(str(tmp_path / "reference-ckpt"), STEPS)

    rng = random.Random(SEED)
    schedule = rng.sample(FAULTS, len(FAULTS))
    ckpt = f"s3://{own_s3_env.bucket}/chaos-{SEED}"
    run = Driver(tmp_path / "chaos", chaos_args(dataset, ckpt, ray_address))
    faults = survive(run, schedule, own_s3_env, rng, gap=lambda: rng.randrange(20, 80))
    assert run.finish(timeout=600) == 0, run.log

    print(f"\nseed {SEED}, {SERVERS} server shard(s): {len(faults)} faults survived, "
          f"{run.summary['failures_survived']} counted as failures")
    for f in faults:
        print(f"  step {f.at_step:5d}  {f.kind:16s} recovered in {f.recovered_s:5.1f} s, by step {f.after_step}")
    got, manifest = checkpoint.load(ckpt, STEPS)
    assert manifest["step"] == STEPS and manifest["data_order"]["workers"] == 2  # never re-planned over fewer
    np.testing.assert_allclose(got["params"], expected["params"], rtol=1e-5, atol=1e-7)
    log, want = got["steplog"], expected["steplog"]
    assert log["step"].tolist() == list(range(STEPS)) and log["applied"].all()  # each step once, none lost
    assert log["rows"].tolist() == want["rows"].tolist()
    np.testing.assert_allclose(log["loss"], want["loss"], rtol=1e-5)  # the same rows' losses under the same weights
    assert run.summary["failures_survived"] >= len(faults) - schedule.count("stop S3")  # an outage costs no failure
