"""Predict every row of a Parquet dataset with a trained quantile model, data-parallel on Ray.

    python jobs/predict.py --checkpoint /tmp/ckpt --data /tmp/new --out /tmp/pred --keep id
    ray job submit --working-dir . -- python jobs/predict.py --checkpoint s3://b/ckpt --data s3://b/new --out s3://b/pred

Writes Parquet files part-FFFFF-GGGGGG.parquet (input file, first row group): the kept columns and
one float32 column per quantile (q0.1, q0.5, ...); sorted by name they follow the input's row order.
"""
import argparse
import sys

from mgdist.checkpoint import CheckpointError
from mgdist.data import Storage
from mgdist.predict import predict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (its newest valid one) or a ckpt-NNNNNNNNN.json")
    p.add_argument("--data", required=True, help="Parquet dataset: dir, file, glob, file:// or s3://bucket/prefix")
    p.add_argument("--out", required=True, help="local dir or s3://bucket/prefix that holds no files yet")
    p.add_argument("--keep", type=lambda s: [n.strip() for n in s.split(",") if n.strip()],
                   help="input columns to copy next to the predictions, e.g. id,date (default: every "
                   "column but the features; '' for none)")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL_S3 or AWS)")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a new local Ray)")
    args = p.parse_args(argv)
    try:
        files = predict(args.checkpoint, args.data, args.out, args.keep, Storage(s3_endpoint=args.s3_endpoint),
                        args.address)
    except (CheckpointError, ValueError) as e:  # DataError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} file(s) under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
