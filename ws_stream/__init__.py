"""ws_stream: a WebSocket that looks exactly like a TCP connection."""

from . import events
from ._options import StreamOptions
from .asyncio import EventStream, Server, WsStream, connect_stream, open_connection, start_server
from .exceptions import (
    AbnormalClosureError,
    HandshakeError,
    ProtocolError,
    TextFrameError,
    WsStreamError,
)

__all__ = [
    "AbnormalClosureError",
    "EventStream",
    "HandshakeError",
    "ProtocolError",
    "Server",
    "StreamOptions",
    "TextFrameError",
    "WsStream",
    "WsStreamError",
    "connect_stream",
    "events",
    "open_connection",
    "start_server",
]

__version__ = "0.1.0"
