"""``ws_stream.aiohttp``: what is particular to aiohttp's WebSockets, server and client.

The matrix (``test_matrix.py``) runs the common behaviour; here: what
``WsStream(ws)`` accepts, what it reports, and pings with ``autoping=False``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import websockets.asyncio.server
from aiohttp import web
from websockets.asyncio.server import ServerConnection

import ws_stream

from ..rawpeer import BINARY, CLOSE, RawPeer, RawServer, close_payload
from .helpers import PATH, STEP, run_aiohttp, stream_of


async def test_wraps_a_client_websocket() -> None:
    """``WsStream(session.ws_connect(...))`` - the documented aiohttp client front end."""
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(writer)
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    async with (
        asyncio.timeout(30),
        await ws_stream.start_server(
            on_connection, "127.0.0.1", 0, ping_interval=None, subprotocols=["binary"]
        ) as server,
        aiohttp.ClientSession() as session,
    ):
        port = server.sockets[0].getsockname()[1]
        ws = await session.ws_connect(f"ws://127.0.0.1:{port}/", protocols=["binary"])
        stream = ws_stream.WsStream(ws)
        assert stream.subprotocol == "binary"
        assert "client" in repr(stream)  # the WebSocket's side, not the in-memory one's
        theirs = stream_of(await asyncio.wait_for(accepted.get(), STEP))
        assert stream.writer.get_extra_info("peername") == theirs.writer.get_extra_info("sockname")
        stream.writer.write(b"echo me")
        assert await stream.reader.readexactly(7) == b"echo me"
        await asyncio.wait_for(stream.close(), STEP)


#: Programs that import ``aiohttp`` but not ``aiohttp.web`` (which ``import aiohttp``
#: does not load), then wrap a connection. Each prints "ok" and the echo.
PROGRAMS = {
    "websockets-connection": """
        import asyncio
        import aiohttp  # for something else: an HTTP client, say
        import websockets.asyncio.client
        import ws_stream

        async def main():
            async def echo(reader, writer):
                writer.write(await reader.readexactly(5))
                await writer.drain()

            async with await ws_stream.start_server(echo, "127.0.0.1", 0) as server:
                port = server.sockets[0].getsockname()[1]
                ws = await websockets.asyncio.client.connect(f"ws://127.0.0.1:{port}/")
                stream = ws_stream.WsStream(ws)
                stream.writer.write(b"hello")
                print("ok", await stream.reader.readexactly(5))
                await stream.close()

        asyncio.run(asyncio.wait_for(main(), 10))
    """,
    "aiohttp-client": """
        import asyncio
        import aiohttp
        import ws_stream

        async def main():
            async def echo(reader, writer):
                writer.write(await reader.readexactly(5))
                await writer.drain()

            async with await ws_stream.start_server(echo, "127.0.0.1", 0) as server:
                port = server.sockets[0].getsockname()[1]
                async with aiohttp.ClientSession() as session:
                    ws = await session.ws_connect(f"ws://127.0.0.1:{port}/")
                    stream = ws_stream.WsStream(ws)
                    stream.writer.write(b"hello")
                    print("ok", await stream.reader.readexactly(5))
                    await stream.close()

        asyncio.run(asyncio.wait_for(main(), 10))
    """,
}


@pytest.mark.parametrize("program", sorted(PROGRAMS))
async def test_wrapping_when_aiohttp_web_is_not_imported(program: str) -> None:
    """A fresh process, where ``aiohttp`` is imported and ``aiohttp.web`` is not."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(PROGRAMS[program]),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-600:]
    assert out.decode().strip() == "ok b'hello'"


