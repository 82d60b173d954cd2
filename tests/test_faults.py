"""Faults survived on a real local Ray, each injected into a real run of jobs/quantile.py.

The driver runs as a child process joined to this module's Ray (or, to be SIGKILLed, with a
Ray of its own); the test finds its named actors, waits until the metrics file shows
training under way, and kills something. A run that survives must end with the same
parameters as the uninterrupted run: no step lost, none applied twice.
"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from ray._private.state import actors as actor_table  # every actor of the cluster, with its pid

from mgdist import checkpoint, data
from mgdist.workloads import synthetic
from reference import epoch_rows, held_out, shares

JOB = Path(__file__).resolve().parents[1] / "jobs" / "quantile.py"
STEPS, BATCH, SEED, VAL = 240, 600, 3, 0.1


@pytest.fixture(scope="module")
def ray_address():
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False)  # never another's
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("data") / "train")
    synthetic.write(path, rows=12000, features=6, files=2, row_group_rows=1000, seed=1, progress=False)
    return path


def job_args(data_path: str, ckpt: Path, *extra: str) -> list[str]:
    return ["--data", data_path, "--hidden", "16", "--batch-size", str(BATCH), "--steps", str(STEPS),
            "--lr", "0.01", "--warmup-steps", "10", "--seed", str(SEED), "--val-fraction", str(VAL),
            "--log-every", "5", "--checkpoint-dir", str(ckpt), "--checkpoint-every", "40",
            "--step-timeout", "60", "--placement-timeout", "30", *extra]


class Driver:
    """jobs/quantile.py in a child process; its output, metrics and summary in files under `where`."""

    def __init__(self, where: Path, args: list[str], env: dict | None = None):
        where.mkdir(parents=True, exist_ok=True)
        self.older = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)} if ray.is_initialized() else set()
        self.metrics, self.summary_path, self.log_path = where / "metrics.jsonl", where / "summary.json", where / "log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(JOB), *args, "--metrics", str(self.metrics), "--summary-json",
                 str(self.summary_path)], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def step(self) -> int:
        """The last step in the metrics file (0 before the first)."""
        text = self.metrics.read_text() if self.metrics.exists() else ""
        lines = text[:text.rfind("\n") + 1].splitlines()  # whole lines only: the driver may be mid-write
        return json.loads(lines[-1])["step"] if lines else 0

    def wait_until(self, ready, what: str, timeout: float = 120):
        """Poll ready() until it returns something true, while the driver runs."""
        deadline = time.monotonic() + timeout
        while not (found := ready()):
            assert self.process.poll() is None, f"driver exited ({self.process.returncode}) before {what}:\n{self.log}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{self.log}"
            time.sleep(0.01)
        return found

    def finish(self, timeout: float = 180) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"driver still running after {timeout} s:\n{self.log}") from None

    def actors(self, kind: str) -> dict[int, ray.actor.ActorHandle]:
        """This run's live actors of a kind ("worker" or "server"), by worker rank or server shard."""
        found = [a for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith(f"mgdist-{kind}-") and a["name"] not in self.older]
        return {int(a["name"].split("-")[2]): ray.get_actor(a["name"], namespace=a["namespace"]) for a in found}

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def summary(self) -> dict:
        return json.loads(self.summary_path.read_text())


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (for a worker: the processes it forked to compute on)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            state, parent = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[:2]
        except OSError:  # gone meanwhile
            continue
        if int(parent) == pid and state != "Z":
            found.append(int(entry))
    return sorted(found)


def final_params(ckpt: Path, step: int = STEPS) -> np.ndarray:
    arrays, manifest = checkpoint.load(str(ckpt), step)
    assert manifest["step"] == step
    return arrays["params"]


@pytest.fixture(scope="module")
def reference(ray_address, dataset, tmp_path_factory) -> np.ndarray:
    """Final parameters of the uninterrupted run."""
    where = tmp_path_factory.mktemp("reference")
    run = Driver(where, job_args(dataset, where / "ckpt", "--address", ray_address))
    assert run.finish() == 0, run.log
    assert run.summary["failures_survived"] == 0
    return final_params(where / "ckpt")


