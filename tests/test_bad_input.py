"""Bad input to jobs/quantile.py on a real local Ray: one clear error line, a non-zero exit, and
the checkpoints saved before left exactly as they were."""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
import s3fs

from mgdist import checkpoint
from mgdist.workloads import quantile, synthetic

JOB = Path(__file__).resolve().parents[1] / "jobs" / "quantile.py"
SMALL = ["--hidden", "8", "--batch-size", "300", "--steps", "6", "--log-every", "3", "--seed", "1"]


@pytest.fixture(scope="module")
def ray_address():
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def run_job(*args: str, prefix: list[str] = (), env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, str(JOB), *args], capture_output=True, text=True, env=env,
                          timeout=180)


def run_here(*args: str) -> subprocess.CompletedProcess:
    """The job's main() in this process, already connected to Ray (seconds faster than a new
    process): its exit status and output, as run_job gives them."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = quantile.main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def one_error_line(out: subprocess.CompletedProcess) -> str:
    """The run's only error line, checked to be the whole story: exit 2, no traceback."""
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr
    return errors[0]


def contents(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def good(tmp_path_factory, ray_address) -> tuple[Path, Path]:
    """A small dataset, and the checkpoints of a short run on it."""
    root = tmp_path_factory.mktemp("good")
    synthetic.write(str(root / "data"), rows=3000, features=6, files=2, row_group_rows=500, seed=1, progress=False)
    out = run_here("--data", str(root / "data"), "--checkpoint-dir", str(root / "ckpt"), "--checkpoint-every", "3",
                   "--address", ray_address, *SMALL)
    assert out.returncode == 0, out.stderr
    assert checkpoint.steps(str(root / "ckpt")) == [3, 6]
    return root / "data", root / "ckpt"


@pytest.fixture
def saved(good, tmp_path) -> Path:
    """A copy of the good run's checkpoints, to resume from (or fail to)."""
    shutil.copytree(good[1], tmp_path / "ckpt")
    return tmp_path / "ckpt"


def bad_copy(good_data: Path, where: Path, damage) -> Path:
    shutil.copytree(good_data, where)
    damage(where / "part-00001.parquet")
    return where


def corrupt_a_page(path: Path) -> None:
    """Footer intact, so the file is discovered; its second row group's pages are garbage."""
    offset = pq.ParquetFile(path).metadata.row_group(1).column(2).data_page_offset
    payload = bytearray(path.read_bytes())
    payload[offset:offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(payload))


@pytest.mark.parametrize("damage, expected", [
    (corrupt_a_page, "part-00001.parquet: Couldn't deserialize thrift"),
    (lambda p: p.write_text("id,x,y\n1,2,3\n"), ": Parquet magic bytes not found in footer"),
], ids=["corrupt-page", "not-parquet"])
def test_bad_parquet_files(ray_address, good, saved, tmp_path, damage, expected):
    before = contents(saved)
    data = bad_copy(good[0], tmp_path / "data", damage)
    line = one_error_line(run_here("--data", str(data), "--checkpoint-dir", str(saved), "--resume",
                                   "--address", ray_address, *SMALL))
    assert expected in line and str(data) in line
    assert contents(saved) == before


def test_truncated_checkpoint(ray_address, good, saved):
    for step in (3, 6):
        npz = saved / json.loads((saved / f"ckpt-{step:09d}.json").read_text())["npz"]
        npz.write_bytes(npz.read_bytes()[:200])
    before = contents(saved)
    out = run_job("--data", str(good[0]), "--checkpoint-dir", str(saved), "--resume", "--address", ray_address, *SMALL)
    line = one_error_line(out)
    assert line == (f"error: none of the 2 checkpoints in {saved} can be used; newest: {saved}/ckpt-000000006.json: "
                    "checksum mismatch (truncated or corrupt .npz)")
    assert "UserWarning: skipping checkpoint:" in out.stderr  # both, on the way
    assert contents(saved) == before


def test_checkpoint_of_another_model_optimizer_or_dataset(ray_address, good, saved, tmp_path):
    before = contents(saved)

    def error(*args: str, data: Path = good[0]) -> str:
        return one_error_line(run_here("--data", str(data), "--checkpoint-dir", str(saved),
                              "--address", ray_address, *args))

    line = error("--resume", *SMALL, "--hidden", "16")  # the later --hidden wins
    assert line.startswith(f"error: checkpoint step 6 in {saved} is for model {{'class': "
                           "'mgdist.workloads.quantile:QuantileMLP', 'args': {'levels': [0.1, 0.5, 0.9], 'hidden': [8]")
    assert "not this run's {'class': 'mgdist.workloads.quantile:QuantileMLP', 'args': {'levels': [0.1, 0.5, 0.9], " \
        "'hidden': [16]" in line
    for flag, saved_value, value in [("--optimizer", "adam", "sgd"), ("--lr", "0.01", "0.02"), ("--seed", "1", "2"),
                                     ("--batch-size", "300", "200"), ("--schedule", "cosine", "linear")]:
        assert error("--resume", *SMALL, flag, value) == (
            f"error: checkpoint step 6 in {saved} was trained with {flag} {saved_value}, this run has "
            f"{flag} {value}: pass --resume-changes to resume with other settings")
    assert error("--resume", "--resume-changes", *SMALL, "--optimizer", "sgd") == (
        f"error: checkpoint step 6 in {saved} does not fit --optimizer sgd: optimizer state keys "
        "['m', 'steps', 'v'], want ['steps']")
    synthetic.write(str(tmp_path / "other"), rows=2500, features=6, files=2, row_group_rows=500, seed=1, progress=False)
    assert error("--resume", *SMALL, data=tmp_path / "other") == (
        f"error: checkpoint step 6 in {saved} was trained on other data than {tmp_path / 'other'} "
        "(files, sizes or columns differ)")
    assert error(*SMALL) == (  # no --resume: refuses to start over on top of them
        f"error: {saved} already holds checkpoints (newest: step 6); pass --resume to continue from "
        "them, or choose another --checkpoint-dir")
    assert contents(saved) == before


def test_unreadable_checkpoint_directory(ray_address, good, saved):
    before = contents(saved)
    saved.chmod(0o000)
    try:  # root reads anything; a driver without CAP_DAC_OVERRIDE is refused like any other user
        out = run_job("--data", str(good[0]), "--checkpoint-dir", str(saved), "--resume", "--address", ray_address,
                      *SMALL, prefix=["setpriv", "--bounding-set=-dac_override,-dac_read_search"])
    finally:
        saved.chmod(0o755)
    assert one_error_line(out) == (f"error: cannot claim {saved} (_lease.json): [Errno 13] Permission denied: "
                                   f"'{saved}/_lease.lock'")  # the run's first touch of the directory
    assert contents(saved) == before


def test_s3_permission_denied(ray_address, good, s3_env):
    ckpt = f"s3://{s3_env.bucket}/bad-input-ckpt"
    for step in (3, 6):  # the good run's checkpoints, uploaded
        arrays, manifest = checkpoint.load(str(good[1]), step)
        checkpoint.save(ckpt, step, arrays, {k: v for k, v in manifest.items()
                                             if k not in ("format", "step", "npz", "sha256", "arrays")})
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    before = {p: fs.cat(p) for p in fs.ls(ckpt.removeprefix("s3://"))}
    env = os.environ | {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    for resume in ([], ["--resume"]):
        line = one_error_line(run_job("--data", str(good[0]), "--checkpoint-dir", ckpt, *resume,
                                      "--address", ray_address, *SMALL, env=env))
        assert line == f"error: cannot claim {ckpt} (_lease.json): Forbidden"  # the run's first touch of it
    assert {p: fs.cat(p) for p in fs.ls(ckpt.removeprefix("s3://"))} == before
    line = one_error_line(run_job("--data", f"s3://{s3_env.bucket}/no-such-data", "--address", ray_address, *SMALL,
                                  env=env))
    assert line.startswith(f"error: s3://{s3_env.bucket}/no-such-data: access denied")
