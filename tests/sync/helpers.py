"""Shared helpers for the blocking tests: servers on random ports, each wait bounded."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import ws_stream.sync
from ws_stream.sync import WsSocket


@contextlib.contextmanager
def stream_server(handler: Callable[[WsSocket], object], **options: Any) -> Iterator[str]:
    """A ws_stream.sync server on 127.0.0.1 with a random port; yields its ws:// URI."""
    options.setdefault("ping_interval", None)
    options.setdefault("close_timeout", 2)
    server = ws_stream.sync.serve(handler, "127.0.0.1", 0, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"
    finally:
        stopper = threading.Thread(target=server.shutdown, daemon=True)
        stopper.start()
        stopper.join(10)
        assert not stopper.is_alive(), "server.shutdown() hung"
        thread.join(5)


@contextlib.contextmanager
def accepting_server(**options: Any) -> Iterator[tuple[int, queue.Queue[WsSocket]]]:
    """A server that queues each accepted socket (the test owns it); yields (port, queue)."""
    accepted: queue.Queue[WsSocket] = queue.Queue()
    done = threading.Event()

    def handler(sock: WsSocket) -> None:
        accepted.put(sock)
        done.wait(30)

    with stream_server(handler, **options) as uri:
        try:
            yield int(uri.rsplit(":", 1)[1].strip("/")), accepted
        finally:
            done.set()


def echo(sock: WsSocket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


def collect_events(events: ws_stream.sync.EventIterator, timeout: float = 5.0) -> list[Any]:
    """Every event until Closed; fails if it takes longer than ``timeout`` in all."""
    import time

    end = time.monotonic() + timeout
    out = []
    while (event := events.get(timeout=max(end - time.monotonic(), 0.001))) is not None:
        out.append(event)
    return out


def connect(uri: str, **options: Any) -> WsSocket:
    options.setdefault("ping_interval", None)
    options.setdefault("close_timeout", 2)
    return ws_stream.sync.connect(uri, **options)


def tls_contexts() -> tuple[Any, Any]:
    """(server, client) SSL contexts from a fresh trustme CA, for ``wss://localhost``."""
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx
