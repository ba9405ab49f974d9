"""wss:// in the blocking shell: TLS runs in memory over our own socket (never an
SSLSocket), so a write can be timed and two threads can read and write at once."""

from __future__ import annotations

import queue
import socket
import ssl
import threading

import pytest

import ws_stream.sync
from ws_stream.events import Closed
from ws_stream.sync import WsSocket

from .helpers import collect_events, connect, stream_server, tls_contexts


def test_a_clean_close_over_tls_is_clean_on_both_ends() -> None:
    server_ctx, client_ctx = tls_contexts()
    ends: queue.Queue[list[object]] = queue.Queue()

    def handler(sock: WsSocket) -> None:
        events = sock.events()
        sock.settimeout(5)
        sock.sendall(sock.recv(100).upper())
        assert sock.recv(1) == b""  # the client's close frame
        sock.close()
        ends.put(collect_events(events))

    with stream_server(handler, ssl=server_ctx) as uri:
        sock = connect(uri.replace("ws://127.0.0.1", "wss://localhost"), ssl=client_ctx)
        events = sock.events()
        sock.settimeout(5)
        sock.sendall(b"hello")
        assert sock.recv(100) == b"HELLO"
        assert sock.websocket.response.status_code == 101
        sock.close(4000, "done")
        assert collect_events(events)[-1] == Closed(4000, "done", clean=True)
        assert ends.get(timeout=5)[-1] == Closed(4000, "done", clean=True)
        assert not sock.websocket.reader_thread.is_alive()


def test_an_ssl_socket_is_refused_as_sock() -> None:
    server_ctx, client_ctx = tls_contexts()
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        tcp = socket.create_connection(listener.getsockname(), timeout=5)
        wrapped = client_ctx.wrap_socket(
            tcp, server_hostname="localhost", do_handshake_on_connect=False
        )
        with pytest.raises(TypeError, match="plain connected socket"):
            ws_stream.sync.connect("wss://localhost:1/", sock=wrapped)
        wrapped.close()
    finally:
        listener.close()


def test_a_rejected_server_certificate_stays_a_certificate_error() -> None:
    server_ctx, _ = tls_contexts()
    with (
        stream_server(lambda sock: None, ssl=server_ctx) as uri,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        connect(uri.replace("ws://127.0.0.1", "wss://localhost"))  # the system's CAs


def test_full_duplex_over_tls_with_a_timed_reader() -> None:
    """One thread reads with short timeouts while another writes: nothing lost or garbled."""
    server_ctx, client_ctx = tls_contexts()

    def echo(sock: WsSocket) -> None:
        while data := sock.recv(65536):
            sock.sendall(data)

    data = bytes(range(256)) * 8192  # 2 MiB
    with stream_server(echo, ssl=server_ctx) as uri:
        sock = connect(uri.replace("ws://127.0.0.1", "wss://localhost"), ssl=client_ctx)
        sock.settimeout(0.001)
        got = bytearray()
        sender = threading.Thread(target=_send_all_blocking, args=(sock, data))
        sender.start()
        while len(got) < len(data):
            try:
                got += sock.recv(65536)
            except TimeoutError:
                continue
        sender.join(10)
        assert bytes(got) == data
        sock.close()


def _send_all_blocking(sock: WsSocket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view[:100_000]) :]
        except TimeoutError:
            continue
