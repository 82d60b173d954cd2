"""The server-worker link: messages arrive whole and in order, and a closed or wrong link says so."""
import socket
import threading

import numpy as np
import pytest

from mgdist import link


def test_messages_arrive_whole_and_in_order():
    a, b = socket.socketpair()
    arrays = [np.arange(n, dtype=np.float32) * (i + 1) for i, n in enumerate((0, 3, 1_000_003))]  # > a socket buffer
    sender = threading.Thread(target=lambda: [link.send(a, (i, 0.5, -2.0), x) for i, x in enumerate(arrays)])
    sender.start()
    for i, x in enumerate(arrays):
        out = np.empty_like(x)
        assert link.recv(b, out) == (i, 0.5, -2.0)
        np.testing.assert_array_equal(out, x)
    sender.join()


def test_a_closed_link_and_a_wrong_size_are_errors():
    a, b = socket.socketpair()
    link.send(a, (1, 2, 3), np.ones(4, np.float32))
    with pytest.raises(link.LinkClosed, match="16 bytes where 8 were expected"):
        link.recv(b, np.empty(2, np.float32))
    a.close()
    with pytest.raises(link.LinkClosed, match="closed the link"):
        link.recv(b, np.empty(0, np.float32))


def test_messages_move_on_non_blocking_sockets_a_part_at_a_time():
    """As the server drives its links on one thread: each advance() sends or reads what the
    socket takes now, and the message arrives whole however it was cut."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    x = np.arange(3_000_001, dtype=np.float32)  # several socket buffers
    out, got = link.Outgoing((7, 8, 9), x), link.Incoming(np.empty_like(x))
    sent = arrived = False
    rounds = 0
    while not arrived:
        sent = sent or out.advance(a)
        arrived = got.advance(b)
        rounds += 1
    assert sent and rounds > 2  # it took several parts
    assert got.numbers == (7, 8, 9)
    np.testing.assert_array_equal(got.out, x)


def test_a_message_cut_anywhere_or_followed_by_the_next_arrives_whole():
    """The header and the array's first bytes are read in one call: however the bytes are cut (in
    the header, at its end, in the array), and with the next message right behind, each message
    gets exactly its own bytes."""
    x, y = np.arange(5, dtype=np.float32), -np.arange(3, dtype=np.float32)
    stream = b"".join(bytes(p) for m in (link.Outgoing((1, 2, 3), x), link.Outgoing((4, 5, 6), y)) for p in m.parts)
    head = link.HEAD.size
    for cut in (1, head - 1, head, head + 1, head + 7, len(stream) - 1):
        a, b = socket.socketpair()
        b.settimeout(10)  # a message read short would wait for bytes that never come
        a.sendall(stream[:cut])
        late = threading.Timer(0.05, a.sendall, [stream[cut:]])
        late.start()
        first, second = np.empty_like(x), np.empty_like(y)
        assert link.recv(b, first) == (1, 2, 3) and link.recv(b, second) == (4, 5, 6), cut
        np.testing.assert_array_equal(first, x)
        np.testing.assert_array_equal(second, y)
        late.join()
