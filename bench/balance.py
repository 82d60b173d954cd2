"""Step time with --balance speed against equal shards when one worker is 8x slower (slowdown setting).

    ip netns exec mg env RAY_AUTH_MODE=disabled python bench/balance.py

Both runs in one process on the same local Ray, one after the other; prints each run's
seconds per step and their ratio (speed / equal). The machine is shared: compare within a run.
"""
import tempfile

import ray

import mgdist
from mgdist.workloads import synthetic
from mgdist.workloads.quantile import QuantileMLP


def main() -> None:
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False)
    with tempfile.TemporaryDirectory() as tmp:
        synthetic.write(f"{tmp}/data", rows=48000, features=16, files=4, row_group_rows=1000, progress=False)
        common = dict(model_args={"hidden": [128], "seed": 3}, batch_size=16000, steps=20, slowdown=(8.0,),
                      val_fraction=0.0, log_every=20, seed=3)
        step_s = {balance: 16000 / mgdist.train(QuantileMLP, f"{tmp}/data", **common, balance=balance).summary["rows_per_s"]
                  for balance in ("rows", "speed")}
    print(f"seconds per step: equal shards {step_s['rows']:.3f}, by speed {step_s['speed']:.3f}; "
          f"ratio {step_s['speed'] / step_s['rows']:.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
