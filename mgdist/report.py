"""What a user watches: progress while training, metrics as JSON lines, the final summary."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import IO

from tqdm import tqdm


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """A progress bar in a terminal, plain log lines otherwise (job logs); metrics to a JSON-lines file."""

    def __init__(self, total_steps: int, start_step: int, rows_per_step: int, steps_per_epoch: int,
                 metrics_path: str | None = None, stream: IO = sys.stderr):
        self.total, self.start, self.rows_per_step, self.steps_per_epoch = total_steps, start_step, rows_per_step, steps_per_epoch
        self.t0 = time.perf_counter()
        self.stream = stream
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", file=stream, dynamic_ncols=True) \
            if stream.isatty() else None
        # a resumed run continues its log; a new run starts a new one, so that no old steps mix in
        self.metrics = open(metrics_path, "a" if start_step else "w") if metrics_path else None

    def rows_per_s(self, step: int) -> float:
        return (step - self.start) * self.rows_per_step / max(time.perf_counter() - self.t0, 1e-9)

    def update(self, step: int, **figures) -> None:
        """Report that `step` steps are done, with figures such as train_loss."""
        elapsed = time.perf_counter() - self.t0
        rate = self.rows_per_s(step)
        eta = (self.total - step) * elapsed / max(step - self.start, 1)
        record = {"step": step, "epoch": round(step / self.steps_per_epoch, 4), "rows_per_s": round(rate),
                  "elapsed_s": round(elapsed, 3), **figures}
        if self.metrics:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()
        shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        if self.bar is not None:
            self.bar.set_postfix_str(f"{shown} rows/s {rate:,.0f}", refresh=False)
            self.bar.update(step - self.bar.n)
        else:
            print(f"step {step}/{self.total} epoch {record['epoch']:.2f} {shown} rows/s {rate:,.0f} "
                  f"eta {_clock(eta)}", file=self.stream, flush=True)

    def log(self, message: str) -> None:
        (self.bar.write if self.bar is not None else lambda m: print(m, file=self.stream, flush=True))(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.metrics:
            self.metrics.close()


def write_json(path: str, value) -> None:
    """Write `value` as JSON to the local file `path` so that a reader sees the old file or the
    whole new one, never half of it (a temp file, fsync, rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
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
