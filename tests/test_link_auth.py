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
from mgdist.server import BadMessage, ParameterServer, ServerState
from mgdist.shards import Shards
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


def start_serving(server, workers: list, secret: link.Secret) -> tuple[int, list[ray.ObjectRef]]:
    """The server's listening port, and the workers' serve() calls connecting to it (as the driver starts them)."""
    host, port = ray.get(server.listen.remote())
    return port, [w.serve.remote([(host, port)], i, secret) for i, w in enumerate(workers)]


def test_only_the_runs_workers_get_in_and_the_run_goes_on(fleet, uneven_data, tmp_path):
    spec, config = small_config(uneven_data, tmp_path, step_timeout=40.0)  # the server's: the deadline to connect
    ds = fleet.ds
    secret = link.Secret.new()
    server = new_server(spec, config, ds, secret)
    workers = [ray.get(w.ready.remote()).pid for w in fleet.actors]
    for pid in workers:  # held up, so that the fake peers come first
        os.kill(pid, signal.SIGSTOP)
    try:
        port, serving = start_serving(server, fleet.actors, secret)
        done = server.run.remote(config.steps, serving, fleet.batches, fleet.steps_per_epoch)
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
    secret = link.Secret.new()
    server = new_server(spec, dataclasses.replace(config, step_timeout=30.0), ds, secret)
    _, serving = start_serving(server, lying, secret)
    with pytest.raises(BadMessage) as e:
        ray_get(server.run.remote(config.steps, serving, fleet.batches, fleet.steps_per_epoch), timeout=60)
    expected = message.format(b0=fleet.batches[0], b1p=fleet.batches[1] + 1)
    assert str(e.value).startswith(f"step 0: {expected}") and "\n" not in str(e.value), e.value
    for actor in lying[1:] if lying[0] is fleet.actors[0] else lying:
        ray.kill(actor)
    ray.kill(server)


def test_a_workers_link_times_out_after_step_timeout_and_the_next_run_reconnects(fleet):
    """A worker waits for the next step no longer than --step-timeout (a hung or lost server must
    not hold its serve() forever); the driver then has every shard open new links, and the steps
    of two shards come out as one process's."""
    spec, config, ds = fleet.spec, dataclasses.replace(fleet.config, servers=2), fleet.ds
    shards = Shards(config, config.steps, ServerState(0, initial_params(spec, len(ds.features)), None), started := [])
    try:
        shards.run(5, fleet.actors, fleet.batches, fleet.steps_per_epoch)
        t = time.monotonic()
        ended = len(ray.wait(shards.serving, num_returns=len(shards.serving), timeout=20)[0])
        assert ended == 2, "the workers' serve() calls still wait for a step 20 s later"
        print(f"serve() ended {time.monotonic() - t:.1f} s after the last step (--step-timeout 2)")
        state = shards.run(config.steps, fleet.actors, fleet.batches, fleet.steps_per_epoch)
    finally:
        for actor in started:
            ray.kill(actor)
    np.testing.assert_allclose(state.params, single_process_params(spec, config, SHARDS[2]), rtol=2e-4, atol=2e-6)


class PoisoningWorker(Worker):
    """A worker whose gradient sum of step `step` holds a NaN in its last parameter alone (the last
    shard's slice), its loss finite."""

    def __init__(self, *args, step: int):
        super().__init__(*args)
        self.poisoned = step

    def grad(self, weights, step, *args):
        grad, rows, loss, seconds = super().grad(weights, step, *args)
        if step == self.poisoned:
            grad = grad.copy()
            grad[-1] = np.nan
        return grad, rows, loss, seconds


def test_a_gradient_nonfinite_in_one_shards_slice_is_skipped_by_every_shard(fleet):
    """The worker reports the NaN loss to both shards, so shard 0, whose slice is finite, skips
    step 3 as shard 1 does (else the shards' states disagree and do not join)."""
    spec, ds = fleet.spec, fleet.ds
    config = dataclasses.replace(fleet.config, servers=2, on_nonfinite="skip", step_timeout=30.0)  # a new worker's first steps
    poisoning = ray.remote(PoisoningWorker).options(max_concurrency=2).remote(
        spec, config, ds, fleet.shards[1], 1, fleet.prep, step=3)
    ray.get(poisoning.ready.remote())
    shards = Shards(config, config.steps, ServerState(0, initial_params(spec, len(ds.features)), None), started := [])
    try:
        state = shards.run(config.steps, [fleet.actors[0], poisoning], fleet.batches, fleet.steps_per_epoch)
    finally:
        for actor in [poisoning, *started]:
            ray.kill(actor)
    assert state.log["step"].tolist() == list(range(config.steps))
    assert state.log["step"][~state.log["applied"]].tolist() == [3]
    assert state.skips == ("step 3: non-finite gradient or loss from worker(s) [1]: step skipped",)
    assert int(state.optimizer["steps"]) == config.steps - 1


@ray.remote(num_cpus=0)
def waiting() -> None:
    """Stands for a worker's serve() call, which the server polls: one that does not end."""
    time.sleep(300)


def test_a_peer_answering_before_its_weights_are_all_sent_still_gets_them_whole_and_in_frame(fleet):
    """An authenticated peer that answers step 0 at once, before reading a byte of its weights (too
    many to go in one write), gets those weights whole and then step 1's message in frame: a
    step's exchange ends when every send is done, not only every answer."""
    size, secret = 4_000_000, link.Secret.new()  # 16 MB of weights: more than a loopback socket takes at once
    server = ray.remote(ParameterServer).options(num_cpus=0).remote(
        dataclasses.replace(fleet.config, step_timeout=30.0), np.ones(size, np.float32), 10, secret)
    serving = [waiting.remote()]
    try:
        host, port = ray.get(server.listen.remote())
        done = server.run.remote(2, serving, [5], 1)
        sock = link.connect(host, port, secret, 0, timeout=30)
        answer, weights = np.zeros(size, np.float32), np.empty(size, np.float32)
        link.send(sock, (5, 0.0, 0.001), answer)  # step 0's answer: 5 rows, a zero gradient
        assert link.recv(sock, weights) == (0, 5, 1)
        np.testing.assert_array_equal(weights, 1)
        assert link.recv(sock, weights) == (1, 5, 1)
        link.send(sock, (5, 0.0, 0.001), answer)
        assert ray_get(done, timeout=60).step == 2
        sock.close()
    finally:
        ray.kill(server)
        ray.cancel(serving[0], force=True)
