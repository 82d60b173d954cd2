"""The per-step messages between the parameter server and a worker, over one TCP socket each.

Ray places the actors, watches them and reports their deaths; the weights and gradients of
each step go over a plain socket, which takes tens of microseconds a message where a Ray
actor call took 1.0-1.5 ms each way (README.md, Scaling). A message is three numbers and
one float32 array.
"""
from __future__ import annotations

import socket
import struct

import numpy as np

HEAD = struct.Struct("<dddq")  # three numbers, then the array's size in bytes


class LinkClosed(ConnectionError):
    """The other end closed the link."""


def connect(host: str, port: int, timeout: float | None) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    return configure(sock, timeout=None)


def configure(sock: socket.socket, timeout: float | None) -> socket.socket:
    """No Nagle delay (a message is two writes), and a timeout on every read."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    return sock


def send(sock: socket.socket, numbers: tuple[float, float, float], array: np.ndarray) -> None:
    sock.sendall(HEAD.pack(*numbers, array.nbytes))
    sock.sendall(memoryview(array).cast("B"))


def recv(sock: socket.socket, out: np.ndarray) -> tuple[float, float, float]:
    """The next message's three numbers; its array is read into `out`, which must be its size."""
    head = bytearray(HEAD.size)
    _read_into(sock, memoryview(head))
    *numbers, nbytes = HEAD.unpack(head)
    if nbytes != out.nbytes:
        raise LinkClosed(f"a message of {nbytes} bytes where {out.nbytes} were expected")
    _read_into(sock, memoryview(out).cast("B"))
    return tuple(numbers)


def _read_into(sock: socket.socket, view: memoryview) -> None:
    while view:
        n = sock.recv_into(view)
        if n == 0:
            raise LinkClosed("the other end closed the link")
        view = view[n:]
