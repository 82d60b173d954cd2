"""Mutation testing of the pure-Python logic with mutmut; mutants killed and survived per module.

    pip install -e '.[mutation]'
    python bench/mutation.py             # all mutants, from scratch (about 5 min on 2 cores)
    python bench/mutation.py --report    # only summarise the last run (mutants/ holds it)

mutmut (configured in pyproject.toml, [tool.mutmut]) copies the code to mutants/, mutates
the modules listed there, and runs for each mutant only the tests (of the pure-logic test
files listed there) that reach the mutated function. Counted here: the functions in SCOPE
(the engine, optimisers and losses whole; in mgdist the shard planning, batch split, row
order, averaging, metrics and checkpoints), so that I/O code that only the Ray and S3 tests
reach does not count as surviving. Known survivors and why each is harmless:
bench/mutation-survivors.md.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCOPE: dict[str, set[str] | None] = {  # module: functions counted (None: all of them)
    "micrograd.engine": None,
    "micrograd.optim": None,
    "micrograd.losses": None,
    "mgdist.data": {"plan_shards", "plan_rows", "_ideal_ends", "_cuts"},
    "mgdist.fleet": {"split_batch"},
    "mgdist.worker": {"split_rows", "epoch_order"},
    "mgdist.server": {"make_optimizer", "ParameterServer.apply"},
    "mgdist.metrics": None,
    "mgdist.checkpoint": None,
}
NAME = re.compile(r"^\s*(?P<module>[\w.]+)\.x(?:_(?P<func>\w+?)|ǁ(?P<cls>\w+)ǁ(?P<meth>\w+?))__mutmut_\d+: (?P<status>.+)$")


def results() -> list[tuple[str, str, str, str]]:
    """(mutant, module, function, status) of every mutant of the last run."""
    out = subprocess.run(["mutmut", "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True)
    rows = []
    for line in out.stdout.splitlines():
        m = NAME.match(line)
        if m:
            func = m["func"] or f"{m['cls']}.{m['meth']}"
            rows.append((line.split(":")[0].strip(), m["module"], func, m["status"].strip()))
    return rows


def in_scope(module: str, func: str) -> bool:
    return module in SCOPE and (SCOPE[module] is None or func in SCOPE[module])


def report(rows: list[tuple[str, str, str, str]]) -> int:
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors = []
    for mutant, module, func, status in rows:
        if in_scope(module, func):
            counts[module][status] += 1
            if status != "killed":
                survivors.append((mutant, status))
    print(f"{'module':<20}{'mutants':>9}{'killed':>8}{'survived':>10}{'other':>7}{'killed %':>10}")
    total = Counter()
    for module in SCOPE:
        c = counts[module]
        n, killed, survived = sum(c.values()), c["killed"], c["survived"]
        total.update(c)
        print(f"{module:<20}{n:>9}{killed:>8}{survived:>10}{n - killed - survived:>7}{100 * killed / max(n, 1):>9.1f}%")
    n = sum(total.values())
    print(f"{'all':<20}{n:>9}{total['killed']:>8}{total['survived']:>10}{n - total['killed'] - total['survived']:>7}"
          f"{100 * total['killed'] / max(n, 1):>9.1f}%")
    print(f"\n{len(survivors)} not killed (mutmut show NAME for the diff):")
    for mutant, status in survivors:
        print(f"  {mutant}: {status}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report", action="store_true", help="summarise the last run only")
    p.add_argument("--max-children", type=int, default=2, help="parallel test processes")
    args = p.parse_args()
    if not args.report:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)  # mutmut keeps old results even when the tests changed
        run = subprocess.run(["mutmut", "run", "--max-children", str(args.max_children)], cwd=ROOT,
                             stdout=subprocess.DEVNULL)
        if run.returncode:
            print(f"mutmut run failed ({run.returncode}); see mutants/", file=sys.stderr)
            return run.returncode
    return report(results())


if __name__ == "__main__":
    sys.exit(main())
