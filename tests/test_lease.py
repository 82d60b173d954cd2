"""One run at a time owns a checkpoint directory, on a local disk and on a real S3 server;
pruning and loading touch only that checkpoint directory's own files."""
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mgdist import checkpoint
from mgdist.checkpoint import CheckpointError
from mgdist.data import Storage, filesystem
from mgdist.lease import LEASE, Lease, LeaseHeld, LeaseLost


@pytest.fixture(params=["local", "s3"])
def directory(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "ck")
    s3 = request.getfixturevalue("s3_env")
    return f"s3://{s3.bucket}/lease-{tmp_path.name}"


def arrays(step: int) -> dict[str, np.ndarray]:
    return {"params": np.full(10, step, np.float32)}


def names(directory: str) -> list[str]:
    fs, root = filesystem(directory, Storage())
    return sorted(os.path.basename(p) for p in fs.ls(root, detail=False))


def test_a_second_run_stops_at_once_naming_the_owner(directory):
    first, second = Lease(directory), Lease(directory)
    assert first.acquire() is None
    with pytest.raises(LeaseHeld) as e:
        second.acquire()
    message = str(e.value)
    assert message.startswith(f"{directory} is in use by run {first.owner} on host {os.uname().nodename} "
                              f"(pid {os.getpid()}), lease valid for ") and "\n" not in message, message
    assert "pass --resume to take it over" in message
    checkpoint.save(directory, 1, arrays(1), {}, lease=first)  # the owner goes on saving
    first.release()
    assert second.acquire() is None  # released: free
    assert LEASE in names(directory)


def test_an_expired_lease_is_taken_over_and_its_owner_stops_at_its_next_save(directory):
    first = Lease(directory, ttl=3.0)
    first.acquire()
    with pytest.raises(LeaseHeld):
        Lease(directory).acquire()
    time.sleep(3.2)
    second = Lease(directory)
    note = second.acquire()
    assert note.startswith(f"took over {directory} from run {first.owner}") and "expired" in note, note
    with pytest.raises(LeaseLost, match=f"^{directory} was taken over by run {second.owner} "):
        checkpoint.save(directory, 1, arrays(1), {}, lease=first)
    assert checkpoint.steps(directory) == []  # nothing written by the run that lost the directory
    checkpoint.save(directory, 1, arrays(1), {}, lease=second)
    assert checkpoint.steps(directory) == [1]


def test_resume_takes_a_live_lease_over_explicitly(directory):
    first, second = Lease(directory), Lease(directory)
    first.acquire()
    note = second.acquire(take_over=True)
    assert note.startswith(f"took over {directory} from run {first.owner}") and "valid for" in note, note
    with pytest.raises(LeaseLost):
        first.renew()
    second.renew()


HOLDER = """
import sys
from mgdist.lease import Lease
Lease(sys.argv[1]).acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_lease_of_a_process_of_this_host_that_is_gone_is_free_and_its_debris_cleared(directory):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, directory], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout.readline() == b"held\n"
    with pytest.raises(LeaseHeld, match=f"pid {holder.pid}"):
        Lease(directory).acquire()
    fs, root = filesystem(directory, Storage())
    debris = [".ckpt-000000003-0123456789abcdef.npz.tmp-12345", "ckpt-000000003-0123456789abcdef.npz"]
    for name in debris:  # what a save of the holder's left unfinished
        fs.pipe_file(f"{root}/{name}", b"half")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    note = Lease(directory).acquire()
    assert note.startswith(f"took over {directory} from run ") and "cleared 2 unfinished file(s)" in note, note
    assert not set(debris) & set(names(directory))


RACER = """
import sys, time
from mgdist.lease import Lease, LeaseHeld
directory, at = sys.argv[1], float(sys.argv[2])
time.sleep(max(0, at - time.time()))
try:
    Lease(directory).acquire()
    print("won", flush=True)
except LeaseHeld:
    print("lost", flush=True)
sys.stdin.read()  # alive until every racer has decided: a winner that had ended could be taken over
"""


def test_of_runs_starting_at_the_same_moment_exactly_one_gets_the_directory(directory):
    at = time.time() + 4  # every racer has imported by then
    racers = [subprocess.Popen([sys.executable, "-c", RACER, directory, str(at)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = sorted(r.stdout.readline().strip() for r in racers)  # a racer that fails: ""
    for r in racers:
        r.communicate(timeout=120)
    assert outcomes == ["lost", "lost", "lost", "won"], outcomes


def test_pruning_leaves_other_processes_files_alone(directory):
    lease = Lease(directory)
    lease.acquire()
    for step in (1, 2):
        checkpoint.save(directory, step, arrays(step), {}, keep=1, lease=lease)
    fs, root = filesystem(directory, Storage())
    others = [".ckpt-000000003-fedcba9876543210.npz.tmp-99999",  # another process's write in progress
              "ckpt-000000003-fedcba9876543210.npz"]  # another process's arrays of the step saved next
    for name in others:
        fs.pipe_file(f"{root}/{name}", b"in progress")
    checkpoint.save(directory, 3, arrays(3), {}, keep=1, lease=lease)
    checkpoint.save(directory, 3, arrays(4), {}, keep=1, lease=lease)  # step 3 again: its own first arrays go
    own = checkpoint.load(directory, 3)[1]["npz"]
    assert names(directory) == sorted([LEASE, "ckpt-000000003.json", own, *others]
                                      + (["_lease.lock"] if not directory.startswith("s3://") else []))


def test_a_manifest_may_name_only_its_own_arrays(tmp_path):
    d = tmp_path / "ck"
    checkpoint.save(str(d), 5, arrays(5), {})
    checkpoint.save(str(d), 6, arrays(6), {})
    buf = io.BytesIO()
    np.savez(buf, params=np.full(10, 666, np.float32))
    evil = buf.getvalue()
    digest = hashlib.sha256(evil).hexdigest()
    (tmp_path / "outside.npz").write_bytes(evil)
    manifest = json.loads((d / "ckpt-000000005.json").read_text())
    six = json.loads((d / "ckpt-000000006.json").read_text())
    for name, sha in (("../outside.npz", digest), (str(tmp_path / "outside.npz"), digest),
                      (six["npz"], six["sha256"]), (f"ckpt-000000005-{digest[:16]}.npz/../../outside.npz", digest)):
        (d / "ckpt-000000005.json").write_text(json.dumps(manifest | {"npz": name, "sha256": sha}))
        with pytest.raises(CheckpointError) as e:
            checkpoint.load(str(d), 5)
        assert str(e.value) == (f"{d}/ckpt-000000005.json: names arrays {name!r} for step 5, not this "
                                "checkpoint's own (ckpt-000000005-<checksum>.npz)")
