"""Write a synthetic Parquet dataset whose true conditional quantiles are known (mgdist.synthetic).

python jobs/make_data.py --out /tmp/data --size 600MB --features 64 --files 4
python jobs/make_data.py --out s3://bucket/data --rows 1000000 --features 64 --s3-endpoint http://127.0.0.1:8333
"""
import argparse
import sys

from mgdist.data import Storage
from mgdist.synthetic import rows_for_size, write


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory or s3://bucket/prefix that holds no files yet")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--rows", type=int, help="number of rows")
    size.add_argument("--size", help="float32 bytes of features + target, e.g. 600MB or 2GiB")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--files", type=int, default=1)
    parser.add_argument("--row-group-rows", type=int, default=65536)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL_S3 or AWS)")
    args = parser.parse_args(argv)
    try:
        rows = args.rows if args.rows is not None else rows_for_size(args.size, args.features)
        paths = write(args.out, rows, args.features, args.files, args.row_group_rows, args.seed,
                      Storage(s3_endpoint=args.s3_endpoint))
    except ValueError as e:  # DataError included: bad arguments, data or storage, in one line
        sys.exit(f"make_data: {e}")
    print(f"wrote {rows:,} rows x {args.features} features + y to {len(paths)} file(s) under {args.out}")


if __name__ == "__main__":
    main()