async def test_server_websocket_must_be_prepared_and_open() -> None:
    outcomes: list[str] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        try:
            ws_stream.WsStream(ws)
        except ValueError as exc:
            outcomes.append(f"unprepared: {exc}")
        await ws.prepare(request)
        await ws.close(code=4000)
        try:
            ws_stream.WsStream(ws)
        except ValueError as exc:
            outcomes.append(f"closed: {exc}")
        return ws

    app = web.Application()
    app.router.add_get(PATH, handler)
    async with asyncio.timeout(30), run_aiohttp(app) as port:
        reader, writer = await ws_stream.open_connection(
            f"ws://127.0.0.1:{port}{PATH}", ping_interval=None
        )
        assert await reader.read() == b""
        assert stream_of(writer).close_code == 4000
        # Until the handler is over: a shutting-down aiohttp stops reading, and
        # its ws.close() would wait 10 s for our answer to its close.
        await asyncio.wait_for(stream_of(writer).wait_closed(), STEP)
    assert outcomes == [
        "unprepared: the aiohttp WebSocket must be prepared and open",
        "closed: the aiohttp WebSocket must be prepared and open",
    ]


async def test_server_stream_reports_the_connection() -> None:
    streams: asyncio.Queue[ws_stream.WsStream] = asyncio.Queue()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=["binary"])
        await ws.prepare(request)
        stream = ws_stream.WsStream(ws)
        await streams.put(stream)
        await stream.wait_closed()
        return ws

    app = web.Application()
    app.router.add_get(PATH, handler)
    async with asyncio.timeout(30), run_aiohttp(app) as port:
        reader, writer = await ws_stream.open_connection(
            f"ws://127.0.0.1:{port}{PATH}", subprotocols=["binary"], ping_interval=None
        )
        stream = await asyncio.wait_for(streams.get(), STEP)
        assert stream.subprotocol == "binary"
        assert stream.writer.get_extra_info("peername") == writer.get_extra_info("sockname")
        assert stream.writer.get_extra_info("aiohttp_ws") is not None
        assert "server" in repr(stream)
        writer.close()
        await asyncio.wait_for(stream.wait_closed(), STEP)


@pytest.mark.parametrize("autoping", [True, False])
async def test_the_peers_ping_is_answered(autoping: bool) -> None:
    """RFC 6455 5.5.2: a ping MUST be answered. With ``autoping=False`` aiohttp hands
    pings to the application (``receive()``), which is the stream here."""
    streams: asyncio.Queue[ws_stream.WsStream] = asyncio.Queue()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=autoping)
        await ws.prepare(request)
        stream = ws_stream.WsStream(ws, close_timeout=3.0)
        await streams.put(stream)
        await stream.wait_closed()
        return ws

    app = web.Application()
    app.router.add_get(PATH, handler)
    async with asyncio.timeout(30), run_aiohttp(app) as port:
        reader, writer = await ws_stream.open_connection(
            f"ws://127.0.0.1:{port}{PATH}", ping_interval=None, close_timeout=3.0
        )
        await asyncio.wait_for(streams.get(), STEP)
        try:
            latency = await stream_of(writer).ping(b"hello", timeout=3.0)
        except TimeoutError:
            pytest.fail(f"autoping={autoping}: the stream never answered the peer's ping")
        finally:
            writer.close()
            await asyncio.wait_for(stream_of(writer).wait_closed(), STEP)
        assert 0 < latency < 3.0


@contextlib.asynccontextmanager
async def aiohttp_client_stream(
    handler: Callable[[ServerConnection], Awaitable[None]], **ws_options: Any
) -> AsyncIterator[tuple[ws_stream.WsStream, aiohttp.ClientWebSocketResponse]]:
    """A stream over aiohttp's client (``ws_connect(**ws_options)``) to a websockets
    server running ``handler``."""
    async with (
        websockets.asyncio.server.serve(
            handler, "127.0.0.1", 0, ping_interval=None, close_timeout=STEP
        ) as server,
        aiohttp.ClientSession() as session,
    ):
        port = server.sockets[0].getsockname()[1]
        ws = await session.ws_connect(f"ws://127.0.0.1:{port}/", **ws_options)
        yield ws_stream.WsStream(ws, close_timeout=STEP), ws


