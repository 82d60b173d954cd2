"""The framework's cost per step, with almost no compute, as workers, parameters and server
shards grow; a cost model fitted to it; and what that model projects for EC2 clusters.

On a ray.cluster_utils.Cluster of NODES nodes (this machine's cores shared by all), each
(workers W, parameters P, servers S) trains `Ballast`: a linear model over 4 features plus
P parameters that no loss touches, so a step's messages carry P floats each way and the
workers compute almost nothing (8 rows each). Measured per run, in the steady state:
- the time per step, from the metrics log's elapsed seconds;
- the bytes per step through the busiest process: every TCP socket's bytes_sent and
  bytes_received as the kernel counts them (`ss -tinpO`), summed per process, sampled twice
  during the run, turned into bytes per step by the step rate.
- the CPU seconds per step of the busiest server shard and of the mean worker (/proc/PID/stat,
  at the same two samples).
Then a least-squares fit  step = c0 + c_msg x messages + c_byte x bytes + c_worker x W
over the busiest process's messages and bytes per step, and the projection: the share of a
step outside compute for N Graviton nodes on EC2 networks (figures in NETWORKS, COMPUTE). On
this machine every process shares the same cores, so the step time holds the CPU of all W
workers; a second fit takes only what a cluster would run in series, a server shard's CPU and
a worker's own message CPU per step, and projects from those and the wire time.

With --wire GBPS..., every (P, S, W) is measured again with the loopback shaped to each rate (tc's
token bucket on lo), so that the messages take wire time as on a network: whether a step on a
slow link costs the wire time plus the CPU (in series) or the wire time plus less (the copies of
a message overlapping its transfer). What a shaped step spends beyond its wire time and the
CPU fits' terms that are not per byte is fitted per byte of one message (the exposed copy at each
end), and a third projection uses that.

    python bench/scaling.py --sweep [--workers 1 2 4 8 16 32] [--params 10000 1000000 10000000] [--servers 1 2 4] [--wire 4 8]
Inside a loopback-only network namespace, as README.md says (root: `ss -p` sees every process,
tc shapes the namespace's lo).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import ray
from ray.cluster_utils import Cluster

import mgdist
from micrograd import Value
from micrograd.losses import mse
from mgdist.workloads import synthetic
from worker_profile import scratch_dir

NODES, CPUS_PER_NODE = 4, 8  # logical CPUs: 32 workers of 1 CPU fit
ROWS_PER_WORKER = 8
HEADER_BYTES = 32  # link.HEAD: a message is a 32-byte header and the float32 array


class Ballast:
    """y ~ X w, plus `size` - features parameters that the loss never touches: a model with the
    messages of `size` parameters and almost none of their compute."""

    def __init__(self, features: int, size: int = 10_000):
        self.w = Value(np.zeros((features, 1), np.float32))
        self.ballast = Value(np.zeros(max(0, size - features), np.float32))
        X, y = Value.placeholder("X", (None, features)), Value.placeholder("y", (None,))
        self.prediction = (X @ self.w)[:, 0]
        self.loss = mse(self.prediction, y)

    def parameters(self) -> list[Value]:
        return [self.w, self.ballast]


@dataclass
class Point:
    workers: int
    params: int
    servers: int
    step_s: float          # per step, steady state
    busiest_bytes: float   # per step, through the busiest process (kernel's socket counters)
    busiest: str           # which process that was
    messages: int          # per step, through the busiest process
    server_cpu_s: float = float("nan")  # CPU seconds per step of the busiest server shard
    worker_cpu_s: float = float("nan")  # CPU seconds per step of a worker (the mean)
    wire_gbps: float = 0.0  # the loopback shaped to this rate (tc tbf); 0: not shaped


def lo_bytes(p: Point) -> float:
    """Bytes a step over the loopback: every message crosses it once (each worker's, both ways)."""
    return p.workers * worker_bytes(p.params, p.servers)


def wire_s(p: Point) -> float:
    """Seconds a step's messages take on the shaped loopback (0 if not shaped)."""
    return lo_bytes(p) * 8 / (p.wire_gbps * 1e9) if p.wire_gbps else 0.0


@contextlib.contextmanager
def shaped_loopback(gbps: float):
    """The loopback limited to `gbps` for the block: one token bucket for all its traffic."""
    subprocess.run(["tc", "qdisc", "replace", "dev", "lo", "root", "tbf", "rate", f"{gbps}gbit",
                    "burst", "1mb", "latency", "500ms"], check=True)
    try:
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], check=True)


