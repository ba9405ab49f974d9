"""What a failed opening handshake says, on every shell (one mapping: ws_stream._handshake).

Real servers on 127.0.0.1: a plain HTTP server answering a fixed status, and a
plain ``ws://`` server reached with ``wss://``. Each shell must say what the
status means and what to do, never show the URI's credentials, and call a TLS
handshake that breaks off what it most often is: a server that does not speak TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import pytest
import trio
import trustme

import ws_stream
import ws_stream.sync
import ws_stream.trio
from ws_stream._handshake import handshake_failure, redact, status_advice
from ws_stream.exceptions import HandshakeError

SECRET = "hunter2"


@contextlib.contextmanager
def http_server(status_line: str) -> Iterator[int]:
    """A TCP server that reads a request head and answers ``status_line``; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                head = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in head:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        head += chunk
                    conn.sendall(
                        f"HTTP/1.1 {status_line}\r\nContent-Length: 0\r\n"
                        "Connection: close\r\n\r\n".encode()
                    )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@contextlib.contextmanager
def plain_ws_server() -> Iterator[int]:
    """A plain ws:// ws_stream server (blocking shell) that echoes; yields its port."""

    def handler(sock: ws_stream.sync.WsSocket) -> None:
        with contextlib.suppress(OSError):
            sock.recv(1)

    server = ws_stream.sync.serve(handler, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.socket.getsockname()[1]
    finally:
        server.shutdown()
        thread.join(5)


def open_asyncio(uri: str, **kw: object) -> None:
    async def main() -> None:
        reader, writer = await ws_stream.open_connection(uri, open_timeout=5, **kw)  # type: ignore[arg-type]
        writer.close()

    asyncio.run(main())


def open_trio(uri: str, **kw: object) -> None:
    async def main() -> None:
        async with ws_stream.trio.open_websocket_stream(uri, open_timeout=5, **kw):  # type: ignore[arg-type]
            pass

    trio.run(main)


def open_sync(uri: str, **kw: object) -> None:
    ws_stream.sync.connect(uri, open_timeout=5, **kw).close()


SHELLS: dict[str, Callable[..., None]] = {
    "asyncio": open_asyncio,
    "trio": open_trio,
    "blocking": open_sync,
}


@pytest.mark.parametrize("shell", SHELLS)
def test_503_says_the_server_is_full(shell: str) -> None:
    with http_server("503 Service Unavailable") as port, pytest.raises(HandshakeError) as info:
        SHELLS[shell](f"ws://user:{SECRET}@127.0.0.1:{port}/tunnel")
    message = str(info.value)
    assert info.value.status == 503
    assert "full" in message and "try again later" in message, message
    assert "credentials" not in message, message
    assert SECRET not in message, message


@pytest.mark.parametrize("shell", SHELLS)
def test_404_says_check_the_path_and_hides_credentials(shell: str) -> None:
    with http_server("404 Not Found") as port, pytest.raises(HandshakeError) as info:
        SHELLS[shell](f"ws://user:{SECRET}@127.0.0.1:{port}/nowhere")
    assert info.value.status == 404
    assert "path" in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("shell", SHELLS)
def test_invalid_uri_hides_credentials(shell: str) -> None:
    with pytest.raises(ValueError) as info:
        SHELLS[shell](f"http://user:{SECRET}@127.0.0.1:1/")
    assert SECRET not in str(info.value)
    assert "not a valid WebSocket URI" in str(info.value)


@pytest.fixture(scope="module")
def client_ssl() -> ssl.SSLContext:
    ca = trustme.CA()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.mark.parametrize("shell", SHELLS)
def test_wss_to_a_plain_server_says_it_may_not_speak_tls(
    shell: str, client_ssl: ssl.SSLContext
) -> None:
    with plain_ws_server() as port, pytest.raises(HandshakeError) as info:
        SHELLS[shell](f"wss://127.0.0.1:{port}/", ssl=client_ssl)
    message = str(info.value)
    assert "may not speak TLS" in message and "ws://" in message, message
    assert f"127.0.0.1:{port}" in message


def test_a_rejected_certificate_stays_a_certificate_error() -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    assert handshake_failure(exc, "wss://example.test/") is None


def test_status_advice_has_a_remedy_for_every_class() -> None:
    for status in (400, 401, 403, 404, 429, 500, 503, 301, 418):
        assert status_advice(status)
    assert "try again later" in status_advice(503)
    assert "logs" in status_advice(500)


def test_redact_hides_user_info_only() -> None:
    assert redact(f"wss://u:{SECRET}@h:1/p?q=1") == "wss://***@h:1/p?q=1"
    assert redact("ws://h/p") == "ws://h/p"
