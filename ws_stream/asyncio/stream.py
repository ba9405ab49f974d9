"""WsStream: an open websockets asyncio connection as a StreamReader/StreamWriter pair."""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import sys
import weakref
from asyncio import sslproto
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from websockets.asyncio.connection import Connection
from websockets.protocol import SERVER, Protocol

from .._options import StreamOptions
from .._policy import EventHub, Subscription, check_close
from ..events import Event
from ..reconnect import CloseFrames
from ..stats import StreamStats
from ._messages import MessageLink, MessageSocket, open_pair
from ._reader import ChunkedStreamReader
from ._transport import WsTransport
from .adopt import adopt

__all__ = ["EventStream", "WsStream"]

logger = logging.getLogger("ws_stream.asyncio")

T = TypeVar("T")

_WRAP_OPTIONS = frozenset({"limit", "max_frame_size", "on_text", "close_timeout", "max_events"})


class WsStream:
    """A WebSocket connection as a byte stream: ``.reader`` and ``.writer``.

    ``WsStream(websocket, **options)`` wraps an open connection of
    ``websockets.asyncio`` (client or server), for instance inside your own
    ``websockets`` handler after routing and authentication. From then on the
    stream owns the connection (see :mod:`ws_stream.asyncio.adopt`): do not
    call ``recv()``, ``send()`` or ``ping()`` on it. Frames websockets had
    already queued come first in :attr:`reader`.

    Options: ``limit`` (reader high-water mark, default 1 MiB),
    ``max_frame_size`` (largest frame sent, default 64 KiB), ``on_text``
    (``"error"``: a text frame closes with 1003; ``"bytes"``: its UTF-8 bytes
    join the stream), ``close_timeout`` (default: the connection's, else 10 s)
    and ``max_events`` (per-subscriber event queue, default 256). Keepalive
    pings keep the connection's ``ping_interval`` and ``ping_timeout``.

    :attr:`reader` is an :class:`asyncio.StreamReader` and :attr:`writer` an
    :class:`asyncio.StreamWriter` over a real :class:`asyncio.Transport`.

    Raises:
        TypeError: ``websocket`` is not a websockets asyncio connection, or an
            option is unknown.
        ValueError: ``websocket`` is already wrapped by a WsStream (a stream
            owns its connection), or an option is invalid.
        ws_stream.asyncio.adopt.AdoptionError: the installed websockets
            changed what taking over a connection relies on.
    """

    _front_end: str | None = None  # "ASGI", "aiohttp": a message-based front end

    def __init__(
        self, websocket: object, *, _options: StreamOptions | None = None, **options: Any
    ) -> None:
        if _wrapped(websocket):
            raise ValueError(
                f"this WebSocket ({type(websocket).__name__}) is already wrapped by a "
                "WsStream, which owns it: use that stream's reader and writer"
            )
        socket = _message_socket(websocket)
        if socket is not None:
            from ..asgi import _stream_options

            self._over_messages(socket, _stream_options(options), into=self)
            _WRAPPED.add(websocket)
            return
        unknown = set(options) - _WRAP_OPTIONS
        if unknown:
            raise TypeError(
                f"WsStream() got unexpected options {sorted(unknown)}: connection options "
                "(max_size, ping_interval, compression...) are set when the websocket is "
                "opened; WsStream takes " + ", ".join(sorted(_WRAP_OPTIONS))
            )
        if _options is None:
            close_timeout = getattr(websocket, "close_timeout", None)
            if "close_timeout" not in options and close_timeout is not None:
                options["close_timeout"] = close_timeout
            _options = StreamOptions(**options)  # invalid options: before the takeover
        adopted = adopt(websocket)
        assert isinstance(websocket, Connection)  # adopt() raised TypeError otherwise
        self._setup(
            adopted.tcp,
            adopted.protocol,
            _options,
            websocket.loop,
            adopted.extra,
            ping_interval=websocket.ping_interval,
            ping_timeout=websocket.ping_timeout,
            frames=adopted.frames,
            peer_close=adopted.peer_close,
            on_lost=adopted.on_lost,
        )
        self._websocket: Connection | None = websocket
        _WRAPPED.add(websocket)
        if adopted.lost:
            self._transport._tcp_lost(None)

    @classmethod
    def _over_messages(
        cls, socket: MessageSocket, options: StreamOptions, *, into: WsStream | None = None
    ) -> WsStream:
        """A stream over a message-based front end (ASGI, aiohttp; package-internal)."""
        self = into if into is not None else cls.__new__(cls)
        self._websocket = None
        self._front_end = socket.name
        server, mirror = open_pair()
        link = MessageLink(socket, mirror)
        loop = asyncio.get_running_loop()
        self._setup(
            link,
            server,
            options,
            loop,
            socket.extra(),
            tls_client=socket.client,
            send_message=link.send_message,
        )
        link.start()
        self._reader._source = link
        return self

    @classmethod
    def _over(
        cls,
        tcp: asyncio.Transport,
        protocol: Protocol,
        options: StreamOptions,
        extra: dict[str, Any],
        *,
        received: bytes = b"",
    ) -> WsStream:
        """A stream over a TCP transport whose handshake ws_stream did (package-internal)."""
        self = cls.__new__(cls)
        self._websocket = None
        self._setup(
            tcp,
            protocol,
            options,
            asyncio.get_running_loop(),
            extra,
            ping_interval=options.ping_interval,
            ping_timeout=options.ping_timeout,
            received=received,
        )
        return self

    def _setup(
        self,
        tcp: asyncio.Transport,
        protocol: Protocol,
        options: StreamOptions,
        loop: asyncio.AbstractEventLoop,
        extra: dict[str, Any],
        tls_client: bool | None = None,
        **engine: Any,
    ) -> None:
        """``tls_client``: the side of a TLS handshake inside the stream, when it is
        not the WebSocket protocol's (a front end's client over an in-memory server)."""
        self._options = options
        self._loop = loop
        self._protocol_ws = protocol
        # (not EventHub[Event](...): calling a subscripted generic costs a __dict__
        # entry, __orig_class__, on every instance)
        self._hub: EventHub[Event] = EventHub(options.max_events)
        self._transport = WsTransport(
            tcp, protocol, options, loop=loop, hub=self._hub, owner=self, extra=extra, **engine
        )
        self._reader = ChunkedStreamReader(options.limit, loop)
        self._protocol = _ReaderProtocol(self._reader, loop=loop)
        # The WebSocket's side (a front end's client runs over an in-memory server).
        self._server_side = protocol.side is SERVER if tls_client is None else not tls_client
        self._writer = _StreamWriter(
            self._transport, self._protocol, self._reader, loop, server_side=self._server_side
        )
        self._transport.attach(self._protocol)

    def __repr__(self) -> str:
        side = "server" if self._server_side else "client"
        return f"<WsStream {side} {self._protocol_ws.id}>"

    @property
    def reader(self) -> ChunkedStreamReader:
        """The incoming bytes: every binary payload, in order, frame boundaries gone."""
        return self._reader

    @property
    def writer(self) -> asyncio.StreamWriter:
        """The outgoing bytes, sent as binary frames of at most ``max_frame_size``."""
        return self._writer

    @property
    def websocket(self) -> Connection | None:
        """The wrapped websockets connection (None when ws_stream opened the connection)."""
        return self._websocket

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol negotiated in the handshake, if any."""
        subprotocol: str | None = self._transport.get_extra_info("subprotocol")
        return subprotocol

    @property
    def transport(self) -> asyncio.Transport:
        """The :class:`asyncio.Transport` under :attr:`writer` (before any start_tls)."""
        return self._transport

    @property
    def close_code(self) -> int | None:
        """The peer's close code: None while open, 1006 if the connection was lost."""
        return self._transport.engine.close_code

    @property
    def close_reason(self) -> str | None:
        """The peer's close reason: None while open, "" if none was received."""
        return self._transport.engine.close_reason

    def _close_frames(self) -> CloseFrames:
        """The closing handshake so far, for the reconnect loop (package-internal)."""
        return self._transport.engine.close_frames()

    @property
    def close_code_sent(self) -> int | None:
        """The code of the close frame this side sent: None if none was sent (yet)."""
        sent = self._transport.engine.sent
        return None if sent is None else sent.code

    @property
    def error(self) -> Exception | None:
        """What ended the stream abnormally (text frame, violation, lost connection), or None."""
        return self._transport.error

    @property
    def stats(self) -> StreamStats:
        """Byte, frame and ping counters and the latest ping latency (live object)."""
        return self._transport.stats

    @property
    def bytes_sent(self) -> int:
        """Payload bytes handed to websockets so far."""
        return self._transport.stats.bytes_sent

    @property
    def bytes_received(self) -> int:
        """Payload bytes delivered to the reader so far."""
        return self._transport.stats.bytes_received

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Flush, perform the closing handshake with ``code``/``reason``, wait for the end.

        Waits at most ``close_timeout`` for the peer's close frame and the end of
        TCP, then drops the connection. Idempotent; never raises for a
        connection that is already gone.

        Unread data never holds the closing handshake back (as
        ``writer.close()``): what the peer sent before its close still reaches
        the reader while it holds less than ``limit``; past that, TCP is read
        on and the rest is discarded. The reader ends with EOF after a clean
        handshake, with the error otherwise.

        Raises:
            ValueError: ``code`` is not a close code an endpoint may send
                (1000-1003, 1007-1014, 3000-4999) or ``reason`` is too long.
        """
        check_close(code, reason)
        transport = self._transport
        transport.close_code_to_send = code
        transport.close_reason_to_send = reason
        self._writer.close()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is closed; never raises.

        Once a close has begun, this waits at most ``close_timeout`` + 1 s: the
        transport drops TCP when the peer does not answer in time.
        """
        closed = self._transport.closed
        if closed.done():
            return
        if self._transport.is_closing():
            try:
                async with asyncio.timeout(self._options.close_timeout + 1):
                    await asyncio.shield(closed)
                return
            except TimeoutError:
                logger.warning("the connection did not close in time; aborting it")
                self._transport.abort()
        await asyncio.shield(closed)

    async def ping(self, data: bytes = b"", *, timeout: float | None = None) -> float:
        """Send a ping and return the round-trip time in seconds when its pong arrives.

        The ping goes out after every byte written before the call. An empty
        ``data`` sends a unique random payload, so pings may overlap.

        Raises:
            TimeoutError: no pong within ``timeout`` (default: ``ping_timeout``,
                else 20 s).
            ConnectionResetError: the connection closed first.
            ValueError: a ping with this payload is already waiting for its pong.
            NotImplementedError: the stream wraps a front end without pings
                (ASGI, aiohttp).
        """
        if self._front_end is not None:
            raise NotImplementedError(
                f"a WebSocket of {self._front_end} cannot send pings from the application; "
                "its server or client keeps the connection alive (see README: front ends)"
            )
        engine = self._transport.engine
        if timeout is None:
            timeout = engine.ping_timeout or 20.0
        pong: asyncio.Future[float | None] = self._loop.create_future()

        def waiter(latency: float | None) -> None:
            if not pong.done():
                pong.set_result(latency)

        # Writes coalesced in this loop iteration go out first: a ping never
        # overtakes bytes written before it (ws-stream's EOF marker relies on it).
        payload = engine.ping(data, self._loop.time(), waiter)
        self._transport.flush()
        try:
            async with asyncio.timeout(timeout):
                latency = await pong
        finally:
            engine.forget_ping(payload)
        if latency is None:
            raise ConnectionResetError("cannot ping: the connection closed first")
        return latency

    def events(self) -> EventStream[Event]:
        """Subscribe to events from now on: ``async for event in stream.events()``.

        Each subscriber has its own queue of ``max_events``; a slow one loses
        its oldest events (counted in :attr:`EventStream.dropped`) and never
        slows the data. Iteration ends after :class:`~ws_stream.events.Closed`;
        subscribing after the end yields only ``Closed``.
        """
        return EventStream(self._hub, self._loop)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None or not issubclass(exc_type, Exception):
            await self.close()
        else:
            await self.close(1011, "internal error")


