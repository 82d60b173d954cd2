"""Evaluate a trained quantile model on a dataset: metrics.json, a table, and plots (with matplotlib).

    python jobs/evaluate.py --checkpoint /tmp/ckpt --data /tmp/val --report /tmp/report
    python jobs/evaluate.py --checkpoint s3://bucket/ckpt/ckpt-000001000.json --data s3://bucket/val
"""
import argparse
import sys

from mgdist.checkpoint import CheckpointError
from mgdist.data import Storage
from mgdist.evaluate import dataset_for, format_table, load_model, write_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (its newest valid one) or a ckpt-NNNNNNNNN.json")
    p.add_argument("--data", required=True, help="Parquet dataset: dir, file, glob, file:// or s3://bucket/prefix")
    p.add_argument("--report", default="report", help="local directory for metrics.json and the plots")
    p.add_argument("--metrics", help="the training job's --metrics log, for the loss curve (default: the one "
                   "named in the checkpoint's config)")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL_S3 or AWS)")
    args = p.parse_args(argv)
    storage = Storage(s3_endpoint=args.s3_endpoint)
    try:
        model, manifest = load_model(args.checkpoint, storage)
        ds = dataset_for(manifest, args.data, storage)
        metrics = write_report(model, ds, args.report, args.metrics or manifest["config"].get("metrics"),
                               manifest["config"]["nonfinite"], {"checkpoint": args.checkpoint, "step": manifest["step"]})
    except (CheckpointError, ValueError) as e:  # DataError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
