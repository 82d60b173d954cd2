"""Train any importable micrograd model data-parallel on Ray (docs/models.md); as `mgdist train`.

    python jobs/train.py --model mymodels:Forecaster --model-args '{"lags": 24}' --data /data/rows
    ray job submit --working-dir . -- python jobs/train.py --model mymodels:Forecaster --data s3://bucket/rows
"""
import sys

from mgdist.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