#: The connections and front-end WebSockets a WsStream owns (one stream each).
_WRAPPED: weakref.WeakSet[object] = weakref.WeakSet()


def _wrapped(websocket: object) -> bool:
    """Whether a WsStream owns ``websocket`` (False for what it cannot hold: the
    type check that follows says what is wrong with such an object)."""
    try:
        return websocket in _WRAPPED
    except TypeError:  # unhashable
        return False


def _message_socket(websocket: object) -> MessageSocket | None:
    """The front end's message socket when ``websocket`` is a Starlette or aiohttp
    WebSocket (detected without importing those frameworks: an object of theirs
    means their module is loaded already)."""
    starlette = sys.modules.get("starlette.websockets")
    if starlette is not None and isinstance(websocket, starlette.WebSocket):
        from ..asgi import starlette_socket

        return starlette_socket(websocket)
    server = sys.modules.get("aiohttp.web_ws")
    client = sys.modules.get("aiohttp.client_ws")
    if (server is not None and isinstance(websocket, server.WebSocketResponse)) or (
        client is not None and isinstance(websocket, client.ClientWebSocketResponse)
    ):
        from ..aiohttp import AiohttpSocket

        if getattr(websocket, "closed", False) or not getattr(websocket, "prepared", True):
            raise ValueError("the aiohttp WebSocket must be prepared and open")
        return AiohttpSocket(
            websocket, client=server is None or not isinstance(websocket, server.WebSocketResponse)
        )
    return None


