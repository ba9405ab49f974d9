"""The blocking shell's connection: one WebSocket over a socket it owns, as a byte stream.

What a frame, a violation, a timeout or the end of the connection means is
decided by the engine (:class:`ws_stream._engine.Engine`), shared with the
other shells; this module only reads, writes, waits and wakes. Nothing of
websockets' threading implementation is used: the socket, the threads and the
TLS are ours (see :mod:`ws_stream.sync._wire` for the socket and why TLS runs
in memory), on websockets' Sans-I/O protocol through the engine.

Threads. Each connection has a *reader thread* (a daemon) that reads the
socket, feeds the engine and wakes the threads waiting for data; the
application's threads read from the engine's buffer and write frames; one
process-wide timer thread (:mod:`ws_stream.sync._timer`) calls the engine at
its deadline (keepalive pings, a pong overdue, ``close_timeout``); a *helper
thread* finishes writes that were cut short by a timeout. One lock guards the
engine, the TLS state and the send queue, and no thread ever holds it while
it waits on the socket.

Reading. The reader thread appends to the engine's buffer; past ``limit``
bytes (:meth:`Engine.should_pause`) it stops reading the socket until readers
bring the buffer down to half of it. A read that times out consumes nothing.

Writing. Outgoing bytes (our frames, and the engine's pongs and close frames)
go through one ordered queue. Whoever finds nobody writing becomes the
*flusher* and writes the queue to the socket; others only append. The reader
and timer threads never wait on the socket: they write what it takes at
once and leave the rest to the helper thread, so a peer that does not read
never stops us reading (which would deadlock two peers both writing). A
write with a timeout writes until time runs out; then the bytes it already
framed stay queued, in order, and the helper finishes them, as a kernel
finishes a TCP send buffer - over ``wss://`` as over ``ws://``. An idle helper
lingers :data:`HELPER_LINGER` seconds for more work; it is a daemon thread.

The end. The reader thread ends the connection when the socket ends (EOF,
an error, or TCP dropped by a close timeout, a failed write or a finalizer)
and closes the socket once no other thread is inside a call on it: a
descriptor closed under a thread could be reused by another connection.

Finalizers. :meth:`Connection.abandon` is the only close a finalizer may
call: it never blocks and never starts a thread (a finalizer may run at any
allocation, in any thread, or during interpreter shutdown, when no new thread
can start and daemon threads no longer run).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import socket
import threading
import time
from collections import deque
from typing import Any, Final

from websockets.http11 import Request, Response
from websockets.protocol import CLOSED, OPEN, Protocol

from .._engine import Engine
from .._handshake import Opened
from .._options import StreamOptions
from ._timer import TIMERS
from ._wire import DONTWAIT, Budget, Wire, wait_readable, wait_writable

__all__ = ["Budget", "Connection"]

logger = logging.getLogger("ws_stream.sync")

#: Bytes queued for sending past which a write waits: a user-space send buffer.
SEND_BUFFER: Final = 2**16

#: Seconds an idle helper thread waits for more queued bytes before it ends.
HELPER_LINGER: Final = 5.0

_Data = bytes | bytearray | memoryview


class Connection:
    """One open WebSocket connection carrying a byte stream, over a socket it owns.

    Made by :func:`ws_stream.sync.connect` and :func:`ws_stream.sync.serve`
    once the opening handshake is complete; the application uses it through
    :class:`ws_stream.sync.WsSocket` (``WsSocket.websocket`` is this object:
    ``request``, ``response``, ``subprotocol``, ``stats``...).

    Thread-safety: every method may be called from any thread. Reads are
    serialized by the lock and writes by the flusher role, so one reader
    thread and one writer thread work at once; two threads reading (or
    writing) concurrently get whole chunks each but interleave unpredictably.
    """

    #: Bytes the reader thread asks of each ``recv()``. Larger reads mean fewer
    #: wake-ups on bulk transfers; the buffer may overshoot ``limit`` by one read.
    recv_bufsize = 2**18

    def __init__(
        self,
        wire: Wire,
        opened: Opened,
        options: StreamOptions,
    ) -> None:
        self.wire = wire
        self.socket = wire.sock
        self.protocol: Protocol = opened.protocol
        self.request: Request = opened.request
        self.response: Response = opened.response
        self.options = options
        self.max_frame_size = options.max_frame_size
        self.id = opened.protocol.id
        try:
            self.remote_address: Any = self.socket.getpeername()
            self.local_address: Any = self.socket.getsockname()
        except OSError:  # already gone
            self.remote_address = self.local_address = None
        self._tls = bool(wire.layers)
        self._blocking = wire.blocking
        # One lock; conditions for readers, writers (and the idle helper), the
        # paused reader thread, and event subscribers.
        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)
        self._writable = threading.Condition(self._lock)
        self._resume = threading.Condition(self._lock)
        self.events_cond = threading.Condition(self._lock)
        self._read_waiters = 0
        self._write_waiters = 0
        self._reader_paused = False
        self._read_shut = False  # shutdown(SHUT_RD) or close(): nobody reads any more
        # The send queue; b"" stands for "shut down the TCP write side".
        self._out: deque[_Data] = deque()
        self._out_size = 0
        self._out_dropped = 0  # how many times the queue was dropped (a failure, the end)
        self._flushing = False  # some thread holds the flusher role
        self._helper_idle = False  # the helper waits for work, without the role
        self._helper_handoff = False  # the role was handed to the idle helper
        self._write_broken: BaseException | None = None  # a write failed or was cut short
        self._abandoned = False  # closed by a finalizer: drop TCP once the queue is out
        # The socket's end: the last thread using it closes it.
        self._io_users = 0
        self._sock_closing = False
        self._sock_closed = False
        self._dropped = False  # TCP was shut down: the reader thread must see its end
        self._armed = math.inf  # the deadline the timer thread will call us at
        self.lost = threading.Event()  # the connection is over (TCP closed)
        now = time.monotonic()
        self.engine = Engine(
            opened.protocol,
            options,
            now=now,
            ping_interval=options.ping_interval,
            ping_timeout=options.ping_timeout,
            on_wake=self._wake_readers,
        )
        self.hub = self.engine.hub
        self.stats = self.engine.stats
        with self._lock:
            # The peer's first frames, read behind the handshake: decided first.
            self.engine.start(now, received=opened.received)
            claimed = self._after_engine()
        self.reader_thread = threading.Thread(
            target=self._run, name=f"ws_stream reader {self.id}", daemon=True
        )
        self.reader_thread.start()
        if claimed:
            self._flush_nowait()

    def __repr__(self) -> str:
        side = self.protocol.side.name.lower()
        return f"<ws_stream.sync.Connection {side} {self.protocol.state.name.lower()} {self.id}>"

    # Attributes

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the handshake selected, if any."""
        return self.protocol.subprotocol

    @property
    def close_timeout(self) -> float:
        return self.options.close_timeout

    @property
    def reading_paused(self) -> bool:
        """True while the socket is not read because the buffer passed ``limit``."""
        return self._reader_paused

    def buffered(self) -> int:
        """Bytes received and not read yet."""
        with self._lock:
            return len(self.engine.buffer)

    # Engine output (lock held)

    def _after_engine(self) -> bool:
        """After any call into the engine: queue what it wants sent, follow its deadline.

        Returns True when the caller became the flusher and must write the queue.
        """
        engine = self.engine
        writes = engine.data_to_send()
        claimed = False
        if self._sock_closing or self._write_broken is not None:
            writes = []  # nothing more can go out
        elif writes:
            self._enqueue(writes)
        if self._out and not self._flushing and not self._sock_closing:
            self._flushing = claimed = True
        deadline = engine.deadline
        if deadline != self._armed:
            self._armed = deadline
            if deadline != math.inf:
                TIMERS.schedule(self, deadline)
        return claimed

    def _enqueue(self, writes: list[bytes]) -> None:
        out = self._out
        if not self._tls:
            for data in writes:
                out.append(data)
                self._out_size += len(data)
            return
        plain = [data for data in writes if data]
        if plain:
            sealed = self.wire.seal(plain[0] if len(plain) == 1 else b"".join(plain))
            out.append(sealed)
            self._out_size += len(sealed)
        if len(plain) < len(writes):  # b"": close the TLS session, then TCP's write side
            notify = self.wire.close_notify()
            if notify:
                out.append(notify)
                self._out_size += len(notify)
            out.append(b"")

    def _wake_readers(self) -> None:
        """The engine's ``on_wake``: data, EOF or an error for the reader (lock held)."""
        if self._read_waiters:
            self._readable.notify_all()

    def _notify_writers(self) -> None:
        if self._write_waiters:
            self._writable.notify_all()

    # The reader thread

    def _run(self) -> None:
        """Read the socket until the connection ends; never waits on a writer."""
        cause: BaseException | None = None
        sock = self.socket
        size = self.recv_bufsize
        engine = self.engine
        lock = self._lock
        try:
            while True:
                with lock:
                    if engine.should_pause():
                        self._reader_paused = True
                        while engine.should_pause() and not self._dropped:
                            # Read backpressure: stop reading. (The timeout only
                            # rechecks _dropped, which a finalizer may set unlocked.)
                            self._resume.wait(1.0)
                        self._reader_paused = False
                        self.stats.read_resumed_at = time.monotonic()
                    if self.protocol.state is CLOSED:
                        break
                try:
                    data = sock.recv(size)
                except BlockingIOError:
                    wait_readable(sock, None)
                    continue
                with lock:
                    if data:
                        self._feed(data)
                    else:
                        engine.receive_eof()
                    claimed = self._after_engine()
                if claimed:
                    self._flush_nowait()
                if not data:
                    break
        except OSError as exc:  # a reset, invalid TLS (ssl.SSLError)...
            logger.debug("reading the connection failed: %r", exc)
            cause = exc
        except BaseException as exc:  # pragma: no cover - a bug
            logger.exception("the reader thread of %r failed", self)
            cause = exc
        finally:
            self._finish(cause)

    def _feed(self, data: bytes) -> None:
        """Bytes read from the socket, to the engine (lock held)."""
        engine = self.engine
        now = time.monotonic()
        if self._tls:
            plain, answer, eof = self.wire.unseal(data)
            if answer:
                self._out.append(answer)
                self._out_size += len(answer)
            if plain:
                engine.receive_data(plain, now)
            if eof:  # the peer's close_notify: nothing more will come
                engine.receive_eof()
        else:
            engine.receive_data(data, now)
        if self._read_shut:
            engine.buffer.clear()  # nobody will read it: discard, as TCP after SHUT_RD

    def _finish(self, cause: BaseException | None) -> None:
        """The connection is over: close the socket, end the engine, wake everyone."""
        with self._lock:
            self._sock_closing = True
            self._drop_queue()
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RDWR)  # wakes a writer blocked on it
            self._socket_released()
            if cause is None:
                cause = self._write_broken
            self.engine.connection_lost(cause)
            self._readable.notify_all()
            self._writable.notify_all()
            self._resume.notify_all()
            self.events_cond.notify_all()
        self.lost.set()
        logger.debug("connection %s closed", self.id)

    def _drop_queue(self) -> None:
        """Nothing queued will go out (lock held); writers waiting on it learn it."""
        if self._out:
            self._out.clear()
            self._out_size = 0
            self._out_dropped += 1

    def _socket_released(self) -> None:
        """Close the socket once it is closing and no thread uses it (lock held)."""
        if self._sock_closing and not self._io_users and not self._sock_closed:
            self._sock_closed = True
            self.socket.close()

    def _drop_tcp(self) -> None:
        """Shut the socket down: the reader thread sees its end and finishes the connection.

        Under the lock, so that the socket cannot be closed (and its descriptor
        reused) meanwhile; ``shutdown()`` does not block.
        """
        with self._lock:
            self._dropped = True
            self._resume.notify_all()  # a paused reader thread must see the end
            if not self._sock_closed:
                with contextlib.suppress(OSError):
                    self.socket.shutdown(socket.SHUT_RDWR)

    # The timer thread

    def _timer_fired(self, when: float) -> None:
        """The engine's deadline passed (called by the timer thread)."""
        with self._lock:
            if when != self._armed or self.engine.lost:
                return  # stale: the deadline moved
            self._armed = math.inf
            drop = self.engine.timer(time.monotonic())
            claimed = False if drop else self._after_engine()
        if drop:
            if len(self.engine.buffer) > self.options.limit:
                logger.info(
                    "the application left %d received bytes unread while closing",
                    len(self.engine.buffer),
                )
            self._drop_tcp()
        elif claimed:
            self._flush_nowait()

    # Reading (any thread)

    def _wait_for_data(self, budget: Budget) -> bool:
        """Wait until bytes are buffered (True) or the stream is over (False).

        Lock held. Raises the stream's error once the buffer is empty.
        """
        engine = self.engine
        while not len(engine.buffer):
            if self._read_shut:
                return False
            if engine.ended or engine.lost:
                if engine.read_error is not None:
                    raise engine.read_error.with_traceback(None)
                return False
            self._read_waiters += 1
            try:
                budget.wait(self._readable)
            finally:
                self._read_waiters -= 1
        return True

    def _resume_if_below(self) -> None:
        """After a read (lock held): let the reader thread read again when the engine says."""
        if self._reader_paused and self.engine.should_resume():
            self._resume.notify()

    def read(self, n: int, budget: Budget) -> bytes:
        """Up to ``n`` (> 0) bytes; ``b""`` at EOF. Raises the stream's error after its data."""
        with self._lock:
            if not self._wait_for_data(budget):
                return b""
            data, resume = self.engine.take(n)
            if resume and self._reader_paused:
                self._resume.notify()
            return data

    def read_into(self, view: memoryview, budget: Budget) -> int:
        """Copy up to ``len(view)`` bytes into ``view``; 0 at EOF."""
        with self._lock:
            if not self._wait_for_data(budget):
                return 0
            n = self.engine.buffer.take_into(view)
            self._resume_if_below()
            return n

    def peek(self, n: int, budget: Budget) -> bytes:
        """Buffered bytes (at least ``n`` if buffered, up to 64 KiB), waiting for one; kept."""
        with self._lock:
            if not self._wait_for_data(budget):
                return b""
            buffer = self.engine.buffer
            return buffer.peek(max(n, min(len(buffer), 2**16)))

    def read_until(self, size: int, budget: Budget, *, line: bool) -> bytes:
        """``size`` bytes (-1: until EOF), or through the first newline when ``line``.

        Fewer at EOF; after some bytes, the stream's error is left for the next
        read. On a timeout nothing is consumed: the bytes gathered so far go
        back to the front of the buffer before TimeoutError (or
        BlockingIOError) is raised.
        """
        parts: list[bytes] = []
        got = 0
        engine = self.engine
        buffer = engine.buffer
        with self._lock:
            try:
                while size < 0 or got < size:
                    if not buffer:
                        if self._read_shut or engine.ended or engine.lost:
                            error = engine.read_error
                            if error is not None and not parts and not self._read_shut:
                                raise error.with_traceback(None)
                            break
                        self._read_waiters += 1
                        try:
                            budget.wait(self._readable)
                        finally:
                            self._read_waiters -= 1
                        continue
                    want = -1 if size < 0 else size - got
                    if line:
                        chunk, found = buffer.take_line(want)
                    else:
                        chunk = buffer.take(len(buffer) if want < 0 else want)
                        found = False
                    parts.append(chunk)
                    got += len(chunk)
                    self._resume_if_below()
                    if found:
                        break
            except BaseException:
                buffer.unread(parts)  # a timeout (or an interrupt) consumes nothing
                raise
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def shut_reading(self) -> None:
        """The application reads no more: drop the buffer and discard what arrives."""
        with self._lock:
            self._read_shut = True
            self.engine.buffer.clear()
            self._resume.notify_all()
            self._readable.notify_all()

    # Writing (any thread)

    def write(self, data: _Data, budget: Budget, *, partial: bool) -> int:
        """Send ``data`` as binary frames of at most ``max_frame_size``; return the count.

        Bytes are accepted a frame at a time; accepted bytes are sent in order
        whatever happens to the budget. When the budget runs out, ``partial``
        returns the count accepted if any, else TimeoutError / BlockingIOError
        is raised (some bytes may have been accepted before it: they are
        sent); a write whose last frame was accepted returns (the helper
        thread finishes sending it, as a kernel its send buffer).

        Raises:
            OSError: the connection cannot send any more (see :meth:`write_error`).
        """
        total = len(data) if type(data) is not memoryview else data.nbytes
        size = self.max_frame_size
        if total <= size:
            return self._write_frames(data, total, budget, partial)
        with memoryview(data) as view:
            return self._write_frames(view, total, budget, partial)

    def _write_frames(self, data: _Data, total: int, budget: Budget, partial: bool) -> int:
        size = self.max_frame_size
        sent = 0
        while True:
            chunk = data[sent : sent + size] if total > size else data
            try:
                claimed = self._frame(chunk, budget)
            except (TimeoutError, BlockingIOError):
                if partial and sent:
                    return sent
                raise
            sent += len(chunk)
            last = sent >= total
            try:
                if claimed:  # nobody was writing: we write, now
                    self._flush_role(budget, errors=True)
                elif last:
                    self._flush(budget)  # the flusher writes our bytes: wait for them
            except (TimeoutError, BlockingIOError):
                # Accepted: the helper thread finishes sending them.
                if partial or last:
                    return sent
                raise
            if last:
                return sent

    def _frame(self, chunk: _Data, budget: Budget) -> bool:
        """Frame ``chunk`` (one binary frame) once the send queue has room.

        Returns True when we became the flusher (nobody was writing).
        """
        with self._lock:
            while True:
                if self._write_broken is not None or self.engine.send_refusal() is not None:
                    raise self.write_error()
                if self._out_size < SEND_BUFFER:
                    break
                # Full: the flusher is writing it (there always is one while
                # bytes are queued); wait for room.
                self._write_waiters += 1
                try:
                    budget.wait(self._writable)
                finally:
                    self._write_waiters -= 1
            self.engine.send(chunk)
            self._enqueue(self.engine.data_to_send())
            if self._flushing:
                return False
            self._flushing = True
            return True

    def flush(self, budget: Budget) -> None:
        """Wait until every queued byte was written to the socket."""
        self._flush(budget)

    def _flush(self, budget: Budget) -> None:
        """Write the queue to its end, or wait for the flusher to write it, within ``budget``.

        Raises:
            OSError: the queued bytes could not be sent (see :meth:`write_error`).
        """
        with self._lock:
            dropped = self._out_dropped
            while True:
                if self._out_dropped != dropped:
                    raise self.write_error()
                if not self._out:
                    return
                if self._write_broken is not None or self._sock_closing:
                    raise self.write_error()
                if not self._flushing:
                    self._flushing = True
                    break
                self._write_waiters += 1  # another thread is writing: wait for progress
                try:
                    budget.wait(self._writable)
                finally:
                    self._write_waiters -= 1
        self._flush_role(budget, errors=True)

    def _flush_nowait(self) -> None:
        """We hold the flusher role (the reader or timer thread): write what the
        socket takes at once; the helper thread writes the rest."""
        with contextlib.suppress(BlockingIOError):
            self._flush_role(Budget(0), errors=False)

    def _flush_role(
        self, budget: Budget, *, errors: bool, helper: bool = False, handover: bool = True
    ) -> None:
        """Write the queue to its end as the flusher, then give the role back.

        When ``budget`` runs out, the helper thread takes the role over and
        finishes the queued bytes (``handover``; a finalizer cannot start a
        thread: then they are dropped with TCP) and TimeoutError /
        BlockingIOError is raised. When the socket fails, the queue is
        dropped and TCP too; with ``errors`` the stream's error is raised.
        ``helper``: the helper thread, which goes idle when done. After
        :meth:`abandon`, TCP is dropped once the queue is written.
        """
        out = self._out
        lock = self._lock
        item: _Data = b""
        n = -1  # bytes of item written by the last round (-1: none)
        drop = lost = False
        dropped = self._out_dropped
        try:
            while True:
                with lock:
                    if n >= 0:
                        self._io_users -= 1
                        if out and out[0] is item:  # else: dropped meanwhile (the end)
                            if n == len(item):
                                out.popleft()
                            else:
                                out[0] = memoryview(item)[n:]
                            self._out_size -= n
                        n = -1
                        self._socket_released()
                    if not out or self._sock_closing:
                        self._flushing = False
                        if helper:  # idle now, unless the connection is being dropped
                            self._helper_idle = not (self._abandoned or self._sock_closing)
                        drop = self._abandoned
                        self._notify_writers()
                        lost = errors and (self._out_dropped != dropped or bool(out))
                        break
                    self._notify_writers()
                    item = out[0]
                    self._io_users += 1
                try:
                    if item:
                        n = self._send_some(item, budget)
                    else:
                        with contextlib.suppress(OSError):  # already shut down
                            self.socket.shutdown(socket.SHUT_WR)
                        n = 0
                except BaseException:
                    with lock:
                        self._io_users -= 1
                        self._socket_released()
                    raise
        except (TimeoutError, BlockingIOError):
            with lock:
                if handover and out and not self._sock_closing:
                    self._hand_over()  # the helper finishes the queued bytes
                else:
                    self._flushing = False
                self._notify_writers()
            raise
        except OSError as exc:
            self._write_failed(exc, errors=errors)
        except BaseException as exc:
            self._write_interrupted(exc)
            raise
        if drop:
            self._drop_tcp()
        if lost:  # the queue was dropped (the connection ended): our bytes did not all go out
            raise self.write_error()

    def _send_some(self, item: _Data, budget: Budget) -> int:
        """Write a prefix of ``item`` within ``budget``; return its length (> 0)."""
        sock = self.socket
        if budget.end is None and self._blocking:
            try:
                sock.sendall(item)  # untimed: the kernel waits
            except BlockingIOError as exc:  # SO_SNDTIMEO on a socket given to us
                raise ConnectionAbortedError(f"a blocking write was cut short: {exc}") from exc
            return len(item)
        while True:
            try:
                return sock.send(item, DONTWAIT)
            except BlockingIOError:
                pass
            wait_writable(sock, budget.left())

    def _write_failed(self, exc: OSError, *, errors: bool) -> None:
        """The socket failed under the flusher: drop the queue and TCP; raise if ``errors``.

        The stream's error is an abnormal closure (or what the peer did before).
        """
        with self._lock:
            if self._write_broken is None:
                self._write_broken = exc
            self._drop_queue()  # nothing more can go out
            self._flushing = False
            self._notify_writers()
        self._drop_tcp()
        if not errors:
            logger.debug("sending queued bytes failed: %r", exc)
            return
        logger.info("the connection failed while sending: %r", exc)
        self.lost.wait(1.0)  # the engine's verdict (an abnormal closure)
        raise self.write_error() from exc

    def _write_interrupted(self, exc: BaseException) -> None:
        """A write was interrupted (KeyboardInterrupt...) at an unknown byte: end it all.

        The peer may have part of a frame; nothing sent after it could be
        parsed, so the connection is dropped.
        """
        with self._lock:
            if self._write_broken is None:
                self._write_broken = ConnectionAbortedError(f"a write was interrupted: {exc!r}")
            self._drop_queue()
            self._flushing = False
            self._notify_writers()
        self._drop_tcp()

    def _hand_over(self) -> None:
        """Give our flusher role to the helper thread (lock held; bytes are queued).

        The idle helper is woken, or a new one started (a daemon thread).
        Never called from a finalizer.
        """
        if self._helper_idle:
            self._helper_idle = False
            self._helper_handoff = True
            self._writable.notify_all()
            return
        thread = threading.Thread(
            target=self._helper_run, name=f"ws_stream writer {self.id}", daemon=True
        )
        try:
            thread.start()  # it inherits the flusher role
        except RuntimeError:  # interpreter shutdown: nobody can finish them
            self._flushing = False
            self._drop_queue()
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RDWR)

    def _helper_run(self) -> None:
        """The helper thread: write the queue, blocking; then linger for more work."""
        while True:
            self._flush_role(Budget(None), errors=False, helper=True)
            if not self._helper_wait():
                return

    def _helper_wait(self) -> bool:
        """Idle: True once handed the flusher role again, False to end the thread.

        The helper ends after :data:`HELPER_LINGER` idle seconds, or when the
        connection can send no more.
        """
        end = time.monotonic() + HELPER_LINGER
        with self._lock:
            while not self._helper_handoff:
                left = end - time.monotonic()
                if (
                    left <= 0
                    or not self._helper_idle
                    or self._abandoned
                    or self._write_broken is not None
                    or self._sock_closing
                ):
                    self._helper_idle = False
                    return False
                self._write_waiters += 1
                try:
                    self._writable.wait(left)
                finally:
                    self._write_waiters -= 1
            self._helper_handoff = False
            return True

    def write_error(self) -> OSError:
        """The error a write raises once nothing more can be sent."""
        engine = self.engine
        error = engine.error
        if isinstance(error, OSError):  # a WsStreamError
            return copy.copy(error)
        broken = self._write_broken
        if broken is not None and engine.rcvd is None:
            return BrokenPipeError(f"the connection failed while sending: {broken}")
        refusal = engine.send_refusal()
        return BrokenPipeError(refusal or "the WebSocket connection is closed")

    # Pings

    def ping(self, payload: bytes, timeout: float) -> float:
        """Send a ping; return the round trip in seconds when its pong arrives.

        Raises:
            TimeoutError: no pong within ``timeout``.
            ConnectionResetError: the connection is closed, or closed first.
            ValueError: a ping with this payload is still waiting for its pong
                (the engine's error, as on every shell).
        """
        budget = Budget(timeout)
        done = threading.Event()
        result: list[float | None] = []

        def waiter(latency: float | None) -> None:
            result.append(latency)
            done.set()

        with self._lock:
            try:
                sent = self.engine.ping(payload, time.monotonic(), waiter)
            except ConnectionResetError:
                raise ConnectionResetError(
                    "cannot ping: the WebSocket connection is closing or closed"
                ) from None
            claimed = self._after_engine()
        if claimed:
            with contextlib.suppress(TimeoutError, BlockingIOError):  # queued: the helper sends it
                self._flush_role(budget, errors=True)
        left = budget.remaining()
        if not done.wait(max(left, 0.0) if left is not None else None):
            with self._lock:
                self.engine.forget_ping(sent)
            raise TimeoutError(f"no pong within {timeout} s")
        latency = result[0]
        if latency is None:
            raise ConnectionResetError("the connection closed before the pong arrived")
        return latency

    # Closing

    def send_close(self, code: int, reason: str, budget: Budget) -> None:
        """Send a close frame (if still open) after the queued bytes, within ``budget``.

        The peer then has ``close_timeout`` to answer before TCP is dropped;
        reading goes on until its close frame. A close frame not written
        within the budget stays queued (the helper thread sends it).

        Raises:
            OSError: the connection failed while the close frame was written.
        """
        with self._lock:
            if self.engine.send_refusal() is not None or self._write_broken is not None:
                return
            self.engine.send_close(code, reason, time.monotonic())
            claimed = self._after_engine()
        with contextlib.suppress(TimeoutError, BlockingIOError):
            if claimed:
                self._flush_role(budget, errors=True)
            else:
                self._flush(budget)

    def close(self, code: int, reason: str) -> None:
        """Close: discard unread bytes, send the queued bytes and a close frame,
        wait for the peer's close; all within ``close_timeout``, then drop TCP.

        Never raises for a connection that is already gone.
        """
        end = time.monotonic() + self.options.close_timeout
        self.begin_close(code, reason, Budget(self.options.close_timeout))
        self.wait_closed(end)

    def begin_close(self, code: int, reason: str, budget: Budget) -> None:
        """The first half of :meth:`close`: the close frame goes out (within ``budget``;
        ``Budget(0)`` does not wait), the peer's answer is not awaited."""
        with self._lock:
            self._read_shut = True
            self._readable.notify_all()
            if self.engine.lost:
                return
            broken = self._write_broken is not None
            # After a write cut short in the middle of a frame, no close frame can follow.
            self.engine.close(code, reason, time.monotonic(), discard=True, send=not broken)
            self._resume.notify_all()  # a paused reader thread reads on to the peer's close
            claimed = False if broken else self._after_engine()
        if broken:
            self._drop_tcp()
            return
        try:
            if claimed:
                self._flush_role(budget, errors=True)
            else:
                self._flush(budget)
        except OSError as exc:  # timed out (the helper goes on), or the connection is over
            logger.debug("close(): could not write the close frame yet: %r", exc)

    def wait_closed(self, end: float) -> None:
        """Wait for the end of the connection until ``end`` (``time.monotonic()``);
        then drop TCP (the closing handshake timed out)."""
        if self.lost.wait(max(end - time.monotonic(), 0.0)):
            return
        with self._lock:
            if not self.engine.lost:
                self.engine.timed_out()
        logger.info(
            "the peer did not complete the closing handshake within %.1f s; dropping TCP",
            self.options.close_timeout,
        )
        self._drop_tcp()
        self.lost.wait(1.0)

    def abandon(self, code: int, reason: str) -> None:
        """Close without blocking or starting a thread: the close of a finalizer.

        Unread bytes are discarded and a close frame (``code``, ``reason``)
        is queued behind the bytes already accepted. If a thread is writing
        (a helper finishing what a timed-out write accepted), it writes them
        and the close frame, then drops TCP; otherwise the queue is written
        now as far as the socket takes it without blocking, and TCP is
        dropped. The peer's answer is not awaited (nobody could bound the
        wait). If the lock is busy or the socket cannot take everything at
        once, TCP is dropped all the same: the peer then sees the connection
        lost (1006), never a clean end with bytes missing. A close already
        under way (``shutdown``, the peer's close frame) is left to its own
        ``close_timeout``. Never raises.
        """
        if self.lost.is_set():
            return
        if not self._lock.acquire(blocking=False):
            self._dropped = True
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RDWR)
            return
        claimed = queued = False
        try:
            self._read_shut = True
            self.engine.buffer.clear()
            self._resume.notify_all()
            self._readable.notify_all()
            if self.protocol.state is not OPEN or self.engine.lost:
                return  # closing already, bounded by its deadline; or over
            if self._write_broken is None:
                now = time.monotonic()
                self.engine.close(code, reason, now, discard=True)
                self._enqueue(self.engine.data_to_send())
                self._abandoned = queued = True
                claimed = not self._flushing
                self._flushing = True
                deadline = self.engine.deadline
                if deadline != self._armed and TIMERS.try_schedule(self, deadline):
                    self._armed = deadline
        finally:
            self._lock.release()
        if not queued:
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RDWR)
        elif claimed:
            with contextlib.suppress(Exception):
                self._flush_role(Budget(0), errors=False, handover=False)
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RDWR)
        # Else the thread writing sends the close frame after the queued bytes,
        # then drops TCP (see _flush_role).
