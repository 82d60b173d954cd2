"""What a user watches: progress while training, metrics as JSON lines, the final summary."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any, Protocol, Sequence

from fsspec.implementations.local import LocalFileSystem
from tqdm import tqdm

from mgdist.data import Storage, filesystem, reraise


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Sink(Protocol):
    """Where the records of the log points go: the metrics log, a tracker (mgdist/tracking.py)."""

    def write(self, record: dict[str, Any]) -> None: ...
    def close(self, ok: bool = True) -> None: ...  # ok: the run ended without an error


class MetricsLog:
    """The records as JSON lines at `path`, local or S3. A resumed run (`append`) continues the
    log; a new run starts a new one, so that no old steps mix in.

    A local file is appended to and flushed per record. An S3 object cannot be appended to, so
    the log keeps the object's text and rewrites it whole at each record: one PUT per log point,
    of a few hundred bytes per record so far (a run of 10,000 log points ends with 3 MB PUTs).
    """

    def __init__(self, path: str, storage: Storage = Storage(), append: bool = False):
        self.path = path
        self.fs, self.root = filesystem(path, storage)
        self.text: str | None = None  # S3: the whole object
        with reraise(path):
            if isinstance(self.fs, LocalFileSystem):
                os.makedirs(os.path.dirname(self.root), exist_ok=True)
                self.file = open(self.root, "a" if append else "w")
            else:
                self.text = self.fs.cat_file(self.root).decode() if append and self.fs.exists(self.root) else ""

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record) + "\n"
        with reraise(self.path):
            if self.text is None:
                self.file.write(line)
                self.file.flush()
            else:
                self.text += line
                self.fs.pipe_file(self.root, self.text.encode())

    def close(self, ok: bool = True) -> None:
        if self.text is None:
            self.file.close()


class Progress:
    """A progress bar in a terminal, plain log lines otherwise (job logs); each log point's record
    (step, epoch, rows/s, elapsed seconds, the figures given) to every sink."""

    def __init__(self, total_steps: int, start_step: int, rows_per_step: int, steps_per_epoch: int,
                 sinks: Sequence[Sink] = (), stream: IO = sys.stderr):
        self.total, self.start, self.rows_per_step, self.steps_per_epoch = total_steps, start_step, rows_per_step, steps_per_epoch
        self.t0 = time.perf_counter()
        self.stream = stream
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", file=stream, dynamic_ncols=True) \
            if stream.isatty() else None
        self.sinks = list(sinks)

    def rows_per_s(self, step: int) -> float:
        return (step - self.start) * self.rows_per_step / max(time.perf_counter() - self.t0, 1e-9)

    def update(self, step: int, **figures) -> None:
        """Report that `step` steps are done, with figures such as train_loss (figures that are
        dicts, e.g. per quantile level, go to the sinks only)."""
        elapsed = time.perf_counter() - self.t0
        rate = self.rows_per_s(step)
        eta = (self.total - step) * elapsed / max(step - self.start, 1)
        record = {"step": step, "epoch": round(step / self.steps_per_epoch, 4), "rows_per_s": round(rate),
                  "elapsed_s": round(elapsed, 3), **figures}
        for sink in self.sinks:
            sink.write(record)
        shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()
                         if not isinstance(v, dict))
        if self.bar is not None:
            self.bar.set_postfix_str(f"{shown} rows/s {rate:,.0f}", refresh=False)
            self.bar.update(step - self.bar.n)
        else:
            print(f"step {step}/{self.total} epoch {record['epoch']:.2f} {shown} rows/s {rate:,.0f} "
                  f"eta {_clock(eta)}", file=self.stream, flush=True)

    def log(self, message: str) -> None:
        (self.bar.write if self.bar is not None else lambda m: print(m, file=self.stream, flush=True))(message)

    def close(self, ok: bool = True) -> None:
        """Close the bar and every sink; ok: the run ended without an error."""
        if self.bar is not None:
            self.bar.close()
        for sink in self.sinks:
            sink.close(ok)


def write_json(path: str, value, storage: Storage = Storage()) -> None:
    """Write `value` as JSON to `path`, local or S3, so that a reader sees the old file or the
    whole new one, never half of it (local: a temp file, fsync, rename; S3: one PUT)."""
    text = json.dumps(value, indent=2)
    if path.startswith("s3://"):
        fs, root = filesystem(path, storage)
        with reraise(path):
            fs.pipe_file(root, text.encode())
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def format_summary(summary: dict) -> str:
    """The final report, one figure a line."""
    lines = ["", "== summary =="]
    for key, value in summary.items():
        if isinstance(value, dict):
            value = "  ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:,.5g}"
        lines.append(f"{key:<18} {value}")
    return "\n".join(lines)
