"""Every setting of a training run but the model's own arguments, in one dataclass.

mgdist.cli builds it from the command line, mgdist.train from keywords; a checkpoint stores it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mgdist.data import Storage
from mgdist.errors import TrainingError
from mgdist.preprocess import STANDARDIZE


RESUMED = ("seed", "batch_size", "workers", "arch_workers", "balance", "val_fraction", "optimizer", "lr", "schedule",
           "warmup_steps", "weight_decay")  # a resumed run must keep these, or the runs mix


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
    workers: int = 2                   # the most workers (--workers MIN:MAX: MAX)
    min_workers: int = 0               # elastic: start with at least this many and grow to workers; 0: exactly workers
    cpus_per_worker: float = 1.0
    servers: int = 1                   # parameter server shards, each a contiguous range of the parameters
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
    resume_changes: bool = False       # resume although a setting of the data order or the optimiser changed
    max_failures: int = 3
    on_nonfinite: str = "error"        # NaN/inf gradient or loss: "error" or "skip" the step
    log_every: int = 50
    val_every: int = 0                 # steps between validation rounds; 0: only at the end
    keep_best: bool = False            # keep the checkpoint of the best validation loss besides the newest
    early_stop: int = 0                # stop after this many validation rounds without improvement; 0: never
    # outputs: None puts each under checkpoint_dir (when set), "" turns it off; local paths or s3://
    metrics: str | None = None         # JSON-lines log of the records of every log point
    summary_json: str | None = None
    report: str | None = None          # dir for metrics.json and plots of the final model on the training data
    tensorboard: str | None = None     # dir for a TensorBoard event file of the same records (extra: tensorboard)
    mlflow: str | None = None          # MLflow tracking URI to log the records and settings to (extra: mlflow)
    mlflow_experiment: str = "mgdist"

    @property
    def storage(self) -> Storage:
        """How to reach this run's data and checkpoints."""
        return Storage(s3_endpoint=self.s3_endpoint)

    def check(self) -> None:
        """Raise TrainingError naming the first setting that cannot work."""
        workers = sum(self.arch_workers.values()) if self.arch_workers else self.workers
        if workers < 1 or self.batch_size < workers:
            raise TrainingError(f"need at least 1 worker and batch size >= workers, got {workers}, {self.batch_size}")
        if self.min_workers and not (1 <= self.min_workers <= self.workers and not self.arch_workers):
            raise TrainingError(f"--workers {self.min_workers}:{self.workers}: need 1 <= MIN <= MAX, and no "
                                f"--arch-workers")
        if not 0 <= self.val_fraction < 1:
            raise TrainingError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.standardize not in STANDARDIZE:
            raise TrainingError(f"standardize must be one of {', '.join(STANDARDIZE)}, got {self.standardize!r}")
        positive = {"servers": self.servers, "log_every": self.log_every, "step_timeout": self.step_timeout, "lr": self.lr,
                    "epochs": self.epochs, "cpus_per_worker": self.cpus_per_worker,
                    "placement_timeout": self.placement_timeout, "steps": 1 if self.steps is None else self.steps}
        at_least_zero = {"checkpoint_every": self.checkpoint_every, "keep_checkpoints": self.keep_checkpoints,
                         "max_failures": self.max_failures, "warmup_steps": self.warmup_steps,
                         "weight_decay": self.weight_decay, "val_every": self.val_every, "early_stop": self.early_stop}
        for name, value in positive.items():
            if not value > 0:
                raise TrainingError(f"{name} must be positive, got {value}")
        for name, value in at_least_zero.items():
            if not value >= 0:
                raise TrainingError(f"{name} must be 0 or more, got {value}")
        if self.early_stop and not (self.val_every and self.val_fraction):
            raise TrainingError(f"--early-stop {self.early_stop} needs validation rounds: --val-every N "
                                f"and --val-fraction > 0 (got {self.val_every}, {self.val_fraction})")
        if self.keep_best and not (self.checkpoint_dir and self.val_fraction):
            raise TrainingError("--keep-best needs --checkpoint-dir and --val-fraction > 0")

    def changed(self, saved: dict) -> list[tuple[str, object, object]]:
        """(setting, saved value, this value) of each setting that decides the data order or the
        optimiser's updates and differs from a saved config's."""
        return [(name, saved.get(name), getattr(self, name)) for name in RESUMED
                if saved.get(name) != dataclasses.asdict(self)[name]]

    def with_outputs(self) -> TrainConfig:
        """This config with the metrics log, summary and report that are not set (None) placed under
        checkpoint_dir: metrics.jsonl, summary.json, report/."""
        if not self.checkpoint_dir:
            return self
        under = {"metrics": "metrics.jsonl", "summary_json": "summary.json", "report": "report"}
        return dataclasses.replace(self, **{k: f"{self.checkpoint_dir.rstrip('/')}/{name}" for k, name in under.items()
                                            if getattr(self, k) is None})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        c = cls(**{k: v for k, v in d.items() if k in known})
        c.slowdown = tuple(c.slowdown)
        return c
