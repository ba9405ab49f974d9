"""yamux sessions on asyncio: every stream a real ``StreamReader``/``StreamWriter`` pair.

The protocol is :class:`~ws_stream.mux._machine.Machine`; this shell only
moves bytes and wakes tasks:

* one task reads the byte stream under the session (a :class:`~ws_stream.WsStream`'s
  reader, or any ``asyncio.StreamReader``) and feeds the machine;
* each stream is a :class:`MuxTransport` (an ``asyncio.Transport``, so
  ``loop.start_tls()`` works on it) under an ``asyncio.StreamReaderProtocol``;
  a write goes out at once while the stream's window and the writer under the
  session have room, otherwise it waits in the stream's buffer (past
  ``write_limit`` bytes, ``drain()`` waits) for a flusher task that serves
  the waiting streams in turn;
* a stream whose reader does not read stops granting window (the
  ``StreamReader`` pauses its transport past twice its ``limit``): its peer
  stops after one window, and the other streams go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Final

from ..asyncio._reader import ChunkedStreamReader
from ..asyncio._transport import WsTransport, feed_buffered
from ..asyncio.stream import WsStream
from ._machine import (
    CLOSE_TIMEOUT,
    DEFAULT_WINDOW,
    Acked,
    Data,
    Eof,
    GoneAway,
    Machine,
    MuxError,
    Opened,
    Pinged,
    Pong,
    Reset,
    SessionFailed,
    Writable,
)

__all__ = ["MuxTransport", "Session", "open_session"]

logger = logging.getLogger("ws_stream.mux")

StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]
#: ``on_stream(reader, writer)``: runs as a task for each stream the peer opens.
StreamCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]

#: Bytes read from the byte stream under the session at once.
_READ_SIZE: Final = 256 * 1024
#: A stream's write buffer: past this, its protocol pauses (``drain()`` waits).
_WRITE_HIGH: Final = 256 * 1024
#: What one stream sends per turn of the flusher: fairness between streams.
_QUANTUM: Final = 64 * 1024
#: get_extra_info() names of a TLS transport (asyncio's): not a stream's.
_TLS_INFO: Final = frozenset({"sslcontext", "ssl_object", "peercert", "cipher", "compression"})


class MuxTransport(asyncio.Transport):
    # loop.start_tls() accepts it: its protocol may become an SSLProtocol (buffered).
    _start_tls_compatible = True

    """One yamux stream as an ``asyncio.Transport``.

    ``write()`` never blocks: bytes wait in the stream's buffer while its
    window is closed (``pause_writing()`` past the high-water mark).
    ``write_eof()`` half-closes (FIN after the buffered bytes), ``close()``
    half-closes and then ignores what still arrives, ``abort()`` resets (RST).
    ``pause_reading()`` stops delivering - and so stops granting window to the
    peer. ``get_extra_info("mux_stream")`` is the stream id; other names are
    answered by the transport under the session (``peername``...).
    """

    def __init__(self, session: Session, stream: int, protocol: asyncio.BaseProtocol) -> None:
        super().__init__()
        self._session = session
        self.stream = stream
        self._protocol: asyncio.BaseProtocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._pending: deque[memoryview] = deque()
        self._pending_size = 0
        self._eof_pending = False  # write_eof() called: FIN once the buffer is sent
        self._fin_sent = False
        self._closing = False
        self._lost = False
        self._paused = False  # reading paused by the protocol
        self._received: deque[bytes] = deque()  # data held while reading is paused
        self._eof_received = False
        self._eof_delivered = False
        self._writing_paused = False
        self._high = _WRITE_HIGH
        self._low = _WRITE_HIGH // 4
        self._close_timer: asyncio.TimerHandle | None = None
        self._close_left = 0  # bytes still buffered when the close timer was armed
        #: The reader the session made for the stream, while it is the one fed.
        self._reader: ChunkedStreamReader | None = None

    # asyncio.BaseTransport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``mux_stream`` (the id), ``mux_session``; the rest from the byte stream
        under the session (``peername``, ``ws_stream``...), except TLS details:
        a stream is not itself a TLS transport (asyncio's ``StreamReaderProtocol``
        would close it at the peer's FIN), so a TLS connection under the session
        is the session writer's to tell."""
        if name == "mux_stream":
            return self.stream
        if name == "mux_session":
            return self._session
        if name in _TLS_INFO:
            return default
        return self._session._writer.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """Send what is buffered, then FIN; bytes that still arrive reset the stream (as TCP).

        As TCP too, a stream closed with received bytes its reader has not read
        is reset at once (RST, what is buffered either way is dropped): the peer
        learns they were not read.

        Bounded by ``CLOSE_TIMEOUT`` (10 s): a peer that takes none of the
        buffered bytes for that long, or does not answer the FIN with its own
        within it, gets an RST. The first case is reported to the protocol as a
        ``TimeoutError`` (bytes were not delivered); the second as a clean end.
        """
        if self._closing or self._lost:
            return
        reader = self._reader
        if self._received or (reader is not None and reader.buffered):
            self.abort()
            return
        self._closing = True
        self._session.machine.stop_reading(self.stream)  # later bytes reset it
        self.write_eof()
        self._maybe_done()  # both FINs crossed already: gone now
        if not self._lost and self._close_timer is None:
            self._arm_close_timer()

    def _arm_close_timer(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._close_left = self._pending_size
        self._close_timer = self._session._loop.call_later(CLOSE_TIMEOUT, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._close_timer = None
        if self._lost:
            return
        if self._fin_sent:
            self.abort()  # everything was sent; the peer never answered the FIN
        elif self._pending_size < self._close_left:
            self._arm_close_timer()  # the peer is taking the bytes: wait on
        else:
            self._session._reset(self.stream)
            self._connection_lost(
                TimeoutError(
                    f"mux stream {self.stream} was reset: the peer took none of the "
                    f"{self._pending_size} bytes left after close() in {CLOSE_TIMEOUT:g} s"
                )
            )

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        if protocol is not self._protocol:
            self._reader = None  # another protocol reads now (start_tls...)
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # asyncio.ReadTransport

    def is_reading(self) -> bool:
        return not self._paused and not self._lost

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self._received or self._eof_received:
            # Later, as asyncio's transports do: StreamReader resumes reading
            # before it makes the waiter that the data must wake.
            self._session._loop.call_soon(self._release)

    def _release(self) -> None:
        """Hand over what was held while reading was paused."""
        while self._received and not self._paused and not self._lost:
            self._deliver(self._received.popleft())
        if self._eof_received and not self._received and not self._paused and not self._lost:
            self._deliver_eof()
        self._session._output()  # the window the delivered bytes grant back

    # asyncio.WriteTransport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_pending or self._closing:
            raise RuntimeError("cannot write to a mux stream after write_eof() or close()")
        if self._lost:
            return  # as asyncio's transports: the loss is reported once, to the protocol
        if not data:
            return
        if type(data) is not bytes:
            data = bytes(data)  # the caller may reuse its buffer
        session = self._session
        sent = 0
        if not self._pending and session._can_write():
            sent = session._send(self.stream, data)
            if sent == len(data):
                return
        view = memoryview(data)[sent:]
        self._pending.append(view)
        self._pending_size += len(view)
        session._ready(self)
        if not self._writing_paused and self._pending_size > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self._eof_pending or self._lost:
            return
        self._eof_pending = True
        if not self._pending:
            self._send_fin()

    def can_write_eof(self) -> bool:
        return True

    def abort(self) -> None:
        """Reset the stream (RST): both directions end at once, buffered bytes are dropped."""
        if self._lost:
            return
        self._session._reset(self.stream)
        self._connection_lost(None)

    def get_write_buffer_size(self) -> int:
        return self._pending_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = _WRITE_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low

    # The session's calls

    def _push(self, quantum: int) -> bool:
        """Send up to ``quantum`` buffered bytes; True if bytes remain that the window allows."""
        session = self._session
        budget = quantum
        while self._pending and budget > 0:
            head = self._pending[0]
            chunk = head[:budget]
            sent = session._send(self.stream, chunk)
            if sent == 0:
                return False  # window closed: Writable brings it back
            budget -= sent
            self._pending_size -= sent
            if sent == len(head):
                self._pending.popleft()
            else:
                self._pending[0] = head[sent:]
        if self._writing_paused and self._pending_size <= self._low:
            self._writing_paused = False
            self._protocol.resume_writing()
        if not self._pending and self._eof_pending and not self._fin_sent:
            self._send_fin()
        return bool(self._pending) and session.machine.send_window(self.stream) > 0

    def _send_fin(self) -> None:
        self._fin_sent = True
        self._session._close_stream(self.stream)
        self._maybe_done()
        if self._closing and not self._lost:
            self._arm_close_timer()  # the peer's FIN has CLOSE_TIMEOUT from now

    def _data(self, data: bytes) -> None:
        if self._paused or self._received:
            self._received.append(data)
        else:
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        if self._buffered:
            feed_buffered(self._protocol, data)  # type: ignore[arg-type]
        else:
            self._protocol.data_received(data)  # type: ignore[attr-defined]
        # Taken: the window update it may grant leaves with the caller's _output().
        self._session.machine.consumed(self.stream, len(data))

    def _eof(self) -> None:
        self._eof_received = True
        if self._closing:
            self._maybe_done()
        elif not self._paused and not self._received:
            self._deliver_eof()

    def _deliver_eof(self) -> None:
        if self._eof_delivered:
            return
        self._eof_delivered = True
        keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        if not keep_open:
            self.close()
        self._maybe_done()

    def _over(self) -> bool:
        """Both FINs crossed: the stream ended cleanly, and the session's end changes
        nothing for it (what its reader has not read yet still comes, then EOF)."""
        return self._fin_sent and self._eof_received

    def _maybe_done(self) -> None:
        # As a TCP transport: ended both ways, it stays open (drain() works)
        # until close(); then it is gone once the FINs crossed.
        if self._closing and self._fin_sent and self._eof_received:
            self._connection_lost(None)

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._pending.clear()
        self._pending_size = 0
        self._received.clear()
        self._session._forget(self.stream)
        self._protocol.connection_lost(exc)


class Session:
    """One yamux session over a byte stream (:func:`open_session` makes it).

    ``async for reader, writer in session`` yields the streams the peer opens
    (unless ``on_stream`` takes them); :meth:`open_stream` opens one;
    :meth:`ping` measures the round trip; :meth:`go_away` refuses new streams;
    :meth:`close` ends it all. An async context manager (closing on exit).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        machine: Machine,
        *,
        limit: int,
        on_stream: StreamCallback | None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = reader
        self._writer = writer
        self.machine = machine
        self._limit = limit
        self._on_stream = on_stream
        self._transports: dict[int, MuxTransport] = {}
        self._accepted: deque[StreamPair] = deque()
        self._accept_waiter: asyncio.Future[None] | None = None
        self._pings: dict[int, tuple[asyncio.Future[float], float]] = {}
        self._waiting: dict[int, MuxTransport] = {}  # streams with bytes to send
        self._wake: asyncio.Event = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._out_scheduled = False  # _end_of_iteration is on its way
        self._data_out = False  # this iteration's first stream data went at once
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self.error: SessionFailed | None = None
        #: Over a ws_stream WsStream, the session is its transport's protocol
        #: (see :class:`_Feed`): no reader task, no StreamReader in between.
        self._feed: _Feed | None = None
        self._ws: WsTransport | None = None  # then, that WsStream's transport
        self._write_paused = False
        self._write_resumed: asyncio.Future[None] | None = None
        self._reading: asyncio.Task[None] | None = None
        self._flusher = self._loop.create_task(self._flush())

    def _start(self, early: bytes) -> None:
        """Start reading: ``early`` is what the stream's reader held already."""
        stream = self._writer.get_extra_info("ws_stream")
        if (
            isinstance(stream, WsStream)
            and isinstance(self._reader, ChunkedStreamReader)
            # The stream's own transport, not a layer on it (TLS after start_tls()
            # answers get_extra_info("ws_stream") too): the session must go through it.
            and self._writer.transport is stream.transport
        ):
            transport = stream.transport
            self._feed = _Feed(self)
            self._ws = transport if isinstance(transport, WsTransport) else None
            transport.set_protocol(self._feed)
            if early:
                self._received(early)
            if self._reader.at_eof() or self._reader.exception() is not None:
                self._lost(self._reader.exception())
            elif not transport.is_reading() and not transport.is_closing():
                transport.resume_reading()  # the reader may have paused it, full
            return
        if early:
            self._received(early)
        self._reading = self._loop.create_task(self._read())

    def _received(self, data: bytes | bytearray | memoryview) -> None:
        if self._feed is None:  # no pause/resume callbacks: look (bounds the answers)
            self.machine.output_blocked = not self._can_write()
        self.machine.receive_data(data)
        self._process()

    def _lost(self, exc: BaseException | None) -> None:
        reason = (
            "the connection under the session closed"
            if exc is None
            else f"the connection under the session failed: {exc}"
        )
        self.machine.lost(reason)
        self._process()

    # The byte stream under the session

    async def _read(self) -> None:
        """Any other byte stream: a task reads it."""
        try:
            while self.machine.failed is None:
                data = await self._reader.read(_READ_SIZE)
                if not data:
                    break
                self._received(data)
        except (ConnectionError, OSError) as exc:
            self._lost(exc)
        except Exception as exc:  # a defect: the session ends, never hangs
            logger.exception("mux session: reading the byte stream under it failed")
            self._lost(exc)
        except asyncio.CancelledError:
            self.machine.lost("the session was closed")
            self._process()
        else:
            self._lost(None)

    def _process(self) -> None:
        machine = self.machine
        for event in machine.events():
            if isinstance(event, Data):
                transport = self._transports.get(event.stream)
                if transport is not None:
                    transport._data(event.data)
            elif isinstance(event, Writable):
                transport = self._transports.get(event.stream)
                if transport is not None and transport._pending:
                    self._ready(transport)
            elif isinstance(event, Opened):
                self._incoming(event.stream)
            elif isinstance(event, Eof):
                transport = self._transports.get(event.stream)
                if transport is not None:
                    transport._eof()
            elif isinstance(event, Reset):
                transport = self._transports.get(event.stream)
                if transport is not None and event.by_peer:
                    transport._connection_lost(
                        ConnectionResetError(f"the peer reset mux stream {event.stream}")
                    )
                elif transport is not None:
                    transport._connection_lost(None)  # closed, then reset for late bytes
            elif isinstance(event, Pong):
                waiter = self._pings.pop(event.opaque, None)
                if waiter is not None and not waiter[0].done():
                    waiter[0].set_result(time.perf_counter() - waiter[1])
            elif isinstance(event, SessionFailed):
                self._failed(event)
            elif isinstance(event, GoneAway):
                logger.info("the peer went away: no new streams on this session")
                self._wake_acceptor()
            elif isinstance(event, (Acked, Pinged)):
                pass
        self._output()

    def _failed(self, event: SessionFailed) -> None:
        self.error = event
        if event.code != 2 or event.by_peer:
            logger.warning("mux session ended: %s", event.reason)
        for transport in list(self._transports.values()):
            if not transport._over():
                transport._connection_lost(
                    ConnectionAbortedError(f"mux session ended: {event.reason}")
                )
        for future, _ in self._pings.values():
            if not future.done():
                future.set_exception(MuxError(f"the session ended: {event.reason}"))
        self._pings.clear()
        self._wake_acceptor()
        self._wake.set()
        self._writing(False)
        if not self._closed.done():
            self._closed.set_result(None)
        self._write_out()  # a Go Away goes before the close
        self._writer.close()

    def _output(self, *, data: bool = False) -> None:
        """Write the machine's frames at the end of this loop iteration, all at once
        (window updates, ACKs and data of one iteration travel together); but
        the first stream data of an iteration leaves at once, with whatever was
        waiting (no added latency: the rule of every ws_stream transport).

        Over a WsStream, :meth:`_send` writes stream data to its transport at
        once instead: that transport applies the same rule (it frames the first
        write of an iteration at once and holds the later ones for the
        iteration's end).
        """
        if not self.machine.has_output:
            return
        if not self._out_scheduled:
            self._out_scheduled = True
            if self._ws is not None:
                self._ws.at_iteration_end(self._end_of_iteration)  # with its own flush
            else:
                self._loop.call_soon(self._end_of_iteration)
        if data and not self._data_out:
            self._data_out = True
            self._write_out()

    def _end_of_iteration(self) -> None:
        self._out_scheduled = False
        self._data_out = False
        if self.machine.has_output:
            self._write_out()

    def _write_out(self) -> None:
        frames = self.machine.data_to_send()
        if not frames:
            return
        ws = self._ws
        if ws is not None:  # the writer's own transport, without the StreamWriter
            if not ws.is_closing():
                ws.write(frames[0] if len(frames) == 1 else b"".join(frames))
        elif not self._writer.is_closing():
            self._writer.writelines(frames)

    def _can_write(self) -> bool:
        if self._feed is not None:
            return not self._write_paused
        transport = self._writer.transport
        return transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]

    async def _flush(self) -> None:
        with contextlib.suppress(ConnectionError):
            while self.machine.failed is None:
                await self._wake.wait()
                self._wake.clear()
                while self._waiting and self.machine.failed is None:
                    for stream, transport in list(self._waiting.items()):
                        if not transport._push(_QUANTUM):
                            self._waiting.pop(stream, None)
                    self._write_out()
                    await self._drain()

    async def _drain(self) -> None:
        """Wait while the byte stream under the session has too much to send."""
        if self._feed is None:
            await self._writer.drain()
            self.machine.output_blocked = False  # it drained (see _received)
            return
        while self._write_paused and self.machine.failed is None:
            if self._write_resumed is None or self._write_resumed.done():
                self._write_resumed = self._loop.create_future()
            await self._write_resumed

    def _writing(self, paused: bool) -> None:
        self._write_paused = paused
        self.machine.output_blocked = paused  # the answers it may hold are bounded
        waiter = self._write_resumed
        if not paused and waiter is not None and not waiter.done():
            waiter.set_result(None)

    # The streams' calls

    def _send(self, stream: int, data: bytes | memoryview) -> int:
        try:
            sent = self.machine.send(stream, data)
        except MuxError:
            return len(data)  # the stream is gone: its loss is reported to its protocol
        if self._ws is not None:
            self._write_out()  # see _output
        else:
            self._output(data=True)
        return sent

    def _ready(self, transport: MuxTransport) -> None:
        self._waiting[transport.stream] = transport
        self._wake.set()

    def _close_stream(self, stream: int) -> None:
        self.machine.close_stream(stream)
        self._output()

    def _reset(self, stream: int) -> None:
        self.machine.reset_stream(stream)
        self.machine.events()  # its own Reset: the transport reports it
        self._output()

    def _forget(self, stream: int) -> None:
        self._transports.pop(stream, None)
        self._waiting.pop(stream, None)

    # Streams

    def _pair(self, stream: int) -> StreamPair:
        reader = ChunkedStreamReader(self._limit, self._loop)  # keeps chunks: fewer copies
        protocol = asyncio.StreamReaderProtocol(reader, loop=self._loop)
        transport = MuxTransport(self, stream, protocol)
        transport._reader = reader
        self._transports[stream] = transport
        protocol.connection_made(transport)
        writer = asyncio.StreamWriter(transport, protocol, reader, self._loop)
        return reader, writer

    def _incoming(self, stream: int) -> None:
        pair = self._pair(stream)
        if self._on_stream is not None:
            self.machine.take(stream)
            try:
                result = self._on_stream(*pair)
            except Exception:
                # As for an async callback: logged; only its stream ends (reset).
                logger.exception("on_stream raised: mux stream %d is reset", stream)
                pair[1].transport.abort()
                return
            if asyncio.iscoroutine(result):
                task = self._loop.create_task(result)
                self._tasks.add(task)
                task.add_done_callback(self._callback_done)
            return
        self._accepted.append(pair)
        self._wake_acceptor()

    def _callback_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("on_stream raised", exc_info=task.exception())

    def _wake_acceptor(self) -> None:
        waiter = self._accept_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def open_stream(self) -> StreamPair:
        """Open a stream: its reader and writer, at once (writes may precede the peer's ACK).

        Raises:
            MuxError: the session ended, is going away, or has ``max_streams``
                streams open.
        """
        stream = self.machine.open_stream()
        pair = self._pair(stream)
        self._output()
        return pair

    async def accept(self) -> StreamPair:
        """The next stream the peer opens.

        Raises:
            MuxError: the session ended (or the peer went away) with no stream waiting.
        """
        while not self._accepted:
            self.machine.check_incoming()
            self._accept_waiter = self._loop.create_future()
            try:
                await self._accept_waiter
            finally:
                self._accept_waiter = None
        reader, writer = self._accepted.popleft()
        self.machine.take(writer.transport.get_extra_info("mux_stream"))
        return reader, writer

    def __aiter__(self) -> AsyncIterator[StreamPair]:
        return self._streams()

    async def _streams(self) -> AsyncIterator[StreamPair]:
        while True:
            try:
                yield await self.accept()
            except MuxError:
                return

    async def ping(self, timeout: float = 30.0) -> float:
        """Send a yamux ping; the round trip in seconds.

        Raises:
            MuxError: the session ended first.
            TimeoutError: no answer within ``timeout`` seconds.
        """
        opaque = self.machine.ping()
        future: asyncio.Future[float] = self._loop.create_future()
        self._pings[opaque] = (future, time.perf_counter())
        self._output()
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._pings.pop(opaque, None)

    def go_away(self) -> None:
        """Refuse new streams from now on (the peer is told); open streams go on."""
        self.machine.go_away()
        self._output()

    @property
    def streams(self) -> int:
        """Streams open now."""
        return len(self.machine.streams)

    async def close(self, timeout: float = 10.0) -> None:
        """Go away, reset the streams still open, and close the byte stream under the session.

        Waits (at most ``timeout`` seconds) for the byte stream to close.
        """
        if self.machine.failed is None:
            self.go_away()
            for stream, transport in list(self._transports.items()):
                if not transport._over():
                    self._reset(stream)
                    transport._connection_lost(ConnectionAbortedError("the mux session was closed"))
            self.machine.lost("the session was closed")
            self._process()
        self._flusher.cancel()
        if self._reading is not None:
            self._reading.cancel()
        stream = self._writer.get_extra_info("ws_stream")
        with contextlib.suppress(Exception, asyncio.CancelledError):
            async with asyncio.timeout(timeout):
                if self._feed is not None and isinstance(stream, WsStream):
                    await stream.wait_closed()  # its reader's protocol is no longer told
                else:
                    await self._writer.wait_closed()
        for task in list(self._tasks):
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait until the session ended (failed, lost, or closed)."""
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def open_session(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    client: bool,
    window: int = DEFAULT_WINDOW,
    max_streams: int = 1024,
    backlog: int = 256,
    limit: int = 2**16,
    on_stream: StreamCallback | None = None,
) -> Session:
    """Start a yamux session over a byte stream (a :class:`~ws_stream.WsStream`'s pair).

    ``client``: this side opens odd stream ids (the side that dialed; the
    other must pass False). ``window``: the receive window of each stream (at
    least 256 KiB, the spec's initial window; memory per stream is bounded by
    it). ``max_streams``: open streams at most (more SYNs are refused with
    RST); ``backlog``: streams opened by the peer and not yet accepted (more:
    RST; with ``on_stream`` every stream is taken as it opens, and no backlog
    applies). ``limit``: each stream's ``StreamReader`` limit. ``on_stream(reader,
    writer)``: called (a coroutine function runs as a task) for each stream the
    peer opens, instead of ``async for``.

    Raises:
        ValueError: a limit out of range.
    """
    machine = Machine(
        client=client,
        window=window,
        max_streams=max_streams,
        backlog=backlog,
        take_on_open=on_stream is not None,  # the callback takes each stream at once
    )
    # What the reader holds already (a peer may open streams right after the
    # handshake): taken without waiting, then fed to the machine first.
    held = reader.buffered if isinstance(reader, ChunkedStreamReader) else 0
    early = await reader.read(held) if held else b""
    session = Session(reader, writer, machine, limit=limit, on_stream=on_stream)
    session._start(early)
    return session


class _Feed(asyncio.Protocol):
    """The session as the protocol of a WsStream's transport: bytes straight to the machine.

    A WsStream's reader is then no longer fed: the session reads the stream.
    Its write flow control comes here too (``pause_writing``).
    """

    def __init__(self, session: Session) -> None:
        self._session = session

    def data_received(self, data: bytes) -> None:
        self._session._received(data)

    def eof_received(self) -> bool:
        return True  # connection_lost follows: the session ends there

    def connection_lost(self, exc: Exception | None) -> None:
        self._session._lost(exc)

    def pause_writing(self) -> None:
        self._session._writing(True)

    def resume_writing(self) -> None:
        self._session._writing(False)
