"""The asyncio shell: a real :class:`asyncio.Transport` over a websockets connection.

It moves bytes and wakes waiters; what a frame, a failure or the end of the
connection means is decided by :class:`ws_stream._policy.StreamPolicy`.

How it sits on websockets' asyncio connection: websockets stays the protocol
of the TCP transport and does the framing, masking, pings and the closing
handshake. We hook its Sans-I/O ``events_received()`` to take data frames
straight into our protocol (no message assembly, no extra task), and send
binary frames with its Sans-I/O ``send_binary()``. Because this is a real
transport, any :class:`asyncio.Protocol` runs over it, and
``StreamWriter.start_tls()`` layers TLS inside the WebSocket.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from websockets.asyncio.connection import Connection
from websockets.frames import Frame, Opcode
from websockets.protocol import State as WsState

from .._options import StreamOptions
from .._policy import EventHub, Step, StreamPolicy
from ..events import Event
from ..stats import StreamStats

if TYPE_CHECKING:
    from websockets.protocol import Event as WsEvent

__all__ = ["WsTransport"]

logger = logging.getLogger("ws_stream.asyncio")

_OPEN = WsState.OPEN
_DATA_OPCODES = frozenset({Opcode.BINARY, Opcode.TEXT, Opcode.CONT})


def _feed_buffered(protocol: asyncio.BufferedProtocol, data: bytes) -> None:
    """Hand ``data`` to a buffered protocol (SSLProtocol after start_tls)."""
    view = memoryview(data)
    while view:
        buf = memoryview(protocol.get_buffer(len(view)))
        n = min(len(buf), len(view))
        if not n:
            raise RuntimeError("get_buffer() returned an empty buffer")
        buf[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


class WsTransport(asyncio.Transport):
    """A byte-stream transport whose bytes travel as WebSocket binary frames.

    Writes never block: bytes written in one event-loop iteration are sent at
    its end, coalesced into frames of at most ``max_frame_size`` bytes (at once
    when that much is pending). Flow control is the TCP transport's.
    ``write_eof()`` sends a close frame (1000); ``close()`` sends one with the
    code chosen by :meth:`WsStream.close` and drops TCP if the peer has not
    closed within ``close_timeout``.
    """

    _start_tls_compatible = True  # asyncio's loop.start_tls() checks this

    def __init__(
        self,
        websocket: Connection,
        options: StreamOptions,
        hub: EventHub[Event],
        owner: object,
    ) -> None:
        super().__init__()
        self._conn = websocket
        self._ws = websocket.protocol
        self._tcp: asyncio.Transport = websocket.transport
        self._loop = websocket.loop
        self._options = options
        self._max_frame = options.max_frame_size
        self._hub = hub
        self._owner = owner
        self._policy = StreamPolicy(on_text=options.on_text)
        self._protocol: asyncio.BaseProtocol | None = None
        self._buffered = False
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._flush_handle: asyncio.Handle | None = None
        self._closing = False
        self._eof_written = False
        self._protocol_lost = False  # connection_lost() was called on our protocol
        self._writing_paused = False
        self._reading_paused = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._lost_writes = 0
        self._parser_exc_seen = False
        self.close_code_to_send = 1000
        self.close_reason_to_send = ""
        self.stats = StreamStats()

    # Wiring

    def attach(self, protocol: asyncio.BaseProtocol) -> None:
        """Take over the websocket's incoming data and start feeding ``protocol``."""
        self.set_protocol(protocol)
        conn = self._conn
        ws = self._ws
        self._ws_recv_frame = ws.recv_frame
        ws.recv_frame = self._recv_frame  # type: ignore[method-assign]
        self._ws_events_received = ws.events_received
        ws.events_received = self._events_received  # type: ignore[method-assign]
        self._ws_pause_writing = conn.pause_writing
        self._ws_resume_writing = conn.resume_writing
        conn.pause_writing = self._tcp_pause_writing  # type: ignore[method-assign]
        conn.resume_writing = self._tcp_resume_writing  # type: ignore[method-assign]
        # Frames websockets received and queued before we were created come first.
        assembler = conn.recv_messages
        queued = list(assembler.frames.queue)
        assembler.frames.queue.clear()
        if assembler.paused:
            assembler.paused = False
            self._tcp.resume_reading()
        protocol.connection_made(self)
        if queued:
            self.stats.frames_received += len(queued)
            self.stats.last_frame_at = self._loop.time()
        for frame in queued:
            self._apply(self._policy.receive_frame(frame.opcode, bytes(frame.data), frame.fin))
        if ws.close_rcvd is not None:
            self._apply(self._policy.close_received(ws.close_rcvd))
        self._check_parser()
        if conn.protocol.state is not _OPEN:
            self._arm_close_timer()
        if self._tcp.get_write_buffer_size() > self._tcp.get_write_buffer_limits()[1]:
            # websockets is paused already: so are we.
            self._tcp_pause_writing(forward_only=True)
        conn.connection_lost_waiter.add_done_callback(self._ws_lost)

    @property
    def error(self) -> Exception | None:
        """The error the stream ended with (None while open or after a clean close)."""
        return self._policy.error

    # Incoming: websockets' Sans-I/O events, taken as they are parsed

    def _recv_frame(self, frame: Frame) -> None:
        """Each frame, as websockets parses it: decided at once, in wire order.

        Deciding here rather than after the whole TCP read is parsed matters:
        a text frame fails the connection with 1003 before websockets reacts
        to the frames behind it in the same read (fail() discards them).
        """
        self._ws_recv_frame(frame)  # websockets validates it first (1002 otherwise)
        events = self._ws.events
        if frame.opcode in _DATA_OPCODES and events and events[-1] is frame:
            del events[-1]  # ours: a read of tiny frames must not hold them all
        stats = self.stats
        stats.frames_received += 1
        stats.last_frame_at = self._loop.time()
        opcode = frame.opcode
        if opcode is Opcode.PONG:
            stats.pongs_received += 1
        self._apply(self._policy.receive_frame(opcode, bytes(frame.data), frame.fin))

    def _events_received(self) -> list[WsEvent]:
        """After a read: data frames are ours (already delivered); the rest is websockets'."""
        events = [
            event
            for event in self._ws_events_received()
            if not (isinstance(event, Frame) and event.opcode in _DATA_OPCODES)
        ]
        self._check_parser()
        if self._ws.state is not _OPEN:
            self._arm_close_timer()
        return events

    def _check_parser(self) -> None:
        ws = self._ws
        if ws.parser_exc is not None and not self._parser_exc_seen:
            self._parser_exc_seen = True
            code = ws.close_sent.code if ws.close_sent is not None else None
            self._apply(self._policy.parser_failed(ws.parser_exc, code))
            if self._policy.error is not None:
                # websockets failed the connection already; the reader ends with it.
                logger.info("the peer violated the protocol: %s", self._policy.error)
                self._lose_protocol(self._policy.error)

    def _apply(self, step: Step) -> None:
        data, event, failure, eof = step
        if data is not None:
            self._deliver(data)
        if event is not None:
            self._hub.publish(event)
        if failure is not None:
            if self._ws.state is _OPEN:
                # Inside websockets' parser: fail() also discards what follows.
                self._ws.fail(failure.code, failure.reason)
                self._conn.send_data()
            logger.info("failing the connection with %d: %s", failure.code, failure.error)
            self._lose_protocol(failure.error)
        if eof:
            self._end_of_stream()

    def _deliver(self, data: bytes) -> None:
        if self._protocol_lost:
            return
        self.stats.bytes_received += len(data)
        protocol = self._protocol
        if self._buffered:
            _feed_buffered(protocol, data)  # type: ignore[arg-type]
        else:
            protocol.data_received(data)  # type: ignore[union-attr]

    def _end_of_stream(self) -> None:
        if self._protocol_lost:
            return
        # A close frame ends the byte stream both ways: the reader sees EOF after
        # its data, and since nothing can be sent any more, the protocol is told
        # the connection is over (drain() raises ConnectionResetError) without
        # waiting for the TCP teardown, which wait_closed() still tracks.
        self._protocol.eof_received()  # type: ignore[union-attr]
        self._lose_protocol(None)

    def _lose_protocol(self, exc: Exception | None) -> None:
        if self._protocol_lost:
            return
        self._protocol_lost = True
        self._cancel_flush()
        protocol = self._protocol
        assert protocol is not None
        try:
            protocol.connection_lost(exc)
        except Exception:
            logger.exception("connection_lost() of %r raised", protocol)
        self._read_freely()

    def _read_freely(self) -> None:
        """Resume reading TCP if the reader is full and the policy says not to wait for it.

        After the end of the stream or the application's close, the peer's
        close frame (or the end of TCP) may sit behind data the reader paused
        for; see :meth:`StreamPolicy.may_pause`.
        """
        if self._reading_paused and not self._policy.may_pause():
            self._reading_paused = False
            if not self._tcp.is_closing():
                self._tcp.resume_reading()

    def _ws_lost(self, _: asyncio.Future[None]) -> None:
        """The TCP connection is gone: finish the stream and publish Closed."""
        self._closing = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        ws = self._ws
        cause = self._conn.connection_exc
        ending = self._policy.connection_lost(ws.close_rcvd, ws.close_sent, cause)
        for event in ending.events:
            self._hub.publish(event)
        if self._lost_writes:
            logger.warning(
                "%d write() calls after the connection closed were not sent", self._lost_writes
            )
        self._lose_protocol(ending.error)

    # Flow control from the TCP transport, forwarded to our protocol

    def _tcp_pause_writing(self, forward_only: bool = False) -> None:
        if not forward_only:
            self._ws_pause_writing()
        if not self._writing_paused and not self._protocol_lost:
            self._writing_paused = True
            self._protocol.pause_writing()  # type: ignore[union-attr]

    def _tcp_resume_writing(self) -> None:
        self._ws_resume_writing()
        if self._writing_paused:
            self._writing_paused = False
            if not self._protocol_lost:
                self._protocol.resume_writing()  # type: ignore[union-attr]

    # Closing

    def _arm_close_timer(self) -> None:
        """Bound the closing handshake: drop TCP after close_timeout."""
        if self._close_timer is None and not self._conn.connection_lost_waiter.done():
            self._close_timer = self._loop.call_later(
                self._options.close_timeout, self._close_timed_out
            )

    def _close_timed_out(self) -> None:
        self._close_timer = None
        logger.info(
            "the peer did not complete the closing handshake within %.1f s; dropping TCP",
            self._options.close_timeout,
        )
        self._conn.set_connection_exc(TimeoutError("timed out while closing the connection"))
        self._tcp.abort()

    def _send_close(self, code: int, reason: str) -> None:
        self._flush(reschedule=False)
        if self._ws.state is _OPEN:
            self._ws.send_close(code, reason)
            self._conn.send_data()
        self._arm_close_timer()

    # asyncio.BaseTransport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        conn = self._conn
        if name == "ws_stream":
            return self._owner
        if name == "websocket":
            return conn
        if name == "peername":
            return conn.remote_address
        if name == "sockname":
            return conn.local_address
        if name == "subprotocol":
            return conn.subprotocol
        if name == "request":
            return conn.request
        if name == "response":
            return conn.response
        return self._tcp.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._closing or self._protocol_lost or self._ws.state is not _OPEN

    def close(self) -> None:
        """Flush, send a close frame, and drop TCP after ``close_timeout``.

        Unread data never holds the closing handshake back: bytes in flight
        still reach the reader while it has room (below ``limit``); once it is
        full, TCP is read on and data frames are discarded
        (:meth:`StreamPolicy.may_pause`). The reader ends with EOF after a
        clean closing handshake, with the error otherwise.
        """
        if self._closing:
            return
        self._closing = True
        self._policy.local_close()
        self._read_freely()
        self._send_close(self.close_code_to_send, self.close_reason_to_send)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    # asyncio.ReadTransport

    def is_reading(self) -> bool:
        return not self._reading_paused and not self.is_closing()

    def pause_reading(self) -> None:
        if not self._reading_paused and self._policy.may_pause():
            self._reading_paused = True
            self._tcp.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self.stats.read_resumed_at = self._loop.time()
            self._tcp.resume_reading()

    # asyncio.WriteTransport

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._tcp.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._tcp.get_write_buffer_limits()

    def get_write_buffer_size(self) -> int:
        return self._pending_size + self._tcp.get_write_buffer_size()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        n = len(data) if type(data) is not memoryview else data.nbytes
        if not n:
            return
        if self._ws.state is not _OPEN or self._protocol_lost:
            # The close handshake started: these bytes can never be sent.
            # drain() raises ConnectionResetError once the connection is gone.
            self._lost_writes += 1
            return
        if n >= self._max_frame:
            self._flush(reschedule=False)
            self._send(data)
            return
        if self._flush_handle is None:
            # The first write of this loop iteration leaves at once (no added
            # latency); the writes that follow it in the same iteration are
            # coalesced and sent at its end.
            self._send(data)
            self._flush_handle = self._loop.call_soon(self._flush)
            return
        self._pending.append(bytes(data))  # the caller may reuse its buffer
        self._pending_size += n
        if self._pending_size >= self._max_frame:
            self._flush(reschedule=False)

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        ws = self._ws
        size = self._max_frame
        n = len(data) if type(data) is not memoryview else data.nbytes
        stats = self.stats
        if n <= size:
            ws.send_binary(data)
            stats.frames_sent += 1
        else:
            view = memoryview(data).cast("B")
            for start in range(0, n, size):
                ws.send_binary(view[start : start + size])
            stats.frames_sent += -(-n // size)
        stats.bytes_sent += n
        self._conn.send_data()

    def _flush(self, reschedule: bool = True) -> None:
        """Send the coalesced writes; at the iteration's end, forget the iteration."""
        if reschedule:
            self._flush_handle = None
        if not self._pending:
            return
        pending = self._pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self._pending = []
        self._pending_size = 0
        if self._ws.state is _OPEN:
            self._send(data)
        else:
            self._lost_writes += 1

    def flush(self) -> None:
        """Hand the writes coalesced in this loop iteration to websockets now.

        Whatever websockets is asked to send next (a ping, a close) goes
        after them on the wire.
        """
        self._flush(reschedule=False)

    def _cancel_flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Send a close frame (1000) and keep reading until the peer's close."""
        if self._eof_written:
            return
        self._eof_written = True
        self._send_close(1000, "")

    def _force_close(self, exc: BaseException | None) -> None:
        # asyncio's SSLProtocol calls this private transport method on fatal
        # TLS errors (start_tls inside the stream).
        logger.debug("TLS inside the stream failed: %r; dropping the connection", exc)
        self.abort()

    def abort(self) -> None:
        """Drop TCP at once; unsent bytes are discarded."""
        self._closing = True
        self._cancel_flush()
        self._pending = []
        self._pending_size = 0
        self._tcp.abort()
