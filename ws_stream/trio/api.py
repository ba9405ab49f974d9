"""open_websocket_stream() and serve_websocket_stream(): the trio entry points."""

from __future__ import annotations

import contextlib
import logging
import math
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from .._failures import handshake_failure
from .._handshake import Opened, parse, proxy_for
from .._options import StreamOptions, split_options
from ._util import open_collapsing_nursery
from .handshake import client_handshake, connect_transport, server_handshake
from .stream import WsStream

__all__ = ["connect_stream", "open_websocket_stream", "serve_websocket_stream"]

logger = logging.getLogger("ws_stream.trio")

_CLIENT_KEYS = frozenset({"additional_headers", "subprotocols", "origin", "user_agent_header"})
_SERVER_KEYS = frozenset({"origins", "subprotocols"})


@contextlib.asynccontextmanager
async def open_websocket_stream(
    uri: str, *, ssl: ssl_module.SSLContext | None = None, **options: Any
) -> AsyncIterator[WsStream]:
    """Connect to ``uri``; ``async with open_websocket_stream(uri) as stream:``.

    Options: those of :func:`ws_stream.open_connection` (``open_timeout``,
    ``close_timeout``, ``ping_interval``, ``ping_timeout``, ``max_size``,
    ``max_frame_size``, ``limit``, ``compression``, ``on_text``,
    ``max_events``) plus ``additional_headers``, ``subprotocols``, ``origin``,
    ``user_agent_header`` and ``proxy`` (as :func:`ws_stream.open_connection`:
    by default the environment's, a URL, or None; HTTP, HTTPS and SOCKS with
    ``ws-stream[socks]``). On exit the stream is closed (handshake bounded by
    ``close_timeout``).

    Raises:
        HandshakeError: the server refused the handshake (``.status``).
        trio.TooSlowError: no handshake within ``open_timeout``.
        OSError: the TCP connection failed.
        ValueError: an invalid URI or option.
    """
    async with open_collapsing_nursery() as nursery:
        stream = await connect_stream(nursery, uri, ssl=ssl, **options)
        try:
            yield stream
        finally:
            await stream.aclose()


async def connect_stream(
    nursery: trio.Nursery, uri: str, *, ssl: ssl_module.SSLContext | None = None, **options: Any
) -> WsStream:
    """Connect to ``uri``; the stream's tasks run in ``nursery`` until it closes.

    The building block of :func:`open_websocket_stream`, for code that keeps
    streams in a nursery of its own. Same options and errors.
    """
    opts, rest = split_options(options)
    unknown = set(rest) - _CLIENT_KEYS - {"proxy"}
    if unknown:
        raise TypeError(f"unexpected options {sorted(unknown)}")
    wsuri = parse(uri)
    proxy = proxy_for(uri, wsuri, rest.pop("proxy", True))
    try:
        with trio.fail_after(opts.open_timeout if opts.open_timeout is not None else math.inf):
            transport = await connect_transport(wsuri, ssl, proxy)
            try:
                handshake = await client_handshake(transport, wsuri, opts, **rest)
            except BaseException:
                await trio.aclose_forcefully(transport)
                raise
    except Exception as exc:
        if proxy is None:
            raise
        mapped = handshake_failure(exc, uri, proxy=proxy)
        if mapped is None:
            raise
        raise mapped from exc
    return _stream(nursery, transport, handshake, opts)


def _stream(
    nursery: trio.Nursery,
    transport: trio.abc.Stream,
    opened: Opened,
    opts: StreamOptions,
) -> WsStream:
    return WsStream(
        transport,
        opened.protocol,
        nursery,
        request=opened.request,
        response=opened.response,
        received=opened.received,
        ping_interval=opts.ping_interval,
        ping_timeout=opts.ping_timeout,
        _options=opts,
    )


async def serve_websocket_stream(
    handler: Callable[[WsStream], Awaitable[object]],
    port: int,
    *,
    host: str | bytes | None = None,
    ssl: ssl_module.SSLContext | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve WebSocket streams on ``port``; shaped like :func:`trio.serve_tcp`.

    ``await nursery.start(serve_websocket_stream, handler, 0, host="127.0.0.1")``
    returns the listeners. ``handler(stream)`` runs for each connection; the
    stream is closed when it returns (1000) or raises (1011). Handshakes that
    fail (bad request, disallowed ``origins``) get an HTTP error and never
    reach the handler; a client that stalls is dropped after ``open_timeout``.
    """
    opts, rest = split_options(options)
    unknown = set(rest) - _SERVER_KEYS
    if unknown:
        raise TypeError(f"serve_websocket_stream() got unexpected options {sorted(unknown)}")
    listeners: list[trio.SocketListener] = await trio.open_tcp_listeners(port, host=host)
    open_timeout = opts.open_timeout if opts.open_timeout is not None else float("inf")

    async def serve_one(tcp: trio.SocketStream) -> None:
        transport: trio.abc.Stream = tcp
        try:
            with trio.move_on_after(open_timeout) as scope:
                if ssl is not None:
                    transport = trio.SSLStream(tcp, ssl, server_side=True)
                    await transport.do_handshake()
                result = await server_handshake(transport, opts, **rest)
            if scope.cancelled_caught or result is None:
                await trio.aclose_forcefully(transport)
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await trio.aclose_forcefully(transport)
            return
        async with trio.open_nursery() as nursery:
            stream = _stream(nursery, transport, result, opts)
            try:
                await handler(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # The peer vanished or broke the protocol while the handler ran:
                # an ordinary end for a server, not a bug in the handler.
                logger.info("connection ended while the handler ran: %s", exc)
                await stream.aclose()
            except Exception:
                logger.exception("the handler raised; closing the connection with 1011")
                await stream.aclose(1011, "internal error")
            else:
                await stream.aclose()

    await trio.serve_listeners(
        serve_one, listeners, handler_nursery=handler_nursery, task_status=task_status
    )
