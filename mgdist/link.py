"""The per-step messages between the parameter server and a worker, over one TCP socket each.

Ray places the actors, watches them and reports their deaths; the weights and gradients of
each step go over a plain socket, which takes tens of microseconds a message where a Ray
actor call took 1.0-1.5 ms each way (README.md, Scaling). A message is three numbers and
one float32 array.

Anyone on the network can connect to the server's port, so a link is only used once the peer
has answered a fresh random challenge with an HMAC under the run's secret (Secret, which
only the server and its workers hold): a replayed answer fails, as does a guess.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

HEAD = struct.Struct("<dddq")  # three numbers, then the array's size in bytes
CHALLENGE_BYTES = 32
HELLO = struct.Struct("<q16s32s")  # worker index, the worker's nonce, HMAC-SHA256 of challenge + index + nonce
HANDSHAKE_S = 5.0  # a peer that has not proved itself this long after connecting is dropped


class LinkClosed(ConnectionError):
    """The other end closed the link."""


@dataclass(frozen=True)
class Secret:
    """The key a run's server and workers share, handed to them through Ray (never logged: no repr)."""
    key: bytes = field(repr=False)

    @classmethod
    def new(cls) -> Secret:
        return cls(secrets.token_bytes(32))


def _mac(secret: Secret, challenge: bytes, index: int, nonce: bytes) -> bytes:
    return hmac.new(secret.key, challenge + struct.pack("<q", index) + nonce, hashlib.sha256).digest()


def hello(secret: Secret, challenge: bytes, index: int) -> bytes:
    """A worker's answer to the server's challenge: its index, proved by the shared secret."""
    nonce = secrets.token_bytes(16)
    return HELLO.pack(index, nonce, _mac(secret, challenge, index, nonce))


def greet(sock: socket.socket, secret: Secret, index: int) -> None:
    """Worker side of the handshake: read the server's challenge, answer it as worker `index`."""
    challenge = bytearray(CHALLENGE_BYTES)
    _read_into(sock, memoryview(challenge))
    sock.sendall(hello(secret, bytes(challenge), index))


def accept(listener: socket.socket, secret: Secret, count: int, deadline: float, timeout: float | None,
           poll: Callable[[], None]) -> tuple[list[socket.socket | None], list[str]]:
    """Server side: the links of workers 0..count-1, accepted on `listener` until all have proved
    who they are or `deadline` (time.monotonic()) passes, each with read timeout `timeout`; and a
    line for each peer dropped. Each peer gets a fresh random challenge and HANDSHAKE_S seconds
    to answer it with hello(); one that answers wrongly (a replayed answer too), claims an index
    out of range or already taken, or says nothing in time is closed, and accepting goes on.
    poll() is called about once a second (to raise if a worker is known to be lost)."""
    links: list[socket.socket | None] = [None] * count
    pending: dict[socket.socket, tuple[bytes, bytearray, float, str]] = {}
    dropped: list[str] = []

    def drop(sock: socket.socket, why: str) -> None:
        dropped.append(f"dropped a peer from {pending.pop(sock)[3]}: {why}")
        sock.close()

    listener.setblocking(False)
    try:
        while None in links and (now := time.monotonic()) < deadline:
            poll()
            wake = min([deadline, now + 1, *(p[2] for p in pending.values())])
            for sock in select.select([listener, *pending], [], [], max(0.0, wake - now))[0]:
                if sock is listener:
                    try:
                        peer, address = listener.accept()
                    except BlockingIOError:
                        continue
                    challenge = secrets.token_bytes(CHALLENGE_BYTES)
                    pending[peer] = (challenge, bytearray(), time.monotonic() + HANDSHAKE_S, f"{address[0]}:{address[1]}")
                    try:
                        peer.settimeout(HANDSHAKE_S)
                        peer.sendall(challenge)
                        peer.setblocking(False)
                    except OSError as e:
                        drop(peer, f"{type(e).__name__} sending the challenge")
                    continue
                challenge, got, _, _ = pending[sock]
                try:
                    data = sock.recv(HELLO.size - len(got))
                except BlockingIOError:
                    continue
                except OSError as e:
                    drop(sock, f"{type(e).__name__} during the handshake")
                    continue
                if not data:
                    drop(sock, "closed the link before proving who it is")
                    continue
                got += data
                if len(got) < HELLO.size:
                    continue
                index, nonce, mac = HELLO.unpack(got)
                if not hmac.compare_digest(mac, _mac(secret, challenge, index, nonce)):
                    drop(sock, f"failed authentication (claimed worker {index})")
                elif not 0 <= index < count:
                    drop(sock, f"claimed worker index {index}, not one of 0..{count - 1}")
                elif links[index] is not None:
                    drop(sock, f"claimed worker {index}, which is already connected")
                else:
                    pending.pop(sock)
                    links[index] = configure(sock, timeout)
            for sock in [s for s, p in pending.items() if p[2] <= time.monotonic()]:
                drop(sock, f"sent no handshake within {HANDSHAKE_S:g} s")
    finally:
        for sock in list(pending):
            drop(sock, "still in its handshake when accepting ended")
    return links, dropped


