"""A worker's gradient step before and after the model moved behind the public contract.

Times one step's gradient sum (65,536 rows gathered by index from 200,000 x 64, 512-row passes,
1 BLAS thread, the quantile MLP 64 -> 128 tanh -> 9) with whichever mgdist is on PYTHONPATH:
the old QuantileModel.grad_sum or today's GradSum over QuantileMLP. Alternate the two in one run:

    for r in 1 2 3 4 5; do for tree in OLD NEW; do PYTHONPATH=$tree python bench/generic_path.py $tree; done; done
"""
import os, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
threadpool_limits(1)
rng = np.random.default_rng(0)
X = rng.standard_normal((200_000, 64), dtype=np.float32); y = rng.standard_normal(200_000).astype(np.float32)
rows = np.sort(rng.permutation(200_000)[:65536])
levels = tuple(np.round(np.linspace(0.1, 0.9, 9), 2))
if os.path.exists(os.path.join(sys.argv[1], "mgdist/workloads")):
    from micrograd.parallel import GradSum
    from mgdist.workloads.quantile import QuantileMLP
    g = GradSum(lambda: QuantileMLP(64, levels, (128,), "tanh"))
    step = lambda: g({"X": X, "y": y}, rows)
else:
    from mgdist.model import QuantileModel
    m = QuantileModel(64, levels, (128,), "tanh")
    step = lambda: m.grad_sum(X, y, rows)
step()
t = []
for _ in range(7):
    s = time.perf_counter(); step(); t.append(time.perf_counter() - s)
print(f"{sys.argv[1]} {min(t)*1e3:.1f} ms best, {sorted(t)[3]*1e3:.1f} ms median")
