"""``ws_stream.asgi``: ``accept()`` in a raw ASGI application, and Starlette's WebSocket.

Real ASGI servers (uvicorn's websockets-sansio and wsproto, hypercorn) on
127.0.0.1, with ws_stream's client or a raw WebSocket peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import MutableMapping
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

import ws_stream
from ws_stream.asgi import accept

from ..rawpeer import BINARY, CLOSE, TEXT, close_payload, connect_raw, send_handshake
from .helpers import STEP, run_asgi, stream_of

ASGI_SERVERS = ("uvicorn-sansio", "uvicorn-wsproto", "hypercorn")

Scope = MutableMapping[str, Any]


async def _http_get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    )
    try:
        async with asyncio.timeout(STEP):
            return await reader.read()
    finally:
        writer.close()


def accepting_app(notes: list[str], **accept_options: Any) -> Any:
    """A raw ASGI app: ``accept()`` on every WebSocket, then echo until the client closes.

    An HTTP request tries ``accept()`` too and answers 200 with what happened,
    then the type of the next ASGI message (``accept()`` must not have read it).
    A WebSocket first tries ``accept()`` with an unknown option.
    """

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            try:
                await accept(scope, receive, send)
                outcome = "accepted?!"
            except ValueError as exc:
                outcome = f"ValueError: {exc}"
            message = await receive()
            body = f"{outcome}\nnext message: {message['type']}\n".encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        assert scope["type"] == "websocket"
        try:
            await accept(scope, receive, send, ping_interval=5)
        except TypeError as exc:
            notes.append(f"TypeError: {exc}")
        stream = await accept(scope, receive, send, **accept_options)
        notes.append(f"peername {stream.writer.get_extra_info('peername')}")
        notes.append(f"subprotocol {stream.subprotocol}")
        notes.append(f"path {stream.writer.get_extra_info('path')}")
        async with stream:
            # hypercorn reports every client close as 1006: AbnormalClosureError.
            with contextlib.suppress(ConnectionError):
                while data := await stream.reader.read(65536):
                    stream.writer.write(data)
                    await stream.writer.drain()

    return app


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_accept_in_a_raw_asgi_app(server: str) -> None:
    notes: list[str] = []
    app = accepting_app(notes, subprotocol="binary", headers=[("X-Tunnel", "yes")])
    async with asyncio.timeout(30), run_asgi(server, app) as port:
        reader, writer = await ws_stream.open_connection(
            f"ws://127.0.0.1:{port}/echo", subprotocols=["binary"], ping_interval=None
        )
        stream = stream_of(writer)
        assert stream.subprotocol == "binary"
        assert writer.get_extra_info("response").headers["X-Tunnel"] == "yes"
        blob = os.urandom(3 * 2**20)
        writer.write(blob)
        assert await reader.readexactly(len(blob)) == blob
        await asyncio.wait_for(stream.close(), STEP)
        assert stream.close_code == 1000
        # Before anything went out, an unknown option was refused.
        assert notes[0].startswith("TypeError: ")
        assert "ping_interval" in notes[0]
        assert notes[1] == f"peername {writer.get_extra_info('sockname')}"
        assert notes[2:] == ["subprotocol binary", "path /echo"]


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_accept_refuses_a_non_websocket_scope(server: str) -> None:
    async with asyncio.timeout(30), run_asgi(server, accepting_app([])) as port:
        response = await _http_get(port, "/plain")
    assert response.startswith(b"HTTP/1.1 200"), response
    body = response.split(b"\r\n\r\n", 1)[1].decode()
    assert "ValueError: accept() needs a WebSocket scope, not 'http'" in body
    assert "next message: http.request" in body  # accept() consumed nothing


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_accept_passes_stream_options(server: str) -> None:
    """``on_text="bytes"``: a raw peer's text message joins the stream as UTF-8 bytes."""
    app = accepting_app([], on_text="bytes")
    async with asyncio.timeout(30), run_asgi(server, app) as port:
        raw = await connect_raw(port, "/echo")
        raw.send(BINARY, b"binary, ")
        raw.send(TEXT, "then text: é".encode())
        await raw.writer.drain()
        echoed = b""
        while len(echoed) < len("binary, then text: é".encode()):
            frame = await raw.recv_frame(STEP)
            assert frame.opcode == BINARY
            echoed += frame.payload
        assert echoed == "binary, then text: é".encode()
        raw.send(CLOSE, close_payload(1000))
        await raw.writer.drain()
        assert await raw.recv_close(STEP) == (1000, "")
        raw.close_tcp()


async def test_starlette_websocket_must_be_accepted_first() -> None:
    outcome: list[str] = []

    async def endpoint(websocket: WebSocket) -> None:
        try:
            ws_stream.WsStream(websocket)
        except ValueError as exc:
            outcome.append(str(exc))
        await websocket.close(4000)

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    async with asyncio.timeout(30), run_asgi("uvicorn-sansio", app) as port:
        with pytest.raises(ws_stream.HandshakeError) as refused:
            await ws_stream.open_connection(f"ws://127.0.0.1:{port}/ws", ping_interval=None)
    assert refused.value.status == 403  # a close before the accept
    assert len(outcome) == 1
    assert "must be accepted first" in outcome[0]


