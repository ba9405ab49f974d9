"""start_server(), start_unix_server(): WebSocket servers of reader/writer pairs.

Each accepted TCP connection runs the shared Sans-I/O server handshake
(:class:`ws_stream._handshake.ServerHandshake`) in a small protocol, bounded by
``open_timeout``; an upgraded connection becomes a :class:`WsStream` over the
same TCP transport and is handed to the callback.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self

from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from .._handshake import ServerHandshake
from .._options import StreamOptions, split_options
from .stream import WsStream

__all__ = ["Server", "ServerConnection", "start_server", "start_unix_server"]

logger = logging.getLogger("ws_stream.asyncio")

ClientConnectedCallback = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None
]
_SERVER_KEYS = frozenset(
    {
        "ssl",
        "sock",
        "origins",
        "subprotocols",
        "select_subprotocol",
        "process_request",
        "server_header",
        "reuse_port",
        "reuse_address",
        "backlog",
        "family",
        "ssl_handshake_timeout",
    }
)


class ServerConnection:
    """One connection of a :class:`Server`, as its hooks see it.

    ``process_request(connection, request)`` and
    ``select_subprotocol(connection, offered)`` get this object (as with
    websockets' server): :attr:`remote_address`, :attr:`protocol` (websockets'
    Sans-I/O ``ServerProtocol``), :meth:`respond` and :meth:`wait_closed`.
    """

    # One per connection, for its whole life: slots, and an instance dict only
    # if a hook stores something on the connection (as websockets allows).
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_closed",
        "_finished",
        "local_address",
        "protocol",
        "remote_address",
        "server",
        "stream",
        "transport",
    )

    def __init__(self, server: Server, transport: asyncio.Transport) -> None:
        self.server = server
        self.transport = transport
        self.remote_address: Any = transport.get_extra_info("peername")
        self.local_address: Any = transport.get_extra_info("sockname")
        self.protocol: ServerProtocol | None = None
        self.stream: WsStream | None = None
        self._closed: asyncio.Future[None] | None = None  # see closed
        self._finished = False

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done once the TCP connection is closed (made when first asked for)."""
        closed = self._closed
        if closed is None:
            closed = self._closed = asyncio.get_running_loop().create_future()
            if self._finished:
                closed.set_result(None)
        return closed

    def _finish(self) -> None:
        self._finished = True
        closed = self._closed
        if closed is not None and not closed.done():
            closed.set_result(None)

    def respond(self, status: int, text: str) -> Response:
        """An HTTP response to return from ``process_request`` instead of upgrading."""
        assert self.protocol is not None
        return self.protocol.reject(status, text)

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is closed."""
        await asyncio.shield(self.closed)


def _selector(
    select: Callable[[Any, Sequence[Subprotocol]], Subprotocol | None] | None,
    connection: ServerConnection,
) -> Callable[[ServerProtocol, Sequence[Subprotocol]], Subprotocol | None] | None:
    """``select(connection, offered)`` as websockets' ServerProtocol calls it (a function
    it binds to itself)."""
    if select is None:
        return None

    def selector(_: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        return select(connection, offered)

    return selector


class _Handshaking(asyncio.Protocol):
    """The TCP transport's protocol during the opening handshake."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.connection: ServerConnection | None = None
        self.handshake: ServerHandshake | None = None
        self.timer: asyncio.TimerHandle | None = None
        #: An async ``process_request`` under way.
        self.pending: asyncio.Future[Response | None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self.server
        self.connection = connection = ServerConnection(server, transport)  # type: ignore[arg-type]
        server._connections.add(connection)
        opts = server._options
        self.handshake = ServerHandshake(
            opts,
            origins=server._origins,
            subprotocols=server._subprotocols,
            select_subprotocol=_selector(server._select, connection),
            server_header=server._server_header,
        )
        connection.protocol = self.handshake.protocol
        if opts.open_timeout is not None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(opts.open_timeout, connection.transport.abort)

    def data_received(self, data: bytes) -> None:
        handshake = self.handshake
        assert handshake is not None and self.connection is not None
        if handshake.response is not None or self.pending is not None:
            return  # a refused client that keeps sending (reading is paused while pending)
        if handshake.receive_data(data):
            self._respond()

    def eof_received(self) -> bool:
        if self.handshake is not None and self.handshake.response is None and not self.pending:
            self.handshake.receive_eof()
            self._respond()
        return False

    def _respond(self) -> None:
        """The request is read (or the handshake failed): ask the hook, then answer."""
        handshake = self.handshake
        connection = self.connection
        assert handshake is not None and connection is not None
        request = handshake.request
        hook = self.server._process_request
        if handshake.failed or request is None:
            self._answer(None)
        elif self.server._closing:
            self._answer(handshake.protocol.reject(503, "The server is shutting down.\n"))
        elif hook is None:
            self._answer(None)
        else:
            try:
                result = hook(connection, request)
            except Exception as exc:
                self._hook_failed(exc)
                return
            if not inspect.isawaitable(result):
                self._answer(result)
                return
            # An async hook: the request waits (reading paused, the handshake's
            # open_timeout still running) until it answers.
            connection.transport.pause_reading()
            self.pending = asyncio.ensure_future(result)
            self.pending.add_done_callback(self._processed)

    def _processed(self, pending: asyncio.Future[Response | None]) -> None:
        self.pending = None
        if pending.cancelled() or self.connection is None:
            return
        exc = pending.exception()
        if exc is not None:
            self._hook_failed(exc)
            return
        self.connection.transport.resume_reading()
        self._answer(pending.result())

    def _hook_failed(self, exc: BaseException) -> None:
        assert self.connection is not None
        logger.error("the handshake hooks failed; answering 500", exc_info=exc)
        self.connection.transport.write(
            b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        self._stop_timer()
        self.connection.transport.close()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _answer(self, response: Response | None) -> None:
        """Send ``response`` (None: websockets' own answer: the upgrade or its refusal)."""
        handshake = self.handshake
        connection = self.connection
        assert handshake is not None and connection is not None
        transport = connection.transport
        try:
            opened = not handshake.failed and handshake.respond(response)
        except Exception as exc:
            self._hook_failed(exc)
            return
        for data in handshake.data_to_send():
            if data:
                transport.write(data)
        self._stop_timer()
        if not opened:
            transport.close()
            return
        result = handshake.result()
        extra = {
            "subprotocol": result.protocol.subprotocol,
            "request": result.request,
            "response": result.response,
            "connection": connection,
        }
        stream = WsStream._over(
            transport, result.protocol, self.server._options, extra, received=result.received
        )
        connection.stream = stream
        # The stream owns the TCP transport now: this protocol is done. (Dropping
        # the handshake breaks its cycle with the hooks: freed without the GC.)
        self.handshake = None
        self.server._start(connection, stream)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        connection = self.connection
        if connection is not None and connection.stream is None:
            self.server._finished(connection)


class Server:
    """A running WebSocket server: what :func:`start_server` returns.

    An async context manager (closing on exit), with :attr:`sockets`,
    :meth:`close`, :meth:`wait_closed`, :meth:`serve_forever`,
    :meth:`is_serving` and :attr:`connections`.
    """

    def __init__(
        self,
        callback: ClientConnectedCallback,
        options: StreamOptions,
        *,
        origins: Sequence[str | None] | None = None,
        subprotocols: Sequence[str] | None = None,
        select_subprotocol: Callable[[Any, Sequence[Subprotocol]], Subprotocol | None]
        | None = None,
        process_request: Callable[[Any, Request], Response | None] | None = None,
        server_header: str | None = "ws_stream",
    ) -> None:
        self._callback = callback
        self._options = options
        self._origins = origins
        self._subprotocols = subprotocols
        self._select = select_subprotocol
        self._process_request = process_request
        self._server_header = server_header
        self._server: asyncio.Server | None = None
        self._connections: set[ServerConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._closed = asyncio.get_running_loop().create_future()

    @property
    def connections(self) -> set[ServerConnection]:
        """The connections open now (handshaking or streaming)."""
        return set(self._connections)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets."""
        return () if self._server is None else tuple(self._server.sockets)

    def is_serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    def _start(self, connection: ServerConnection, stream: WsStream) -> None:
        # _run removes its task from _tasks when it ends (no done callback: one
        # less object per connection).
        self._tasks.add(asyncio.get_running_loop().create_task(self._run(connection, stream)))

    async def _run(self, connection: ServerConnection, stream: WsStream) -> None:
        try:
            try:
                result = self._callback(stream.reader, stream.writer)
                if inspect.isawaitable(result):
                    await result
            except ConnectionError as exc:
                # The peer vanished or broke the protocol while the callback ran:
                # an ordinary end for a server, not a bug in the callback.
                logger.info("connection ended while client_connected_cb ran: %s", exc)
                await stream.close()
            except Exception:
                logger.exception("client_connected_cb raised; closing the connection with 1011")
                await stream.close(1011, "internal error")
            # As with asyncio, the connection lives until someone closes it.
            await stream.wait_closed()
        finally:
            self._tasks.discard(asyncio.current_task())
            self._finished(connection)

    def _finished(self, connection: ServerConnection) -> None:
        connection.stream = None  # its cycle with the stream's extra info ("connection")
        self._connections.discard(connection)
        connection._finish()
        if self._closing and not self._connections and not self._closed.done():
            self._closed.set_result(None)

    def close(self, close_connections: bool = True) -> None:
        """Stop accepting; with ``close_connections``, close open streams with 1001.

        Handshakes under way are answered with 503.
        """
        if self._server is not None:
            self._server.close()
        self._closing = True
        if close_connections:
            for connection in list(self._connections):
                stream = connection.stream
                if stream is not None:
                    transport = stream._transport
                    transport.close_code_to_send = 1001
                    transport.close_reason_to_send = "server shutting down"
                    stream.writer.close()
        if not self._connections and not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        """Wait until the server is closed and every connection is over."""
        if self._server is not None:
            await self._server.wait_closed()
        if self._closing:
            await asyncio.shield(self._closed)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def serve_forever(self) -> None:
        """Serve until cancelled (then close)."""
        assert self._server is not None
        try:
            await self._server.serve_forever()
        finally:
            self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()


async def start_server(
    client_connected_cb: ClientConnectedCallback,
    host: str | Sequence[str] | None = None,
    port: int | None = None,
    **options: Any,
) -> Server:
    """Start a WebSocket server; like :func:`asyncio.start_server`.

    ``client_connected_cb(reader, writer)`` runs for each connection and may
    be a coroutine function. The connection stays open after it returns,
    until the writer is closed or the peer closes, as with asyncio. If it
    raises, the connection is closed with 1011 (a ConnectionError - the peer
    vanished or broke the protocol - is logged at info and closes it normally).

    Options are those of :func:`ws_stream.open_connection` that concern a
    connection (``open_timeout`` - the handshake's bound -, ``close_timeout``,
    ``ping_interval``, ``ping_timeout``, ``max_size``, ``max_frame_size``,
    ``limit``, ``compression``, ``on_text``, ``max_events``) plus ``ssl``,
    ``sock``, ``origins``, ``subprotocols``, ``select_subprotocol(connection,
    offered)``, ``process_request(connection, request)`` (return
    ``connection.respond(status, text)`` - or any websockets ``Response`` - to
    answer instead of upgrading, or None; it may be a coroutine function: the
    request then waits for it, within ``open_timeout``), ``server_header``
    and asyncio's ``reuse_port``, ``reuse_address``, ``backlog``, ``family``.

    Returns a :class:`Server`: an async context manager with ``close()``,
    ``wait_closed()``, ``serve_forever()`` and ``sockets``.

    Raises:
        OSError: the listening socket could not be created.
        TypeError: an unknown option.
        ValueError: an invalid option.
    """
    return await _serve(client_connected_cb, options, host=host, port=port)


async def start_unix_server(
    client_connected_cb: ClientConnectedCallback,
    path: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Server:
    """Start a WebSocket server on a Unix socket; like :func:`asyncio.start_unix_server`.

    The same as :func:`start_server`, listening on the Unix socket ``path``
    instead of a host and port: for a server behind a reverse proxy on the
    same machine (nginx's ``proxy_pass http://unix:/path:``). ``sock=`` (a
    bound ``AF_UNIX`` stream socket, for example one given its permissions
    before ``listen()``) replaces ``path``.

    As with asyncio, a socket file already at ``path`` is replaced, and the
    file is left in place when the server closes: the caller removes it.
    Only available on Unix.

    Raises:
        OSError: the socket cannot be created or bound (``path`` too long,
            missing directory, no permission...).
        ValueError: an option is invalid.
    """
    return await _serve(client_connected_cb, options, unix=True, path=path)


async def _serve(
    client_connected_cb: ClientConnectedCallback, options: dict[str, Any], **where: Any
) -> Server:
    opts, rest = split_options(options)
    unknown = set(rest) - _SERVER_KEYS
    if unknown:
        raise TypeError(
            f"start_server() got unexpected options {sorted(unknown)}; it takes "
            + ", ".join(sorted(_SERVER_KEYS | set(StreamOptions.__dataclass_fields__)))
        )
    server = Server(
        client_connected_cb,
        opts,
        origins=rest.pop("origins", None),
        subprotocols=rest.pop("subprotocols", None),
        select_subprotocol=rest.pop("select_subprotocol", None),
        process_request=rest.pop("process_request", None),
        server_header=rest.pop("server_header", "ws_stream"),
    )
    loop = asyncio.get_running_loop()
    if where.pop("unix", False):
        server._server = await loop.create_unix_server(
            lambda: _Handshaking(server), where["path"], **rest
        )
    else:
        server._server = await loop.create_server(
            lambda: _Handshaking(server), where["host"], where["port"], **rest
        )
    return server
