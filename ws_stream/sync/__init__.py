"""The blocking shell: socket-like objects over websockets' threading flavour.

``connect(uri)`` returns a :class:`WsSocket`, which behaves like a connected
TCP socket (``recv``, ``send``, ``sendall``, ``makefile``, timeouts,
``shutdown``); ``serve(handler, host, port)`` runs ``handler(sock)`` in a
thread per connection.
"""

from .client import connect
from .server import Server, serve
from .socket import EventIterator, SocketFile, WsSocket

__all__ = ["EventIterator", "Server", "SocketFile", "WsSocket", "connect", "serve"]