def connect(host: str, port: int, secret: Secret, index: int, timeout: float | None) -> socket.socket:
    """A worker's link to the server at host:port, as worker `index`; `timeout` bounds every read."""
    sock = configure(socket.create_connection((host, port), timeout=timeout), timeout)
    try:
        greet(sock, secret, index)
    except BaseException:
        sock.close()
        raise
    return sock


def configure(sock: socket.socket, timeout: float | None) -> socket.socket:
    """No Nagle delay (a message's header is sent at once), and a timeout on every read."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    return sock


class Outgoing:
    """One message on its way out: header and array, sent in as few system calls as the socket
    allows, so that the peer is woken once (a second write for the array cost a second wake-up,
    most of a send). On a non-blocking socket advance() sends what the socket takes now."""

    def __init__(self, numbers: tuple[float, float, float], array: np.ndarray):
        self.parts = [memoryview(HEAD.pack(*numbers, array.nbytes)), memoryview(array).cast("B")]

    def advance(self, sock: socket.socket) -> bool:
        """Send more of it; whether it is all sent."""
        try:
            sent = sock.sendmsg([p for p in self.parts if p])
        except BlockingIOError:
            return False
        for i, part in enumerate(self.parts):
            taken = min(sent, len(part))
            self.parts[i], sent = part[taken:], sent - taken
        return not any(self.parts)


class Incoming:
    """One message on its way in: its header, checked, then its array read into `out`, which
    must be its size. The header and as much of the array as has arrived come in one system
    call (a scatter read), so a message that is all there takes one. On a non-blocking socket
    advance() reads what has arrived."""

    def __init__(self, out: np.ndarray):
        self.head, self.out = bytearray(HEAD.size), out
        self.view, self.body = memoryview(self.head), memoryview(out).cast("B")
        self.numbers: tuple[float, float, float] | None = None  # once the header is in

    def advance(self, sock: socket.socket) -> bool:
        """Read more of it; whether it is all in. LinkClosed if the peer closed the link or
        announced an array of another size (the bytes read into `out` with the header are then
        not this message's: a failed message leaves `out` undefined)."""
        while self.view:
            try:
                if self.numbers is None:
                    n = sock.recvmsg_into([self.view, self.body])[0]
                else:
                    n = sock.recv_into(self.view)
            except BlockingIOError:
                return False
            if n == 0:
                raise LinkClosed("the other end closed the link")
            if self.numbers is not None or n < len(self.view):
                self.view = self.view[n:]
                continue
            *numbers, nbytes = HEAD.unpack(self.head)
            if nbytes != self.out.nbytes:
                raise LinkClosed(f"a message of {nbytes} bytes where {self.out.nbytes} were expected")
            self.numbers, self.view = tuple(numbers), self.body[n - len(self.view):]
        return True


def send(sock: socket.socket, numbers: tuple[float, float, float], array: np.ndarray) -> None:
    """One message, on a blocking socket (its timeout bounds each write)."""
    message = Outgoing(numbers, array)
    while not message.advance(sock):
        pass


def recv(sock: socket.socket, out: np.ndarray) -> tuple[float, float, float]:
    """The next message's three numbers, on a blocking socket; its array is read into `out`,
    which must be its size."""
    message = Incoming(out)
    message.advance(sock)
    return message.numbers


def _read_into(sock: socket.socket, view: memoryview) -> None:
    while view:
        n = sock.recv_into(view)
        if n == 0:
            raise LinkClosed("the other end closed the link")
        view = view[n:]
