"""start_server(): a WebSocket server whose connections are reader/writer pairs."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve

from .._options import split_options
from .stream import WsStream

__all__ = ["Server", "start_server"]

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

    return await serve(handler, host, port, **opts.websockets_kwargs(), **rest)
