"""serve(): a threaded WebSocket server whose handlers get socket-like :class:`WsSocket` objects.

The listening socket, the accept loop, TLS and the opening handshake
(:class:`ws_stream._handshake.ServerHandshake`) are ours; each connection
runs in a thread of its own, as in websockets' threading server, whose
:class:`Server` interface this one keeps.
"""

from __future__ import annotations

import contextlib
import errno
import http
import logging
import selectors
import socket
import ssl as ssl_module
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from .._handshake import Opened, ProcessRequest, ServerHandshake
from .._options import StreamOptions, split_options
from .._policy import check_close
from ._wire import Budget, Wire
from .connection import Connection
from .socket import WsSocket

__all__ = ["Server", "serve"]

logger = logging.getLogger("ws_stream.sync")

_HANDSHAKE_KEYS = frozenset(
    {"origins", "subprotocols", "select_subprotocol", "process_request", "server_header"}
)
_SOCKET_KEYS = frozenset({"family", "backlog", "reuse_port", "dualstack_ipv6"})


class Server:
    """A WebSocket server made by :func:`serve`; shaped like websockets' threading server.

    ``serve_forever()`` accepts connections until ``shutdown()``; ``socket``
    is the listening socket; ``connections`` the open connections. A
    context manager: leaving the block shuts the server down.
    """

    #: How often shutdown() checks for handshakes finishing and handlers ending.
    SHUTDOWN_POLLING_INTERVAL = 0.1

    def __init__(
        self,
        sock: socket.socket,
        handler: Callable[[WsSocket], object],
        options: StreamOptions,
        *,
        ssl: ssl_module.SSLContext | None = None,
        process_request: ProcessRequest | None = None,
        handshake_options: dict[str, Any] | None = None,
    ) -> None:
        self.socket = sock
        self._handler = handler
        self._options = options
        self._ssl = ssl
        self._user_process_request = process_request
        self._handshake_options = handshake_options or {}
        self._lock = threading.Lock()
        self._open: set[Connection] = set()  # handlers running
        self._threads: set[threading.Thread] = set()  # one per accepted connection
        self._handshaking: dict[socket.socket, bool] = {}  # -> the request was read
        self._closing = threading.Event()
        self._serving = False
        self._served = threading.Event()  # serve_forever() returned
        self._watcher, self._notifier = socket.socketpair()

    def __repr__(self) -> str:
        return f"<ws_stream.sync.Server {self.socket!r}>"

    @property
    def connections(self) -> set[Connection]:
        """The open connections (each one's ``WsSocket.websocket``), handlers running."""
        with self._lock:
            return {conn for conn in self._open if conn.engine.is_open}

    def fileno(self) -> int:
        """The listening socket's file descriptor."""
        return self.socket.fileno()

    # Accepting

    def serve_forever(self) -> None:
        """Accept connections until :meth:`shutdown` is called (from another thread).

        Each connection is handled in a new daemon thread: the opening
        handshake (bounded by ``open_timeout``), then the handler.

        Raises:
            RuntimeError: ``serve_forever()`` is already running.
        """
        with self._lock:
            if self._serving:
                raise RuntimeError("serve_forever() is already running")
            if self._closing.is_set():
                return
            self._serving = True
        poller = selectors.DefaultSelector()
        try:
            try:
                poller.register(self.socket, selectors.EVENT_READ)
                poller.register(self._watcher, selectors.EVENT_READ)
                logger.info("server listening on %s", self.socket.getsockname())
            except (OSError, ValueError):  # shut down already
                return
            while not self._closing.is_set():
                poller.select()
                if self._closing.is_set():
                    break
                try:
                    sock, addr = self.socket.accept()
                except (BlockingIOError, InterruptedError):
                    continue  # another thread took it
                except OSError as exc:
                    if self._closing.is_set() or exc.errno in (errno.EBADF, errno.EINVAL):
                        break
                    # EMFILE, ENOBUFS...: the connection waits in the backlog.
                    logger.warning("accepting a connection failed: %s", exc)
                    time.sleep(self.SHUTDOWN_POLLING_INTERVAL)
                    continue
                thread = threading.Thread(
                    target=self._serve_one, args=(sock, addr), name=f"ws_stream {addr}"
                )
                thread.daemon = True  # nothing we start keeps the interpreter alive
                with self._lock:
                    self._threads.add(thread)
                thread.start()
        finally:
            poller.close()
            self._served.set()

    def _serve_one(self, sock: socket.socket, addr: Any) -> None:
        try:
            opened = self._open_connection(sock, addr)
            if opened is None:
                return
            wire, result = opened
            conn = Connection(wire, result, self._options)
            ws = WsSocket(conn)
            with self._lock:
                self._open.add(conn)
            try:
                self._handler(ws)
            except Exception:
                logger.exception("the connection handler raised; closing the connection with 1011")
                ws._force_close(1011, "internal error")
            except BaseException:
                ws._force_close(1011, "internal error")
                raise
            else:
                ws._force_close()
            finally:
                with self._lock:
                    self._open.discard(conn)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _open_connection(self, sock: socket.socket, addr: Any) -> tuple[Wire, Opened] | None:
        """TLS and the opening handshake, within ``open_timeout``; None when it failed
        (after an HTTP error response, if there was a request to answer)."""
        budget = Budget(self._options.open_timeout, "timed out during the opening handshake")
        try:
            wire = Wire(sock)
        except OSError:
            sock.close()
            return None
        with self._lock:
            if self._closing.is_set():
                wire.close()
                return None
            self._handshaking[sock] = False
        try:
            if self._ssl is not None:
                wire.start_tls(self._ssl, server_side=True, server_hostname=None, budget=budget)
            handshake = ServerHandshake(
                self._options, process_request=self._process_request, **self._handshake_options
            )
            while True:
                data = wire.recv_plain(budget)
                if handshake.receive_data(data) if data else handshake.receive_eof():
                    break
            with self._lock:
                self._handshaking[sock] = True  # shutdown() now answers it with 503
            accepted = not handshake.failed and handshake.respond()
            for data in handshake.data_to_send():
                if data:
                    wire.send_plain(data, budget)
            if accepted:
                return wire, handshake.result()
            response = handshake.response
            if response is not None:
                logger.info("refused a connection from %s with HTTP %d", addr, response.status_code)
            else:
                logger.info("invalid opening handshake from %s", addr)
        except OSError as exc:  # TimeoutError, ssl.SSLError, a reset...
            logger.info("the opening handshake with %s failed: %s", addr, exc)
        except Exception:
            logger.exception("the opening handshake with %s failed", addr)
        finally:
            with self._lock:
                self._handshaking.pop(sock, None)
        with contextlib.suppress(OSError):
            wire.sock.shutdown(socket.SHUT_WR)  # after the HTTP error, if any
        wire.close()
        return None

    def _process_request(self, protocol: ServerProtocol, request: Request) -> Response | None:
        """The user's hook; then HTTP 503 instead of an upgrade if shutdown() began."""
        response: Response | None = None
        if self._user_process_request is not None and not self._closing.is_set():
            try:
                response = self._user_process_request(protocol, request)
            except Exception:
                logger.exception("process_request raised")
                response = protocol.reject(
                    http.HTTPStatus.INTERNAL_SERVER_ERROR,
                    "Failed to open a WebSocket connection.\n"
                    "See server log for more information.\n",
                )
        if self._closing.is_set() and (response is None or response.status_code == 101):
            return protocol.reject(
                http.HTTPStatus.SERVICE_UNAVAILABLE, "Server is shutting down.\n"
            )
        return response

    # Stopping

    def shutdown(self, close_connections: bool = True, code: int = 1001, reason: str = "") -> None:
        """Stop accepting, close open connections, and wait for every handler to return.

        Open connections are closed with ``code`` (1001: going away), each
        closing handshake bounded by ``close_timeout``; handshakes in
        progress are dropped, or refused with HTTP 503 if the request
        arrived. With ``close_connections=False``, connections stay open
        until their handlers return. Idempotent. Do not call it from a handler
        (it waits for the handlers).

        Raises:
            ValueError: ``code``/``reason`` cannot be sent.
        """
        check_close(code, reason)
        logger.info("server closing")
        with self._lock:
            self._closing.set()
            serving = self._serving
            for sock, requested in self._handshaking.items():
                if not requested:  # no request yet: nothing to answer
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.socket.close()
        with contextlib.suppress(OSError):
            self._notifier.send(b"x")  # wakes serve_forever()
        if serving:
            self._served.wait()
        closed: set[Connection] = set()
        me = threading.current_thread()
        while True:
            with self._lock:
                threads = [thread for thread in self._threads if thread is not me]
                conns = [conn for conn in self._open if conn not in closed]
            if not threads:
                break
            if close_connections and conns:
                for conn in conns:
                    conn.begin_close(code, reason, Budget(0))
                end = time.monotonic() + self._options.close_timeout
                for conn in conns:
                    conn.wait_closed(end)
                closed.update(conns)
                continue
            threads[0].join(self.SHUTDOWN_POLLING_INTERVAL)
        self._watcher.close()
        self._notifier.close()
        logger.info("server closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


def serve(
    handler: Callable[[WsSocket], object],
    host: str | None = None,
    port: int | None = None,
    **options: Any,
) -> Server:
    """Create a WebSocket server on ``host``:``port``; like websockets' sync ``serve()``.

    ``handler(sock)`` runs in its own (daemon) thread for each connection,
    with a connected :class:`WsSocket`. When it returns, the connection is
    closed with 1000 (closing handshake bounded by ``close_timeout``), even
    if :meth:`WsSocket.makefile` objects are still open; if it raises, the
    error is logged and the connection closed with 1011.

    Options are those of :func:`ws_stream.sync.connect` (``open_timeout``,
    per handshake, TLS included; ``close_timeout``, ``ping_interval``,
    ``ping_timeout``, ``max_size``, ``max_frame_size``, ``limit``,
    ``compression``, ``on_text``, ``max_events``) plus: ``ssl`` (an
    :class:`ssl.SSLContext`: serve ``wss://``), ``sock`` (a listening socket
    to use instead of ``host``/``port``; it then belongs to the server),
    ``origins``, ``subprotocols``, ``select_subprotocol(protocol,
    subprotocols)``, ``server_header`` (None: no header) and
    ``process_request(protocol, request)``; and ``family``, ``backlog``,
    ``reuse_port``, ``dualstack_ipv6`` for :func:`socket.create_server`.
    ``host`` None listens on every interface.

    ``process_request`` and ``select_subprotocol`` receive websockets'
    Sans-I/O :class:`~websockets.server.ServerProtocol` (websockets' own
    threading server passes its connection object): return
    ``protocol.reject(status, text)`` from ``process_request`` to refuse the
    handshake with that response, None to go on. If it raises, the client
    gets HTTP 500.

    Returns a :class:`Server`: a context manager with ``serve_forever()``,
    ``shutdown()`` (closes open connections with 1001 and waits for the
    handlers), ``socket`` and ``connections``.

    Raises:
        OSError: the listening socket could not be created.
        ValueError: an invalid option, or ``host``/``port`` with ``sock``.
        TypeError: an unknown option.
    """
    opts, rest = split_options(options)
    if "create_connection" in rest:
        raise TypeError("serve() makes its own connection class: no create_connection")
    context: ssl_module.SSLContext | None = rest.pop("ssl", None)
    sock: socket.socket | None = rest.pop("sock", None)
    unknown = set(rest) - _HANDSHAKE_KEYS - _SOCKET_KEYS
    if unknown:
        raise TypeError(f"serve() got unexpected options {sorted(unknown)}")
    process_request = rest.pop("process_request", None)
    handshake_options = {k: v for k, v in rest.items() if k in _HANDSHAKE_KEYS}
    if sock is None:
        socket_options = {k: v for k, v in rest.items() if k in _SOCKET_KEYS}
        sock = socket.create_server(("" if host is None else host, port or 0), **socket_options)
    elif host is not None or port is not None:
        raise ValueError("host and port are incompatible with sock")
    sock.setblocking(False)  # accept() after select(): never blocks
    return Server(
        sock,
        handler,
        opts,
        ssl=context,
        process_request=process_request,
        handshake_options=handshake_options,
    )
