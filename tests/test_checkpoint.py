"""Checkpoints on a local disk and on a real S3 server: verified loads, pruning, and saves that a
crash at any moment cannot leave half-visible."""
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from mgdist import checkpoint
from mgdist.checkpoint import CheckpointError
from mgdist.data import Storage, filesystem
from mgdist.lease import Lease


def arrays(step: int, size: int = 50) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {"params": rng.standard_normal(size, dtype=np.float32), "opt.m": rng.standard_normal(size, dtype=np.float32),
            "opt.steps": np.array(step, np.int64)}


def files(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_round_trip_keeps_arrays_meta_and_checksum(tmp_path):
    d = str(tmp_path / "ck")
    path = checkpoint.save(d, 7, arrays(7), {"epoch": 0.5, "config": {"lr": 0.1}}, keep=3)
    assert path == f"{d}/ckpt-000000007.json"
    got, manifest = checkpoint.load(d, 7)
    assert set(got) == set(arrays(7))
    for k, a in arrays(7).items():
        np.testing.assert_array_equal(got[k], a)
        assert got[k].dtype == a.dtype
    assert manifest["step"] == 7 and manifest["epoch"] == 0.5 and manifest["config"] == {"lr": 0.1}
    assert manifest["arrays"]["params"] == {"shape": [50], "dtype": "float32"}
    assert files(d) == [manifest["npz"], "ckpt-000000007.json"]  # no temp files left
    assert manifest["npz"].startswith("ckpt-000000007-") and len(manifest["sha256"]) == 64


def test_keeps_the_newest_n_and_replaces_a_resaved_step(tmp_path):
    d = str(tmp_path / "ck")
    for step in (10, 20, 30, 40):
        checkpoint.save(d, step, arrays(step), {}, keep=2)
    assert checkpoint.steps(d) == [30, 40]
    assert len([f for f in files(d) if f.endswith(".npz")]) == 2
    checkpoint.save(d, 40, arrays(41), {}, keep=2)  # same step, other content (e.g. after a re-plan)
    np.testing.assert_array_equal(checkpoint.load(d, 40)[0]["params"], arrays(41)["params"])
    assert len([f for f in files(d) if f.endswith(".npz")]) == 2
    for step in (50, 60):
        checkpoint.save(d, step, arrays(step), {}, keep=0)  # 0: keep all
    assert checkpoint.steps(d) == [30, 40, 50, 60]


def test_damaged_checkpoints_are_refused_with_one_line_each(tmp_path):
    d = tmp_path / "ck"
    for step in (1, 2, 3, 4):
        checkpoint.save(str(d), step, arrays(step), {}, keep=0)
    manifest = lambda s: json.loads((d / f"ckpt-{s:09d}.json").read_text())  # noqa: E731
    npz = d / manifest(1)["npz"]
    npz.write_bytes(npz.read_bytes()[:-100])  # truncated
    (d / "ckpt-000000002.json").write_text('{"format": 1, "step": 2, "npz"')  # half a manifest
    m = manifest(3)
    m["arrays"]["params"]["shape"] = [51]  # a manifest that does not describe its arrays
    (d / "ckpt-000000003.json").write_text(json.dumps(m))
    (d / manifest(4)["npz"]).unlink()  # arrays missing
    expected = {1: "checksum mismatch", 2: "unreadable: JSONDecodeError", 3: "array 'params' does not match",
                4: "unreadable: FileNotFoundError"}
    for step, why in expected.items():
        with pytest.raises(CheckpointError, match=why) as e:
            checkpoint.load(str(d), step)
        assert f"ckpt-{step:09d}.json" in str(e.value) and "\n" not in str(e.value)


def test_pickled_arrays_are_never_loaded(tmp_path):
    d = tmp_path / "ck"
    checkpoint.save(str(d), 5, arrays(5), {}, keep=1)
    m = json.loads((d / "ckpt-000000005.json").read_text())
    buf = io.BytesIO()
    np.savez(buf, params=np.array([{"evil": 1}], dtype=object))  # needs pickle to read
    m["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    m["npz"] = f"ckpt-000000005-{m['sha256'][:16]}.npz"  # the name a manifest may give its arrays
    (d / m["npz"]).write_bytes(buf.getvalue())
    m["arrays"] = {"params": {"shape": [1], "dtype": "object"}}
    (d / "ckpt-000000005.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="unreadable: ValueError: Object arrays cannot be loaded"):
        checkpoint.load(str(d), 5)


def test_latest_skips_broken_ones_with_a_warning_and_refuses_if_all_are(tmp_path):
    d = tmp_path / "ck"
    assert checkpoint.load_latest(str(d)) is None  # nothing there: start fresh
    for step in (10, 20, 30):
        checkpoint.save(str(d), step, arrays(step), {}, keep=0)
    for step in (20, 30):
        npz = d / json.loads((d / f"ckpt-{step:09d}.json").read_text())["npz"]
        npz.write_bytes(npz.read_bytes()[: len(npz.read_bytes()) // 2])
    with pytest.warns(UserWarning) as record:
        got, manifest = checkpoint.load_latest(str(d))
    assert [str(w.message).split(f"{d}/")[1] for w in record] == [
        f"ckpt-{s:09d}.json: checksum mismatch (truncated or corrupt .npz)" for s in (30, 20)]
    assert manifest["step"] == 10
    np.testing.assert_array_equal(got["params"], arrays(10)["params"])
    (d / "ckpt-000000010.json").write_text("")
    with warnings.catch_warnings(record=True), \
            pytest.raises(CheckpointError, match=r"none of the 3 checkpoints .* newest: .*000000030.json: checksum"):
        checkpoint.load_latest(str(d))


def test_saving_after_a_broken_checkpoint_replaces_or_prunes_it(tmp_path):
    d = tmp_path / "ck"
    for step in (10, 20):
        checkpoint.save(str(d), step, arrays(step), {}, keep=2)
    (d / "ckpt-000000010.json").write_text("{")  # corrupt old manifest: pruned by name alone
    (d / "ckpt-000000020.json").write_text("{")  # corrupt manifest of the step saved again
    (d / "ckpt-000000025-0123456789abcdef.npz").write_bytes(b"half")  # a save that died before its manifest
    checkpoint.save(str(d), 20, arrays(20), {}, keep=2)
    checkpoint.save(str(d), 30, arrays(30), {}, keep=2)
    assert checkpoint.steps(str(d)) == [20, 30]
    assert len(files(d)) == 4
    np.testing.assert_array_equal(checkpoint.load_latest(str(d))[0]["params"], arrays(30)["params"])


def test_unusable_directories_give_one_line_errors(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(CheckpointError, match="cannot write checkpoint 1 to .*file"):
        checkpoint.save(str(tmp_path / "file"), 1, arrays(1), {})
    d = tmp_path / "ck"
    checkpoint.save(str(d), 1, arrays(1), {})
    d.chmod(0o000)
    try:  # as root, only a process without CAP_DAC_OVERRIDE is refused: ask one
        code = f"from mgdist import checkpoint; checkpoint.steps({str(d)!r})"
        out = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", code],
                             capture_output=True, text=True)
    finally:
        d.chmod(0o755)
    assert out.returncode == 1
    assert f"CheckpointError: cannot list checkpoints in {d}: [Errno 13] Permission denied" in out.stderr


SAVER = """
import sys, numpy as np
from mgdist import checkpoint
from mgdist.data import Storage
d, size, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for step in range(start, 10**6):
    checkpoint.save(d, step, {"params": np.full(size, step, np.float32)}, {}, keep=2, storage=Storage())
"""


def _kill_mid_save_and_check(directory: str, size: int, kills: int) -> None:
    """Kill a process saving checkpoints mid-save, several times over (locally: once a partial file of
    a later save shows); every checkpoint that shows must be whole, and the newest one no older than
    before the kill."""
    last = 0
    for _ in range(kills):
        saver = subprocess.Popen([sys.executable, "-c", SAVER, directory, str(size), str(last + 1)])
        deadline = time.monotonic() + 60
        while (checkpoint.steps(directory) or [0])[-1] < last + 2:
            assert saver.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        if not directory.startswith("s3://"):  # kill while a file of a later save is half written
            partial = f".tmp-{saver.pid}"
            while not any(name.endswith(partial) for name in os.listdir(directory)):
                assert saver.poll() is None and time.monotonic() < deadline
        saver.send_signal(signal.SIGKILL)  # on S3: somewhere in the save after the one just seen
        saver.wait()
        steps = checkpoint.steps(directory)
        assert steps[-1] >= last + 2
        for step in steps:
            got, _ = checkpoint.load(directory, step)
            assert got["params"].shape == (size,) and (got["params"] == step).all()
        last = checkpoint.load_latest(directory)[1]["step"]
        assert last == steps[-1]
    Lease(directory).acquire()  # the killed savers are gone: what they left unfinished is cleared
    checkpoint.save(directory, last + 1, {"params": np.full(size, last + 1, np.float32)}, {}, keep=2)
    fs, root = filesystem(directory, Storage())
    assert sorted(os.path.basename(p) for p in fs.ls(root, detail=False) if not p.endswith((".json", ".lock"))) == [
        checkpoint.load(directory, s)[1]["npz"] for s in (last, last + 1)]  # nothing partial or orphaned left


def test_killed_while_saving_locally_leaves_only_whole_checkpoints(tmp_path):
    _kill_mid_save_and_check(str(tmp_path / "ck"), size=4_000_000, kills=3)


@pytest.mark.parametrize("removals", [1, 2, 3])
def test_a_prune_cut_short_leaves_no_manifest_without_its_arrays(tmp_path, removals):
    """A save killed while pruning (here: the file system fails after `removals` deletions) leaves
    every checkpoint that still shows loadable."""
    from fsspec.implementations.local import LocalFileSystem

    class FailsAfter(LocalFileSystem):
        def rm(self, path, *args, **kwargs):
            if self.left == 0:
                raise OSError("killed mid-prune")
            self.left -= 1
            super().rm(path, *args, **kwargs)

    d = str(tmp_path / "ck")
    for step in (1, 2, 3):
        checkpoint.save(d, step, arrays(step), {}, keep=0)
    fs = FailsAfter(skip_instance_cache=True)
    fs.left = removals
    with pytest.raises(OSError, match="killed mid-prune"):
        checkpoint._prune(fs, d, 3, checkpoint.load(d, 3)[1]["npz"], keep=1)  # 4 files to delete
    assert 3 - removals <= len(checkpoint.steps(d)) < 3
    for step in checkpoint.steps(d):
        np.testing.assert_array_equal(checkpoint.load(d, step)[0]["params"], arrays(step)["params"])


def test_s3_round_trip_prune_and_kill_mid_save(s3_env):
    d = f"s3://{s3_env.bucket}/ckpt-test"
    for step in (1, 2, 3):
        checkpoint.save(d, step, arrays(step), {"epoch": step}, keep=2)
    assert checkpoint.steps(d) == [2, 3]
    got, manifest = checkpoint.load(d, 3)
    np.testing.assert_array_equal(got["params"], arrays(3)["params"])
    fs, root = filesystem(d, Storage())
    assert len(fs.ls(root)) == 4
    _kill_mid_save_and_check(f"s3://{s3_env.bucket}/ckpt-kill", size=250_000, kills=1)  # the child inherits s3_env


def test_s3_permission_denied_is_one_line_and_overwrites_nothing(s3_env, monkeypatch):
    d = f"s3://{s3_env.bucket}/ckpt-denied"
    checkpoint.save(d, 1, arrays(1), {}, keep=2)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    for attempt, what in ((lambda: checkpoint.steps(d), "cannot list checkpoints in"),
                          (lambda: checkpoint.load(d, 1), "ckpt-000000001.json: unreadable: PermissionError"),
                          (lambda: checkpoint.save(d, 1, arrays(99), {}), "cannot write checkpoint 1 to")):
        with pytest.raises(CheckpointError, match=what) as e:
            attempt()
        assert d in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret)
    np.testing.assert_array_equal(checkpoint.load(d, 1)[0]["params"], arrays(1)["params"])
