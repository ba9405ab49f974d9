"""The blocking shell's engine: websockets' threading connection, carrying a byte stream.

It moves bytes and wakes waiting threads; what a frame, a failure or the end of
the connection means is decided by :class:`ws_stream._policy.StreamPolicy`.

How it sits on :mod:`websockets.sync`: :class:`StreamConnection` is a subclass
of websockets' threading ``Connection`` (``connect()`` and ``serve()`` create it
through their ``create_connection`` argument, so the hooks are in place before
the first byte arrives). websockets keeps its background thread, which reads
the socket, runs the Sans-I/O protocol (framing, masking, pings, the closing
handshake) and writes its automatic answers. We hook the protocol's
``recv_frame()`` to decide each frame as it is parsed and take data frames
straight into a byte buffer (no message assembly), and ``events_received()``
to keep them from websockets' assembler; ``send_data()`` is replaced so that
no thread ever blocks on the socket while holding websockets' protocol lock
(see *Writing* below).

Reading. The background thread appends payloads to a :class:`~ws_stream._buffer.ChunkBuffer`
guarded by a lock; readers sleep on a queue token with their timeout. Past
``limit`` buffered bytes the background thread is parked on websockets'
``recv_flow_control`` lock before its next ``recv()`` - it stops reading the
socket - until readers bring the buffer down to ``limit // 2``. A read that
times out consumes nothing.

Writing. Outgoing bytes (our frames, and websockets' pongs and close frames)
go through one ordered queue. Whoever finds nobody writing becomes the
*flusher* and writes the queue to the socket; others only append, so the
background thread never waits behind an application write stuck on a full
socket (which would stop it reading, and deadlock two peers both writing).
A write with a timeout uses non-blocking sends: when time runs out, bytes
already framed stay queued (in order, never half-lost) and a helper thread
finishes them, as a kernel finishes a TCP send buffer. On TLS a write cannot
be timed (a record, once started, must be finished, and ``MSG_DONTWAIT`` does
not apply), so a write with a timeout hands the queue to the helper thread at
once and waits for it within its time: the same promise as on plain TCP. An
idle helper lingers :data:`HELPER_LINGER` seconds for more work; it is a daemon
thread, like websockets' own.

Finalizers. :meth:`StreamConnection.abandon` is the only close a finalizer may
call: it never blocks and never starts a thread (a finalizer may run at any
allocation, in any thread, or during interpreter shutdown, when no new thread
can start and daemon threads no longer run).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections import deque
from typing import Any, Final

from websockets.frames import Frame, Opcode
from websockets.protocol import CLOSED, CLOSING, OPEN, Protocol
from websockets.protocol import Event as WsEvent
from websockets.sync.connection import Connection
from websockets.sync.utils import Deadline
from websockets.typing import BytesLike

from .._buffer import ChunkBuffer
from .._options import StreamOptions
from .._policy import EventHub, Step, StreamPolicy
from ..events import Event
from ..exceptions import WsStreamError
from ..stats import StreamStats

__all__ = ["Budget", "StreamConnection"]

logger = logging.getLogger("ws_stream.sync")

_DATA_OPCODES: Final = frozenset({Opcode.BINARY, Opcode.TEXT, Opcode.CONT})

#: Bytes queued for sending past which a write waits: a user-space send buffer.
SEND_BUFFER: Final = 2**16

#: Seconds an idle helper thread waits for more queued bytes before it ends.
HELPER_LINGER: Final = 5.0

#: A finalizer writes at most this much on a TLS socket (one small record, which
#: a socket that polls writable takes without blocking); beyond, it drops TCP.
_NOWAIT_TLS_BYTES: Final = 4096

_DONTWAIT: Final = getattr(socket, "MSG_DONTWAIT", 0)


class Budget:
    """The time one blocking call may take: ``None`` (forever), 0 (non-blocking) or seconds."""

    __slots__ = ("end", "nonblocking")

    def __init__(self, timeout: float | None) -> None:
        self.nonblocking = timeout == 0
        self.end = None if timeout is None else time.monotonic() + timeout

    @classmethod
    def until(cls, deadline: Deadline | None) -> Budget:
        """The budget of a websockets :class:`Deadline` (``None``: no limit)."""
        budget = cls(None)
        if deadline is not None:
            budget.end = deadline.deadline
        return budget

    def remaining(self) -> float | None:
        """Seconds left (may be <= 0), or ``None`` without a limit."""
        return None if self.end is None else self.end - time.monotonic()

    def expired(self) -> OSError:
        """What a socket raises when this budget runs out."""
        if self.nonblocking:
            return BlockingIOError(errno.EAGAIN, "the operation would block (non-blocking mode)")
        return TimeoutError("timed out")

    def wait(self, cond: threading.Condition) -> None:
        """Wait on ``cond`` (held) once, within the budget; raise when it is spent."""
        left = self.remaining()
        if left is None:
            cond.wait()
            return
        if left <= 0:
            raise self.expired()
        cond.wait(left)


class StreamConnection(Connection):
    """A websockets threading connection whose data frames form a byte stream.

    Created by :func:`ws_stream.sync.connect` and :func:`ws_stream.sync.serve`
    (see :class:`ClientStreamConnection` and :class:`ServerStreamConnection`);
    the application uses it through :class:`ws_stream.sync.WsSocket`. Do not
    call websockets' ``recv()`` / ``send()`` on it: data frames never reach
    websockets' message assembler.

    Thread-safety: every method here may be called from any thread. Reads are
    serialized by the receive lock and writes by the flusher role, so one
    reader thread and one writer thread work at once; two threads reading (or
    writing) concurrently get whole chunks each but interleave unpredictably.
    """

    #: Bytes the background thread asks of each ``recv()`` (websockets: 64 KiB).
    #: Larger reads mean fewer wake-ups on bulk transfers; the buffer may
    #: overshoot ``limit`` by one read.
    recv_bufsize = 2**18

    def __init__(
        self,
        sock: socket.socket,
        protocol: Protocol,
        *args: Any,
        stream_options: StreamOptions,
        **kwargs: Any,
    ) -> None:
        options = stream_options
        self.stream_options = options
        self.policy = StreamPolicy(on_text=options.on_text)
        self._limit = options.limit
        self._resume_at = options.limit // 2
        self.max_frame_size = options.max_frame_size
        # Events: a hub of bounded per-subscriber queues, guarded by one condition.
        self.hub = EventHub[Event](options.max_events)
        self.stats = StreamStats()  # each field has one writer thread
        self.events_cond = threading.Condition()
        # Reading: everything below is guarded by recv_lock. Waiting readers
        # sleep on a SimpleQueue (its get() blocks in C: a prompt wake-up).
        self.recv_lock = threading.Lock()
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._sleepers = 0  # readers that may be asleep (an over-count is harmless)
        self.buffer = ChunkBuffer()
        self.ended = False  # no data will be added: EOF, or read_error after the data
        self.read_error: WsStreamError | None = None
        self.read_shut = False  # shutdown(SHUT_RD) or close(): the application reads no more
        self._paused = False  # we hold recv_flow_control: the background thread stops reading
        self._flow_off = False  # never pause again (the stream is over or discarded)
        # Writing: everything below is guarded by _out_lock.
        self._out_lock = threading.Lock()
        self.out_cond = threading.Condition(self._out_lock)  # for waiting only
        self._out_waiters = 0
        self.out: deque[bytes] = deque()  # b"" stands for "shut down the TCP write side"
        self.out_size = 0
        self.flushing = False  # some thread is the flusher
        self.write_broken: BaseException | None = None  # the socket failed while writing
        self._helper_idle = False  # a helper thread waits for work, without the role
        self._helper_handoff = False  # the role was handed to the idle helper
        self._abandoned = False  # closed by a finalizer: drop TCP once the queue is out
        # Closing.
        self.lost = threading.Event()  # the background thread has finished
        self._timer_lock = threading.Lock()
        self._close_timer: threading.Timer | None = None
        self._parser_exc_seen = False
        self._tls = isinstance(sock, ssl.SSLSocket)
        # Whether a write can be timed on this socket: plain TCP with MSG_DONTWAIT.
        self._can_dontwait = bool(_DONTWAIT) and not self._tls
        # Take the data frames from websockets as they are parsed.
        self._pending: list[bytes] = []  # payloads of the read being parsed
        self._ws_recv_frame = protocol.recv_frame
        protocol.recv_frame = self._recv_frame  # type: ignore[method-assign]
        self._ws_events_received = protocol.events_received
        protocol.events_received = self._events_received  # type: ignore[method-assign]
        super().__init__(sock, protocol, *args, **kwargs)  # starts the background thread

    # Incoming: websockets' Sans-I/O frames and events, taken in its
    # background thread while it holds protocol_mutex.

    def _recv_frame(self, frame: Frame) -> None:
        """Each frame, as websockets parses it: decided at once, in wire order.

        Deciding here rather than after the whole read is parsed matters: a
        text frame fails the connection with 1003 before websockets reacts to
        the frames behind it in the same read (fail() discards them). Payloads
        are collected and join the buffer together in :meth:`_events_received`,
        right after this read is parsed.
        """
        self._ws_recv_frame(frame)  # websockets validates it first (1002 otherwise)
        events = self.protocol.events
        if frame.opcode in _DATA_OPCODES and events and events[-1] is frame:
            del events[-1]  # ours: a read of tiny frames must not hold them all
        stats = self.stats
        stats.frames_received += 1
        opcode = frame.opcode
        if opcode is Opcode.PONG:
            stats.pongs_received += 1
        step = self.policy.receive_frame(opcode, bytes(frame.data), frame.fin)
        if step.event is None and step.failure is None and not step.eof:
            if step.data is not None:
                self._pending.append(step.data)
                if len(self._pending) >= 1024:  # tiny frames: bound what one read holds
                    self._deliver(self._pending)
                    self._pending = []
            return
        if self._pending:  # what came first, first
            self._deliver(self._pending)
            self._pending = []
        self._apply(step)

    def _events_received(self) -> list[WsEvent]:
        """After a read: data frames are ours (already decided); the rest is websockets'."""
        events = self._ws_events_received()
        if events:
            self.stats.last_frame_at = time.monotonic()
            events = [
                event
                for event in events
                if not (isinstance(event, Frame) and event.opcode in _DATA_OPCODES)
            ]
        if self._pending:
            self._deliver(self._pending)
            self._pending = []
        ws = self.protocol
        if ws.parser_exc is not None:
            self._check_parser()
        if ws.state is CLOSING:
            self._arm_close_timer()
        return events

    def _check_parser(self) -> None:
        ws = self.protocol
        if ws.parser_exc is not None and not self._parser_exc_seen:
            self._parser_exc_seen = True
            code = ws.close_sent.code if ws.close_sent is not None else None
            self._apply(self.policy.parser_failed(ws.parser_exc, code))
            if self.policy.error is not None:
                # websockets failed the connection already; the reader ends with it.
                logger.info("the peer violated the protocol: %s", self.policy.error)
                self._end_reader(self.policy.error)

    def _apply(self, step: Step) -> None:
        data, event, failure, eof = step
        if data is not None:
            self._deliver([data])
        if event is not None:
            self._publish(event)
        if failure is not None:
            if self.protocol.state is OPEN:
                # The background thread sends the close frame right after this hook.
                self.protocol.fail(failure.code, failure.reason)
            logger.info("failing the connection with %d: %s", failure.code, failure.error)
            self._end_reader(failure.error)
        if eof:
            self._end_reader(None)

    def _deliver(self, payloads: list[bytes]) -> None:
        with self.recv_lock:
            if self.read_shut:
                return  # nobody will read it: discard, as TCP does after SHUT_RD
            append = self.buffer.append
            before = size = len(self.buffer)
            for payload in payloads:
                size = append(payload)
            self.stats.bytes_received += size - before
            # Past the limit, the background thread parks on this lock before
            # its next recv().
            if (
                size > self._limit
                and not self._paused
                and not self._flow_off
                and self.recv_flow_control.acquire(blocking=False)
            ):
                self._paused = True
                logger.debug("%d bytes buffered: reading paused", size)
            if self._sleepers:
                self._wake_readers()

    def _publish(self, event: Event) -> None:
        with self.events_cond:
            self.hub.publish(event)

    def _end_reader(self, error: WsStreamError | None) -> None:
        with self.recv_lock:
            if not self.ended:
                self.ended = True
                self.read_error = error
            self._stop_flow_control()
            self._wake_readers()

    def _stop_flow_control(self) -> None:
        """Let the background thread read to the end (recv_lock held).

        Safe once nothing more joins the buffer: the stream ended, or the
        application stopped reading and incoming data is discarded.
        """
        self._flow_off = True
        if self._paused:
            self._paused = False
            self.recv_flow_control.release()

    def _wake_readers(self) -> None:
        """Wake every sleeping reader (recv_lock held)."""
        for _ in range(self._sleepers):
            self._wake.put(None)
        self._sleepers = 0

    def _sleep(self, budget: Budget) -> None:
        """Release recv_lock until woken or the budget is spent; raise once it is.

        A reader that timed out stays counted, so a later wake-up may be
        spurious; callers re-check. No wake-up is ever lost: the token waits
        in the queue.
        """
        left = budget.remaining()
        if left is not None and left <= 0:
            raise budget.expired()
        self._sleepers += 1
        self.recv_lock.release()
        try:
            self._wake.get(timeout=left)
        except queue.Empty:
            pass
        finally:
            self.recv_lock.acquire()

    def _maybe_resume(self) -> None:
        """After a read (recv_lock held): resume reading below half the limit."""
        if self._paused and len(self.buffer) <= self._resume_at:
            self._paused = False
            self.recv_flow_control.release()
            logger.debug("%d bytes buffered: reading resumed", len(self.buffer))

    # The end of the connection

    def recv_events(self) -> None:
        try:
            super().recv_events()
        finally:
            # websockets closed the socket and processed every event: the end.
            self._connection_lost()

    def _connection_lost(self) -> None:
        with self._timer_lock:
            if self._close_timer is not None:
                self._close_timer.cancel()
                self._close_timer = None
        ws = self.protocol
        ending = self.policy.connection_lost(ws.close_rcvd, ws.close_sent, self.connection_exc)
        if ending.error is not None:
            logger.debug("%s", ending.error)
        self._end_reader(ending.error)
        for event in ending.events:
            self._publish(event)
        with self.out_cond:
            self.lost.set()
            self.out_cond.notify_all()
        logger.debug("connection %s closed", self.id)

    def close_socket(self) -> None:
        """Shut down and close the socket; the background thread ends promptly.

        ``shutdown()`` first: unlike ``close()``, it wakes a thread blocked in
        a ``send()`` on this socket.
        """
        with self.recv_lock:
            self._stop_flow_control()  # the background thread may be parked
        with contextlib.suppress(OSError):  # not connected any more
            self.socket.shutdown(socket.SHUT_RDWR)
        super().close_socket()

    def abort(self, cause: BaseException) -> None:
        """Drop the TCP connection now, recording ``cause`` as the reason."""
        mutex = self.protocol_mutex
        if not mutex.acquire(blocking=False):
            # A thread blocked in a send() holds it: wake that thread first.
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RDWR)
            if not mutex.acquire(timeout=1.0):  # pragma: no cover - defensive
                self.close_socket()
                return
        try:
            self.set_connection_exc(cause)
        finally:
            mutex.release()
        self.close_socket()

    def _arm_close_timer(self) -> None:
        """Bound the closing handshake: drop TCP after close_timeout."""
        with self._timer_lock:
            if self._close_timer is None and not self.lost.is_set():
                timer = threading.Timer(self.stream_options.close_timeout, self._close_timed_out)
                timer.daemon = True
                timer.name = f"ws_stream close timer {self.id}"
                self._close_timer = timer
                timer.start()

    def _close_timed_out(self) -> None:
        if self.lost.is_set():
            return
        logger.info(
            "the peer did not complete the closing handshake within %.1f s; dropping TCP",
            self.stream_options.close_timeout,
        )
        self.abort(TimeoutError("timed out while closing the connection"))

    # Reading (any thread)

    def _wait_for_data(self, budget: Budget) -> bool:
        """Wait until bytes are buffered (True) or the stream is over (False).

        recv_lock held. Raises the stream's error once the buffer is empty.
        """
        while not len(self.buffer):
            if self.read_shut:
                return False
            if self.ended:
                if self.read_error is not None:
                    raise self.read_error.with_traceback(None)
                return False
            self._sleep(budget)
        return True

    def read(self, n: int, budget: Budget) -> bytes:
        """Up to ``n`` (> 0) bytes; ``b""`` at EOF. Raises the stream's error after its data."""
        with self.recv_lock:
            if not self._wait_for_data(budget):
                return b""
            data = self.buffer.take(n, exact=False)
            if self._paused:
                self._maybe_resume()
            return data

    def read_into(self, view: memoryview, budget: Budget) -> int:
        """Copy up to ``len(view)`` bytes into ``view``; 0 at EOF."""
        with self.recv_lock:
            if not self._wait_for_data(budget):
                return 0
            n = self.buffer.take_into(view)
            if self._paused:
                self._maybe_resume()
            return n

    def peek(self, n: int, budget: Budget) -> bytes:
        """Buffered bytes (at least ``n`` if buffered, up to 64 KiB), waiting for one; kept."""
        with self.recv_lock:
            if not self._wait_for_data(budget):
                return b""
            return self.buffer.peek(max(n, min(len(self.buffer), 2**16)))

    def read_until(self, size: int, budget: Budget, *, line: bool) -> bytes:
        """``size`` bytes (-1: until EOF), or through the first newline when ``line``.

        Fewer at EOF; after some bytes, the stream's error is left for the next
        read. On a timeout nothing is consumed: the bytes gathered so far go
        back to the front of the buffer before TimeoutError (or
        BlockingIOError) is raised.
        """
        parts: list[bytes] = []
        got = 0
        buffer = self.buffer
        with self.recv_lock:
            try:
                while size < 0 or got < size:
                    if not buffer:
                        if self.read_shut or self.ended:
                            if self.read_error is not None and not parts and not self.read_shut:
                                raise self.read_error.with_traceback(None)
                            break
                        self._sleep(budget)
                        continue
                    want = -1 if size < 0 else size - got
                    if line:
                        chunk, found = buffer.take_line(want)
                    else:
                        chunk = buffer.take(len(buffer) if want < 0 else want)
                        found = False
                    parts.append(chunk)
                    got += len(chunk)
                    if self._paused:
                        self._maybe_resume()
                    if found:
                        break
            except BaseException:
                buffer.unread(parts)  # a timeout (or an interrupt) consumes nothing
                raise
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def buffered(self) -> int:
        """Bytes received and not read yet."""
        with self.recv_lock:
            return len(self.buffer)

    def shut_reading(self) -> None:
        """The application reads no more: drop the buffer and discard what arrives."""
        with self.recv_lock:
            self.read_shut = True
            self.buffer.clear()
            self._stop_flow_control()
            self._wake_readers()

    # Writing

    def send_data(self) -> None:
        """Queue and write websockets' outgoing data (protocol_mutex held).

        Called by websockets (automatic answers, pings, close frames, the
        handshake). When another thread is the flusher, the data is only
        queued: that thread writes it, and this one - often the background
        thread - never waits behind an application write.
        """
        assert self.protocol_mutex.locked()
        items = self.protocol.data_to_send()
        if not items or self.write_broken is not None:
            return  # the common case in the background thread; or a failed socket
        with self._out_lock:
            self._enqueue(items)
            claimed = not self.flushing
            self.flushing = True
        if self.protocol.state is CLOSING:
            self._arm_close_timer()
        if claimed:
            self._flush_as_flusher(Budget.until(self.close_deadline), 0, user=False)

    def _enqueue(self, items: list[bytes]) -> None:
        """Append to the send queue (_out_lock held)."""
        for item in items:
            self.out.append(item)
            self.out_size += len(item)

    def _notify_writers(self) -> None:
        """Wake threads waiting for the send queue (_out_lock held)."""
        if self._out_waiters:
            self.out_cond.notify_all()

    def write(self, data: BytesLike, budget: Budget, *, partial: bool) -> int:
        """Send ``data`` as binary frames of at most ``max_frame_size``; return the count.

        Bytes are accepted a frame at a time; accepted bytes are sent in order
        whatever happens to the budget. When the budget runs out, ``partial``
        returns the count accepted if any, else TimeoutError / BlockingIOError
        is raised (some bytes may have been accepted before it: they are sent).

        Raises:
            OSError: the connection cannot send any more (see :meth:`write_error`).
        """
        total = len(data)
        size = self.max_frame_size
        if total <= size:
            return self._write_frames(data, total, budget, partial)
        with memoryview(data) as view:
            return self._write_frames(view, total, budget, partial)

    def _write_frames(self, data: BytesLike, total: int, budget: Budget, partial: bool) -> int:
        size = self.max_frame_size
        # When a helper writes (see _delegates), a write returns once its bytes
        # are queued within the send buffer, as a kernel's send() does: waiting
        # for the helper to empty the queue would cost two thread switches per
        # write. Otherwise the caller writes, and writes everything it framed.
        final = SEND_BUFFER - 1 if self._delegates(budget) else 0
        sent = 0
        while True:
            chunk = data[sent : sent + size] if total > size else data
            try:
                if self.out_size >= SEND_BUFFER:  # a hint: at worst one frame too many
                    self._flush(budget, SEND_BUFFER - 1)  # room in the send buffer
                claimed, direct = self._frame(chunk, budget)
            except (TimeoutError, BlockingIOError):
                if partial and sent:
                    return sent
                raise
            sent += len(chunk)
            last = sent >= total
            try:
                if claimed:  # nobody was writing: we write, now
                    if direct is not None:
                        self._send_direct(direct)
                    self._flush_as_flusher(budget, final if last else SEND_BUFFER - 1, user=True)
                elif last:
                    self._flush(budget, final)
            except (TimeoutError, BlockingIOError):
                # Accepted: a helper thread finishes sending them.
                if partial or last:
                    return sent
                raise
            if last:
                return sent

    def flush(self, budget: Budget) -> None:
        """Wait until every queued byte was written to the socket."""
        self._flush(budget, 0)

    def _frame(self, chunk: BytesLike, budget: Budget) -> tuple[bool, list[bytes] | None]:
        """Frame ``chunk`` (one binary frame); return (we are the flusher, bytes to send).

        The bytes come back unqueued (the fast path: blocking mode, nothing
        queued, nobody writing); otherwise they are queued and None is returned.
        """
        left = budget.remaining()
        mutex = self.protocol_mutex
        if not (mutex.acquire() if left is None else mutex.acquire(timeout=max(left, 0.0))):
            raise budget.expired()
        try:
            if self.protocol.state is not OPEN:
                raise self.write_error()
            self.protocol.send_binary(chunk)
            items = self.protocol.data_to_send()
            direct = None
            with self._out_lock:
                claimed = not self.flushing
                if claimed:
                    self.flushing = True
                    if left is None and not self.out:
                        direct = items
                if direct is None:
                    self._enqueue(items)
        finally:
            mutex.release()
        stats = self.stats
        stats.bytes_sent += len(chunk)
        stats.frames_sent += 1
        return claimed, direct

    def _send_direct(self, items: list[bytes]) -> None:
        """Write a frame's bytes, blocking, as the flusher; they were never queued."""
        try:
            for item in items:
                self.socket.sendall(item)
        except OSError as exc:
            self._write_failed(exc, user=True)
        except BaseException as exc:
            self._write_interrupted(exc)
            raise

    def _write_interrupted(self, exc: BaseException) -> None:
        """A write was interrupted (KeyboardInterrupt...) at an unknown byte: end it all.

        The peer may have part of a frame; nothing sent after it could be
        parsed, so the connection is dropped - by shutting the socket down,
        which needs no lock (this thread may hold protocol_mutex).
        """
        with self._out_lock:
            if self.write_broken is None:
                self.write_broken = ConnectionAbortedError(f"a write was interrupted: {exc!r}")
            self.out.clear()
            self.out_size = 0
            self.flushing = False
            self._notify_writers()
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)

    def send_close(self, code: int, reason: str, budget: Budget) -> None:
        """Queue a close frame (if still open) and write the queue within ``budget``."""
        left = budget.remaining()
        mutex = self.protocol_mutex
        if not (mutex.acquire() if left is None else mutex.acquire(timeout=max(left, 0.0))):
            raise budget.expired()
        try:
            if self.protocol.state is OPEN:
                self.protocol.send_close(code, reason)
                if self.close_deadline is None:
                    self.close_deadline = Deadline(self.close_timeout)
                with self._out_lock:
                    self._enqueue(self.protocol.data_to_send())
        finally:
            mutex.release()
        self._arm_close_timer()
        self._flush(budget, 0)

    def _delegates(self, budget: Budget) -> bool:
        """Whether an application write within ``budget`` is left to a helper thread.

        On TLS (or without MSG_DONTWAIT) a socket write cannot be timed or cut:
        the helper writes, blocking, and the caller waits within its budget.
        """
        return budget.end is not None and not self._can_dontwait

    def _flush(self, budget: Budget, target: int) -> None:
        """Write queued bytes until at most ``target`` remain (0: all of them)."""
        with self.out_cond:
            while True:
                if self.out_size <= target and (target or not self.out):
                    return
                if self.write_broken is not None or self.lost.is_set():
                    raise self.write_error()
                if not self.flushing:
                    self.flushing = True
                    if not self._delegates(budget):
                        break
                    self._hand_over()  # a helper writes; we wait for it below
                    continue
                self._out_waiters += 1  # another thread is writing: wait for progress
                try:
                    budget.wait(self.out_cond)
                finally:
                    self._out_waiters -= 1
        self._flush_as_flusher(budget, target, user=True)

    def _flush_as_flusher(
        self, budget: Budget, target: int, *, user: bool, helper: bool = False
    ) -> None:
        """Write the queue's head until ``target``; we are the flusher and give the role back.

        ``user``: an application call (not holding protocol_mutex). When its
        budget runs out, a helper thread takes the role over and finishes the
        queued bytes (on TLS it takes it over at once: see :meth:`_delegates`);
        when the socket fails, the connection is ended and the stream's error
        raised. Otherwise (websockets' own calls, the helper) errors are raised
        as they are. ``helper``: the helper thread, which goes idle when done.
        After :meth:`abandon`, the queue is written to the end and TCP dropped.
        """
        out = self.out
        lock = self._out_lock
        if user and self._delegates(budget):
            with lock:
                self._hand_over()
            self._flush(budget, target)
            return
        item = b""
        n = -1  # bytes of item written by the last round (-1: none yet)
        try:
            while True:
                with lock:
                    if n >= 0:
                        if n == len(item):
                            out.popleft()
                        else:
                            out[0] = item[n:]
                        self.out_size -= n
                        n = -1
                    if self._abandoned:
                        target = 0  # the close frame must go out, then TCP is dropped
                    if self.out_size <= target and (target or not out):
                        self.flushing = False
                        if helper:  # idle now, unless the connection is being dropped
                            self._helper_idle = not self._abandoned
                        self._notify_writers()
                        drop = self._abandoned
                        break
                    self._notify_writers()
                    item = out[0]
                if item:
                    n = self._send_some(item, budget)
                else:
                    with contextlib.suppress(OSError):  # already closed
                        self.socket.shutdown(socket.SHUT_WR)
                    n = 0
        except (TimeoutError, BlockingIOError):
            with lock:
                if user and out and not self.lost.is_set():
                    self._hand_over()  # a helper finishes the queued bytes
                else:
                    self.flushing = False
                self._notify_writers()
            raise
        except OSError as exc:
            self._write_failed(exc, user=user)
        except BaseException as exc:
            self._write_interrupted(exc)
            raise
        if drop:
            self._drop_tcp()

    def _write_failed(self, exc: OSError, *, user: bool) -> None:
        """The socket failed under the flusher: drop the queue, give the role back, raise.

        For an application call, end the connection and raise the stream's
        error (an abnormal closure); otherwise re-raise ``exc`` for websockets.
        """
        with self._out_lock:
            if self.write_broken is None:
                self.write_broken = exc
            self.out.clear()  # nothing more can go out
            self.out_size = 0
            self.flushing = False
            self._notify_writers()
        if not user:
            raise exc
        logger.info("the connection failed while sending: %r", exc)
        if not self.lost.is_set():
            self.abort(exc)
        self.lost.wait(1.0)  # the policy's verdict (an abnormal closure)
        raise self.write_error() from exc

    def _hand_over(self) -> None:
        """Give our flusher role to the helper thread (_out_lock held).

        The idle helper is woken, or a new one started (a daemon thread); with
        nothing queued, the role is simply given back. Never called from a
        finalizer.
        """
        if not self.out:
            self.flushing = False
            self._notify_writers()
        elif self._helper_idle:
            self._helper_idle = False
            self._helper_handoff = True
            self.out_cond.notify_all()
        else:
            thread = threading.Thread(target=self._helper_run, daemon=True)
            thread.name = f"ws_stream flusher {self.id}"
            thread.start()  # it inherits the flusher role

    def _helper_run(self) -> None:
        """The helper thread: write the queue, blocking; then linger for more work."""
        try:
            while True:
                self._flush_as_flusher(Budget(None), 0, user=False, helper=True)
                if not self._helper_wait():
                    return
        except OSError as exc:
            logger.info("sending queued bytes failed: %r", exc)
            if not self.lost.is_set():
                self.abort(exc)

    def _helper_wait(self) -> bool:
        """Idle: True once handed the flusher role again, False to end the thread.

        The helper ends after :data:`HELPER_LINGER` idle seconds, or when the
        connection can send no more.
        """
        end = time.monotonic() + HELPER_LINGER
        with self.out_cond:
            while not self._helper_handoff:
                left = end - time.monotonic()
                if (
                    left <= 0
                    or self._abandoned
                    or self.write_broken is not None
                    or self.lost.is_set()
                ):
                    self._helper_idle = False
                    return False
                self._out_waiters += 1
                try:
                    self.out_cond.wait(left)
                finally:
                    self._out_waiters -= 1
            self._helper_handoff = False
            return True

    # Closing from a finalizer

    def abandon(self, code: int, reason: str) -> None:
        """Close without blocking or starting a thread: the close of a finalizer.

        Unread bytes are discarded and a close frame (``code``, ``reason``)
        is queued behind the bytes already accepted. If a thread is writing
        (a helper finishing what a timed-out write accepted), it writes them
        and the close frame, then drops TCP; otherwise the queue is written
        now as far as the socket takes it without blocking, and TCP is
        dropped. The peer's answer is not awaited (nobody could bound the
        wait). If a lock is busy or the socket cannot take everything at once,
        TCP is dropped all the same: the peer then sees the connection lost
        (1006), never a clean end with bytes missing. A close already under
        way (``shutdown``, the peer's close frame) is left to its own
        ``close_timeout``. Never raises.
        """
        if self.lost.is_set():
            return
        if self.recv_lock.acquire(blocking=False):
            try:
                self.read_shut = True
                self.buffer.clear()
                self._stop_flow_control()
                self._wake_readers()
            finally:
                self.recv_lock.release()
        queued = claimed = False
        mutex = self.protocol_mutex
        if mutex.acquire(blocking=False):
            try:
                if self.protocol.state is not OPEN:
                    return  # closing already, bounded by its close timer; or over
                if self._out_lock.acquire(blocking=False):
                    try:
                        self.protocol.send_close(code, reason)
                        self._enqueue(self.protocol.data_to_send())
                        self._abandoned = queued = True
                        claimed = not self.flushing
                        self.flushing = True
                    finally:
                        self._out_lock.release()
            finally:
                mutex.release()
        if not queued:
            self._drop_tcp()
        elif claimed:
            self._write_nowait()
            self._drop_tcp()
        # Else the thread writing sends the close frame after the queued bytes,
        # then drops TCP (see _flush_as_flusher).

    def _write_nowait(self) -> None:
        """Write the queue as far as the socket takes it at once; we hold the role.

        Plain TCP: ``MSG_DONTWAIT``. TLS: only a small queue, and only when the
        socket polls writable (a small record then goes out without blocking).
        """
        sock = self.socket
        lock = self._out_lock
        try:
            while True:
                with lock:
                    if not self.out:
                        return
                    item = self.out[0]
                    small = self.out_size <= _NOWAIT_TLS_BYTES
                if not item:
                    sock.shutdown(socket.SHUT_WR)
                    n = 0
                elif self._can_dontwait:
                    n = sock.send(item, _DONTWAIT)
                elif self._tls and small and _writable_now(sock):
                    sock.sendall(item)
                    n = len(item)
                else:
                    return
                with lock:
                    if n == len(item):
                        self.out.popleft()
                    else:
                        self.out[0] = item[n:]
                    self.out_size -= n
        except OSError:
            return  # would block, or the socket is gone: TCP is dropped next
        finally:
            with lock:
                self.flushing = False
                self._notify_writers()

    def _drop_tcp(self) -> None:
        """Shut the socket down (no lock, no wait): the background thread then ends it."""
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)

    def _send_some(self, item: bytes, budget: Budget) -> int:
        """Write a prefix of ``item`` within ``budget``; return its length (> 0)."""
        sock = self.socket
        if budget.end is None or not self._can_dontwait:
            # Blocking: the whole item. (With a budget, only websockets' own
            # writes and the helper get here on TLS: see _delegates.)
            sock.sendall(item)
            return len(item)
        while True:
            try:
                return sock.send(item, _DONTWAIT)
            except BlockingIOError:
                pass
            left = budget.remaining()
            assert left is not None
            if left <= 0:
                raise budget.expired()
            _wait_writable(sock, left)

    def write_error(self) -> OSError:
        """The error a write raises once nothing more can be sent."""
        error = self.policy.error
        if error is not None:
            return copy.copy(error)
        ws = self.protocol
        if self.write_broken is not None and ws.close_rcvd is None:
            return BrokenPipeError(f"the connection failed while sending: {self.write_broken}")
        if ws.close_rcvd is not None:
            rcvd = ws.close_rcvd
            return BrokenPipeError(
                f"the peer closed the WebSocket ({rcvd.code} {rcvd.reason!r}): "
                "nothing more can be sent"
            )
        if ws.close_sent is not None:
            return BrokenPipeError("the WebSocket was shut down for writing (close frame sent)")
        if ws.state is CLOSED:
            return BrokenPipeError("the WebSocket connection is closed")
        return BrokenPipeError(f"the WebSocket connection is {ws.state.name.lower()}")


def _writable_now(sock: socket.socket) -> bool:
    """Whether ``sock`` polls writable, without waiting."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        return bool(poller.poll(0))
    return bool(select.select([], [sock], [], 0)[1])  # pragma: no cover - Windows


def _wait_writable(sock: socket.socket, timeout: float) -> None:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        poller.poll(timeout * 1000)
    else:  # pragma: no cover - Windows
        select.select([], [sock], [], timeout)