async def test_a_receive_that_fails_ends_the_websocket_for_the_peer_too() -> None:
    """aiohttp's ``receive()`` raising (``receive_timeout``) ends the stream; the
    WebSocket is closed with 1011 too, not left open with the peer never told."""
    peer: dict[str, Any] = {}

    async def handler(conn: ServerConnection) -> None:
        await conn.wait_closed()
        peer["code"] = conn.close_code

    # receive_timeout= is deprecated where ClientWSTimeout exists.
    timeout_class = getattr(aiohttp, "ClientWSTimeout", None)
    if timeout_class is not None:
        options: dict[str, Any] = {"timeout": timeout_class(ws_receive=0.3)}
    else:
        options = {"receive_timeout": 0.3}
    async with asyncio.timeout(30), aiohttp_client_stream(handler, **options) as (stream, ws):
        with pytest.raises(ws_stream.WsStreamError):
            await stream.reader.read()
        await asyncio.wait_for(stream.wait_closed(), STEP)
        for _ in range(100):
            if "code" in peer:
                break
            await asyncio.sleep(0.05)
        assert peer.get("code") == 1011, peer
        assert ws.closed


async def test_the_peers_close_is_answered_when_aiohttp_leaves_it_to_the_application() -> None:
    """``autoclose=False``: aiohttp does not answer the peer's close; the stream does,
    with the peer's code (as websockets does), and at once."""
    peer: dict[str, Any] = {}

    async def handler(conn: ServerConnection) -> None:
        await conn.send(b"hello")
        started = asyncio.get_running_loop().time()
        await conn.close(4000, "peer bye")
        peer["seconds"] = asyncio.get_running_loop().time() - started
        peer["code"] = conn.close_code

    async with (
        asyncio.timeout(30),
        aiohttp_client_stream(handler, autoclose=False) as (
            stream,
            ws,
        ),
    ):
        assert await stream.reader.read() == b"hello"
        await asyncio.wait_for(stream.wait_closed(), STEP)
        assert (stream.close_code, stream.close_reason) == (4000, "peer bye")
        assert stream.close_code_sent == 4000
        for _ in range(100):
            if "code" in peer:
                break
            await asyncio.sleep(0.05)
        assert peer.get("code") == 4000, peer
        assert peer["seconds"] < STEP / 2, peer
        assert ws.closed


async def test_a_websocket_is_wrapped_once() -> None:
    """A second ``WsStream`` over the same aiohttp WebSocket is refused at once (it
    used to fail later as a lost connection); the first one keeps it."""

    async def handler(conn: ServerConnection) -> None:
        async for message in conn:
            await conn.send(message)

    async with asyncio.timeout(30), aiohttp_client_stream(handler) as (stream, ws):
        with pytest.raises(ValueError, match="already wrapped by a WsStream"):
            ws_stream.WsStream(ws)
        stream.writer.write(b"still the first stream's")
        assert await stream.reader.readexactly(24) == b"still the first stream's"
        await asyncio.wait_for(stream.close(), STEP)


@contextlib.asynccontextmanager
async def aiohttp_client_and_raw_peer(
    close_timeout: float = 1.0, **ws_options: Any
) -> AsyncIterator[tuple[ws_stream.WsStream, aiohttp.ClientWebSocketResponse, RawPeer]]:
    """A stream over aiohttp's client (``ws_connect(**ws_options)``) to a raw peer."""
    async with RawServer() as server, aiohttp.ClientSession() as session:
        ws = await session.ws_connect(server.uri, **ws_options)
        peer = await server.accept()
        yield ws_stream.WsStream(ws, close_timeout=close_timeout), ws, peer


