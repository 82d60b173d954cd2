"""Every setting of a training run, in one dataclass built from the command line."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from mgdist.data import Storage


@dataclass
class Config:
    # data
    data: str | None = None            # Parquet dir/file/glob, file:// or s3://; None: default synthetic set
    features: str | None = None        # None: every numeric column but the target; "a,b,c" or a prefix "f*"
    target: str = "y"
    nonfinite: str = "error"           # NaN/inf rows: "error" or "drop"
    val_fraction: float = 0.1          # share of each worker's rows held out for validation
    s3_endpoint: str | None = None
    # model
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    non_crossing: bool = False         # predict the lowest quantile plus positive increments
    # optimisation
    optimizer: str = "adam"
    lr: float = 1e-2
    schedule: str = "cosine"           # constant | linear (warm-up) | cosine (warm-up, then decay)
    warmup_steps: int = 20
    weight_decay: float = 0.0
    batch_size: int = 16384            # global rows per step, split over workers
    epochs: float = 20.0
    steps: int | None = None           # overrides epochs
    seed: int = 0
    # cluster
    workers: int = 2
    cpus_per_worker: float = 1.0
    arch_workers: dict[str, int] = field(default_factory=dict)  # e.g. {"x86_64": 2, "aarch64": 4}
    address: str | None = None
    balance: str = "rows"              # shard sizes: equal "rows", or in proportion to measured "speed"
    slowdown: tuple[float, ...] = ()   # test setting: worker r's compute stretched slowdown[r] times
    placement_timeout: float = 120.0  # seconds for workers to be placed and load their shards
    step_timeout: float = 60.0         # seconds a step may take before its workers are checked
    # checkpoints, faults, reporting
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0          # steps; 0: only at the end
    keep_checkpoints: int = 3
    resume: bool = False
    max_failures: int = 3
    on_nonfinite: str = "error"        # NaN/inf gradient or loss: "error" or "skip" the step
    log_every: int = 50
    metrics: str | None = None         # JSON-lines file of per-step metrics
    summary_json: str | None = None
    report: str | None = None          # dir for metrics.json and plots of the final model on the training data

    @property
    def storage(self) -> Storage:
        """How to reach this run's data and checkpoints."""
        return Storage(s3_endpoint=self.s3_endpoint)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        c = cls(**{k: v for k, v in d.items() if k in known})
        c.quantiles, c.hidden, c.slowdown = tuple(c.quantiles), tuple(c.hidden), tuple(c.slowdown)
        return c


def _floats(s: str) -> tuple[float, ...]:
    levels = tuple(float(x) for x in s.split(","))
    if not levels or any(not 0 < q < 1 for q in levels) or list(levels) != sorted(set(levels)):
        raise argparse.ArgumentTypeError(f"quantiles must be increasing, each in (0, 1): {s!r}")
    return levels


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x)


def _arch_counts(s: str) -> dict[str, int]:
    counts = {}
    for part in s.split(","):
        arch, _, n = part.partition("=")
        if arch not in ("x86_64", "aarch64") or not n.isdigit():
            raise argparse.ArgumentTypeError(f"expected x86_64=N,aarch64=M, got {s!r}")
        counts[arch] = int(n)
    return counts


def parse_args(argv: list[str] | None = None) -> Config:
    """Config from command-line arguments (defaults from Config)."""
    d = Config()
    p = argparse.ArgumentParser(prog="jobs/quantile.py", description="Train a quantile-regression MLP "
                                "data-parallel on Ray (pinball loss, several quantiles at once).")
    p.add_argument("--data", help="Parquet dataset: dir, file, glob, file:// or s3://bucket/prefix "
                   "(default: a small synthetic dataset made in ~/.cache/mgdist)")
    p.add_argument("--features", help="feature columns: a,b,c or a prefix f* (default: all numeric but target)")
    p.add_argument("--target", default=d.target)
    p.add_argument("--nonfinite", choices=["error", "drop"], default=d.nonfinite, help="rows with NaN/inf")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL_S3 or AWS)")
    p.add_argument("--quantiles", type=_floats, default=d.quantiles, help="e.g. 0.1,0.5,0.9")
    p.add_argument("--hidden", type=_ints, default=d.hidden, help="hidden layer widths, e.g. 64,64 or 128")
    p.add_argument("--activation", choices=["tanh", "relu", "sigmoid", "softplus"], default=d.activation)
    p.add_argument("--non-crossing", action="store_true", help="quantiles that never cross")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default=d.optimizer)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--schedule", choices=["constant", "linear", "cosine"], default=d.schedule)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global rows per step")
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--steps", type=int, help="number of steps (overrides --epochs)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--cpus-per-worker", type=float, default=d.cpus_per_worker)
    p.add_argument("--arch-workers", type=_arch_counts, default={}, help="workers per architecture, "
                   "e.g. x86_64=2,aarch64=4 (overrides --workers; default: any node serves)")
    p.add_argument("--balance", choices=["rows", "speed"], default=d.balance,
                   help="shard sizes: equal rows, or in proportion to each worker's measured speed")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a new local Ray)")
    p.add_argument("--placement-timeout", type=float, default=d.placement_timeout, help="seconds")
    p.add_argument("--step-timeout", type=float, default=d.step_timeout,
                   help="seconds a step may take before workers are checked and replaced")
    p.add_argument("--checkpoint-dir", help="local dir or s3:// prefix for checkpoints")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps (0: at the end)")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint")
    p.add_argument("--max-failures", type=int, default=d.max_failures, help="worker/server losses survived")
    p.add_argument("--on-nonfinite", choices=["error", "skip"], default=d.on_nonfinite,
                   help="NaN/inf gradient or loss: stop, or skip that step")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between log lines")
    p.add_argument("--metrics", help="write per-step metrics here as JSON lines")
    p.add_argument("--summary-json", help="write the final summary here as one JSON object")
    p.add_argument("--report", help="at the end, score the model on the training data: metrics.json and "
                   "plots (matplotlib) in this local dir, as jobs/evaluate.py does")
    args = p.parse_args(argv)
    config = Config(**{k.replace("-", "_"): v for k, v in vars(args).items()})
    if config.arch_workers:
        config.workers = sum(config.arch_workers.values())
    if config.workers < 1 or config.batch_size < config.workers:
        p.error(f"need at least 1 worker and batch size >= workers, got {config.workers}, {config.batch_size}")
    if not 0 <= config.val_fraction < 1:
        p.error(f"--val-fraction must be in [0, 1), got {config.val_fraction}")
    return config
