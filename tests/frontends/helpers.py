"""Real servers for the front-end tests: a ``WsStream`` over every message-based front end.

Every server runs in the test's own event loop on 127.0.0.1 with a random
port: uvicorn (``websockets-sansio``, ``wsproto``, legacy ``websockets``) and
hypercorn with a Starlette app, aiohttp's web server, and aiohttp's client
against a ws_stream server. ``websockets`` is the reference: ws_stream's own
server (``ws_stream.start_server``), no front end in between.

:func:`open_pair` gives a :class:`Pair`: the stream over the front end
(``pair.stream``) and its peer, either ws_stream's own stream (``peer="ws"``:
``pair.reader``/``pair.writer``) or a raw WebSocket peer (``peer="raw"``:
``pair.raw``, see ``tests/rawpeer.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import hypercorn.asyncio
import hypercorn.config
import uvicorn
from aiohttp import web
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

import ws_stream

from ..rawpeer import RawPeer, RawServer, connect_raw

#: Every front end under test; "websockets" is ws_stream's own server (the reference).
FRONT_ENDS = (
    "websockets",
    "uvicorn-sansio",
    "uvicorn-wsproto",
    "uvicorn-websockets",
    "hypercorn",
    "aiohttp-server",
    "aiohttp-client",
)
#: Front ends where the stream is the server side of the WebSocket.
SERVERS = tuple(name for name in FRONT_ENDS if name != "aiohttp-client")
#: The message-based front ends (everything but the reference).
MESSAGE_FRONT_ENDS = tuple(name for name in FRONT_ENDS if name != "websockets")
#: The name a front end's stream gives in its messages (``ping()``'s NotImplementedError).
FRONT_END_NAME = {
    "uvicorn-sansio": "ASGI",
    "uvicorn-wsproto": "ASGI",
    "uvicorn-websockets": "ASGI",
    "hypercorn": "ASGI",
    "aiohttp-server": "aiohttp",
    "aiohttp-client": "aiohttp",
}
UVICORN_WS = {
    "uvicorn-sansio": "websockets-sansio",
    "uvicorn-wsproto": "wsproto",
    "uvicorn-websockets": "websockets",
}
PATH = "/ws"
#: Options of the stream over the front end (bounded closes, so tests end quickly).
STREAM_OPTIONS: dict[str, Any] = {"close_timeout": 3.0}
STEP = 10.0  # seconds: the bound of one step of a test


def stream_of(writer: asyncio.StreamWriter) -> ws_stream.WsStream:
    stream = writer.get_extra_info("ws_stream")
    assert isinstance(stream, ws_stream.WsStream)
    return stream


def free_socket() -> socket.socket:
    """A TCP socket bound to 127.0.0.1 on a random port (not listening yet)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def wait_listening(port: int, task: asyncio.Task[Any], timeout: float = STEP) -> None:
    """Wait until something accepts TCP connections on ``port`` (or ``task`` ends)."""
    async with asyncio.timeout(timeout):
        while True:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped before it listened")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


# Servers, each in this event loop