def assert_each_step_once(ckpt: Path, steps: int = STEPS) -> None:
    """The step log of the final checkpoint: steps 0..steps-1, each applied once, in order."""
    log = checkpoint.load(str(ckpt), steps)[0]["steplog"]
    assert log["step"].tolist() == list(range(steps)) and log["applied"].all()


def assert_same_as_reference(params: np.ndarray, reference: np.ndarray) -> None:
    assert np.isfinite(params).all()
    np.testing.assert_allclose(params, reference, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("how", ["ray.kill", "SIGKILL"])
def test_worker_killed_mid_run_is_replaced_and_its_steps_recomputed(ray_address, dataset, reference, tmp_path, how):
    run = Driver(tmp_path, job_args(dataset, tmp_path / "ckpt", "--address", ray_address))
    worker = run.wait_until(lambda: run.actors("worker").get(1), "worker 1")
    pid = ray.get(worker.ready.remote()).pid
    killed_after = run.wait_until(lambda: run.step() >= 30 and run.step(), "step 30")
    if how == "ray.kill":
        ray.kill(worker, no_restart=False)
    else:
        os.kill(pid, signal.SIGKILL)
    assert run.finish() == 0, run.log
    assert killed_after < STEPS
    assert "failure 1 at step" in run.log and "replaced worker(s) [1] on their shards" in run.log, run.log
    assert run.summary["failures_survived"] == 1 and run.summary["workers"] == 2
    assert_same_as_reference(final_params(tmp_path / "ckpt"), reference)


def test_a_workers_forked_process_killed_mid_run_is_forked_again_and_costs_no_step(ray_address, dataset, tmp_path):
    """--cpus-per-worker 2: the worker computes on itself and a process it forked. That one
    killed (as the kernel's out-of-memory killer would) is found at the next step, forked again
    and the step computed again: no failure, and the weights of the uninterrupted run."""
    args = lambda ckpt: job_args(dataset, ckpt, "--address", ray_address, "--workers", "1",  # noqa: E731
                                 "--cpus-per-worker", "2")
    whole = Driver(tmp_path / "whole", args(tmp_path / "whole-ckpt"))
    assert whole.finish() == 0, whole.log
    run = Driver(tmp_path / "run", args(tmp_path / "ckpt"))
    worker = run.wait_until(lambda: run.actors("worker").get(0), "worker 0")
    pid = ray.get(worker.ready.remote()).pid
    [lane] = run.wait_until(lambda: children(pid), "the worker's forked process")
    killed_at = run.wait_until(lambda: run.step() >= 30 and run.step(), "step 30")
    os.kill(lane, signal.SIGKILL)
    [again] = run.wait_until(lambda: [p for p in children(pid) if p != lane], "a process forked again")
    assert run.finish() == 0, run.log
    assert killed_at < STEPS and again != lane
    assert run.summary["failures_survived"] == 0 and "failure 1" not in run.log, run.log
    assert_same_as_reference(final_params(tmp_path / "ckpt"), final_params(tmp_path / "whole-ckpt"))


def test_hung_worker_is_found_within_step_timeout_and_replaced(ray_address, dataset, reference, tmp_path):
    """A worker frozen alive (SIGSTOP: it holds its connections but never answers) costs about
    --step-timeout to find, once, not --step-timeout for every step the server asked for."""
    args = job_args(dataset, tmp_path / "ckpt", "--address", ray_address)
    args[args.index("--step-timeout") + 1] = "3"
    args[args.index("--log-every") + 1] = "40"  # the server runs 40 steps per call: 120 s of step timeouts
    run = Driver(tmp_path, args)
    worker = run.wait_until(lambda: run.actors("worker").get(1), "worker 1")
    pid = ray.get(worker.ready.remote()).pid
    run.wait_until(lambda: run.step() >= 30, "step 30")
    os.kill(pid, signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        run.wait_until(lambda: "replaced worker(s) [1] on their shards" in run.log, "the worker replaced", timeout=60)
        found_in = time.monotonic() - frozen
        print(f"hung worker replaced {found_in:.1f} s after it froze")
        assert run.finish() == 0, run.log
    finally:
        with contextlib.suppress(ProcessLookupError):  # Ray has killed it, unless the test failed first
            os.kill(pid, signal.SIGKILL)
    assert "worker(s) [1] did not answer within 3 s (--step-timeout)" in run.log, run.log
    assert run.log.count("did not answer within") == 1, run.log  # found once, not once per step asked for
    assert run.summary["failures_survived"] == 1
    assert_same_as_reference(final_params(tmp_path / "ckpt"), reference)


def test_parameter_server_killed_is_restored_and_lost_steps_replayed(ray_address, dataset, reference, tmp_path):
    run = Driver(tmp_path, job_args(dataset, tmp_path / "ckpt", "--address", ray_address))
    server = run.wait_until(lambda: run.actors("server").get(0), "the parameter server")
    run.wait_until(lambda: run.step() >= 50, "step 50")
    ray.kill(server, no_restart=False)
    assert run.finish() == 0, run.log
    assert "parameter server lost: restored step" in run.log, run.log
    assert run.summary["failures_survived"] == 1
    assert_same_as_reference(final_params(tmp_path / "ckpt"), reference)
    assert_each_step_once(tmp_path / "ckpt")  # the lost server's steps after the driver's last state: replayed once


def test_a_server_shard_then_a_worker_killed_with_two_shards(ray_address, dataset, reference, tmp_path):
    """--servers 2: a lost shard is restored (with the other, to the driver's last state) and the
    steps since replayed; a lost worker is replaced and its steps recomputed by both shards."""
    run = Driver(tmp_path, job_args(dataset, tmp_path / "ckpt", "--address", ray_address, "--servers", "2"))
    shard = run.wait_until(lambda: run.actors("server").get(1), "parameter server shard 1")
    assert set(run.actors("server")) == {0, 1}
    run.wait_until(lambda: run.step() >= 50, "step 50")
    ray.kill(shard, no_restart=False)
    run.wait_until(lambda: "parameter server lost: restored step" in run.log, "the shard restored")
    worker = run.wait_until(lambda: run.actors("worker").get(1), "worker 1")
    run.wait_until(lambda: run.step() >= 130, "step 130")
    ray.kill(worker, no_restart=False)
    assert run.finish() == 0, run.log
    assert "2 parameter server shards" in run.log and "of 2 started again)" in run.log, run.log
    assert "replaced worker(s) [1] on their shards" in run.log, run.log
    assert run.summary["failures_survived"] == 2
    assert_same_as_reference(final_params(tmp_path / "ckpt"), reference)
    assert_each_step_once(tmp_path / "ckpt")


def test_a_straggler_that_still_answers_is_replaced(ray_address, dataset, reference, tmp_path):
    """A worker starved of CPU (stopped 3 s, running 0.5 s, over and over) holds up steps past
    --step-timeout yet answers Ray between its stops: it is replaced, not waited for until
    --max-failures runs out."""
    run = Driver(tmp_path, job_args(dataset, tmp_path / "ckpt", "--address", ray_address, "--step-timeout", "2"))
    worker = run.wait_until(lambda: run.actors("worker").get(1), "worker 1")
    pid = ray.get(worker.ready.remote()).pid
    run.wait_until(lambda: run.step() >= 20, "step 20")
    done = threading.Event()

    def starve():
        with contextlib.suppress(ProcessLookupError):  # until Ray kills it
            while not done.is_set():
                os.kill(pid, signal.SIGSTOP)
                time.sleep(3)
                os.kill(pid, signal.SIGCONT)
                time.sleep(0.5)
    threading.Thread(target=starve, daemon=True).start()
    try:
        assert run.finish() == 0, run.log
    finally:
        done.set()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert "worker(s) [1] did not answer within 2 s (--step-timeout)" in run.log, run.log
    assert "replaced worker(s) [1] on their shards" in run.log, run.log
    assert run.summary["failures_survived"] >= 1
    assert_same_as_reference(final_params(tmp_path / "ckpt"), reference)


def test_hung_parameter_server_is_found_within_a_few_step_timeouts(ray_address, dataset, reference, tmp_path):
    """A server frozen by SIGSTOP inside a run() call of all 240 steps (no log or checkpoint point
    before the end): found after a few --step-timeout periods without a step, not 240 of them,
    then replaced from the newest state and the lost steps replayed."""
    run = Driver(tmp_path, job_args(dataset, tmp_path / "ckpt", "--address", ray_address, "--step-timeout", "3",
                                    "--log-every", str(STEPS), "--checkpoint-every", str(STEPS)))
    server = run.wait_until(lambda: run.actors("server").get(0), "the parameter server")
    run.wait_until(lambda: ray.get(server.progress.remote()) >= 50, "step 50")  # it answers while it steps
    pid = next(a["Pid"] for a in actor_table().values()
               if a["State"] == "ALIVE" and a["Name"].startswith("mgdist-server-") and a["Name"] not in run.older)
    os.kill(pid, signal.SIGSTOP)
    try:
        assert run.finish(timeout=120) == 0, run.log  # without the watch: 240 x 3 s before anyone notices
    finally:
        with contextlib.suppress(ProcessLookupError):  # Ray has killed it, unless the test failed first
            os.kill(pid, signal.SIGKILL)
    assert "the parameter server took no step in 3 x 3 s (--step-timeout): hung" in run.log, run.log
    assert "parameter server lost: restored step 0, replaying from there" in run.log, run.log
    assert run.summary["failures_survived"] == 1
    assert_same_as_reference(final_params(tmp_path / "ckpt"), reference)


@pytest.mark.slow
def test_a_hung_server_shard_is_found_and_every_shard_restored(ray_address, dataset, reference, tmp_path):
    """--servers 2, shard 1 frozen (SIGSTOP) inside a run() call of all 240 steps: the workers give
    up on it after --step-timeout, shard 0 fails, and the watch names shard 1 hung; both shards start
    again from step 0 and the run ends with the uninterrupted run's weights, each step once."""
    run = Driver(tmp_path, job_args(dataset, tmp_path / "ckpt", "--address", ray_address, "--step-timeout", "3",
                                    "--log-every", str(STEPS), "--checkpoint-every", str(STEPS), "--servers", "2"))
    shard = run.wait_until(lambda: run.actors("server").get(1), "parameter server shard 1")
    run.wait_until(lambda: ray.get(shard.progress.remote()) >= 50, "step 50")
    pid = next(a["Pid"] for a in actor_table().values()
               if a["State"] == "ALIVE" and a["Name"].startswith("mgdist-server-1-") and a["Name"] not in run.older)
    os.kill(pid, signal.SIGSTOP)
    try:
        assert run.finish(timeout=120) == 0, run.log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert "the parameter server shard 1 took no step in 3 x 3 s (--step-timeout): hung" in run.log, run.log
    assert "restored step 0, replaying from there (shard(s) [0, 1] of 2 started again)" in run.log, run.log
    assert run.summary["failures_survived"] == 1
    assert_same_as_reference(final_params(tmp_path / "ckpt"), reference)
    assert_each_step_once(tmp_path / "ckpt")


def test_failures_beyond_max_failures_stop_the_run(ray_address, dataset, tmp_path):
    run = Driver(tmp_path, job_args(dataset, tmp_path / "ckpt", "--address", ray_address, "--max-failures", "0"))
    worker = run.wait_until(lambda: run.actors("worker").get(0), "worker 0")
    run.wait_until(lambda: run.step() >= 45, "step 45")
    ray.kill(worker)
    assert run.finish() == 2, run.log
    assert "error: giving up after 1 failures (--max-failures 0); last: ActorDiedError: " in run.log, run.log
    assert 40 <= checkpoint.steps(str(tmp_path / "ckpt"))[-1] < STEPS  # the run stopped, its checkpoints kept


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else None
        except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
            continue
        if stat:
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def test_driver_killed_mid_run_resumes_from_latest_checkpoint(ray_address, dataset, reference, tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="mgray")  # short: Ray's socket paths must fit in 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": ray_tmp}
    first = Driver(tmp_path / "first", job_args(dataset, tmp_path / "ckpt", "--address", "local"), env=env)  # own Ray
    ckpt = str(tmp_path / "ckpt")
    try:
        first.wait_until(lambda: os.path.isdir(ckpt) and checkpoint.steps(ckpt) and checkpoint.steps(ckpt)[-1] >= 80,
                         "checkpoint 80", timeout=180)
        ray_processes = _descendants(first.process.pid)
        first.process.send_signal(signal.SIGKILL)
        assert first.process.wait() == -signal.SIGKILL
    finally:
        for pid in _descendants(first.process.pid) + locals().get("ray_processes", []):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
    saved = checkpoint.steps(ckpt)
    assert 80 <= saved[-1] < STEPS, saved

    again = Driver(tmp_path / "again", job_args(dataset, tmp_path / "ckpt", "--address", ray_address, "--resume"))
    assert again.finish() == 0, again.log
    assert f"steps {saved[-1]}..{STEPS} " in again.log, again.log
    assert_same_as_reference(final_params(tmp_path / "ckpt"), reference)
    assert_each_step_once(tmp_path / "ckpt")  # the log carried through the checkpoint resumed from


def poisoned_copy(src: str, dst: Path, file: int, row: int) -> None:
    """Copy a dataset with one huge target value (finite, but its pinball loss overflows float32)."""
    dst.mkdir()
    for path in sorted(Path(src).glob("*.parquet")):
        table = pq.read_table(path)
        if path.name == f"part-{file:05d}.parquet":
            y = table.column("y").to_numpy().copy()
            y[row] = 3e38
            table = table.set_column(table.schema.get_field_index("y"), "y", [y])
        pq.write_table(table, dst / path.name, row_group_size=1000)


def worker_steps(data_path: str, rank: int, workers: int = 2) -> list[np.ndarray]:
    """The rows (of its shard) of worker `rank`'s part of each step, by the documented rules (tests/reference.py)."""
    ds = data.discover(data_path)
    shards = [stop - start for start, stop in data.plan_rows(ds.rows, workers)]
    trains = [held_out(n, VAL, SEED, r)[0] for r, n in enumerate(shards)]
    batches = shares(BATCH, [len(t) for t in trains])
    per_epoch, b = min(len(t) // n for t, n in zip(trains, batches)), batches[rank]
    return [epoch_rows(trains[rank], SEED, rank, step // per_epoch)[step % per_epoch * b:][:b]
            for step in range(STEPS)]


@pytest.fixture(scope="module")
def poisoned(dataset, tmp_path_factory) -> tuple[str, list[int]]:
    """A copy of the dataset with one overflowing target in worker 1's shard, first met after a few
    checkpoints (every 5 steps); and the steps that meet it."""
    rows = worker_steps(dataset, rank=1)  # worker 1's shard is file 1
    first = {}
    for step, batch in enumerate(rows):
        for r in batch:
            first.setdefault(int(r), step)
    row = next(r for r, step in first.items() if 10 <= step <= 15)
    path = tmp_path_factory.mktemp("poisoned") / "train"
    poisoned_copy(dataset, path, file=1, row=row)
    return str(path), [s for s in range(STEPS) if row in rows[s]]


def test_nonfinite_loss_stops_naming_step_and_worker(ray_address, poisoned, tmp_path):
    path, bad_steps = poisoned
    run = Driver(tmp_path, job_args(path, tmp_path / "ckpt", "--address", ray_address, "--checkpoint-every", "5",
                                    "--standardize", "none"))  # a standardized target would not overflow
    assert run.finish() == 2, run.log
    assert f"error: step {bad_steps[0]}: non-finite gradient or loss from worker(s) [1]\n" in run.log, run.log
    saved = checkpoint.steps(str(tmp_path / "ckpt"))
    assert saved and saved[-1] <= bad_steps[0], saved  # only states from before the bad step
    for step in saved:
        assert np.isfinite(checkpoint.load(str(tmp_path / "ckpt"), step)[0]["params"]).all()


def test_nonfinite_steps_are_skipped_when_asked_even_across_a_replay(ray_address, poisoned, tmp_path):
    path, bad_steps = poisoned
    run = Driver(tmp_path, job_args(path, tmp_path / "ckpt", "--address", ray_address, "--on-nonfinite", "skip",
                                    "--standardize", "none"))  # a standardized target would not overflow
    worker = run.wait_until(lambda: run.actors("worker").get(0), "worker 0")
    skip = next(s for s in bad_steps if s % 5 and s > 40)  # kill just after the log point before a skipped step:
    run.wait_until(lambda: run.step() >= skip // 5 * 5, f"step {skip // 5 * 5}")  # the server is a few steps ahead
    ray.kill(worker, no_restart=False)  # and states taken meanwhile get discarded; the steps after are replayed
    assert run.finish() == 0, run.log
    assert run.summary["failures_survived"] == 1
    skipped = [int(line.split()[1].rstrip(":")) for line in run.log.splitlines() if line.endswith(": step skipped")]
    assert skipped == bad_steps, run.log  # each logged once, in order
    arrays, _ = checkpoint.load(str(tmp_path / "ckpt"), STEPS)
    assert np.isfinite(arrays["params"]).all()
    assert int(arrays["opt.steps"]) == STEPS - len(bad_steps)  # the optimiser counts applied updates only


def test_nonfinite_steps_are_skipped_by_every_server_shard(ray_address, poisoned, tmp_path):
    """--servers 2: the worker whose gradient overflows sends a NaN loss to both shards, so both
    skip the same steps (the joined state checks their step logs agree)."""
    path, bad_steps = poisoned
    run = Driver(tmp_path, job_args(path, tmp_path / "ckpt", "--address", ray_address, "--on-nonfinite", "skip",
                                    "--standardize", "none", "--servers", "2"))
    assert run.finish() == 0, run.log
    skipped = [int(line.split()[1].rstrip(":")) for line in run.log.splitlines() if line.endswith(": step skipped")]
    assert skipped == bad_steps, run.log
    arrays, _ = checkpoint.load(str(tmp_path / "ckpt"), STEPS)
    assert np.isfinite(arrays["params"]).all()
    assert int(arrays["opt.steps"]) == STEPS - len(bad_steps)
    log = arrays["steplog"]
    assert log["step"].tolist() == list(range(STEPS)) and log["step"][~log["applied"]].tolist() == bad_steps


def test_s3_down_mid_run_with_checkpoints_on_s3_ends_as_the_uninterrupted_run(ray_address, dataset, reference,
                                                                               own_s3_env, tmp_path):
    """The S3 server holding the checkpoints stops mid-run and starts again: saves during the
    outage fail in one line each and training goes on; the final save waits for the server."""
    import s3server
    ckpt = f"s3://{own_s3_env.bucket}/outage-run"
    args = job_args(dataset, ckpt, "--address", ray_address, "--checkpoint-every", "20")
    args[args.index("--step-timeout") + 1] = "3"  # an intermediate save retries for as long
    run = Driver(tmp_path, args)
    run.wait_until(lambda: run.step() >= 20, "step 20")
    s3server.stop(own_s3_env)
    stopped_at = run.step()
    down = run.wait_until(lambda: "training goes on, the next save tries again" in run.log, "a save given up", 120)
    time.sleep(3)
    s3server.start_again(own_s3_env)
    assert run.finish() == 0, run.log
    failed = [line for line in run.log.splitlines() if "training goes on" in line]
    print(f"S3 stopped at step {stopped_at}; saves given up: {len(failed)}; first: {failed[0]}")
    assert down and failed[0].startswith("cannot write checkpoint ") and "EndpointConnectionError" in failed[0]
    assert run.summary["failures_survived"] == 0
    assert_same_as_reference(final_params(ckpt), reference)


def test_a_second_run_on_the_same_checkpoint_dir_stops_at_once_naming_the_owner(ray_address, dataset, tmp_path):
    first = Driver(tmp_path / "first", job_args(dataset, tmp_path / "ckpt", "--address", ray_address, "--steps", "60"))
    first.wait_until(lambda: first.step() >= 10, "step 10")
    os.kill(first.process.pid, signal.SIGSTOP)  # held mid-run (alive, its lease valid) while the second starts
    try:
        second = Driver(tmp_path / "second", job_args(dataset, tmp_path / "ckpt", "--address", ray_address))
        assert second.finish(timeout=60) == 2, second.log
    finally:
        os.kill(first.process.pid, signal.SIGCONT)
    errors = [line for line in second.log.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {tmp_path / 'ckpt'} is in use by run ")
    assert f"(pid {first.process.pid})" in errors[0], errors
    assert first.finish() == 0, first.log  # undisturbed
    assert checkpoint.steps(str(tmp_path / "ckpt")) == [40, 60]
    assert not (tmp_path / "ckpt" / "_lease.json").exists()  # released at the end