class _ReaderProtocol(asyncio.StreamReaderProtocol):
    """asyncio's StreamReaderProtocol, without a queue of drain() waiters until one
    waits, and feeding its reader directly (no weak reference to follow per chunk).

    asyncio makes that queue (a deque, about 600 bytes) for every connection,
    and uses it only while writing is paused; a server holds one protocol per
    idle connection. Only the attribute's storage changes (Python 3.11 to
    3.13 name it ``_drain_waiters``).
    """

    _waiters: collections.deque[asyncio.Future[None]] | None = None

    def __init__(self, reader: ChunkedStreamReader, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(reader, loop=loop)
        self._feed = reader.feed_data  # the stream holds its reader: no weak reference

    def data_received(self, data: bytes) -> None:
        self._feed(data)

    @property
    def _drain_waiters(self) -> collections.deque[asyncio.Future[None]]:
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = collections.deque()
        return waiters

    @_drain_waiters.setter
    def _drain_waiters(self, waiters: collections.deque[asyncio.Future[None]]) -> None:
        self._waiters = waiters or None  # asyncio's empty one: made again when needed


class _StreamWriter(asyncio.StreamWriter):
    """asyncio's StreamWriter, whose :meth:`start_tls` works on every event loop.

    ``StreamWriter.start_tls()`` calls ``loop.start_tls()``, and uvloop's
    accepts only uvloop's own transports (a TypeError for any other). So this
    writer layers TLS itself, as asyncio's ``loop.start_tls()`` does, with
    asyncio's ``SSLProtocol`` and public loop methods only: the same code on
    asyncio's default loop, uvloop or any other. The side of the TLS handshake
    is the WebSocket's (a server's stream does the server handshake).
    """

    # asyncio.StreamWriter's private state, which typeshed does not declare.
    _loop: asyncio.AbstractEventLoop
    _protocol: asyncio.StreamReaderProtocol
    _transport: asyncio.Transport

    def __init__(
        self,
        transport: asyncio.Transport,
        protocol: asyncio.StreamReaderProtocol,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
        *,
        server_side: bool,
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self._server_side = server_side
        # The WsStream below (kept: after start_tls() the transport is TLS's,
        # which forgets the one below it once closed).
        self._stream: WsStream = transport.get_extra_info("ws_stream")

    async def wait_closed(self) -> None:
        """Wait until the connection is closed, TCP included; then raise its error if any.

        The protocol hears at the peer's close frame that the byte stream is
        over (``drain()`` raises from then on), before TCP ends: asyncio's
        ``wait_closed()`` alone would return there, and a program that ends its
        loop right after it would leave TCP open (its peer would wait its close
        timeout). Bounded as :meth:`WsStream.wait_closed`.
        """
        await self._stream.wait_closed()
        await super().wait_closed()

    async def start_tls(
        self,
        sslcontext: ssl.SSLContext,
        *,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> None:
        """Upgrade the stream to TLS inside the WebSocket (as ``StreamWriter.start_tls``).

        Raises:
            TypeError: ``sslcontext`` is not an :class:`ssl.SSLContext`.
            ssl.SSLError: the TLS handshake failed (the stream is closed).
            TimeoutError: no TLS handshake within ``ssl_handshake_timeout``
                (default 60 s).
            ConnectionError: the connection was lost first.
        """
        if not isinstance(sslcontext, ssl.SSLContext):
            raise TypeError(
                f"sslcontext must be an ssl.SSLContext, not {type(sslcontext).__name__}"
            )
        protocol = self._protocol
        await self.drain()
        transport = self._transport
        loop = self._loop
        waiter: asyncio.Future[None] = loop.create_future()
        ssl_protocol = sslproto.SSLProtocol(
            loop,
            protocol,
            sslcontext,
            waiter,
            self._server_side,
            server_hostname,
            # typeshed says int; asyncio takes seconds, as everywhere.
            ssl_handshake_timeout=ssl_handshake_timeout,  # type: ignore[arg-type]
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            call_connection_made=False,
        )
        # As asyncio's loop.start_tls(): no data may reach the SSL protocol
        # before its connection_made().
        transport.pause_reading()
        transport.set_protocol(ssl_protocol)
        made = loop.call_soon(ssl_protocol.connection_made, transport)
        resumed = loop.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            made.cancel()
            resumed.cancel()
            raise
        self._transport = ssl_protocol._app_transport
        # What StreamWriter.start_tls() does next (renamed in Python 3.13).
        replace_transport = getattr(protocol, "_replace_transport", None)
        if replace_transport is not None:
            replace_transport(self._transport)
        else:
            protocol._replace_writer(self)  # type: ignore[attr-defined]


class EventStream(Generic[T]):
    """An asynchronous iterator of one subscriber's items (events, or statuses)."""

    def __init__(self, hub: EventHub[T], loop: asyncio.AbstractEventLoop) -> None:
        self._hub = hub
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        self._sub: Subscription[T] = hub.subscribe(self._wake)

    @property
    def dropped(self) -> int:
        """Items this subscriber lost because it fell behind."""
        return self._sub.dropped

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        sub = self._sub
        while True:
            item = sub.pop()
            if item is not None:
                return item
            if sub.finished():
                raise StopAsyncIteration
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        """Unsubscribe; iteration ends."""
        self._hub.unsubscribe(self._sub)

    async def aclose(self) -> None:
        self.close()
