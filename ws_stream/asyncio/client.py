"""open_connection(): a WebSocket client as an asyncio reader/writer pair."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidProxy, InvalidStatus, InvalidURI

from .._options import split_options
from ..exceptions import HandshakeError
from .stream import WsStream

__all__ = ["connect_stream", "open_connection", "redact"]


def redact(uri: str) -> str:
    """``uri`` with any ``user:password@`` hidden, for messages and logs."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}"


async def connect_stream(uri: str, **options: Any) -> WsStream:
    """Open a WebSocket to ``uri`` and return it as a :class:`WsStream`.

    Options are those of :func:`open_connection`.
    """
    opts, rest = split_options(options)
    shown = redact(uri)
    try:
        websocket: ClientConnection = await connect(uri, **opts.websockets_kwargs(), **rest)
    except InvalidURI as exc:
        raise ValueError(f"{shown!r} is not a valid WebSocket URI") from exc
    except InvalidProxy as exc:
        raise ValueError(
            f"invalid proxy for {shown}: {exc} (check the *_proxy environment variables, "
            "or pass proxy=None)"
        ) from exc
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise HandshakeError(
            f"the server at {shown} refused the WebSocket handshake with HTTP {status} "
            f"{exc.response.reason_phrase}; check the URI path and credentials",
            status=status,
        ) from exc
    except InvalidHandshake as exc:
        raise HandshakeError(f"the WebSocket handshake with {shown} failed: {exc}") from exc
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
    """
    stream = await connect_stream(uri, **options)
    return stream.reader, stream.writer
