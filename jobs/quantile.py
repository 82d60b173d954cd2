"""Train a quantile-regression MLP data-parallel on Ray (mgdist.workloads.quantile).

    python jobs/quantile.py                      # local Ray, small synthetic dataset
    ray job submit --working-dir . -- python jobs/quantile.py --data s3://bucket/prefix --workers 16
"""
import sys

from mgdist.workloads.quantile import main

if __name__ == "__main__":
    sys.exit(main())
