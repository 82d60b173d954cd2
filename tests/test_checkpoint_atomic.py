"""A local save never shows a reader half a checkpoint, checked at every file operation of the save.

A child process saves while a Python audit hook (sys.addaudithook: the interpreter's own events
for open, rename and remove) stops before each of its file operations in the checkpoint
directory and reads the directory as another process would. Deterministic: no kill has to land
inside a write.
"""
import json
import os
import subprocess
import sys

import mgdist

HERE = os.path.dirname(os.path.dirname(mgdist.__file__))  # the child imports the mgdist this test imported

SAVE_WATCHED = r"""
import json, os, re, sys
import numpy as np
from mgdist import checkpoint

d = os.path.realpath(sys.argv[1])
FINAL = re.compile(r"ckpt-\d{9}(\.json|-[0-9a-f]{16}\.npz)$")  # the names a reader goes by
checkpoint.save(d, 1, {"params": np.full(100_000, 1, np.float32)}, {}, keep=1)
report = {"written": [], "renamed": [], "views": [], "errors": []}
busy = False

def look(event):
    # What a reader sees now: the newest checkpoint, whole, and every one listed loads.
    try:
        listed = checkpoint.steps(d)
        for step in listed:
            arrays, _ = checkpoint.load(d, step)
            assert (arrays["params"] == step).all() and arrays["params"].shape == (100_000,), step
        report["views"].append([event, listed, checkpoint.load_latest(d)[1]["step"]])
    except Exception as e:
        report["errors"].append(f"{event}: {type(e).__name__}: {e}")

def hook(event, args):
    global busy
    if busy or event not in ("open", "os.rename", "os.remove"):
        return
    path = args[0] if isinstance(args[0], str) else None
    if path is None or not os.path.realpath(path).startswith(d + os.sep):
        return
    name = os.path.basename(path)
    if event == "open":
        mode, flags = args[1], args[2]
        writing = ("w" in mode or "a" in mode or "+" in mode or "x" in mode) if isinstance(mode, str) \
            else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if not writing:
            return
        report["written"].append([name, bool(FINAL.match(name))])
    elif event == "os.rename":
        report["renamed"].append([name, os.path.basename(args[1])])
    busy = True
    try:
        look(f"{event} {name}")
    finally:
        busy = False

sys.addaudithook(hook)
checkpoint.save(d, 2, {"params": np.full(100_000, 2, np.float32)}, {"note": "x" * 10_000}, keep=1)
busy = True
look("after")
print(json.dumps(report))
"""


def test_a_save_shows_readers_the_old_checkpoint_or_the_whole_new_one(tmp_path):
    done = subprocess.run([sys.executable, "-c", SAVE_WATCHED, str(tmp_path / "ck")], capture_output=True, text=True,
                          timeout=120, env=os.environ | {"PYTHONPATH": HERE})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["errors"] == []
    assert report["written"] and not [name for name, final in report["written"] if final], report["written"]
    written = [name for name, _ in report["written"]]
    renamed_to = [dst for src, dst in report["renamed"] if src in written]
    assert len(renamed_to) == 2 and renamed_to[0].endswith(".npz") and renamed_to[1] == "ckpt-000000002.json"
    newest = [view[2] for view in report["views"]]
    assert newest == sorted(newest) and newest[0] == 1 and newest[-1] == 2  # never back, never half
    assert report["views"][-1][1] == [2]  # keep=1 pruned the old one
    before = [view for view in report["views"] if view[0] == "os.rename " + report["renamed"][-1][0]]
    assert before and before[0][2] == 1  # until the manifest's rename, readers see the old checkpoint
