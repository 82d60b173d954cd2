"""What the driver writes beside training: JSON written whole or not at all, a metrics log per run."""
import json
import os
import subprocess
import sys

import pytest

import mgdist
from mgdist.errors import DataError
from mgdist.evaluate import check_report_dir
from mgdist.report import MetricsLog, Progress

HERE = os.path.dirname(os.path.dirname(mgdist.__file__))  # the child imports the mgdist this test imports

WRITE_WATCHED = r"""
import json, os, sys
from mgdist.report import write_json

path = os.path.realpath(sys.argv[1])
opened, renamed = [], []

def hook(event, args):
    if event == "open" and isinstance(args[0], str) and os.path.realpath(args[0]).startswith(os.path.dirname(path)):
        mode = args[1]
        if isinstance(mode, str) and any(c in mode for c in "wax+"):
            opened.append(os.path.basename(args[0]))
    elif event == "os.replace" or event == "os.rename":
        renamed.append([os.path.basename(str(args[0])), os.path.basename(str(args[1]))])

sys.addaudithook(hook)
write_json(path, {"steps": 5, "val_loss": 0.25})
print(json.dumps({"opened": opened, "renamed": renamed}))
"""


def test_summary_json_is_never_written_in_place(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text('{"old": true}')
    done = subprocess.run([sys.executable, "-c", WRITE_WATCHED, str(target)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": HERE}, check=True)
    seen = json.loads(done.stdout)
    assert "summary.json" not in seen["opened"] and len(seen["opened"]) == 1  # only a temp file is written
    assert seen["renamed"] == [[seen["opened"][0], "summary.json"]]  # which then replaces it whole
    assert json.loads(target.read_text()) == {"steps": 5, "val_loss": 0.25}
    assert os.listdir(tmp_path) == ["summary.json"]


def test_a_new_run_starts_a_new_metrics_log_and_a_resumed_one_continues_it(tmp_path):
    log = tmp_path / "m.jsonl"
    for start, steps in [(0, (5, 10)), (0, (5,)), (5, (10, 15))]:  # an old run, a new run, that run resumed
        progress = Progress(15, start, 100, 10, [MetricsLog(str(log), append=start > 0)], stream=open(os.devnull, "w"))
        for step in steps:
            progress.update(step, train_loss=1.0 / step)
        progress.close()
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [5, 10, 15]


def test_a_report_never_lands_among_other_files(tmp_path):
    check_report_dir(str(tmp_path / "new"))
    check_report_dir(str(tmp_path))  # empty
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "fan.png").write_bytes(b"")
    check_report_dir(str(tmp_path))  # an earlier report: replaced
    other = tmp_path / "home"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    with pytest.raises(DataError, match=rf"^{other} holds other files and no earlier report: give a new or empty "
                                        "report directory$"):
        check_report_dir(str(other))
    job = subprocess.run([sys.executable, os.path.join(HERE, "jobs/quantile.py"), "--data", str(tmp_path / "nowhere"),
                          "--report", str(other)], capture_output=True, text=True)
    assert job.returncode == 2 and job.stderr.startswith(f"error: {other} holds other files")  # before any training
    assert os.listdir(other) == ["thesis.tex"]
