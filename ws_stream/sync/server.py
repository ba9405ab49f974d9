"""serve(): a threaded WebSocket server whose handlers get socket-like :class:`WsSocket` objects."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, cast

from websockets.sync.server import Server, ServerConnection
from websockets.sync.server import serve as ws_serve

from .._options import split_options
from .connection import StreamConnection
from .socket import WsSocket

__all__ = ["Server", "ServerStreamConnection", "serve"]

logger = logging.getLogger("ws_stream.sync")


class ServerStreamConnection(StreamConnection, ServerConnection):
    """websockets' threading server connection, carrying a byte stream."""


def serve(
    handler: Callable[[WsSocket], object],
    host: str | None = None,
    port: int | None = None,
    **options: Any,
) -> Server:
    """Create a WebSocket server on ``host``:``port``; like websockets' sync ``serve()``.

    ``handler(sock)`` runs in its own thread for each connection, with a
    connected :class:`WsSocket`. When it returns, the connection is closed
    (closing handshake bounded by ``close_timeout``), even if
    :meth:`WsSocket.makefile` objects are still open; if it raises, the error
    is logged and the connection closed with 1011.

    Options are those of :func:`ws_stream.sync.connect` (``open_timeout``,
    ``close_timeout``, ``ping_interval``, ``ping_timeout``, ``max_size``,
    ``max_frame_size``, ``limit``, ``compression``, ``on_text``,
    ``max_events``) plus websockets' server options (``origins``,
    ``subprotocols``, ``process_request``, ``ssl``, ``sock``...), passed to
    :func:`websockets.sync.server.serve`.

    Returns websockets' :class:`~websockets.sync.server.Server`: a context
    manager with ``serve_forever()``, ``shutdown()`` (closes open connections
    with 1001 and waits for the handlers), ``socket`` and ``connections``.

    Raises:
        OSError: the listening socket could not be created.
        ValueError: an invalid option.
    """
    opts, rest = split_options(options)
    if "create_connection" in rest:
        raise TypeError("serve() makes its own connection class: no create_connection")

    def conn_handler(connection: ServerConnection) -> None:
        assert isinstance(connection, ServerStreamConnection)
        sock = WsSocket(connection)
        try:
            handler(sock)
        except Exception:
            logger.exception("the connection handler raised; closing the connection with 1011")
            sock._force_close(1011, "internal error")
        else:
            sock._force_close()

    factory = functools.partial(ServerStreamConnection, stream_options=opts)
    return ws_serve(
        conn_handler,
        host,
        port,
        create_connection=cast(Any, factory),
        **opts.websockets_kwargs(),
        **rest,
    )
