"""Train a quantile-regression MLP data-parallel on Ray.

    python jobs/quantile.py                      # local Ray, small synthetic dataset
    ray job submit --working-dir . -- python jobs/quantile.py --data s3://bucket/prefix --workers 16
"""
import sys

from mgdist.checkpoint import CheckpointError
from mgdist.config import parse_args
from mgdist.data import DataError
from mgdist.trainer import TrainingError, train


def main() -> int:
    config = parse_args()
    try:
        train(config)
    except (DataError, CheckpointError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
