"""Every setting of a training run but the model's own arguments, in one dataclass.

mgdist.cli builds it from the command line, mgdist.train from keywords; a checkpoint stores it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mgdist.data import Storage
from mgdist.errors import TrainingError
from mgdist.preprocess import STANDARDIZE


@dataclass
class TrainConfig:
    """How to train: data, optimiser, schedule, workers, checkpoints, reporting (see --help)."""
    # data
    data: str | None = None            # Parquet dir/file/glob, file:// or s3://
    features: str | None = None        # None: every numeric column but the target; "a,b,c" or a prefix "f*"
    target: str = "y"
    categorical: str | None = None     # "a,b": integer or string columns whose values are categories (one-hot)
    standardize: str = "all"           # "none" | "features" | "all": features, and the target if the model allows
    nonfinite: str = "error"           # NaN/inf/null rows: "error" or "drop"
    val_fraction: float = 0.1          # share of each worker's rows held out for validation
    s3_endpoint: str | None = None
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

    def check(self) -> None:
        """Raise TrainingError naming the first setting that cannot work."""
        workers = sum(self.arch_workers.values()) if self.arch_workers else self.workers
        if workers < 1 or self.batch_size < workers:
            raise TrainingError(f"need at least 1 worker and batch size >= workers, got {workers}, {self.batch_size}")
        if not 0 <= self.val_fraction < 1:
            raise TrainingError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.standardize not in STANDARDIZE:
            raise TrainingError(f"standardize must be one of {', '.join(STANDARDIZE)}, got {self.standardize!r}")
        if self.data is None:
            raise TrainingError("no data: give a Parquet dataset (dir, file, glob, file:// or s3://)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        c = cls(**{k: v for k, v in d.items() if k in known})
        c.slowdown = tuple(c.slowdown)
        return c
