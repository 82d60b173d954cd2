"""The command line: `mgdist train|evaluate|predict|make-data` (and jobs/*.py, which call it).

Every TrainConfig setting is an option of `train`; `--model package.module:Name` and
`--model-args JSON` name any importable model (docs/models.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from mgdist.config import TrainConfig
from mgdist.data import Storage
from mgdist.errors import MgdistError, TrainingError
from mgdist.model import ModelSpec
from mgdist.preprocess import STANDARDIZE


def _arch_counts(s: str) -> dict[str, int]:
    counts = {}
    for part in s.split(","):
        arch, _, n = part.partition("=")
        if arch not in ("x86_64", "aarch64") or not n.isdigit():
            raise argparse.ArgumentTypeError(f"expected x86_64=N,aarch64=M, got {s!r}")
        counts[arch] = int(n)
    return counts


def _worker_range(s: str) -> tuple[int, int]:
    """N (exactly N workers) or MIN:MAX (elastic)."""
    low, colon, high = s.partition(":")
    if not (low.isdigit() and (high.isdigit() or not colon)) or colon and int(low) < 1:
        raise argparse.ArgumentTypeError(f"expected N or MIN:MAX with MIN >= 1, got {s!r}")
    return int(low), int(high or low)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Every TrainConfig setting as an option (defaults from TrainConfig)."""
    d = TrainConfig()
    p.add_argument("--data", help="Parquet dataset: dir, file, glob, file:// or s3://bucket/prefix")
    p.add_argument("--features", help="feature columns: a,b,c or a prefix f* (default: every floating-point "
                   "column but the target; integer columns only when named)")
    p.add_argument("--target", default=d.target)
    p.add_argument("--categorical", help="integer or string columns whose values are categories, e.g. "
                   "carrier,origin (one-hot inputs; a value unseen in training: all zeros)")
    p.add_argument("--standardize", choices=list(STANDARDIZE), default=d.standardize,
                   help="standardize features, and the target of models that allow it (all), features only, or none")
    p.add_argument("--nonfinite", choices=["error", "drop"], default=d.nonfinite,
                   help="rows with a NaN, infinity or null: stop naming it, or drop them")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL_S3 or AWS)")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default=d.optimizer)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--schedule", choices=["constant", "linear", "cosine"], default=d.schedule)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="L2 for sgd and adam, decoupled for adamw; every optimizer's default is 0")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global rows per step")
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--steps", type=int, help="number of steps (overrides --epochs)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=_worker_range, default=(d.workers, d.workers), metavar="N|MIN:MAX",
                   help="workers; MIN:MAX: start with as many as the cluster holds (at least MIN) and grow "
                        "at epoch boundaries as nodes join")
    p.add_argument("--cpus-per-worker", type=float, default=d.cpus_per_worker)
    p.add_argument("--servers", type=int, default=d.servers,
                   help="parameter server shards, each owning a contiguous range of the parameters (at most their count)")
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
    p.add_argument("--resume-changes", action="store_true", help="resume although the seed, batch size, workers, "
                   "optimiser or schedule differ from the checkpoint's")
    p.add_argument("--max-failures", type=int, default=d.max_failures, help="worker/server losses survived")
    p.add_argument("--on-nonfinite", choices=["error", "skip"], default=d.on_nonfinite,
                   help="NaN/inf gradient or loss: stop, or skip that step")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between log lines")
    p.add_argument("--val-every", type=int, default=d.val_every,
                   help="steps between validation rounds on the held-out rows (0: only at the end)")
    p.add_argument("--keep-best", action="store_true",
                   help="keep the checkpoint of the best validation loss besides the newest --keep-checkpoints")
    p.add_argument("--early-stop", type=int, default=d.early_stop, metavar="PATIENCE",
                   help="stop after this many validation rounds without a better val_loss (needs --val-every)")
    p.add_argument("--metrics", help="JSON-lines log of every log point's record, local or s3:// "
                   "(default: metrics.jsonl under --checkpoint-dir; '' for none)")
    p.add_argument("--summary-json", help="the final summary as one JSON object, local or s3:// "
                   "(default: summary.json under --checkpoint-dir; '' for none)")
    p.add_argument("--report", help="at the end, score the model on the training data: metrics.json and "
                   "plots (matplotlib) in this dir, local or s3://, as `mgdist evaluate` does "
                   "(default: report/ under --checkpoint-dir; '' for none)")
    p.add_argument("--tensorboard", help="also write the records to a TensorBoard event file in this local dir "
                   "(pip install 'mgdist[tensorboard]')")
    p.add_argument("--mlflow", metavar="URI", help="also log the records and settings to this MLflow tracking "
                   "URI (pip install 'mgdist[mlflow]')")
    p.add_argument("--mlflow-experiment", default=d.mlflow_experiment)


