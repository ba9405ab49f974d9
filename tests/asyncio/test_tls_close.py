"""Over wss://, the closing handshake ends as soon as both close frames are exchanged.

TLS has no half-close in asyncio (``can_write_eof()`` is False): the server
must close the TLS connection (close_notify) where over ws:// it half-closes
TCP. Before that was so, every close over wss:// waited for the whole
``close_timeout`` (10 s) and the server logged that the peer did not complete
the closing handshake. The bound below is half the close timeout: generous,
and still far from it. Runs on asyncio's default loop and on uvloop (conftest).
"""

from __future__ import annotations

import asyncio
import ssl
import time

import pytest
import trustme

import ws_stream
import ws_stream.sync

from .helpers import echo

CLOSE_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def test_a_client_close_over_tls_is_prompt(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], caplog: pytest.LogCaptureFixture
) -> None:
    server_ctx, client_ctx = contexts
    async with await ws_stream.start_server(
        echo, "127.0.0.1", 0, ssl=server_ctx, close_timeout=CLOSE_TIMEOUT
    ) as server:
        port = server.sockets[0].getsockname()[1]
        stream = await ws_stream.connect_stream(
            f"wss://127.0.0.1:{port}/", ssl=client_ctx, close_timeout=CLOSE_TIMEOUT
        )
        stream.writer.write(b"hi")
        assert await stream.reader.readexactly(2) == b"hi"
        started = time.monotonic()
        await stream.close()
        await stream.wait_closed()
        assert time.monotonic() - started < CLOSE_TIMEOUT / 2
        assert stream.close_code == 1000
        async with asyncio.timeout(CLOSE_TIMEOUT / 2):
            while server.connections:
                await asyncio.sleep(0.01)
    assert "did not complete the closing handshake" not in caplog.text


async def test_a_server_close_over_tls_is_prompt(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = contexts
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(2)
        writer.close()  # the server starts the closing handshake
        await writer.wait_closed()
        closed.set()

    async with await ws_stream.start_server(
        handler, "127.0.0.1", 0, ssl=server_ctx, close_timeout=CLOSE_TIMEOUT
    ) as server:
        port = server.sockets[0].getsockname()[1]
        stream = await ws_stream.connect_stream(
            f"wss://127.0.0.1:{port}/", ssl=client_ctx, close_timeout=CLOSE_TIMEOUT
        )
        started = time.monotonic()
        stream.writer.write(b"hi")
        assert await stream.reader.read() == b""
        async with asyncio.timeout(CLOSE_TIMEOUT / 2):
            await stream.wait_closed()
            await closed.wait()
        assert time.monotonic() - started < CLOSE_TIMEOUT / 2
        assert stream.close_code == 1000


async def test_a_blocking_client_close_over_tls_is_prompt(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = contexts
    async with await ws_stream.start_server(
        echo, "127.0.0.1", 0, ssl=server_ctx, close_timeout=CLOSE_TIMEOUT
    ) as server:
        port = server.sockets[0].getsockname()[1]

        def client() -> float:
            conn = ws_stream.sync.connect(
                f"wss://127.0.0.1:{port}/", ssl=client_ctx, close_timeout=CLOSE_TIMEOUT
            )
            conn.sendall(b"hi")
            assert conn.recv(2) == b"hi"
            started = time.monotonic()
            conn.close()
            return time.monotonic() - started

        assert await asyncio.to_thread(client) < CLOSE_TIMEOUT / 2
