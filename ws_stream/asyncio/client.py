"""open_connection(): a WebSocket client as an asyncio reader/writer pair."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from .._handshake import handshake_failure, proxy_in_use
from .._options import split_options
from .stream import WsStream

__all__ = ["connect_stream", "open_connection"]


async def connect_stream(uri: str, **options: Any) -> WsStream:
    """Open a WebSocket to ``uri`` and return it as a :class:`WsStream`.

    Options are those of :func:`open_connection`.
    """
    opts, rest = split_options(options)
    try:
        websocket: ClientConnection = await connect(uri, **opts.websockets_kwargs(), **rest)
    except Exception as exc:
        mapped = handshake_failure(exc, uri, proxy=proxy_in_use(uri, rest))
        if mapped is None:
            raise
        raise mapped from exc
    return WsStream(websocket, _options=opts)


async def open_connection(
    uri: str, **options: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a WebSocket to ``uri``; return ``(reader, writer)``.

    Shaped like :func:`asyncio.open_connection`.

    Options: ``additional_headers``, ``ssl``, ``subprotocols``,
    ``open_timeout`` (10 s), ``close_timeout`` (10 s), ``ping_interval``,
    ``ping_timeout``, ``max_size`` (largest incoming message, 1 MiB),
    ``max_frame_size`` (largest frame sent, 64 KiB), ``limit`` (reader
    high-water mark, 1 MiB), ``compression`` (None; ``"deflate"`` to opt in),
    ``on_text`` (``"error"`` or ``"bytes"``), ``max_events`` (256). Other
    keywords go to :func:`websockets.asyncio.client.connect`.

    ``writer.get_extra_info("ws_stream")`` is the :class:`WsStream`.

    Raises:
        HandshakeError: the server refused the handshake (``.status`` is its
            HTTP status) or answered something that is not a WebSocket.
        TimeoutError: no handshake within ``open_timeout``.
        OSError: the TCP connection failed (refused, unreachable...).
        ValueError: ``uri`` is not a ws:// or wss:// URI, or an option is invalid.

    Through a proxy (``proxy=URL``, or by default the one the environment sets:
    ``https_proxy``, ``socks_proxy``...; SOCKS needs ``ws-stream[socks]``), a
    failure of the proxy names it (without its credentials) and says how: an
    :class:`OSError` when it cannot be reached, a :class:`HandshakeError` when it
    refused the tunnel (``.status`` is the proxy's HTTP status, 407 for
    credentials) or a SOCKS error.
    """
    stream = await connect_stream(uri, **options)
    return stream.reader, stream.writer
