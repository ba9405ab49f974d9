"""The trio shell: a WebSocket as a trio Stream (install ``ws-stream[trio]``)."""

from .api import open_websocket_stream, serve_websocket_stream
from .stream import EventStream, WsStream

__all__ = ["EventStream", "WsStream", "open_websocket_stream", "serve_websocket_stream"]
