"""The chaos soak of tests/test_chaos.py, for as many seeds as asked: each a long run through
nine faults (workers, a server shard and the S3 server killed or frozen, a straggler), checked
against the uninterrupted run's parameters and step log. Prints each seed's faults.

    python bench/chaos.py [--seeds 7 8 9] [--servers 2]
Inside a loopback-only network namespace, as README.md says.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

TEST = Path(__file__).resolve().parents[1] / "tests" / "test_chaos.py"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[7], help="fault schedules to run, one run each")
    p.add_argument("--servers", type=int, default=2, help="parameter server shards of each run")
    args = p.parse_args()
    failed = []
    for seed in args.seeds:
        run = subprocess.run([sys.executable, "-m", "pytest", str(TEST), "-m", "slow", "-s", "-q"],
                             env=os.environ | {"MGDIST_CHAOS_SEED": str(seed), "MGDIST_CHAOS_SERVERS": str(args.servers)})
        if run.returncode:
            failed.append(seed)
    print(f"{len(args.seeds) - len(failed)} of {len(args.seeds)} seeds survived" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