@contextlib.asynccontextmanager
async def run_uvicorn(app: Any, ws: str, **settings: Any) -> AsyncIterator[int]:
    """uvicorn serving ``app`` with the WebSocket implementation ``ws``; yields the port."""
    sock = free_socket()
    port = sock.getsockname()[1]
    settings.setdefault("lifespan", "off")
    config = uvicorn.Config(
        app,
        ws=ws,
        log_level="warning",
        log_config=None,
        timeout_graceful_shutdown=2,
        **settings,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(STEP):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(STEP):
                await task
        finally:
            sock.close()


@contextlib.asynccontextmanager
async def run_hypercorn(app: Any, **settings: Any) -> AsyncIterator[int]:
    """hypercorn serving ``app``; yields the port."""
    sock = free_socket()
    port = sock.getsockname()[1]
    config = hypercorn.config.Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.graceful_timeout = 2
    config.accesslog = None
    config.loglevel = "WARNING"
    for name, value in settings.items():
        setattr(config, name, value)
    stop = asyncio.Event()
    task = asyncio.create_task(hypercorn.asyncio.serve(app, config, shutdown_trigger=stop.wait))
    try:
        await wait_listening(port, task)
        yield port
    finally:
        stop.set()
        async with asyncio.timeout(STEP):
            await task


@contextlib.asynccontextmanager
async def run_aiohttp(app: web.Application) -> AsyncIterator[int]:
    """aiohttp's web server serving ``app``; yields the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        async with asyncio.timeout(STEP):
            await runner.cleanup()


@contextlib.asynccontextmanager
async def run_asgi(front_end: str, app: Any, **settings: Any) -> AsyncIterator[int]:
    """An ASGI ``app`` under the server of ``front_end`` (uvicorn-*, hypercorn)."""
    if front_end == "hypercorn":
        async with run_hypercorn(app, **settings) as port:
            yield port
    else:
        async with run_uvicorn(app, UVICORN_WS[front_end], **settings) as port:
            yield port


# What a front end holds: its own queue of received messages


def asgi_probe(receive: Any) -> Callable[[], int] | None:
    """Bytes of messages the ASGI server has queued for the app, if reachable.

    uvicorn's ``receive`` is a method of its protocol (``.queue``, or the
    legacy websockets protocol's ``.messages``); hypercorn's is the ``get`` of
    its app queue.
    """
    owner = getattr(receive, "__self__", None)
    queue = owner if isinstance(owner, asyncio.Queue) else getattr(owner, "queue", None)
    if isinstance(queue, asyncio.Queue):

        def queued() -> int:
            total = 0
            for message in list(queue._queue):  # type: ignore[attr-defined]
                if isinstance(message, dict):
                    total += len(message.get("bytes") or b"") + len(message.get("text") or "")
            return total

        return queued
    messages = getattr(owner, "messages", None)
    if isinstance(messages, deque):
        return lambda: sum(len(message) for message in list(messages))
    return None


def aiohttp_probe(ws: Any) -> Callable[[], int] | None:
    reader = getattr(ws, "_reader", None)
    if reader is None or not hasattr(reader, "_size"):
        return None
    return lambda: int(reader._size)


# One server per test: every accepted WebSocket becomes a stream in a queue


@dataclass
class Served:
    """A server of one front end whose accepted WebSockets queue up as streams."""

    front_end: str
    port: int = 0
    path: str = PATH
    streams: asyncio.Queue[ws_stream.WsStream] = field(default_factory=asyncio.Queue)
    probes: dict[int, Callable[[], int] | None] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def uri(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.path}"

    async def next_stream(self) -> ws_stream.WsStream:
        async with asyncio.timeout(STEP):
            return await self.streams.get()

    async def hold(self, stream: ws_stream.WsStream, probe: Callable[[], int] | None) -> None:
        """Hand ``stream`` to the test; keep the connection until the test is done with it."""
        self.probes[id(stream)] = probe
        await self.streams.put(stream)
        closed = asyncio.ensure_future(stream.wait_closed())
        done = asyncio.ensure_future(self.done.wait())
        try:
            await asyncio.wait({closed, done}, return_when=asyncio.FIRST_COMPLETED)
            if not closed.done():
                await stream.close()
        finally:
            closed.cancel()
            done.cancel()


@contextlib.asynccontextmanager
async def serving(
    front_end: str,
    *,
    max_size: int | None = None,
    stream_options: dict[str, Any] | None = None,
) -> AsyncIterator[Served]:
    """A server of ``front_end`` (not aiohttp-client) on 127.0.0.1; yields a :class:`Served`.

    ``max_size``: the server's own message size limit (uvicorn's
    ``ws_max_size``, hypercorn's ``websocket_max_message_size``, aiohttp's
    ``max_msg_size``, ws_stream's ``max_size``); None: its default.
    """
    assert front_end in SERVERS, front_end
    served = Served(front_end)
    options = dict(STREAM_OPTIONS, **(stream_options or {}))
    if front_end == "websockets":

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await served.hold(stream_of(writer), None)

        kwargs: dict[str, Any] = {"ping_interval": None, **options}
        if max_size is not None:
            kwargs["max_size"] = max_size
        server = await ws_stream.start_server(on_connection, "127.0.0.1", 0, **kwargs)
        async with server:
            served.port = server.sockets[0].getsockname()[1]
            try:
                yield served
            finally:
                served.done.set()
        return
    if front_end == "aiohttp-server":

        async def handler(request: web.Request) -> web.WebSocketResponse:
            kwargs = {} if max_size is None else {"max_msg_size": max_size}
            ws = web.WebSocketResponse(**kwargs)
            await ws.prepare(request)
            await served.hold(ws_stream.WsStream(ws, **options), aiohttp_probe(ws))
            return ws

        app = web.Application()
        app.router.add_get(PATH, handler)
        async with run_aiohttp(app) as served.port:
            try:
                yield served
            finally:
                served.done.set()
        return

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        stream = ws_stream.WsStream(websocket, **options)
        await served.hold(stream, asgi_probe(websocket._receive))

    starlette = Starlette(routes=[WebSocketRoute(PATH, endpoint)])
    settings: dict[str, Any] = {}
    if max_size is not None:
        key = "websocket_max_message_size" if front_end == "hypercorn" else "ws_max_size"
        settings[key] = max_size
    async with run_asgi(front_end, starlette, **settings) as served.port:
        try:
            yield served
        finally:
            served.done.set()


# A stream over a front end, and its peer


@dataclass
class Pair:
    """The stream over the front end and the other end of its WebSocket."""

    front_end: str
    stream: ws_stream.WsStream
    reader: asyncio.StreamReader | None = None  # peer="ws": ws_stream's own stream
    writer: asyncio.StreamWriter | None = None
    raw: RawPeer | None = None  # peer="raw"
    probe: Callable[[], int] | None = None  # bytes the front end has queued, if reachable

    @property
    def peer(self) -> ws_stream.WsStream:
        assert self.writer is not None
        return stream_of(self.writer)

    @property
    def stream_is_server(self) -> bool:
        return self.front_end != "aiohttp-client"


@contextlib.asynccontextmanager
async def open_pair(
    front_end: str,
    peer: str = "ws",
    *,
    max_size: int | None = None,
    stream_options: dict[str, Any] | None = None,
    peer_options: dict[str, Any] | None = None,
) -> AsyncIterator[Pair]:
    """A connected :class:`Pair` over ``front_end``; ``peer`` is "ws" or "raw"."""
    assert peer in ("ws", "raw"), peer
    if front_end == "aiohttp-client":
        async with _aiohttp_client_pair(peer, max_size, stream_options, peer_options) as pair:
            yield pair
        return
    async with serving(front_end, max_size=max_size, stream_options=stream_options) as served:
        if peer == "ws":
            reader, writer = await ws_stream.open_connection(
                served.uri, **{"ping_interval": None, **(peer_options or {})}
            )
            stream = await served.next_stream()
            pair = Pair(front_end, stream, reader, writer, probe=served.probes[id(stream)])
        else:
            raw = await connect_raw(served.port, served.path)
            stream = await served.next_stream()
            pair = Pair(front_end, stream, raw=raw, probe=served.probes[id(stream)])
        try:
            yield pair
        finally:
            await _close_peer(pair)


async def _close_peer(pair: Pair) -> None:
    if pair.writer is not None:
        pair.writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pair.peer.wait_closed(), STEP)
    if pair.raw is not None:
        pair.raw.close_tcp()


@contextlib.asynccontextmanager
async def _aiohttp_client_pair(
    peer: str,
    max_size: int | None,
    stream_options: dict[str, Any] | None,
    peer_options: dict[str, Any] | None,
) -> AsyncIterator[Pair]:
    """aiohttp's client (``session.ws_connect()``) as the front end, against a ws_stream
    server (``peer="ws"``) or a raw WebSocket server."""
    options = dict(STREAM_OPTIONS, **(stream_options or {}))
    connect: dict[str, Any] = {} if max_size is None else {"max_msg_size": max_size}
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        if peer == "ws":
            accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
            accepted = asyncio.Queue()
            done = asyncio.Event()

            async def on_connection(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter
            ) -> None:
                await accepted.put((reader, writer))
                await done.wait()

            kwargs = {"ping_interval": None, **(peer_options or {})}
            server = await stack.enter_async_context(
                await ws_stream.start_server(on_connection, "127.0.0.1", 0, **kwargs)
            )
            stack.callback(done.set)
            port = server.sockets[0].getsockname()[1]
            ws = await session.ws_connect(f"ws://127.0.0.1:{port}{PATH}", **connect)
            async with asyncio.timeout(STEP):
                reader, writer = await accepted.get()
            stream = await _wrap(ws, options)
            pair = Pair("aiohttp-client", stream, reader, writer, probe=aiohttp_probe(ws))
        else:
            raw_server = await stack.enter_async_context(RawServer())
            ws = await session.ws_connect(raw_server.uri, **connect)
            raw = await raw_server.accept()
            stream = await _wrap(ws, options)
            pair = Pair("aiohttp-client", stream, raw=raw, probe=aiohttp_probe(ws))
        try:
            yield pair
        finally:
            await _close_peer(pair)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.close(), STEP)


async def _wrap(ws: Any, options: dict[str, Any]) -> ws_stream.WsStream:
    """``WsStream(ws)``; if it fails, the WebSocket is closed at once (no slow teardown)."""
    try:
        return ws_stream.WsStream(ws, **options)
    except BaseException:
        # A raw peer never answers aiohttp's close: do not wait for it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ws.close(), 0.5)
        raise


def rss() -> int:
    """This process's resident memory, in bytes."""
    import psutil

    return int(psutil.Process().memory_info().rss)
