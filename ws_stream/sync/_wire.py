"""The blocking shell's wire: a TCP socket it owns and the TLS layers over it.

The socket's mode is set once and never changed: a timeout would change the
file descriptor's mode under a thread blocked on it. Where the platform has
``MSG_DONTWAIT`` (Linux, BSD, macOS) the socket stays blocking, so that the
reader thread and an untimed write make one system call each, and a write
(or a read while opening) that must be timed is a ``MSG_DONTWAIT`` call plus
a ``poll()`` within its budget. Elsewhere the socket is non-blocking and
every wait is a ``poll()``.

TLS runs in memory (:class:`ssl.SSLObject` over two :class:`ssl.MemoryBIO`),
as asyncio does, never as an :class:`ssl.SSLSocket`. Why: an ``SSLSocket``
cannot be written and read by two threads at once (OpenSSL objects are not
thread-safe, and ``SSLSocket.shutdown()`` drops its TLS state under a thread
reading it), a TLS write on it cannot be timed or cut short (a record, once
started, must be finished), and a reader blocked inside a half-received
record cannot honour a deadline. In memory, encrypting and decrypting are
CPU work done under the connection's lock, and the socket carries opaque
bytes that can be written partially, with a timeout, like plain TCP. Layers
stack: a ``wss://`` connection through an ``https://`` proxy is TLS in TLS.

No thread-safety here: the thread that opens the connection uses a
:class:`Wire` alone; then :class:`~ws_stream.sync.connection.Connection`
calls :meth:`Wire.seal` / :meth:`Wire.unseal` under its lock.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import ssl
import threading
import time
from typing import Final

__all__ = ["DONTWAIT", "Budget", "Wire", "wait_readable", "wait_writable"]

#: Flags of a send() or recv() that must not block (0: the socket is non-blocking).
DONTWAIT: Final = getattr(socket, "MSG_DONTWAIT", 0)

#: Plaintext asked of each TLS read: the largest record (RFC 8446: 2**14 bytes).
_TLS_READ: Final = 2**14
#: Bytes asked of each socket read while opening (the handshake, a proxy's answer).
_OPEN_READ: Final = 2**16


class Budget:
    """The time one blocking call may take: ``None`` (forever), 0 (non-blocking) or seconds."""

    __slots__ = ("end", "nonblocking", "what")

    def __init__(self, timeout: float | None, what: str = "timed out") -> None:
        self.nonblocking = timeout == 0
        self.end = None if timeout is None else time.monotonic() + timeout
        self.what = what

    def remaining(self) -> float | None:
        """Seconds left (may be <= 0), or ``None`` without a limit."""
        return None if self.end is None else self.end - time.monotonic()

    def expired(self) -> OSError:
        """What a socket raises when this budget runs out."""
        if self.nonblocking:
            return BlockingIOError(errno.EAGAIN, "the operation would block (non-blocking mode)")
        return TimeoutError(self.what)

    def left(self) -> float | None:
        """Seconds left (> 0), ``None`` without a limit; raise :meth:`expired` when spent."""
        left = self.remaining()
        if left is not None and (left <= 0 or self.nonblocking):
            raise self.expired()
        return left

    def wait(self, cond: threading.Condition) -> None:
        """Wait on ``cond`` (held) once, within the budget; raise when it is spent."""
        left = self.left()
        if left is None:
            cond.wait()
        else:
            cond.wait(left)


def _poll(sock: socket.socket, event: int, timeout: float | None) -> None:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, event)
        poller.poll(None if timeout is None else max(timeout * 1000, 0))
    else:  # pragma: no cover - Windows
        if event == select.POLLIN:
            select.select([sock], [], [sock], timeout)
        else:
            select.select([], [sock], [sock], timeout)


def wait_readable(sock: socket.socket, timeout: float | None) -> None:
    """Wait until ``sock`` is readable (data, EOF, an error) or ``timeout`` seconds pass."""
    _poll(sock, select.POLLIN if hasattr(select, "POLLIN") else 1, timeout)


def wait_writable(sock: socket.socket, timeout: float | None) -> None:
    """Wait until ``sock`` is writable (or failed) or ``timeout`` seconds pass."""
    _poll(sock, select.POLLOUT if hasattr(select, "POLLOUT") else 4, timeout)


class _TlsLayer:
    """One TLS session in memory: ciphertext in and out, plaintext in and out."""

    __slots__ = ("eof", "incoming", "obj", "outgoing")

    def __init__(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None
    ) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(
            self.incoming,
            self.outgoing,
            server_side=server_side,
            server_hostname=None if server_side else server_hostname,
        )
        self.eof = False  # the peer's close_notify arrived, or the layer below ended

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Ciphertext of ``data`` (whole records)."""
        with memoryview(data) as view:
            while view:
                n = self.obj.write(view)  # a memory BIO takes everything
                view = view[n:]
        return self.outgoing.read()

    def decrypt(self, data: bytes | bytearray) -> list[bytes]:
        """The plaintext of ``data`` and of whatever was buffered before it.

        Raises:
            ssl.SSLError: the peer's bytes are not valid TLS, or it sent an alert.
        """
        if data:
            self.incoming.write(data)
        chunks: list[bytes] = []
        read = self.obj.read
        while not self.eof:
            try:
                chunk = read(_TLS_READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                chunk = b""
            if not chunk:  # the peer's close_notify
                self.eof = True
                break
            chunks.append(chunk)
        return chunks


class Wire:
    """A connected TCP socket and the TLS layers over it.

    ``sock`` must be a plain connected socket: TLS is added by
    :meth:`start_tls` (an :class:`ssl.SSLSocket` is refused with TypeError).
    Bytes the top layer read but nobody consumed yet (a proxy's answer
    followed by the server's first bytes) wait in :meth:`push_back`.
    """

    def __init__(self, sock: socket.socket) -> None:
        if isinstance(sock, ssl.SSLSocket):
            raise TypeError(
                "pass a plain connected socket: ws_stream adds TLS itself for wss:// "
                "(with the ssl= context)"
            )
        sock.setblocking(bool(DONTWAIT))
        self.blocking = bool(DONTWAIT)  # whether sock.recv() / sendall() wait in the kernel
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.sock = sock
        self.layers: list[_TlsLayer] = []
        self._pushback = b""

    @property
    def tls(self) -> ssl.SSLObject | None:
        """The innermost TLS session (the WebSocket's), or None on plain TCP."""
        return self.layers[-1].obj if self.layers else None

    def close(self) -> None:
        """Drop the connection (no TLS close_notify)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    # Through the layers (the connection calls these under its lock)

    def seal(self, data: bytes | bytearray | memoryview, level: int | None = None) -> bytes:
        """What to write to the socket for the plaintext ``data`` of ``level`` (default: top)."""
        if level is None:
            level = len(self.layers)
        for layer in reversed(self.layers[:level]):
            data = layer.encrypt(data)
        return bytes(data)

    def unseal(self, data: bytes, level: int | None = None) -> tuple[bytes, bytes, bool]:
        """Bytes read from the socket -> (plaintext at ``level``, bytes to write, EOF).

        The bytes to write are what TLS answers by itself (a key update, an
        alert); EOF means a layer got the peer's close_notify: nothing more
        will come.

        Raises:
            ssl.SSLError: invalid TLS from the peer, or its alert.
        """
        if level is None:
            level = len(self.layers)
        answer = b""
        for k, layer in enumerate(self.layers[:level]):
            chunks = layer.decrypt(data)
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if layer.outgoing.pending:
                answer += self.seal(layer.outgoing.read(), k)
            if layer.eof:
                return data, answer, True
        return data, answer, False

    def close_notify(self) -> bytes:
        """The top TLS layer's close_notify, sealed for the socket (b"" on plain TCP)."""
        if not self.layers:
            return b""
        top = self.layers[-1]
        with contextlib.suppress(ssl.SSLError, ValueError):
            top.obj.unwrap()  # writes close_notify, then wants the peer's
        out = top.outgoing.read()
        return self.seal(out, len(self.layers) - 1) if out else b""

    def push_back(self, data: bytes) -> None:
        """Bytes of the top layer read too early: the next :meth:`recv_plain` returns them."""
        self._pushback = data + self._pushback

    # Blocking helpers for opening the connection (one thread, a budget)

    def send_all(self, data: bytes, budget: Budget) -> None:
        """Write ``data`` to the socket within ``budget``.

        Raises:
            TimeoutError: the budget ran out.
            OSError: the connection failed.
        """
        sock = self.sock
        with memoryview(data) as view:
            while view:
                try:
                    view = view[sock.send(view, DONTWAIT) :]
                except BlockingIOError:
                    wait_writable(sock, budget.left())

    def recv(self, budget: Budget) -> bytes:
        """Bytes from the socket (``b""`` at EOF), waiting within ``budget``."""
        sock = self.sock
        while True:
            try:
                return sock.recv(_OPEN_READ, DONTWAIT)
            except BlockingIOError:
                wait_readable(sock, budget.left())

    def send_plain(self, data: bytes, budget: Budget, level: int | None = None) -> None:
        """Encrypt ``data`` for ``level`` (default: top) and write it within ``budget``."""
        self.send_all(self.seal(data, level), budget)

    def recv_plain(self, budget: Budget, level: int | None = None) -> bytes:
        """Plaintext of ``level`` (default: top); ``b""`` at EOF. Waits within ``budget``.

        Raises:
            TimeoutError: nothing within the budget.
            ssl.SSLError: invalid TLS, or the peer's alert.
            OSError: the connection failed.
        """
        if level is None and self._pushback:
            data, self._pushback = self._pushback, b""
            return data
        while True:
            raw = self.recv(budget)
            if not raw:
                return b""
            data, answer, eof = self.unseal(raw, level)
            if answer:
                self.send_all(answer, budget)
            if data or eof:
                return data

    def start_tls(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None,
        budget: Budget,
    ) -> None:
        """Add a TLS layer and complete its handshake within ``budget``.

        Raises:
            TimeoutError: the handshake took longer than the budget.
            ssl.SSLCertVerificationError: the peer's certificate was rejected.
            ssl.SSLError: the handshake failed (the peer's alert, not TLS...);
                our own alert, if any, was sent first.
            OSError: the connection failed.
        """
        below = len(self.layers)
        layer = _TlsLayer(context, server_side=server_side, server_hostname=server_hostname)
        if self._pushback:
            layer.incoming.write(self._pushback)
            self._pushback = b""
        self.layers.append(layer)
        try:
            while True:
                try:
                    layer.obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pass
                out = layer.outgoing.read()
                if out:
                    self.send_plain(out, budget, below)
                data = self.recv_plain(budget, below)
                if data:
                    layer.incoming.write(data)
                else:
                    layer.incoming.write_eof()
            out = layer.outgoing.read()
            if out:
                self.send_plain(out, budget, below)
            # The peer's first records may have come with its last handshake
            # message (a client's request behind its Finished).
            early = layer.decrypt(b"")
            if early:
                self._pushback = b"".join(early)
        except ssl.SSLError:
            # Our alert (a certificate we reject, one the client lacks) tells
            # the peer why: send it if the socket takes it at once.
            out = layer.outgoing.read()
            if out:
                with contextlib.suppress(OSError, ssl.SSLError):
                    self.sock.send(self.seal(out, below), DONTWAIT)
            raise