async def test_a_starlette_websocket_is_wrapped_once() -> None:
    outcome: list[str] = []

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        async with ws_stream.WsStream(websocket) as stream:
            try:
                ws_stream.WsStream(websocket)
            except ValueError as exc:
                outcome.append(str(exc))
            while data := await stream.reader.read(65536):
                stream.writer.write(data)

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    async with asyncio.timeout(30), run_asgi("uvicorn-sansio", app) as port:
        reader, writer = await ws_stream.open_connection(
            f"ws://127.0.0.1:{port}/ws", ping_interval=None
        )
        writer.write(b"the first stream echoes")
        assert await reader.readexactly(23) == b"the first stream echoes"
        await asyncio.wait_for(stream_of(writer).close(), STEP)
    assert len(outcome) == 1
    assert "already wrapped by a WsStream" in outcome[0]


async def test_starlette_stream_options_are_checked() -> None:
    outcome: list[str] = []

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        for options in ({"max_size": 10}, {"limit": 0}):
            try:
                ws_stream.WsStream(websocket, **options)
            except (TypeError, ValueError) as exc:
                outcome.append(f"{type(exc).__name__}: {exc}")
        await websocket.close(4000, "checked")

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    async with asyncio.timeout(30), run_asgi("uvicorn-sansio", app) as port:
        reader, writer = await ws_stream.open_connection(
            f"ws://127.0.0.1:{port}/ws", ping_interval=None
        )
        assert await reader.read() == b""
        assert stream_of(writer).close_code == 4000
    assert outcome[0].startswith("TypeError: ") and "max_size" in outcome[0]
    assert outcome[1].startswith("ValueError: limit must be >= 1")


#: What an ASGI application receives after the client closes with 4002 "later"
#: (no ws_stream involved: the cause of hypercorn's row in the table).
DISCONNECT = {
    "uvicorn-sansio": (4002, "later"),
    "uvicorn-wsproto": (4002, "later"),
    "hypercorn": (1006, None),
}


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_what_the_server_tells_the_app_when_the_client_closes(server: str) -> None:
    disconnects: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] != "websocket.disconnect":
            pass
        await disconnects.put(message)

    async with asyncio.timeout(30), run_asgi(server, app) as port:
        reader, writer = await ws_stream.open_connection(
            f"ws://127.0.0.1:{port}/", ping_interval=None
        )
        await asyncio.wait_for(stream_of(writer).close(4002, "later"), STEP)
        message = await asyncio.wait_for(disconnects.get(), STEP)
    assert (message.get("code"), message.get("reason")) == DISCONNECT[server]


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_accept_refuses_a_subprotocol_the_client_did_not_offer(server: str) -> None:
    """ValueError before anything is sent: the app may still refuse (403)."""
    outcome: list[str] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        try:
            await accept(scope, receive, send, subprotocol="binary")
            outcome.append("accepted")
        except ValueError as exc:
            outcome.append(f"ValueError: {exc}")
            await send({"type": "websocket.close"})  # nothing was sent: refuse (403)

    async with asyncio.timeout(30), run_asgi(server, app) as port:
        for offered in ([], ["chat"]):
            with pytest.raises(ws_stream.HandshakeError) as refused:
                await ws_stream.open_connection(
                    f"ws://127.0.0.1:{port}/", subprotocols=offered or None, ping_interval=None
                )
            assert refused.value.status == 403
    assert outcome == [
        "ValueError: the client did not offer the subprotocol 'binary' (it offered none)",
        "ValueError: the client did not offer the subprotocol 'binary' (it offered 'chat')",
    ]


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_a_client_gone_before_the_accept_is_a_connection_reset(server: str) -> None:
    """As documented: ``ConnectionResetError`` from ``accept()`` (uvicorn raises its own
    ``ClientDisconnected``, an OSError), or, where the server accepts anyway
    (hypercorn), a stream whose reader ends with ``AbnormalClosureError``."""
    outcome: list[BaseException | str] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await asyncio.sleep(0.5)  # the client is gone meanwhile
        try:
            stream = await accept(scope, receive, send)
        except Exception as exc:
            outcome.append(exc)
            return
        try:
            await asyncio.wait_for(stream.reader.read(), STEP)
            outcome.append("read returned")
        except Exception as exc:
            outcome.append(exc)

    async with asyncio.timeout(30), run_asgi(server, app) as port:
        _, writer = await send_handshake(port)
        await asyncio.sleep(0.05)
        writer.transport.abort()
        for _ in range(200):
            if outcome:
                break
            await asyncio.sleep(0.05)
    assert len(outcome) == 1, outcome
    assert isinstance(outcome[0], ConnectionResetError | ws_stream.AbnormalClosureError), outcome


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_accept_checks_its_response_headers(server: str) -> None:
    """Invalid names and values are a ValueError before anything is sent (the app may
    still refuse: 403); values go out as ISO-8859-1, as the scope's headers come in."""
    outcome: list[str] = []
    bad = [("bad name", "x"), ("X-A:b", "x"), ("X-A", "line\r\nbreak"), ("X-A", "€")]

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        for header in bad:
            try:
                await accept(scope, receive, send, headers=[header])
                outcome.append(f"accepted {header}")
                return
            except ValueError as exc:
                outcome.append(str(exc))
        async with await accept(scope, receive, send, headers=[("X-Cafe", "café")]):
            pass

    async with asyncio.timeout(30), run_asgi(server, app) as port:
        reader, writer = await ws_stream.open_connection(
            f"ws://127.0.0.1:{port}/", ping_interval=None
        )
        assert writer.get_extra_info("response").headers["X-Cafe"] == "café"
        assert await asyncio.wait_for(reader.read(), STEP) == b""
        writer.close()
    assert len(outcome) == len(bad), outcome
    assert all("header" in text for text in outcome), outcome
