"""Score a checkpoint's model on a dataset: metrics.json, a table, and plots (with matplotlib).

As `mgdist evaluate`; `--help` lists the options.
"""
import sys

from mgdist.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
