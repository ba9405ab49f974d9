"""WsSocket: a WebSocket connection that behaves like a connected, blocking TCP socket."""

from __future__ import annotations

import errno
import io
import logging
import socket as _socket
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self

from .._policy import check_close
from ..events import Event
from ..stats import StreamStats
from ._wire import Budget
from .connection import Connection

__all__ = ["EventIterator", "SocketFile", "WsSocket"]

logger = logging.getLogger("ws_stream.sync")

_Buffer = bytes | bytearray | memoryview
_FOREVER = Budget(None)  # the budget of blocking mode (immutable: end stays None)


def _bad_fd() -> OSError:
    return OSError(errno.EBADF, "Bad file descriptor (the WsSocket is closed)")


class WsSocket:
    """A WebSocket connection with the interface of a connected TCP socket.

    Bytes sent travel as binary frames of at most ``max_frame_size``; bytes
    received are the concatenation of the peer's binary payloads, frame
    boundaries gone. Get one from :func:`ws_stream.sync.connect` or in a
    :func:`ws_stream.sync.serve` handler.

    What the reader sees, as with TCP: every byte the peer sent, then ``b""``
    (EOF) after the peer's close frame; :class:`ConnectionResetError`
    (:class:`~ws_stream.AbnormalClosureError`) when the connection was lost
    without one; :class:`~ws_stream.ProtocolError` (``.code``) after the peer
    broke the protocol, and :class:`~ws_stream.TextFrameError` (1003) after a
    text frame unless ``on_text="bytes"``. Errors come after the data that
    arrived before them, and stay: every later read raises them again.

    Timeouts are those of a socket: :meth:`settimeout` (``None`` blocks,
    ``0.0`` is non-blocking and raises :class:`BlockingIOError`, a number of
    seconds raises :class:`TimeoutError`). A read that times out consumes
    nothing; a write that times out has sent (or will send, in order) exactly
    the bytes it accepted, and nothing after them - over ``wss://`` as over
    ``ws://`` (TLS runs in memory: the socket carries records that can be
    written in part, and a helper thread finishes what a timeout left).

    Thread-safety: one thread reading (``recv``, a ``makefile`` reader) and
    one thread writing (``send``, ``sendall``, a writer) at the same time is
    supported, as is calling :meth:`ping`, :meth:`events`, :meth:`close` or
    :meth:`shutdown` from any thread. Two threads reading (or two writing) at
    once do not corrupt anything but interleave unpredictably, as with TCP.
    ``settimeout`` applies to calls made after it.
    """

    def __init__(self, connection: Connection) -> None:
        if not isinstance(connection, Connection):
            raise TypeError(
                "WsSocket wraps a connection made by ws_stream.sync.connect() or serve(), "
                f"not {type(connection).__name__}"
            )
        self._conn = connection
        self._timeout: float | None = _socket.getdefaulttimeout()
        self._closed = False  # close() was called (paramiko reads this attribute)
        self._io_refs = 0  # open makefile() objects keep the connection alive
        self._close_args = (1000, "")
        self._lock = threading.Lock()
        self._real_closed = False
        self._wr_shut = False
        self._rd_shut = False
        self._peername: Any = connection.remote_address
        self._sockname: Any = connection.local_address

    def __repr__(self) -> str:
        side = self._conn.protocol.side.name.lower()
        state = "closed" if self._closed else self._conn.protocol.state.name.lower()
        return f"<WsSocket {side} {state} peer={self._peername}>"

    # Attributes

    @property
    def websocket(self) -> Connection:
        """The connection underneath (``request``, ``response``, ``subprotocol``,
        ``protocol``: websockets' Sans-I/O protocol object...)."""
        return self._conn

    @property
    def close_code(self) -> int | None:
        """The peer's close code: None while open, 1006 if the connection was lost."""
        return self._conn.engine.close_code

    @property
    def close_reason(self) -> str | None:
        """The peer's close reason: None while open, "" if none was received."""
        return self._conn.engine.close_reason

    @property
    def error(self) -> Exception | None:
        """What ended the stream abnormally (text frame, violation, lost connection), or None."""
        return self._conn.engine.error

    @property
    def stats(self) -> StreamStats:
        """Byte, frame and ping counters and the latest ping latency (live object).

        ``bytes_sent`` counts payload bytes accepted for sending;
        ``bytes_received`` payload bytes received (read or still buffered);
        ``last_latency`` includes keepalive pings.
        """
        return self._conn.stats

    @property
    def bytes_sent(self) -> int:
        """Payload bytes accepted for sending so far."""
        return self._conn.stats.bytes_sent

    @property
    def bytes_received(self) -> int:
        """Payload bytes received so far (read or still buffered)."""
        return self._conn.stats.bytes_received

    def getpeername(self) -> Any:
        """The peer's TCP address, as :meth:`socket.socket.getpeername`.

        Raises:
            OSError: the socket is closed (EBADF) or was never connected.
        """
        if self._closed:
            raise _bad_fd()
        if self._peername is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return self._peername

    def getsockname(self) -> Any:
        """Our TCP address, as :meth:`socket.socket.getsockname`.

        Raises:
            OSError: the socket is closed (EBADF) or was never connected.
        """
        if self._closed:
            raise _bad_fd()
        if self._sockname is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return self._sockname

    # Timeouts

    def settimeout(self, value: float | None) -> None:
        """``None``: block; ``0.0``: non-blocking; seconds: raise TimeoutError after them.

        Raises:
            ValueError: a negative timeout.
        """
        if value is not None:
            value = float(value)
            if not value >= 0:
                raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self) -> float | None:
        """The timeout set by :meth:`settimeout` (``None``: blocking)."""
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        """``setblocking(True)`` is ``settimeout(None)``; ``False`` is ``settimeout(0.0)``."""
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        """False in non-blocking mode (timeout 0.0), else True."""
        return self._timeout != 0.0

    def _budget(self) -> Budget:
        timeout = self._timeout
        return _FOREVER if timeout is None else Budget(timeout)

    # Reading

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Receive up to ``bufsize`` bytes; ``b""`` at EOF (the peer's close frame).

        Blocks until at least one byte is available, within the timeout.

        Raises:
            TimeoutError: nothing arrived within the timeout (nothing consumed).
            BlockingIOError: non-blocking mode and nothing is buffered.
            ConnectionResetError: the connection was lost without a close frame
                (an :class:`~ws_stream.AbnormalClosureError`), after the data.
            ws_stream.ProtocolError: the peer broke the protocol (``.code``:
                1002, 1003 for a text frame, 1007, 1009...), after the data.
            OSError: the socket is closed (EBADF).
            ValueError: a negative ``bufsize`` or non-zero ``flags``.
        """
        self._check_read(flags)
        if bufsize <= 0:
            if bufsize < 0:
                raise ValueError("negative buffersize in recv")
            return b""
        return self._conn.read(bufsize, self._budget())

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """Receive up to ``nbytes`` (0: ``len(buffer)``) bytes into ``buffer``; 0 at EOF.

        Raises what :meth:`recv` raises; ValueError when ``nbytes`` exceeds the buffer.
        """
        self._check_read(flags)
        with memoryview(buffer) as mv, mv.cast("B") as view:
            if nbytes < 0 or nbytes > len(view):
                raise ValueError("nbytes is greater than the length of the buffer")
            if nbytes:
                view = view[:nbytes]
            if not len(view):
                return 0
            return self._conn.read_into(view, self._budget())

    def _check_read(self, flags: int) -> None:
        if self._closed:
            raise _bad_fd()
        if flags:
            raise ValueError("WsSocket.recv() does not support flags")

    # Writing

    def send(self, data: _Buffer, flags: int = 0) -> int:
        """Send ``data``; return how many bytes were accepted, as :meth:`socket.socket.send`.

        Blocking mode sends everything. With a timeout, returns the count
        accepted when time runs out (at least one frame's worth), and raises
        when nothing could be accepted; accepted bytes always go out, in order.

        Raises:
            TimeoutError: nothing accepted within the timeout.
            BlockingIOError: non-blocking mode and the send buffer is full.
            BrokenPipeError: after :meth:`shutdown` ``(SHUT_WR)``, or once the
                peer closed the WebSocket.
            ws_stream.WsStreamError: the stream failed (the same error the
                reader gets: a violation, a text frame, a lost connection).
            OSError: the socket is closed (EBADF).
            TypeError: ``data`` is not bytes-like.
            ValueError: non-zero ``flags``.
        """
        if self._closed:
            raise _bad_fd()
        if flags:
            raise ValueError("WsSocket.send() does not support flags")
        return self._send(data, partial=True)

    def sendall(self, data: _Buffer, flags: int = 0) -> None:
        """Send all of ``data``, as :meth:`socket.socket.sendall`.

        Raises what :meth:`send` raises. On a timeout, a prefix of ``data`` may
        have been accepted (and will be sent, in order); as with a socket, how
        much is not reported - use :meth:`send` to know.
        """
        if self._closed:
            raise _bad_fd()
        if flags:
            raise ValueError("WsSocket.sendall() does not support flags")
        self._send(data, partial=False)

    def _send(self, data: _Buffer, *, partial: bool) -> int:
        if self._wr_shut:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe (shutdown(SHUT_WR) was called)")
        kind = type(data)
        if kind is bytes or kind is bytearray:
            return self._conn.write(data, self._budget(), partial=partial) if data else 0
        try:
            view = memoryview(data)
        except TypeError:
            raise TypeError(f"a bytes-like object is required, not {kind.__name__!r}") from None
        with view:
            if view.ndim != 1 or view.itemsize != 1:
                with view.cast("B") as flat:
                    return self._conn.write(flat, self._budget(), partial=partial)
            if not len(view):
                return 0
            return self._conn.write(view, self._budget(), partial=partial)

    def makefile(
        self,
        mode: str = "rb",
        buffering: int | None = -1,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> SocketFile:
        """A binary file object over this socket: ``"rb"``, ``"wb"`` or ``"rwb"``.

        Reading comes straight from the socket's buffer, so a read that times
        out (TimeoutError) consumes nothing and the file stays usable - unlike
        a TCP socket's makefile(). Writes are buffered up to ``buffering``
        bytes (default: ``max_frame_size``; 0: unbuffered) and sent on
        ``flush()``; a flush that times out keeps the unsent bytes.

        The connection stays open until the socket and every file are
        closed, as with :meth:`socket.socket.makefile`.

        Raises:
            ValueError: a text mode (wrap the binary file in
                :class:`io.TextIOWrapper` yourself) or an invalid mode.
        """
        if not set(mode) <= {"r", "w", "b"} or "b" not in mode or not ({"r", "w"} & set(mode)):
            raise ValueError(f"invalid mode {mode!r}: use 'rb', 'wb' or 'rwb'")
        if encoding is not None or errors is not None or newline is not None:
            raise ValueError("binary mode doesn't take an encoding, errors or newline argument")
        if self._closed:
            raise _bad_fd()
        if buffering is None or buffering < 0:
            buffering = self._conn.max_frame_size
        with self._lock:
            self._io_refs += 1
        return SocketFile(self, mode, buffering)

    def _decref_socketios(self, *, finalizing: bool = False) -> None:
        """A makefile() object was closed; the last one really closes a closed socket.

        ``finalizing``: it was garbage-collected, and the close must not block
        or start a thread (see :meth:`_close_nowait`).
        """
        with self._lock:
            self._io_refs -= 1
            close = self._closed and self._io_refs <= 0
        if close:
            if finalizing:
                self._close_nowait()
            else:
                self._real_close()

    # Ending

    def shutdown(self, how: int) -> None:
        """Shut down one or both halves of the stream, as :meth:`socket.socket.shutdown`.

        ``SHUT_WR`` flushes, sends a close frame (1000) and keeps receiving
        until the peer's close frame (EOF). Note that a WebSocket peer usually
        answers a close frame at once, so it sends little after it.
        ``SHUT_RD`` discards buffered and incoming bytes: ``recv`` returns
        ``b""``. ``SHUT_RDWR`` does both. The connection ends when the peer
        closes or ``close_timeout`` after the close frame. The close frame
        goes out behind the bytes already accepted; if they cannot be written
        within the timeout, the helper thread that finishes them sends it.

        Raises:
            OSError: the socket is closed (EBADF).
            ValueError: an unknown ``how``.
        """
        if self._closed:
            raise _bad_fd()
        if how not in (_socket.SHUT_RD, _socket.SHUT_WR, _socket.SHUT_RDWR):
            raise ValueError(f"invalid shutdown how {how!r}")
        if how in (_socket.SHUT_RD, _socket.SHUT_RDWR):
            self._rd_shut = True
            self._conn.shut_reading()
        if how in (_socket.SHUT_WR, _socket.SHUT_RDWR) and not self._wr_shut:
            self._wr_shut = True
            try:
                self._conn.send_close(1000, "", self._budget())
            except OSError as exc:
                logger.debug("shutdown(SHUT_WR): the connection is already over: %r", exc)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection: flush, closing handshake with ``code``/``reason``, TCP close.

        Unread bytes are discarded. Waits at most ``close_timeout`` for the
        peer, then drops TCP. Idempotent; never raises for a connection that is
        already gone. While :meth:`makefile` objects are open, the connection
        closes when the last one is closed (as with a TCP socket). If the last
        one is garbage-collected instead (or left open at interpreter exit),
        its finalizer neither blocks nor starts a thread: bytes already
        accepted and the close frame go out if the socket takes them at once
        (or a thread already writing finishes them), then TCP is dropped
        without waiting for the peer's answer; whatever cannot go out at once
        is dropped with TCP, and the peer then sees an abnormal closure (1006).

        Raises:
            ValueError: ``code`` is not a close code an endpoint may send
                (1000-1003, 1007-1014, 3000-4999) or ``reason`` is too long.
        """
        check_close(code, reason)
        args = (code, reason)  # allocated outside the lock: a finalizer may need it
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_args = args
            close = self._io_refs <= 0
        if close:
            self._real_close()

    def _real_close(self) -> None:
        with self._lock:
            if self._real_closed:
                return
            self._real_closed = True
        code, reason = self._close_args
        self._conn.close(code, reason)  # bounded by close_timeout

    def _close_nowait(self) -> None:
        """The close of a finalizer: close frame if it goes out at once, TCP dropped.

        Never blocks and never starts a thread (see
        :meth:`Connection.abandon`): the closing handshake is not awaited.
        """
        with self._lock:
            if self._real_closed:
                return
            self._real_closed = True
        code, reason = self._close_args
        self._conn.abandon(code, reason)

    def _force_close(self, code: int = 1000, reason: str = "") -> None:
        """close(), ignoring open makefile() objects (the server's handler returned)."""
        args = (code, reason)
        with self._lock:
            self._closed = True
            self._close_args = args
        self._real_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None or not issubclass(exc_type, Exception):
            self.close()
        else:
            self.close(1011, "internal error")

    # WebSocket extras

    def ping(self, data: bytes = b"", *, timeout: float | None = None) -> float:
        """Send a ping; return the round-trip time in seconds when its pong arrives.

        An empty ``data`` sends a unique random payload, so pings may overlap.

        Raises:
            TimeoutError: no pong within ``timeout`` (default: ``ping_timeout``,
                else 20 s).
            ConnectionResetError: the connection is closed or closed first.
            ValueError: a ping with the same ``data`` is still waiting for
                its pong.
            OSError: the socket is closed (EBADF).
        """
        if self._closed:
            raise _bad_fd()
        conn = self._conn
        if timeout is None:
            timeout = conn.options.ping_timeout or 20.0
        return conn.ping(bytes(data), timeout)

    def events(self) -> EventIterator:
        """Subscribe to events from now on: ``for event in sock.events():``.

        A blocking iterator of :mod:`ws_stream.events` (pings, pongs, the
        peer's close frame, errors); it ends after
        :class:`~ws_stream.events.Closed`, which always comes. Each subscriber
        has its own queue of ``max_events``; a slow one loses its oldest
        events (counted in :attr:`EventIterator.dropped`) and never slows the
        data. Subscribing after the end yields only ``Closed``.
        """
        return EventIterator(self._conn)


class SocketFile(io.BufferedIOBase):
    """The binary file of :meth:`WsSocket.makefile`.

    Reads take bytes straight from the socket's buffer and honour the
    socket's timeout; a read that times out consumes nothing, so the file
    stays usable. ``read(n)`` returns ``n`` bytes, fewer only at EOF (or
    before an error, which the next read raises). Thread-safety: as the
    socket's; one file object is not meant to be shared between threads.
    """

    def __init__(self, sock: WsSocket, mode: str, buffer_size: int) -> None:
        super().__init__()
        self._sock = sock
        self._conn = sock._conn
        self._mode = mode
        self._reading = "r" in mode
        self._writing = "w" in mode
        self._wbuf = bytearray()
        self._wsize = buffer_size
        self._released = False

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def name(self) -> str:
        return repr(self._sock)

    def readable(self) -> bool:
        self._check_open()
        return self._reading

    def writable(self) -> bool:
        self._check_open()
        return self._writing

    def seekable(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a WebSocket has no file descriptor to select on")

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    def _check_reading(self) -> Budget:
        self._check_open()
        if not self._reading:
            raise io.UnsupportedOperation("File not open for reading")
        return self._sock._budget()

    # Reading

    def read(self, size: int | None = -1) -> bytes:
        """``size`` bytes (fewer at EOF); all bytes until EOF when ``size`` < 0."""
        budget = self._check_reading()
        if size is None:
            size = -1
        if size == 0:
            return b""
        return self._conn.read_until(size, budget, line=False)

    def read1(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (any number when < 0) from what is buffered; one wait at most."""
        budget = self._check_reading()
        if size == 0:
            return b""
        return self._conn.read(size if size > 0 else 2**30, budget)

    def readinto(self, buffer: Any) -> int:
        with memoryview(buffer) as mv, mv.cast("B") as view:
            data = self.read(len(view))
            view[: len(data)] = data
            return len(data)

    def readinto1(self, buffer: Any) -> int:
        budget = self._check_reading()
        with memoryview(buffer) as mv, mv.cast("B") as view:
            if not len(view):
                return 0
            return self._conn.read_into(view, budget)

    def readline(self, size: int | None = -1) -> bytes:
        """Bytes through the next ``b"\\n"`` (at most ``size``); fewer at EOF."""
        budget = self._check_reading()
        if size is None:
            size = -1
        if size == 0:
            return b""
        return self._conn.read_until(size, budget, line=True)

    def peek(self, size: int = 0) -> bytes:
        """Buffered bytes (waiting for one), not consumed."""
        budget = self._check_reading()
        return self._conn.peek(max(size, 1), budget)

    # Writing

    def write(self, data: Any) -> int:
        """Write ``data``; return how many bytes were accepted.

        Buffered (the default): bytes collect up to the buffer size and go
        out when it is full or on :meth:`flush`; the whole of ``data`` is
        accepted, or - on a timeout - none of it (the buffer keeps what it
        held). Unbuffered (``buffering=0``): as :meth:`WsSocket.send`, which
        may accept a prefix.

        Raises:
            TimeoutError: nothing of ``data`` could be accepted in time
                (BlockingIOError in non-blocking mode).
            OSError: the connection cannot send (see :meth:`WsSocket.send`).
        """
        self._check_open()
        if not self._writing:
            raise io.UnsupportedOperation("File not open for writing")
        with memoryview(data) as mv, mv.cast("B") as view:
            n = len(view)
            if self._wsize == 0:
                return self._sock._send(view, partial=True)
            if self._wbuf and len(self._wbuf) + n > self._wsize:
                self.flush()  # raises before anything of data is accepted
            if n >= self._wsize:
                sent = self._sock._send(view, partial=True)
                if sent < n:
                    self._wbuf += view[sent:]  # accepted: it goes out with the next flush
            else:
                self._wbuf += view
        return n

    def flush(self) -> None:
        """Send the buffered bytes; on a timeout the unsent ones stay buffered.

        Raises:
            TimeoutError: not everything could be sent in time (what was sent
                is gone from the buffer, the rest stays).
            OSError: the connection cannot send (see :meth:`WsSocket.send`).
        """
        self._check_open()
        wbuf = self._wbuf
        while wbuf:
            # A copy: no view of the bytearray may outlive this call (a
            # traceback holding one would forbid resizing it).
            n = self._sock._send(bytes(wbuf), partial=True)
            del wbuf[:n]

    def close(self) -> None:
        """Flush and close the file; the socket closes once it and its files are closed."""
        if self.closed:
            return
        try:
            if self._writing and self._wbuf:
                if self._sock._real_closed:
                    logger.warning(
                        "%d unsent bytes dropped: the WsSocket is closed", len(self._wbuf)
                    )
                    self._wbuf.clear()
                else:
                    self.flush()
        finally:
            super().close()
            if not self._released:
                self._released = True
                self._sock._decref_socketios()

    def __del__(self) -> None:
        """Release the socket without blocking or starting a thread.

        A finalizer may run in any thread, at any allocation, or during
        interpreter shutdown: unsent buffered bytes are dropped (with a
        warning) and, if this was the socket's last file after its close(),
        the connection is closed as :meth:`WsSocket._close_nowait` does.
        """
        if self.closed:
            return
        try:
            if self._wbuf:
                logger.warning(
                    "a WsSocket file was garbage-collected with %d unsent bytes", len(self._wbuf)
                )
                self._wbuf.clear()
            super().close()  # nothing to flush now
        except Exception:
            logger.debug("closing a garbage-collected WsSocket file failed", exc_info=True)
        if not self._released:
            self._released = True
            try:
                self._sock._decref_socketios(finalizing=True)
            except Exception:
                logger.debug("releasing a garbage-collected WsSocket file failed", exc_info=True)


class EventIterator:
    """A blocking iterator of one subscriber's events; see :meth:`WsSocket.events`.

    Thread-safety: meant for one consuming thread; :meth:`close` may be
    called from any thread.
    """

    def __init__(self, connection: Connection) -> None:
        self._cond = connection.events_cond
        self._hub = connection.hub
        with self._cond:
            self._sub = self._hub.subscribe(self._cond.notify_all)

    @property
    def dropped(self) -> int:
        """Events this subscriber lost because it fell behind."""
        return self._sub.dropped

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        event = self.get()
        if event is None:
            raise StopIteration
        return event

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event; ``None`` once the iteration is over (after Closed).

        Raises:
            TimeoutError: no event within ``timeout`` seconds.
        """
        budget = Budget(timeout)
        sub = self._sub
        with self._cond:
            while True:
                event = sub.pop()
                if event is not None:
                    return event
                if sub.finished():
                    return None
                try:
                    budget.wait(self._cond)
                except BlockingIOError:
                    raise TimeoutError("no event") from None

    def close(self) -> None:
        """Unsubscribe; the iteration ends."""
        with self._cond:
            self._hub.unsubscribe(self._sub)
            self._sub.ended = True
            self._sub.queue.clear()
            self._cond.notify_all()
