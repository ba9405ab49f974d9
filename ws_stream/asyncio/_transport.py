"""The asyncio shell: a real :class:`asyncio.Transport` whose bytes travel as binary frames.

It sits on the TCP transport as its :class:`asyncio.Protocol` and only moves
bytes, waits and wakes: what a frame, a failure, a timeout or the end of the
connection means is decided by the engine (:class:`ws_stream._engine.Engine`),
shared with the other shells. Because this is a real transport, any
:class:`asyncio.Protocol` runs over it, and ``StreamWriter.start_tls()``
layers TLS inside the WebSocket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from websockets.frames import Close, Frame
from websockets.protocol import Protocol

from .._engine import Engine
from .._options import StreamOptions
from .._policy import EventHub
from ..events import Event

__all__ = ["WsTransport", "feed_buffered"]

logger = logging.getLogger("ws_stream.asyncio")

_BYTES_LIKE = (bytes, bytearray, memoryview)  # (built once: write() is a hot path)


def feed_buffered(protocol: asyncio.BufferedProtocol, data: bytes) -> None:
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


class _TcpSide(asyncio.Protocol):
    """The protocol of the TCP transport: hands everything to the WsTransport."""

    __slots__ = ("ws",)

    def __init__(self, ws: WsTransport) -> None:
        self.ws = ws

    def data_received(self, data: bytes) -> None:
        self.ws._tcp_data(data)

    def eof_received(self) -> bool:
        self.ws._tcp_eof()
        return False  # asyncio closes the transport: the WebSocket is over

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws._tcp_lost(exc)

    def pause_writing(self) -> None:
        self.ws._tcp_pause_writing()

    def resume_writing(self) -> None:
        self.ws._tcp_resume_writing()


class WsTransport(asyncio.Transport):
    """A byte-stream transport whose bytes travel as WebSocket binary frames.

    Writes never block: the first write of an event-loop iteration is framed
    at once (no added latency), later ones in the same iteration are
    coalesced and framed at its end (at once when ``max_frame_size`` is
    pending). Flow control is the TCP transport's. ``write_eof()`` sends a
    close frame (1000); ``close()`` sends one with the code chosen by
    :meth:`WsStream.close` and drops TCP if the peer has not closed within
    ``close_timeout``. Writes after the close are dropped and counted (as
    asyncio's transports do); ``drain()`` raises once the connection is gone.
    """

    _start_tls_compatible = True  # asyncio's loop.start_tls() checks this

    _extra: dict[str, Any]  # asyncio.BaseTransport's slot, which typeshed does not declare

    # One per connection: slots (an instance dict only if someone stores an
    # attribute on the transport, as on asyncio's own).
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_buffered",
        "_closed",
        "_closing",
        "_engine",
        "_eof_written",
        "_flush_handle",
        "_iteration_end",
        "_loop",
        "_max_frame",
        "_on_lost",
        "_options",
        "_owner",
        "_pending_input",
        "_protocol",
        "_protocol_lost",
        "_reading_paused",
        "_tcp",
        "_tcp_gone",
        "_timer",
        "_timer_at",
        "_writing_paused",
        "_wrote",
        "close_code_to_send",
        "close_reason_to_send",
        "engine",
        "stats",
    )

    def __init__(
        self,
        tcp: asyncio.Transport,
        protocol: Protocol,
        options: StreamOptions,
        *,
        loop: asyncio.AbstractEventLoop,
        hub: EventHub[Event],
        owner: object,
        extra: dict[str, Any],
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        frames: Sequence[Frame] = (),
        peer_close: Close | None = None,
        received: bytes = b"",
        on_lost: Callable[[Exception | None], None] | None = None,
        send_message: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__(extra)
        self._tcp = tcp
        self._loop = loop
        self._options = options
        self._max_frame = options.max_frame_size
        self._owner = owner
        self._on_lost = on_lost
        self._protocol: asyncio.BaseProtocol | None = None
        self._buffered = False
        self._flush_handle: asyncio.Handle | None = None  # runs at the end of the iteration
        self._wrote = False  # a write was framed in this loop iteration
        self._iteration_end: list[Callable[[], None]] = []  # see at_iteration_end()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._closing = False
        self._eof_written = False
        self._protocol_lost = False  # connection_lost() was called on our protocol
        self._tcp_gone = False
        self._writing_paused = False
        self._reading_paused = False
        self._closed: asyncio.Future[None] | None = None  # see closed
        self.close_code_to_send = 1000
        self.close_reason_to_send = ""
        self._pending_input: tuple[Sequence[Frame], Close | None, bytes] | None = (
            frames,
            peer_close,
            received,
        )
        self._engine = Engine(
            protocol,
            options,
            now=loop.time(),
            hub=hub,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            deliver=self._deliver,
            on_end=self._on_end,
            adopted=True,
            send_message=send_message,
        )
        self.engine = self._engine
        self.stats = self._engine.stats

    # Wiring

    def attach(self, protocol: asyncio.BaseProtocol) -> None:
        """Become the TCP transport's protocol and start feeding ``protocol``."""
        self.set_protocol(protocol)
        protocol.connection_made(self)
        tcp = self._tcp
        tcp.set_protocol(_TcpSide(self))
        if self._pending_input is not None:
            frames, peer_close, received = self._pending_input
            self._pending_input = None
            self._engine.start(self._loop.time(), frames, peer_close, received)
        if tcp.is_closing() and not self._tcp_gone:
            # The connection was lost before we took it over.
            self._loop.call_soon(self._tcp_lost, None)
        elif tcp.get_write_buffer_size() > tcp.get_write_buffer_limits()[1]:
            self._tcp_pause_writing()
        self._output()

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done once the TCP connection is closed.

        Made when first asked for: an idle server connection never needs it.
        """
        closed = self._closed
        if closed is None:
            closed = self._closed = self._loop.create_future()
            if self._tcp_gone:
                closed.set_result(None)
        return closed

    @property
    def error(self) -> Exception | None:
        """The error the stream ended with (None while open or after a clean close)."""
        return self._engine.error

    # Incoming, from the TCP transport

    def _tcp_data(self, data: bytes) -> None:
        self._engine.receive_data(data, self._loop.time())
        self._output()

    def _tcp_eof(self) -> None:
        self._engine.receive_eof()
        self._output()

    def _message_received(self, data: bytes) -> None:
        """A whole binary message from a message front end (no framing)."""
        if self._engine.receive_message(data, self._loop.time()):
            self._output()

    def _front_end_violation(self, code: int, reason: str, why: str) -> None:
        """A message front end failed the connection with ``code`` (see Engine.violation)."""
        self._engine.violation(code, reason, why)

    def _tcp_late_eof(self) -> None:
        """The peer half-closed before we became the TCP transport's protocol."""
        self._tcp_eof()
        self._tcp.close()

    def _tcp_lost(self, exc: Exception | None) -> None:
        """The TCP connection is gone: finish the stream and publish Closed."""
        if self._tcp_gone:
            return
        self._tcp_gone = True
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._cancel_flush()
        self._engine.connection_lost(exc)
        self._lose_protocol(self._engine.read_error)
        closed = self._closed
        if closed is not None and not closed.done():
            closed.set_result(None)
        if self._on_lost is not None:
            self._on_lost(exc)

    def _deliver(self, data: bytes) -> None:
        if self._protocol_lost:
            return
        protocol = self._protocol
        if self._buffered:
            feed_buffered(protocol, data)  # type: ignore[arg-type]
        else:
            protocol.data_received(data)  # type: ignore[union-attr]

    def _on_end(self, error: Exception | None) -> None:
        """The reader's ending, decided by the engine: EOF (None) or the error."""
        if self._protocol_lost:
            return
        if error is None:
            # A close frame ends the byte stream both ways: the reader sees EOF
            # after its data, and since nothing can be sent any more, the
            # protocol is told the connection is over (drain() raises
            # ConnectionResetError) without waiting for the TCP teardown,
            # which wait_closed() still tracks.
            self._protocol.eof_received()  # type: ignore[union-attr]
        self._lose_protocol(error)

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
        """Resume reading TCP if the reader is full and the engine says not to wait for it."""
        if self._reading_paused and not self._engine.may_pause():
            self._reading_paused = False
            if not self._tcp.is_closing():
                self._tcp.resume_reading()

    # Outgoing, to the TCP transport

    def _output(self) -> None:
        """Write what the engine has to send; re-arm the timer if its deadline moved."""
        engine = self._engine
        writes = engine.data_to_send()
        if writes:
            tcp = self._tcp
            for data in writes:
                if data:
                    tcp.write(data)
                elif tcp.can_write_eof():
                    tcp.write_eof()
                else:
                    # TLS has no half-close in asyncio: close it (close_notify,
                    # after the bytes written), or both sides would wait for
                    # the other until the close timeout.
                    tcp.close()
        deadline = engine.deadline
        if deadline != self._timer_at:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline != float("inf") and not self._tcp_gone:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        if self._engine.timer(self._loop.time()):
            self._tcp.abort()  # the closing handshake timed out
            return
        self._output()

    # Flow control from the TCP transport, forwarded to our protocol

    def _tcp_pause_writing(self) -> None:
        if not self._writing_paused and not self._protocol_lost:
            self._writing_paused = True
            self._protocol.pause_writing()  # type: ignore[union-attr]

    def _tcp_resume_writing(self) -> None:
        if self._writing_paused:
            self._writing_paused = False
            if not self._protocol_lost:
                self._protocol.resume_writing()  # type: ignore[union-attr]

    # asyncio.BaseTransport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ws_stream":
            return self._owner
        if name in self._extra:
            return self._extra[name]
        return self._tcp.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._closing or self._protocol_lost or not self._engine.is_open

    def close(self) -> None:
        """Flush, send a close frame, and drop TCP after ``close_timeout``.

        Unread data never holds the closing handshake back: bytes in flight
        still reach the reader while it has room (below ``limit``); once it is
        full, TCP is read on and data frames are discarded. The reader ends
        with EOF after a clean closing handshake, with the error otherwise.
        """
        if self._closing:
            return
        self._closing = True
        self._cancel_flush()
        self._engine.close(self.close_code_to_send, self.close_reason_to_send, self._loop.time())
        self._read_freely()
        self._output()

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
        if not self._reading_paused and self._engine.may_pause():
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
        return self._engine.pending_size + self._tcp.get_write_buffer_size()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, _BYTES_LIKE):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        n = len(data) if type(data) is not memoryview else data.nbytes
        if not n:
            return
        if self._protocol_lost:
            self._engine.lost_writes += 1
            return
        # The first write of this loop iteration leaves at once; the writes
        # that follow it in the same iteration are coalesced and sent at its end.
        first = not self._wrote
        engine = self._engine
        if engine.write(data, first=first):
            if first:
                self._wrote = True
                if self._flush_handle is None:
                    self._flush_handle = self._loop.call_soon(self._flush)
            if engine.writes_framed:
                self._output()

    def at_iteration_end(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once at the end of this loop iteration, after the
        iteration's coalesced writes were framed, from the same handle: the layers
        next to the stream (a message link below it, a mux session above it) end
        their iteration with it, one callback for all. Asking twice in one
        iteration calls twice; it still runs if the stream ends first (then on
        its own: nothing is framed or written after the end)."""
        if self._protocol_lost or self._tcp_gone:
            self._loop.call_soon(callback)
            return
        self._iteration_end.append(callback)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self._wrote = False
        if self._engine.pending_size:  # else the first write went alone: nothing to do
            self._engine.flush()
            self._output()
        if self._iteration_end:
            callbacks, self._iteration_end = self._iteration_end, []
            for callback in callbacks:
                callback()

    def flush(self) -> None:
        """Frame the writes coalesced in this loop iteration now.

        Whatever is sent next (a ping, a close) goes after them on the wire.
        """
        self._engine.flush()
        self._output()

    def _cancel_flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._wrote = False
        callbacks, self._iteration_end = self._iteration_end, []
        for callback in callbacks:
            self._loop.call_soon(callback)  # asked for: it still runs

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Send a close frame (1000) and keep reading until the peer's close."""
        if self._eof_written:
            return
        self._eof_written = True
        self._engine.send_close(1000, "", self._loop.time())
        self._output()

    def _force_close(self, exc: BaseException | None) -> None:
        # asyncio's SSLProtocol calls this private transport method on fatal
        # TLS errors (start_tls inside the stream).
        logger.debug("TLS inside the stream failed: %r; dropping the connection", exc)
        self.abort()

    def abort(self) -> None:
        """Drop TCP at once; unsent bytes are discarded."""
        self._closing = True
        self._cancel_flush()
        self._engine.drop_pending()
        self._tcp.abort()
