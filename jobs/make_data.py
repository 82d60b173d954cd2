"""Write a synthetic Parquet dataset whose true conditional distribution is known; as `mgdist make-data`.

    python jobs/make_data.py --out /tmp/data --size 600MB --features 64 --files 4
    python jobs/make_data.py --out s3://bucket/data --rows 1000000 --features 64 --s3-endpoint http://127.0.0.1:8333
"""
import sys

from mgdist.cli import main

if __name__ == "__main__":
    sys.exit(main(["make-data", *sys.argv[1:]]))
