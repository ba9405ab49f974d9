"""connect(): a WebSocket client as a blocking, socket-like :class:`WsSocket`."""

from __future__ import annotations

import functools
from typing import Any, cast

from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from .._failures import handshake_failure, proxy_in_use
from .._options import split_options
from .connection import StreamConnection
from .socket import WsSocket

__all__ = ["ClientStreamConnection", "connect"]


class ClientStreamConnection(StreamConnection, ClientConnection):
    """websockets' threading client connection, carrying a byte stream."""


def connect(uri: str, **options: Any) -> WsSocket:
    """Open a WebSocket to ``uri`` and return it as a connected :class:`WsSocket`.

    The socket is also a context manager: ``with connect(uri) as sock: ...``
    closes it on exit (with 1011 if the block raised).

    Options: ``open_timeout`` (10 s), ``close_timeout`` (10 s),
    ``ping_interval`` (20 s), ``ping_timeout`` (20 s), ``max_size`` (largest
    incoming message, 1 MiB), ``max_frame_size`` (largest frame sent, 64
    KiB), ``limit`` (receive buffer high-water mark, 1 MiB), ``compression``
    (None; ``"deflate"`` to opt in), ``on_text`` (``"error"`` or
    ``"bytes"``), ``max_events`` (256). Other keywords (``additional_headers``,
    ``subprotocols``, ``ssl``, ``sock``, ``origin``, ``proxy``...) go to
    :func:`websockets.sync.client.connect`.

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
    opts, rest = split_options(options)
    if "create_connection" in rest:
        raise TypeError("connect() makes its own connection class: no create_connection")
    factory = functools.partial(ClientStreamConnection, stream_options=opts)
    try:
        websocket = ws_connect(
            uri,
            create_connection=cast(Any, factory),
            legacy=True,
            **opts.websockets_kwargs(),
            **rest,
        )
    except Exception as exc:
        mapped = handshake_failure(exc, uri, proxy=proxy_in_use(uri, rest))
        if mapped is None:
            raise
        raise mapped from exc
    assert isinstance(websocket, ClientStreamConnection)
    return WsSocket(websocket)