def aiohttp_close_timeout(seconds: float) -> dict[str, Any]:
    """``ws_connect()``'s option for aiohttp's own close timeout, in either spelling."""
    timeout_class = getattr(aiohttp, "ClientWSTimeout", None)
    if timeout_class is not None:
        return {"timeout": timeout_class(ws_close=seconds)}
    return {"timeout": seconds}


async def _frames_until_eof(peer: RawPeer) -> list[tuple[int, bytes]]:
    frames = []
    with contextlib.suppress(asyncio.IncompleteReadError):
        while True:
            frame = await peer.recv_frame(STEP)
            frames.append((frame.opcode, frame.payload))
    return frames


@pytest.mark.parametrize("autoclose", [True, False])
async def test_our_close_answered_ends_the_connection(autoclose: bool) -> None:
    """We close first, the peer answers: aiohttp's connection ends (with autoclose=False
    too), and only aiohttp's own second close frame may follow ours (as autoclose does)."""
    async with (
        asyncio.timeout(30),
        aiohttp_client_and_raw_peer(autoclose=autoclose) as (
            stream,
            ws,
            peer,
        ),
    ):
        closing = asyncio.create_task(stream.close(4001, "done"))
        assert await peer.recv_close(STEP) == (4001, "done")
        peer.send(CLOSE, close_payload(4001, "done"))
        await peer.writer.drain()
        await asyncio.wait_for(closing, STEP)
        assert (stream.close_code, stream.close_code_sent) == (4001, 4001)
        after = await _frames_until_eof(peer)  # aiohttp ends the TCP connection
        assert after in ([], [(CLOSE, close_payload(1000))]), after
        assert ws.closed


@pytest.mark.parametrize("code", [1000, 4000, 5000, 1005])
async def test_the_peers_close_with_autoclose_off_is_answered_as_over_tcp(code: int) -> None:
    """autoclose=False: the stream's engine answers the peer's close, as over TCP: its
    code and reason echoed (5000, invalid on the wire: 1002 and ProtocolError; none:
    1000, since aiohttp cannot send an empty close); the stream is over long before its
    close timeout, and aiohttp's connection ends (after a close without a code,
    aiohttp's client waits for its own close timeout first)."""
    async with (
        asyncio.timeout(30),
        aiohttp_client_and_raw_peer(
            close_timeout=STEP, autoclose=False, **aiohttp_close_timeout(1.0)
        ) as (stream, ws, peer),
    ):
        peer.send(BINARY, b"data first")
        peer.send(CLOSE, b"" if code == 1005 else close_payload(code, "bye"))
        await peer.writer.drain()
        await asyncio.wait_for(stream.wait_closed(), STEP / 2)
        frames = await _frames_until_eof(peer)
        if code == 1005:
            assert frames == [(CLOSE, close_payload(1000))], frames
            assert await stream.reader.read() == b"data first"
            assert (stream.close_code, stream.close_code_sent) == (1005, 1000)
        elif code == 5000:
            assert frames == [(CLOSE, close_payload(1002, "invalid status code"))], frames
            assert await stream.reader.read(100) == b"data first"
            with pytest.raises(ws_stream.ProtocolError):
                await stream.reader.read()
        else:
            assert frames == [(CLOSE, close_payload(code, "bye"))], frames
            assert await stream.reader.read() == b"data first"
            assert (stream.close_code, stream.close_reason) == (code, "bye")
            assert stream.close_code_sent == code
        await asyncio.wait_for(stream.wait_closed(), STEP)
        assert ws.closed


async def test_our_close_unanswered_ends_the_connection_after_the_close_timeout() -> None:
    """The peer never answers our close: after ``close_timeout`` the stream is over and
    aiohttp's connection ends too (bounded by aiohttp's own close timeout)."""
    async with (
        asyncio.timeout(30),
        aiohttp_client_and_raw_peer(**aiohttp_close_timeout(1.0)) as (stream, ws, peer),
    ):
        await asyncio.wait_for(stream.close(), STEP)
        assert stream.close_code == 1006
        await asyncio.wait_for(peer.wait_eof(STEP), STEP)  # the TCP connection ends
        assert ws.closed


