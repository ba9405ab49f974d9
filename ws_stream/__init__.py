"""ws_stream: a WebSocket that looks exactly like a TCP connection."""

from . import events
from ._options import StreamOptions
from .asyncio import (
    EventStream,
    Server,
    WsStream,
    connect_stream,
    open_connection,
    start_server,
    start_unix_server,
)
from .asyncio.reconnect import Reconnecting, reconnecting
from .exceptions import (
    AbnormalClosureError,
    HandshakeError,
    ProtocolError,
    TextFrameError,
    WsStreamError,
)
from .reconnect import (
    Backoff,
    CloseError,
    ConnectionState,
    IdleTimeoutError,
    ReconnectPolicy,
    Status,
)
from .stats import StreamStats

__all__ = [
    "AbnormalClosureError",
    "Backoff",
    "CloseError",
    "ConnectionState",
    "EventStream",
    "HandshakeError",
    "IdleTimeoutError",
    "ProtocolError",
    "ReconnectPolicy",
    "Reconnecting",
    "Server",
    "Status",
    "StreamOptions",
    "StreamStats",
    "TextFrameError",
    "WsStream",
    "WsStreamError",
    "connect_stream",
    "events",
    "open_connection",
    "reconnecting",
    "start_server",
    "start_unix_server",
]

__version__ = "0.2.0.dev0"
