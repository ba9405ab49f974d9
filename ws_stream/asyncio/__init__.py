"""The asyncio shell: StreamReader/StreamWriter pairs over websockets' asyncio flavour."""

from ._reader import ChunkedStreamReader
from .client import connect_stream, open_connection
from .server import Server, start_server, start_unix_server
from .stream import EventStream, WsStream

__all__ = [
    "ChunkedStreamReader",
    "EventStream",
    "Server",
    "WsStream",
    "connect_stream",
    "open_connection",
    "start_server",
    "start_unix_server",
]