@pytest.mark.parametrize("autoclose", [True, False])
async def test_the_peers_close_behind_our_unread_data_ends_the_connection(
    autoclose: bool,
) -> None:
    """The peer closes while our data waits for it to read: after ``close_timeout`` the
    stream is over, and once the peer reads, a close frame and the end of TCP follow
    the data (the connection is never left open)."""
    async with (
        asyncio.timeout(30),
        aiohttp_client_and_raw_peer(autoclose=autoclose) as (
            stream,
            ws,
            peer,
        ),
    ):
        stream.writer.write(b"x" * 20_000_000)
        await asyncio.sleep(0.3)
        peer.send(CLOSE, close_payload(4000, "theirs"))
        await peer.writer.drain()
        await asyncio.wait_for(stream.wait_closed(), STEP)
        frames = await _frames_until_eof(peer)
        closes = [payload for opcode, payload in frames if opcode == CLOSE]
        assert closes, frames[-3:]
        assert ws.closed


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (close_payload(1004), 1002),  # a reserved code
        (close_payload(2000), 1002),  # a code no one may send
        (b"\x03", 1002),  # a 1-byte payload
        (close_payload(1000) + b"\xff\xfe", 1007),  # a reason that is not UTF-8
    ],
    ids=["1004", "2000", "1-byte", "bad-utf8"],
)
async def test_a_close_aiohttp_refuses_is_a_protocol_error_as_over_tcp(
    payload: bytes, code: int
) -> None:
    """A close frame aiohttp itself refuses (it fails the connection with 1002 or
    1007): the data before it, then ``ProtocolError`` of that code, and that code
    as the one sent, as when websockets refuses it over TCP; never a lost
    connection (1006)."""
    async with (
        asyncio.timeout(30),
        aiohttp_client_and_raw_peer() as (stream, ws, peer),
    ):
        peer.send(BINARY, b"data first")
        peer.send(CLOSE, payload)
        await peer.writer.drain()
        assert await stream.reader.readexactly(10) == b"data first"
        with pytest.raises(ws_stream.ProtocolError) as caught:
            await asyncio.wait_for(stream.reader.read(), STEP)
        assert caught.value.code == code and type(caught.value.code) is int  # not aiohttp's
        await asyncio.wait_for(stream.wait_closed(), STEP)
        assert stream.close_code_sent == code and type(stream.close_code_sent) is int
        closes = [p for opcode, p in await _frames_until_eof(peer) if opcode == CLOSE]
        assert closes[:1] == [close_payload(code)] or closes[0][:2] == close_payload(code), closes
        assert ws.closed


async def test_a_close_code_aiohttp_answers_but_no_peer_may_send_is_reported_as_sent() -> None:
    """autoclose=True: aiohttp answers a peer's close with 1000, even one whose code
    no endpoint may send (5000, which aiohttp lets through): the reader ends with
    ``ProtocolError`` (the engine's verdict, as over TCP), and ``close_code_sent`` is
    the 1000 that went out, not the 1002 the engine would have sent."""
    async with (
        asyncio.timeout(30),
        aiohttp_client_and_raw_peer() as (stream, ws, peer),
    ):
        peer.send(BINARY, b"data first")
        peer.send(CLOSE, close_payload(5000, "bye"))
        await peer.writer.drain()
        assert await stream.reader.readexactly(10) == b"data first"
        with pytest.raises(ws_stream.ProtocolError):
            await asyncio.wait_for(stream.reader.read(), STEP)
        await asyncio.wait_for(stream.wait_closed(), STEP)
        closes = [p for opcode, p in await _frames_until_eof(peer) if opcode == CLOSE]
        assert closes == [close_payload(1000)], closes
        assert stream.close_code_sent == 1000
        assert ws.closed
