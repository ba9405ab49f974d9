"""start_server()'s process_request as a coroutine: the request waits for it, within open_timeout.

Runs on asyncio's default loop and on uvloop (conftest).
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from websockets.http11 import Request, Response

import ws_stream
from ws_stream.asyncio.server import ServerConnection
from ws_stream.exceptions import HandshakeError

from .helpers import echo


async def test_an_async_hook_that_accepts_then_the_stream_works() -> None:
    seen: list[str] = []

    async def hook(connection: ServerConnection, request: Request) -> Response | None:
        await asyncio.sleep(0.05)
        seen.append(request.path)
        return None

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The connection the hook saw is in the stream's extra information.
        assert isinstance(writer.get_extra_info("connection"), ServerConnection)
        await echo(reader, writer)

    async with await ws_stream.start_server(
        handler, "127.0.0.1", 0, process_request=hook, ping_interval=None
    ) as server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await ws_stream.open_connection(f"ws://127.0.0.1:{port}/p?q=1")
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
        writer.close()
        await writer.wait_closed()
    assert seen == ["/p?q=1"]


async def test_an_async_hook_that_refuses() -> None:
    async def hook(connection: ServerConnection, request: Request) -> Response | None:
        await asyncio.sleep(0)
        response = connection.respond(401, "who are you?\n")
        response.headers["WWW-Authenticate"] = 'Bearer realm="x"'
        return response

    async with await ws_stream.start_server(echo, "127.0.0.1", 0, process_request=hook) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(HandshakeError) as info:
            await ws_stream.open_connection(f"ws://127.0.0.1:{port}/")
        assert "401" in str(info.value)


async def test_an_async_hook_that_raises_is_a_500(caplog: pytest.LogCaptureFixture) -> None:
    async def hook(connection: ServerConnection, request: Request) -> Response | None:
        await asyncio.sleep(0)
        raise RuntimeError("broken hook")

    async with await ws_stream.start_server(echo, "127.0.0.1", 0, process_request=hook) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(HandshakeError) as info:
            await ws_stream.open_connection(f"ws://127.0.0.1:{port}/")
        assert "500" in str(info.value)
    failed = [r for r in caplog.records if "hooks failed" in r.getMessage()]
    assert failed and failed[0].exc_info is not None
    assert failed[0].levelno == logging.ERROR


async def test_a_slow_hook_is_bounded_by_open_timeout_and_cancelled() -> None:
    cancelled = asyncio.Event()

    async def hook(connection: ServerConnection, request: Request) -> Response | None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return None

    async with await ws_stream.start_server(
        echo, "127.0.0.1", 0, process_request=hook, open_timeout=0.3
    ) as server:
        port = server.sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            # The server drops the connection at open_timeout, without an answer.
            assert await asyncio.to_thread(sock.recv, 100) == b""
        await asyncio.wait_for(cancelled.wait(), 5)
        assert not server.connections
