"""start_server(), start_unix_server(): WebSocket servers of reader/writer pairs."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve

from .._options import split_options
from .stream import WsStream

__all__ = ["Server", "start_server", "start_unix_server"]

logger = logging.getLogger("ws_stream.asyncio")

ClientConnectedCallback = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None
]


async def start_server(
    client_connected_cb: ClientConnectedCallback,
    host: str | None = None,
    port: int | None = None,
    **options: Any,
) -> Server:
    """Start a WebSocket server; like :func:`asyncio.start_server`.

    ``client_connected_cb(reader, writer)`` runs for each connection and may
    be a coroutine function. The connection stays open after it returns,
    until the writer is closed or the peer closes, as with asyncio. If it
    raises, the connection is closed with 1011.

    Options are those of :func:`ws_stream.open_connection` plus ``origins``;
    other keywords go to :func:`websockets.asyncio.server.serve`.

    Returns websockets' :class:`~websockets.asyncio.server.Server`: an async
    context manager with ``close()``, ``wait_closed()``, ``serve_forever()``
    and ``sockets``.
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

    async def handler(websocket: ServerConnection) -> None:
        stream = WsStream(websocket, _options=opts)
        try:
            result = client_connected_cb(stream.reader, stream.writer)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("client_connected_cb raised; closing the connection with 1011")
            await stream.close(1011, "internal error")
        # As with asyncio, the connection lives until someone closes it.
        await stream.wait_closed()

    return await serve(handler, **where, **opts.websockets_kwargs(), **rest)
