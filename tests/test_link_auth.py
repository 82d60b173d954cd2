"""The server's links let in only the run's workers: fake peers on real sockets against a real
parameter server actor and real worker actors, which must end the steps exactly as one
process computes them on the same global batches."""
import dataclasses
import os
import signal
import socket
import sys
import time

import numpy as np
import pytest
import ray

from mgdist import data, link
from mgdist.fleet import Fleet, ray_get
from mgdist.server import BadMessage, ParameterServer
from mgdist.worker import Worker
from reference import initial_params, single_process_params
from test_train import SHARDS, small_config, uneven_data  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def fleet(ray_local, uneven_data, tmp_path_factory):
    """Two real workers, shared by this module's tests; they wait 2 s (--step-timeout) for a step."""
    fleet = Fleet(*small_config(uneven_data, tmp_path_factory.mktemp("fleet"), step_timeout=2.0),
                  data.discover(uneven_data))
    fleet.start()
    yield fleet
    fleet.stop()


def pid_of(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def listening_port(pid: int, timeout: float = 30) -> int:
    """The TCP port a process listens on (from /proc): the server's, once its run() has opened it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        with open(f"/proc/{pid}/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    return int(fields[1].split(":")[1], 16)
        time.sleep(0.05)
    raise AssertionError(f"process {pid} opened no listening socket within {timeout} s")


def fake_peer(port: int) -> tuple[socket.socket, bytes]:
    """A connection to the server and the challenge it was sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    challenge = bytearray(link.CHALLENGE_BYTES)
    link._read_into(sock, memoryview(challenge))
    return sock, bytes(challenge)


def closed_by_server(sock: socket.socket, timeout: float = 10) -> bool:
    """Whether the server closes this link within `timeout` (what it sent before, a challenge, aside)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(64):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def new_server(spec, config, ds, secret: link.Secret):
    return ray.remote(ParameterServer).options(num_cpus=0).remote(config, initial_params(spec, len(ds.features)),
                                                                 config.steps, secret)


def test_only_the_runs_workers_get_in_and_the_run_goes_on(fleet, uneven_data, tmp_path):
    spec, config = small_config(uneven_data, tmp_path, step_timeout=40.0)  # the server's: the deadline to connect
    ds = fleet.ds
    secret = link.Secret.new()
    server = new_server(spec, config, ds, secret)
    server_pid = pid_of(server)
    workers = [ray.get(w.ready.remote()).pid for w in fleet.actors]
    for pid in workers:  # held up, so that the fake peers come first
        os.kill(pid, signal.SIGSTOP)
    try:
        done = server.run.remote(config.steps, fleet.actors, fleet.batches, fleet.steps_per_epoch)
        port = listening_port(server_pid)
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]  # never say a word
        impostor, challenge = fake_peer(port)  # claims worker 1 first, without the secret
        impostor.sendall(link.hello(link.Secret.new(), challenge, 1))
        out_of_range, challenge = fake_peer(port)  # the secret, but index 99
        out_of_range.sendall(link.hello(secret, challenge, 99))
        recorded, old_challenge = fake_peer(port)  # an answer made for another connection's challenge
        replayed, _ = fake_peer(port)
        replayed.sendall(link.hello(secret, old_challenge, 1))
        recorded.close()
        for sock in (impostor, out_of_range, replayed):
            assert closed_by_server(sock)
        time.sleep(link.HANDSHAKE_S + 1)  # the idle ones time out meanwhile
        for sock in idle:
            assert closed_by_server(sock, timeout=1)
        os.kill(workers[1], signal.SIGCONT)  # the real worker 1 connects ...
        time.sleep(1)
        duplicate, challenge = fake_peer(port)  # ... then a peer with the secret claims 1 again
        duplicate.sendall(link.hello(secret, challenge, 1))
        assert closed_by_server(duplicate)
        os.kill(workers[0], signal.SIGCONT)
        state = ray_get(done, timeout=120)
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    assert state.step == config.steps
    np.testing.assert_allclose(state.params, single_process_params(spec, config, SHARDS[2]), rtol=2e-4, atol=2e-6)
    dropped = ray.get(server.__ray_call__.remote(lambda self: self.dropped))
    why = sorted(line.split(": ", 1)[1] for line in dropped)
    assert why == sorted(["failed authentication (claimed worker 1)", "claimed worker index 99, not one of 0..1",
                          "failed authentication (claimed worker 1)", "closed the link before proving who it is",
                          "claimed worker 1, which is already connected"]
                         + [f"sent no handshake within {link.HANDSHAKE_S:g} s"] * 5), dropped
    ray.kill(server)



ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/


class MiscountingWorker(Worker):
    """A worker whose answers claim `rows` rows (a bug in a model's gradient code, say)."""

    def __init__(self, *args, rows: int):
        super().__init__(*args)
        self.claimed = rows

    def grad(self, *args):
        grad, _, loss, seconds = super().grad(*args)
        return grad, self.claimed, loss, seconds


@pytest.mark.parametrize("claims", [
    ("minus the other's rows", lambda b: -b[0], "worker 1 sent -{b0} rows"),
    ("more than asked", lambda b: b[1] + 1, "worker 1 sent {b1p} rows"),
    ("none, as does the other", lambda b: 0, "the workers sent 0 rows in all")], ids=lambda c: c[0])
def test_an_impossible_row_count_is_the_sending_workers_error(fleet, uneven_data, tmp_path, claims):
    _, rows, message = claims
    spec, config, ds = fleet.spec, fleet.config, fleet.ds
    lying = [fleet.actors[0]] if rows(fleet.batches) else [ray.remote(MiscountingWorker).options(max_concurrency=2).remote(
        spec, config, ds, fleet.shards[0], 0, fleet.prep, rows=0)]
    lying.append(ray.remote(MiscountingWorker).options(max_concurrency=2).remote(
        spec, config, ds, fleet.shards[1], 1, fleet.prep, rows=rows(fleet.batches)))
    ray.get([w.ready.remote() for w in lying])
    server = new_server(spec, dataclasses.replace(config, step_timeout=30.0), ds, link.Secret.new())
    with pytest.raises(BadMessage) as e:
        ray_get(server.run.remote(config.steps, lying, fleet.batches, fleet.steps_per_epoch), timeout=60)
    expected = message.format(b0=fleet.batches[0], b1p=fleet.batches[1] + 1)
    assert str(e.value).startswith(f"step 0: {expected}") and "\n" not in str(e.value), e.value
    for actor in lying[1:] if lying[0] is fleet.actors[0] else lying:
        ray.kill(actor)
    ray.kill(server)


def test_a_workers_link_times_out_after_step_timeout_and_the_next_run_reconnects(fleet):
    """A worker waits for the next step no longer than --step-timeout (a hung or lost server must
    not hold its serve() forever); the server then opens new links, and the steps come out the same."""
    spec, config, ds = fleet.spec, fleet.config, fleet.ds
    server = new_server(spec, config, ds, link.Secret.new())
    ray_get(server.run.remote(5, fleet.actors, fleet.batches, fleet.steps_per_epoch), timeout=60)
    t = time.monotonic()
    ended = ray.get(server.__ray_call__.remote(
        lambda self: len(ray.wait(self.serving, num_returns=len(self.serving), timeout=20)[0])))
    assert ended == 2, "the workers' serve() calls still wait for a step 20 s later"
    print(f"serve() ended {time.monotonic() - t:.1f} s after the last step (--step-timeout 2)")
    state = ray_get(server.run.remote(config.steps, fleet.actors, fleet.batches, fleet.steps_per_epoch), timeout=60)
    np.testing.assert_allclose(state.params, single_process_params(spec, config, SHARDS[2]), rtol=2e-4, atol=2e-6)
    ray.kill(server)
