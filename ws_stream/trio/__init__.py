"""The trio shell: a WebSocket as a trio Stream (install ``ws-stream[trio]``)."""

from .api import connect_stream, open_websocket_stream, serve_websocket_stream
from .reconnect import Reconnecting, reconnecting
from .stream import EventStream, WsStream

__all__ = [
    "EventStream",
    "Reconnecting",
    "WsStream",
    "connect_stream",
    "open_websocket_stream",
    "reconnecting",
    "serve_websocket_stream",
]
