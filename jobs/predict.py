"""Predict every row of a Parquet dataset with a checkpoint's model, data-parallel on Ray, to Parquet.

As `mgdist predict`; `--help` lists the options.
"""
import sys

from mgdist.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