def config_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TrainConfig:
    """The TrainConfig of parsed add_train_arguments() options (other options are ignored); settings
    that cannot work are the parser's error (exit 2)."""
    fields = TrainConfig.__dataclass_fields__
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields and k != "workers"})
    low, config.workers = args.workers
    config.min_workers = low if low != config.workers else 0
    if config.arch_workers:
        config.workers = sum(config.arch_workers.values())
    try:
        config.check()
    except TrainingError as e:
        parser.error(str(e))
    return config


def _json_object(s: str) -> dict:
    try:
        value = json.loads(s)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--model-args is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--model-args must be a JSON object of keyword arguments, got {s!r}")
    return value


def run_train(spec: Callable[[], ModelSpec], config: TrainConfig) -> int:
    """Train; an mgdist error is one line on stderr and exit status 2."""
    from mgdist.trainer import run
    try:
        run(spec(), config)
    except MgdistError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _train(args: argparse.Namespace) -> int:
    if "" not in sys.path:  # a model in the caller's own code (its --working-dir on a cluster)
        sys.path.insert(0, "")
    return run_train(lambda: ModelSpec.from_path(args.model, args.model_args), args.config)


def _evaluate(args: argparse.Namespace) -> int:
    from mgdist.evaluate import dataset_for, format_table, load, write_report
    storage = Storage(s3_endpoint=args.s3_endpoint)
    try:
        trained, manifest = load(args.checkpoint, storage)
        ds = dataset_for(manifest, args.data, storage)
        report = write_report(trained, ds, args.report, args.metrics or manifest["config"].get("metrics"),
                              manifest["config"]["nonfinite"], {"checkpoint": args.checkpoint, "step": manifest["step"]})
    except (MgdistError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from mgdist.predict import predict
    try:
        files = predict(args.checkpoint, args.data, args.out, args.keep, Storage(s3_endpoint=args.s3_endpoint),
                        args.address)
    except (MgdistError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} file(s) under {args.out}")
    return 0


def _make_data(args: argparse.Namespace) -> int:
    from mgdist.workloads.synthetic import rows_for_size, write
    try:
        rows = args.rows if args.rows is not None else rows_for_size(args.size, args.features)
        paths = write(args.out, rows, args.features, args.files, args.row_group_rows, args.seed,
                      Storage(s3_endpoint=args.s3_endpoint), thresholds=args.classes)
    except ValueError as e:  # DataError included: bad arguments, data or storage, in one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {rows:,} rows x {args.features} features + y to {len(paths)} file(s) under {args.out}")
    return 0


def _checkpoint_and_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (its newest valid one) or a ckpt-NNNNNNNNN.json")
    p.add_argument("--data", required=True, help="Parquet dataset: dir, file, glob, file:// or s3://bucket/prefix")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL_S3 or AWS)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mgdist", description="Data-parallel training of micrograd models on Ray.")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train any importable micrograd model")
    p.add_argument("--model", required=True, help="the model class, package.module:Name (docs/models.md)")
    p.add_argument("--model-args", type=_json_object, default={}, help='its keyword arguments as JSON, e.g. \'{"hidden": [64]}\'')
    add_train_arguments(p)
    p.set_defaults(run=_train)

    p = sub.add_parser("evaluate", help="score a checkpoint's model on a dataset: metrics.json, a table, plots")
    _checkpoint_and_data(p)
    p.add_argument("--report", default="report", help="local directory for metrics.json and the plots")
    p.add_argument("--metrics", help="the training job's --metrics log, for the loss curve (default: the one "
                   "named in the checkpoint's config)")
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("predict", help="predict every row of a dataset on Ray, to Parquet")
    _checkpoint_and_data(p)
    p.add_argument("--out", required=True, help="local dir or s3://bucket/prefix that holds no files yet")
    p.add_argument("--keep", type=lambda s: [n.strip() for n in s.split(",") if n.strip()],
                   help="input columns to copy next to the predictions, e.g. id,date (default: every "
                   "column but the features; '' for none)")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a new local Ray)")
    p.set_defaults(run=_predict)

    p = sub.add_parser("make-data", help="write a synthetic dataset whose true distribution is known")
    p.add_argument("--out", required=True, help="directory or s3://bucket/prefix that holds no files yet")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--rows", type=int, help="number of rows")
    size.add_argument("--size", help="float32 bytes of features + target, e.g. 600MB or 2GiB")
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--files", type=int, default=1)
    p.add_argument("--row-group-rows", type=int, default=65536)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=lambda s: [float(t) for t in s.split(",") if t], default=[],
                   help="class thresholds of y, e.g. 0 or -1,0,1: adds a column `label` (classification)")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL_S3 or AWS)")
    p.set_defaults(run=_make_data)
    return top


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    if args.command == "train":
        args.config = config_from(args, top)
    return args.run(args)
