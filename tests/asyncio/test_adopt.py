"""Wrapping an already-open websockets connection (ws_stream/asyncio/adopt.py).

The one module that touches websockets' internals: these tests fail loudly,
naming the websockets version, when a touched name disappears, and check that
websockets' own bookkeeping (wait_closed, its server's wait_closed) stays right
after the takeover.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.protocol import State

import ws_stream
from ws_stream.asyncio.adopt import AdoptionError, check_adoptable

from .helpers import echo, stream_server


async def test_every_name_the_takeover_relies_on_exists_in_this_websockets() -> None:
    async with stream_server(echo) as uri, connect(uri, ping_interval=None) as ws:
        check_adoptable(ws)  # AdoptionError names the missing attributes and the version


async def test_a_missing_name_is_a_loud_error_naming_the_websockets_version() -> None:
    async with stream_server(echo) as uri, connect(uri, ping_interval=None) as ws:
        task = ws.keepalive_task
        del ws.keepalive_task  # what a websockets release that renamed it looks like
        try:
            with pytest.raises(AdoptionError, match=version("websockets")) as info:
                ws_stream.WsStream(ws)
        finally:
            ws.keepalive_task = task  # websockets itself needs it to close
        assert "keepalive_task" in str(info.value)
        assert ws.state is State.OPEN  # nothing was taken over: still websockets'


async def test_invalid_options_leave_the_connection_to_websockets() -> None:
    async with stream_server(echo) as uri, connect(uri, ping_interval=None) as ws:
        with pytest.raises(ValueError):
            ws_stream.WsStream(ws, on_text="latin-1")
        await ws.send(b"still websockets'")
        assert await ws.recv() == b"still websockets'"


async def test_a_connection_is_wrapped_once() -> None:
    """A second ``WsStream`` over the same connection is refused at once; the first
    one keeps the connection."""
    async with stream_server(echo) as uri, connect(uri, ping_interval=None) as ws:
        stream = ws_stream.WsStream(ws)
        with pytest.raises(ValueError, match="already wrapped by a WsStream"):
            ws_stream.WsStream(ws)
        stream.writer.write(b"still the first stream's")
        assert await stream.reader.readexactly(24) == b"still the first stream's"
        await asyncio.wait_for(stream.close(), 5)


async def test_what_is_no_websocket_is_refused_as_such() -> None:
    """Whatever the object (hashable or not), the error says what WsStream wraps."""

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

    for thing in (Unhashable(), [], "ws://x/"):
        with pytest.raises(TypeError, match="websockets"):
            ws_stream.WsStream(thing)


async def test_a_wrapped_client_streams_and_websockets_sees_the_end() -> None:
    async with stream_server(echo) as uri, connect(uri, ping_interval=None) as ws:
        stream = ws_stream.WsStream(ws)
        stream.writer.write(b"x" * 300_000)
        assert await stream.reader.readexactly(300_000) == b"x" * 300_000
        await stream.close(4001, "done")
        # websockets' own view of the connection followed the takeover.
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.state is State.CLOSED
        assert stream.close_code == 4001  # the echo server answered our code


async def test_websockets_server_handlers_end_and_its_server_closes() -> None:
    ended = asyncio.Event()

    async def handler(websocket: ServerConnection) -> None:
        stream = ws_stream.WsStream(websocket)
        data = await stream.reader.readexactly(3)
        stream.writer.write(data[::-1])
        await stream.close()
        ended.set()

    async with serve(handler, "127.0.0.1", 0, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await ws_stream.open_connection(
            f"ws://127.0.0.1:{port}/", ping_interval=None
        )
        writer.write(b"abc")
        assert await reader.read() == b"cba"  # then the handler's close: EOF
        await asyncio.wait_for(ended.wait(), 5)
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


async def test_a_close_websockets_handled_before_the_takeover_is_eof() -> None:
    got: asyncio.Future[tuple[bytes, int | None]] = asyncio.get_running_loop().create_future()

    async def handler(websocket: ServerConnection) -> None:
        await asyncio.sleep(0.3)  # the data and the close arrive meanwhile
        stream = ws_stream.WsStream(websocket)
        got.set_result((await stream.reader.read(), stream.close_code))

    async with serve(handler, "127.0.0.1", 0, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", ping_interval=None) as ws:
            await ws.send(b"last words")
            await ws.close(4002, "bye")
        assert await asyncio.wait_for(got, 5) == (b"last words", 4002)
