"""The blocking shell: socket-like objects, on threads and a socket of its own.

``connect(uri)`` returns a :class:`WsSocket`, which behaves like a connected
TCP socket (``recv``, ``send``, ``sendall``, ``makefile``, timeouts,
``shutdown``); ``serve(handler, host, port)`` runs ``handler(sock)`` in a
thread per connection. Built on websockets' Sans-I/O protocol through the
shared engine (:mod:`ws_stream._engine`), not on ``websockets.sync``.
"""

from .client import connect
from .server import Server, serve
from .socket import EventIterator, SocketFile, WsSocket

__all__ = ["EventIterator", "Server", "SocketFile", "WsSocket", "connect", "serve"]
