"""Ports of 127.0.0.1 for tests: one a server binds later, one that refuses connections.

A port found by binding port 0 and closing the socket is free only for a moment: the next
``bind(("127.0.0.1", 0))`` of the run (a test's own server, say) may be handed the same port,
and a test that wanted "connection refused" then reaches that server and hangs (seen 2 times
in 2000 runs of tests/sync/test_http.py's refused-target test). A port that must refuse is
therefore *held*: a socket bound to it, never listening, kept open until the process ends.
Connecting to it is refused at once, and nothing else can bind it (the holder does not set
SO_REUSEADDR, so neither can a server that does). A port a test's server binds later is
held the same way, with SO_REUSEADDR, so that the server can (:func:`reserved_port`).
"""

from __future__ import annotations

import socket

__all__ = ["free_port", "refused_port", "reserved_port"]

_held: list[socket.socket] = []
_reserved: list[socket.socket] = []


def free_port() -> int:
    """A port nothing listens on now (bound, then released), for a server a test starts later.

    Racy by nature: another bind may take it first (about 1 in 14 000 for each port-0
    bind in between, measured on Linux). For "connection refused", use
    :func:`refused_port`; for a port that must refuse until a server binds it, use
    :func:`reserved_port`.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refused_port() -> int:
    """A port of 127.0.0.1 that refuses every connection for the rest of the test run.

    The port is bound by a socket that never listens; the process keeps it.
    """
    if not _held:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        _held.append(sock)
    return int(_held[0].getsockname()[1])


def reserved_port() -> int:
    """A new port of 127.0.0.1 that refuses connections until a server binds it.

    Held for the rest of the run by a socket bound with ``SO_REUSEADDR`` that never
    listens: no port-0 bind is handed the port, and a server that binds it with
    ``SO_REUSEADDR`` (asyncio's servers, ws-stream's, uvicorn's, Node's) still can.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    _reserved.append(sock)
    return int(sock.getsockname()[1])