SOCKET = re.compile(r'users:\(\("([^"]+)",pid=(\d+),.*?bytes_sent:(\d+).*?bytes_received:(\d+)')


def socket_bytes() -> dict[int, tuple[str, int]]:
    """(process name, bytes sent + received over its established TCP sockets) of every process."""
    out = subprocess.run(["ss", "-tinpHO", "state", "established"], capture_output=True, text=True).stdout
    totals: dict[int, tuple[str, int]] = {}
    for line in out.splitlines():
        m = SOCKET.search(line)
        if m:
            name, pid, sent, received = m[1], int(m[2]), int(m[3]), int(m[4])
            totals[pid] = (name, totals.get(pid, (name, 0))[1] + sent + received)
    return totals


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds so far of each process (those gone: left out)."""
    seconds = {}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            seconds[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def last_step(metrics: str) -> int:
    try:
        lines = open(metrics).read().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (FileNotFoundError, json.JSONDecodeError):  # not yet, or mid-write
        return 0


def measure(path: str, workers: int, params: int, servers: int, steps: int, wire_gbps: float = 0.0) -> Point:
    """One run (on a loopback shaped to wire_gbps, if given); its steady-state step time and the
    busiest process's bytes per step."""
    scratch = tempfile.TemporaryDirectory()
    metrics = os.path.join(scratch.name, "metrics.jsonl")
    samples: list[tuple[float, dict, dict]] = []

    def sample() -> None:  # twice in the steady state: at the log points of 25% and 75% of the steps
        for share in (0.25, 0.75):
            while last_step(metrics) < share * steps and not done.is_set():
                time.sleep(0.01)
            if not done.is_set():
                sockets = socket_bytes()
                samples.append((time.perf_counter(), sockets, cpu_seconds(list(sockets))))
    done = threading.Event()
    sampler = threading.Thread(target=sample)
    sampler.start()
    extra = {"servers": servers} if servers > 1 else {}
    quiet = io.StringIO()  # each run's progress lines and summary
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), \
                shaped_loopback(wire_gbps) if wire_gbps else contextlib.nullcontext():
            mgdist.train(Ballast, path, model_args={"size": params}, workers=workers,
                         batch_size=ROWS_PER_WORKER * workers, steps=steps, log_every=max(1, steps // 4),
                         val_fraction=0.0, standardize="none", schedule="constant", lr=1e-3, metrics=metrics,
                         placement_timeout=300, step_timeout=120, **extra)
    finally:
        done.set()
        sampler.join()
    with scratch, open(metrics) as lines:
        records = [json.loads(line) for line in lines]
    steady = [r for r in records if r["step"] >= 0.25 * steps]  # a log point every quarter: the driver
    # takes the whole state (parameters, optimiser) at each, so they are few
    step_s = (steady[-1]["elapsed_s"] - steady[0]["elapsed_s"]) / (steady[-1]["step"] - steady[0]["step"])
    if len(samples) < 2:
        raise RuntimeError(f"the run of {workers} workers x {params:,} parameters ended before two samples")
    (t0, before, cpu0), (t1, after, cpu1) = samples
    per_step = {pid: (name, (total - before.get(pid, (name, 0))[1]) / (t1 - t0) * step_s)
                for pid, (name, total) in after.items()}
    pid = max(per_step, key=lambda p: per_step[p][1])
    name, busiest = per_step[pid]
    is_server = "Param" in name  # ray::ParameterServer, as the kernel shortens it
    cpu = {pid: (cpu1[pid] - cpu0[pid]) / (t1 - t0) * step_s for pid in cpu0.keys() & cpu1.keys()}
    server_cpu = max((s for pid, s in cpu.items() if "Param" in after[pid][0]), default=float("nan"))
    worker_cpu = [s for pid, s in cpu.items() if "Worker" in after[pid][0]]
    return Point(workers, params, servers, step_s, busiest, name, 2 * workers if is_server else 2 * servers,
                 server_cpu, float(np.mean(worker_cpu)) if worker_cpu else float("nan"), wire_gbps)


def message_bytes(params: int, servers: int) -> float:
    """One message between a worker and a shard: the shard's slice and the header."""
    return params / servers * 4 + HEADER_BYTES


def protocol_bytes(p: Point) -> float:
    """What the protocol moves per step through the busiest process (both directions): a server
    shard's slice to and from each of W workers, or a worker's slice to and from each of S shards."""
    return 2 * message_bytes(p.params, p.servers) * max(p.workers, p.servers)


def step(c: np.ndarray, p: Point) -> float:
    """The fitted step time of a measured point."""
    return c[0] + c[1] * p.messages + c[2] * p.busiest_bytes + c[3] * p.workers + c[4] * p.params / p.servers


def fit(points: list[Point]) -> np.ndarray:
    """Least squares c0, c_msg, c_byte, c_worker, c_param (each >= 0) of step = c0 + c_msg x
    messages + c_byte x bytes + c_worker x W + c_param x P / S (a shard's averaging and optimiser)."""
    A = np.array([[1.0, p.messages, p.busiest_bytes, p.workers, p.params / p.servers] for p in points])
    return nonnegative_fit(A, np.array([p.step_s for p in points]))


def shard_bytes(workers: int, params: int, servers: int) -> float:
    """Bytes a server shard moves per step: its slice to and from each worker."""
    return 2 * workers * message_bytes(params, servers)


def worker_bytes(params: int, servers: int) -> float:
    """Bytes a worker moves per step: every shard's slice in, and out."""
    return 2 * (params * 4 + servers * HEADER_BYTES)


def cpu_fits(points: list[Point]) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of the relative error (each coefficient >= 0; points of 0.1 ms weigh as much as
    points of 100 ms, so the small messages that a projection over many nodes is made of are not
    drowned by the big ones) of a server shard's CPU per step = s0 + s_msg x 2W + s_byte x its
    bytes + s_param x P / S, and of a worker's = w0 + w_msg x 2S + w_byte x its bytes."""
    ok = [p for p in points if np.isfinite(p.server_cpu_s) and np.isfinite(p.worker_cpu_s)]
    server_cpu, worker_cpu = np.array([p.server_cpu_s for p in ok]), np.array([p.worker_cpu_s for p in ok])
    server = nonnegative_fit(np.array([[1.0, 2 * p.workers, shard_bytes(p.workers, p.params, p.servers),
                                        p.params / p.servers] for p in ok]) / server_cpu[:, None], np.ones(len(ok)))
    worker = nonnegative_fit(np.array([[1.0, 2 * p.servers, worker_bytes(p.params, p.servers)] for p in ok])
                             / worker_cpu[:, None], np.ones(len(ok)))
    return server, worker


def nonnegative_fit(A: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Least squares coefficients of A c = t with every c >= 0."""
    active = list(range(A.shape[1]))
    while True:  # drop a negative coefficient and fit again (a small non-negative least squares)
        c = np.zeros(A.shape[1])
        c[active] = np.linalg.lstsq(A[:, active], t, rcond=None)[0]
        if (c >= 0).all():
            return c
        active.remove(int(np.argmin(c)))


# EC2 figures the projection uses (AWS's instance network bandwidth pages): one TCP flow between two
# instances gets up to 5 Gbps outside a cluster placement group and 10 Gbps inside one; instances
# of 16 vCPUs or fewer are rated "up to" a figure (c7g.4xlarge: up to 15 Gbps) with a lower baseline.
NETWORKS = {"5 Gbps a node": 5e9 / 8, "15 Gbps a node": 15e9 / 8}
COMPUTE = 8192 * 6 * 1e6 / 300e9
"""Seconds of a step of a 1M-weight MLP on one node: 8,192 rows a worker (the default 16,384-row
batch of a default 2-worker run) x 6 flops a weight and row (forward, two backward GEMMs) at
300 GFLOP/s (16 Graviton3 vCPUs at about half their float32 FMA peak): an assumption, not measured."""


def busiest_node_bytes(nodes: int, params: int, servers: int) -> float:
    """Bytes a step through the busiest node's network, one worker per node and `servers` shards on
    as many of them: in each of the two phases (weights out, gradients back) the larger of its
    shard's traffic and its worker's (they go opposite ways, and a link carries both at once)."""
    return 2 * max(nodes * params * 4 / servers, params * 4)


def project(c: np.ndarray, nodes: int, params: int, servers: int, bandwidth: float) -> float:
    """Share of a step outside compute: one worker per node and `servers` shards on as many of the
    nodes. A shard exchanges its slice with every worker (2 x nodes messages a step); the busiest
    node's wire time (busiest_node_bytes) and the fitted per-byte CPU cost of those bytes are added."""
    busiest = busiest_node_bytes(nodes, params, servers)
    outside = c[0] + c[1] * 2 * nodes + c[3] * nodes + c[4] * params / servers + busiest * (1 / bandwidth + c[2])
    return outside / (outside + COMPUTE)


def serial_cpu(server: np.ndarray, worker: np.ndarray, workers: int, params: int, servers: int) -> float:
    """A step's CPU that no transfer hides: a shard's and a worker's terms of the CPU fits that are
    not per byte (fixed, per message, the shard's averaging and optimiser per parameter). A worker's
    cost per message is the larger of its own fit's and a shard's: the sweep gives a worker at most
    a few shards' messages, too few to fit it, where a projection gives it one per node."""
    shard = server @ [1.0, 2 * workers, 0.0, params / servers]
    own = worker[0] + max(worker[1], server[1]) * 2 * servers
    return shard + own


def project_serial(server: np.ndarray, worker: np.ndarray, nodes: int, params: int, servers: int,
                   bandwidth: float) -> float:
    """As project(), from the CPU fits: what a cluster runs in series in a step is a shard's CPU
    (its links to all `nodes` workers), a worker's own message CPU and the wire time of the
    busiest node, added as if no copy overlapped a transfer; the workers' CPU runs in parallel,
    each on its node."""
    copies = server[2] * shard_bytes(nodes, params, servers) + worker[2] * worker_bytes(params, servers)
    wire = busiest_node_bytes(nodes, params, servers) / bandwidth
    outside = serial_cpu(server, worker, nodes, params, servers) + copies + wire
    return outside / (outside + COMPUTE)


def exposed_fit(shaped: list[Point], server: np.ndarray, worker: np.ndarray) -> np.ndarray:
    """(e_msg, e_wire): what a step on the shaped loopback spends beyond its wire time and
    serial_cpu, as e_msg x bytes of one message (the copies no transfer hides: the last message in
    before the optimiser step, the first out after it) + e_wire x its wire time (the link used
    below its rate); a non-negative least squares through 0."""
    A = np.array([[message_bytes(p.params, p.servers), wire_s(p)] for p in shaped])
    t = np.array([p.step_s - wire_s(p) - serial_cpu(server, worker, p.workers, p.params, p.servers) for p in shaped])
    return nonnegative_fit(A, t)


def overlapped_outside(server: np.ndarray, worker: np.ndarray, exposed: np.ndarray, wire: float, workers: int,
                       params: int, servers: int) -> float:
    """The overlap model's time a step outside compute: the transfer (the wire time with the link's
    shortfall, or a shard's or a worker's copies if they are slower: a process copies its bytes
    while they cross), the serial CPU and the exposed copies of one message."""
    copies = max(server[2] * shard_bytes(workers, params, servers), worker[2] * worker_bytes(params, servers))
    return (max(wire * (1 + exposed[1]), copies) + serial_cpu(server, worker, workers, params, servers)
            + exposed[0] * message_bytes(params, servers))


def project_overlapped(server: np.ndarray, worker: np.ndarray, exposed: np.ndarray, nodes: int, params: int,
                       servers: int, bandwidth: float) -> float:
    """As project_serial(), with each message's copies overlapping its transfer as the shaped
    loopback measures (overlapped_outside of the busiest node's wire time)."""
    wire = busiest_node_bytes(nodes, params, servers) / bandwidth
    outside = overlapped_outside(server, worker, exposed, wire, nodes, params, servers)
    return outside / (outside + COMPUTE)


def sweep(workers: list[int], params: list[int], servers: list[int], wire: list[float] = (),
          save: str | None = None, earlier: list[str] = ()) -> None:
    points: list[Point] = [Point(**p) for name in earlier for p in json.load(open(name))]
    if params:
        points += measured(workers, params, servers, wire, save)
    report(points)


def measured(workers: list[int], params: list[int], servers: list[int], wire: list[float],
             save: str | None) -> list[Point]:
    """Every (parameters, servers, workers) measured on a new Cluster, on the plain loopback then on
    it shaped to each `wire` rate (Gbit/s), printed as it comes."""
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=dict(
        num_cpus=0, include_dashboard=False, object_store_memory=400 * 2**20))
    for _ in range(NODES):
        cluster.add_node(num_cpus=CPUS_PER_NODE, object_store_memory=400 * 2**20)
    path = os.path.join(scratch_dir("mgdist-sweep-"), "data")
    synthetic.write(path, rows=64 * 256, features=4, files=4, row_group_rows=256, progress=False)
    ray.init(address=cluster.address, log_to_driver=False)
    points: list[Point] = []
    print(f"{NODES} Cluster nodes x {CPUS_PER_NODE} logical CPUs on {os.cpu_count()} cores; "
          f"{ROWS_PER_WORKER} rows per worker; load average {os.getloadavg()[0]:.1f}")
    print(f"{'params':>10} {'S':>2} {'workers':>7} {'lo Gbps':>7} {'ms/step':>8} {'MB/step busiest':>16} "
          f"{'(protocol)':>11} {'CPU ms/step: shard':>19} {'worker':>7}  busiest")
    try:
        for p in params:
            steps = 400 if p <= 100_000 else 80 if p <= 2_000_000 else 32
            for s in servers:
                for w in workers:
                    for gbps in (0.0, *wire):
                        point = measure(path, w, p, s, steps, gbps)
                        points.append(point)
                        print(f"{p:>10,} {s:>2} {w:>7} {gbps or '-':>7} {1e3 * point.step_s:8.2f} "
                              f"{point.busiest_bytes / 1e6:16.2f} {protocol_bytes(point) / 1e6:11.2f} "
                              f"{1e3 * point.server_cpu_s:19.2f} {1e3 * point.worker_cpu_s:7.2f}  {point.busiest}",
                              flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
        if save:
            with open(save, "w") as f:
                json.dump([dataclasses.asdict(p) for p in points], f, indent=1)
    return points


def report(points: list[Point]) -> None:
    shaped = [p for p in points if p.wire_gbps]
    points = [p for p in points if not p.wire_gbps]
    by = {(p.params, p.servers, p.workers): p.step_s for p in points}
    for p in sorted({p.params for p in points}):
        if (p, 1, 4) in by and (p, 1, 32) in by:
            print(f"{p:,} params, S = 1: 32 workers / 4 workers per step: {by[p, 1, 32] / by[p, 1, 4]:.2f}x "
                  "(target <= 2.5x)")
    for p in sorted({p.params for p in points}):
        if (p, 1, 8) in by and (p, 4, 8) in by:
            print(f"{p:,} params, 8 workers: S = 1 / S = 4 per step: {by[p, 1, 8] / by[p, 4, 8]:.2f}x (target >= 1.6x)")
    c = fit(points)
    print(f"fit: step = {1e3 * c[0]:.3f} ms + {1e6 * c[1]:.1f} us x messages + {1e9 * c[2]:.3f} ns x bytes "
          f"+ {1e6 * c[3]:.1f} us x workers + {1e9 * c[4]:.2f} ns x parameters per shard (busiest process); "
          f"rms error {1e3 * np.sqrt(np.mean([(step(c, p) - p.step_s) ** 2 for p in points])):.1f} ms")
    print(f"projection, one 16-vCPU Graviton worker per node, compute {1e3 * COMPUTE:.0f} ms a step "
          "(1M parameters, 8,192 rows per worker); share of a step outside compute:")
    print_projection(lambda nodes, s, bw: project(c, nodes, 1_000_000, s, bw))
    if not any(np.isfinite(p.server_cpu_s) for p in points):
        return
    server, worker = cpu_fits(points)
    print(f"CPU fits: a shard's = {1e3 * server[0]:.3f} ms + {1e6 * server[1]:.1f} us x messages + "
          f"{1e9 * server[2]:.3f} ns x bytes + {1e9 * server[3]:.2f} ns x parameters; a worker's = "
          f"{1e3 * worker[0]:.3f} ms + {1e6 * worker[1]:.1f} us x messages + {1e9 * worker[2]:.3f} ns x bytes")
    print("projection from the CPU a cluster runs in series (a shard's, a worker's messages, the wire):")
    print_projection(lambda nodes, s, bw: project_serial(server, worker, nodes, 1_000_000, s, bw))
    if not shaped:
        return
    exposed = exposed_fit(shaped, server, worker)
    print(f"on the shaped loopback: step = wire x {1 + exposed[1]:.3f} + serial CPU + {1e9 * exposed[0]:.3f} ns "
          "x bytes of one message")
    print(f"{'params':>10} {'S':>2} {'workers':>7} {'lo Gbps':>7} {'ms/step':>8} {'wire':>7} {'plain + wire':>12} "
          f"{'model':>7}")
    modelled = [overlapped_outside(server, worker, exposed, wire_s(p), p.workers, p.params, p.servers) for p in shaped]
    for p, model in zip(shaped, modelled):
        plain = by.get((p.params, p.servers, p.workers))
        print(f"{p.params:>10,} {p.servers:>2} {p.workers:>7} {p.wire_gbps:>7g} {1e3 * p.step_s:8.2f} "
              f"{1e3 * wire_s(p):7.2f} {1e3 * (plain + wire_s(p)) if plain else float('nan'):12.2f} {1e3 * model:7.2f}")
    errors = [model - p.step_s for p, model in zip(shaped, modelled)]
    print(f"model's rms error {1e3 * np.sqrt(np.mean(np.square(errors))):.2f} ms, largest "
          f"{1e3 * max(errors, key=abs):+.2f} ms")
    print("projection with the copies overlapping the transfer (the wire, the serial CPU, one message's copies):")
    print_projection(lambda nodes, s, bw: project_overlapped(server, worker, exposed, nodes, 1_000_000, s, bw))


def print_projection(share: Callable[[int, int, float], float]) -> None:
    """A table of share(nodes, servers, bandwidth) for 16-256 nodes, a few shard counts, each network."""
    print(f"{'nodes':>6} {'S':>4} " + " ".join(f"{name:>15}" for name in NETWORKS))
    for nodes in (16, 32, 64, 128, 256):
        for s in sorted({1, max(1, nodes // 16), max(1, nodes // 4), nodes}):
            print(f"{nodes:>6} {s:>4} " + " ".join(f"{100 * share(nodes, s, bw):14.1f}%" for bw in NETWORKS.values()))


def main(argv: list[str] | None = None) -> None:
    import argparse
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--params", type=int, nargs="*", default=[10_000, 1_000_000, 10_000_000],
                   help="none: only report the points of --with")
    p.add_argument("--servers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--wire", type=float, nargs="*", default=[], metavar="GBPS",
                   help="measure each point again with the loopback shaped to these rates (Gbit/s)")
    p.add_argument("--save", help="write the points measured to this JSON file")
    p.add_argument("--with", dest="earlier", nargs="*", default=[], metavar="JSON",
                   help="points saved by earlier runs (--save), reported and fitted with these")
    args = p.parse_args(argv)
    sweep(args.workers, args.params, args.servers, args.wire, args.save, args.earlier)


if __name__ == "__main__":
    main()
