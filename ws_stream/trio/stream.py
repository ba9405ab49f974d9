"""The trio shell: a WebSocket as a :class:`trio.abc.Stream`.

Built on websockets' Sans-I/O protocol (``ClientProtocol`` / ``ServerProtocol``),
not on ``websockets.trio``: in websockets 17.4, the task that reads the socket
takes the send lock after every read, even with nothing to send, so a
``send()`` blocked on a full TCP buffer stops reading on both ends and
bidirectional bulk traffic deadlocks. Here the reader task never waits on the
writer: it parses frames, appends data to a bounded buffer and leaves any
automatic answer (pong, close) in websockets' outgoing queue, which a separate
flusher task - or the next ``send_all`` - writes under the send lock.

What a frame, a violation, a timeout or the end of the connection means is
decided by the engine (:class:`ws_stream._engine.Engine`), shared with the
other shells; this module only reads, writes, waits and wakes.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

import trio
from websockets.http11 import Request, Response
from websockets.protocol import CLOSED, OPEN, Protocol

from .._engine import Engine
from .._options import StreamOptions
from .._policy import EventHub, Subscription, check_close
from ..events import Event
from ..reconnect import CloseFrames

__all__ = ["EventStream", "WsStream"]

logger = logging.getLogger("ws_stream.trio")

T = TypeVar("T")

_RECEIVE_SIZE = 2**18
_DEFAULT_MAX_BYTES = 2**16
_WRAP_OPTIONS = frozenset({"limit", "max_frame_size", "on_text", "close_timeout", "max_events"})


class _Wakeup:
    """A ``ParkingLot`` for a single waiter (each of ours has one), with its method names.

    No queue: waking is a plain reschedule, and waking nobody costs an
    attribute test (the engine wakes the receiver after every frame).
    Cancellation works as for ``ParkingLot.park()``.
    """

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None

    def __bool__(self) -> bool:
        return self.task is not None  # a task waits

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self.task = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def park(self) -> None:
        self.task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def unpark_all(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            trio.lowlevel.reschedule(task)


def _broken(error: BaseException, what: str) -> trio.BrokenResourceError:
    exc = trio.BrokenResourceError(f"{what}: {error}")
    exc.__cause__ = error
    return exc


class WsStream(trio.abc.Stream):
    """A WebSocket connection as a byte stream, for trio.

    ``receive_some()`` returns the concatenation of the binary payloads, frame
    boundaries gone, then ``b""`` after the peer's close frame. ``send_all()``
    sends binary frames of at most ``max_frame_size``. A text frame, a
    protocol violation or a lost connection makes ``receive_some()`` raise
    :exc:`trio.BrokenResourceError` - once the bytes received before it were
    read - whose ``__cause__`` is the :class:`ws_stream.TextFrameError`,
    :class:`ws_stream.ProtocolError` (with ``.code``) or
    :class:`ws_stream.AbnormalClosureError` the other shells raise.

    This is *not* a :class:`trio.abc.HalfCloseableStream`: a WebSocket close is
    not a TCP half-close. The peer must answer a close frame at once and
    cannot send afterwards, so there is no ``send_eof()``. Instead,
    :meth:`send_close` sends a close frame and the stream keeps receiving
    until the peer's close (then ``b""``).

    One task may send and one may receive at a time
    (:exc:`trio.BusyResourceError` otherwise). The stream runs two or three
    small tasks (reader, flusher, keepalive) in the nursery it is given; they
    end with the connection. Create it with
    :func:`ws_stream.trio.open_websocket_stream` or
    :func:`ws_stream.trio.serve_websocket_stream`. Built on a handshake of
    your own, pass ``received``: the bytes read behind the handshake (the
    peer's first frames, unparsed), which the stream parses before anything
    else it reads.
    """

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        protocol: Protocol,
        nursery: trio.Nursery,
        *,
        request: Request | None = None,
        response: Response | None = None,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        received: bytes = b"",
        _options: StreamOptions | None = None,
        **options: Any,
    ) -> None:
        if protocol.state is not OPEN:
            raise ValueError("the WebSocket handshake must be complete (protocol state OPEN)")
        unknown = set(options) - _WRAP_OPTIONS
        if unknown:
            raise TypeError(
                f"WsStream() got unexpected options {sorted(unknown)}; it takes "
                + ", ".join(sorted(_WRAP_OPTIONS))
            )
        self._options = _options if _options is not None else StreamOptions(**options)
        self.transport_stream = transport_stream
        self._ws = protocol
        self.request = request
        self.response = response
        self._ping_timeout = ping_timeout
        self._receiving = False
        self._sending = False
        self._send_broken = False  # a write was interrupted: a frame may be cut short
        self._outbox: list[bytes] = []  # taken from the engine by the reader, not written
        self._send_lock = trio.Lock()
        self._data_lot = _Wakeup()  # receive_some() waits for data
        self._space_lot = _Wakeup()  # the reader waits for room (read backpressure)
        self._flush_lot = _Wakeup()  # the flusher waits for websockets' answers
        self._timer_lot = _Wakeup()  # the timer waits for a new deadline
        self._closed = trio.Event()
        self._reader_scope = trio.CancelScope()
        self._cancel_scope = trio.CancelScope()
        # Frames a caller's own handshake already parsed, then ``received``
        # (ours hands over the bytes read behind the handshake, unparsed).
        self._engine = Engine(
            protocol,
            self._options,
            now=trio.current_time(),
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            on_wake=self._wake,
        )
        self._engine.start(trio.current_time(), received=bytes(received))
        self._hub = self._engine.hub
        self.stats = self._engine.stats
        self._take_output()
        nursery.start_soon(self._run)

    def _wake(self) -> None:
        self._data_lot.unpark_all()

    def __repr__(self) -> str:
        return f"<ws_stream.trio.WsStream {self._ws.side.name.lower()} {self._ws.id}>"

    # Properties

    @property
    def websocket(self) -> Protocol:
        """websockets' Sans-I/O protocol object of this connection."""
        return self._ws

    @property
    def subprotocol(self) -> str | None:
        return self._ws.subprotocol

    @property
    def close_timeout(self) -> float:
        """Seconds the closing handshake may take before TCP is dropped."""
        return self._options.close_timeout

    @property
    def error(self) -> Exception | None:
        """What ended the stream abnormally (text frame, violation, lost connection), or None."""
        return self._engine.error

    @property
    def reading_paused(self) -> bool:
        """True while the socket is not read because the application has not read the
        buffer (read backpressure): no frame can arrive then (reconnect's idle timeout)."""
        return bool(self._space_lot)  # the reader task parks there

    def _end_reader(self, error: Exception) -> None:
        """Make ``receive_some()`` raise ``error`` (the ``__cause__`` of
        BrokenResourceError) once the bytes already received were read, unless
        the stream has ended already. Used by reconnect's idle timeout."""
        self._engine.end_reader(error)

    @property
    def close_code(self) -> int | None:
        """The peer's close code: None while open, 1006 if the connection was lost."""
        return self._engine.close_code

    @property
    def close_reason(self) -> str | None:
        """The peer's close reason: None while open, "" if none was received."""
        return self._engine.close_reason

    def _close_frames(self) -> CloseFrames:
        """The closing handshake so far, for the reconnect loop (package-internal)."""
        return self._engine.close_frames()

    # Background tasks

    async def _run(self) -> None:
        cause: BaseException | None = None
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._flusher)
                    nursery.start_soon(self._timer)
                    with self._reader_scope:
                        cause = await self._reader()
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.transport_stream)
            self._engine.connection_lost(cause)
            self._space_lot.unpark_all()
            self._timer_lot.unpark_all()
            self._closed.set()

    async def _reader(self) -> BaseException | None:
        """Read the socket until the connection ends; never waits on a sender."""
        engine = self._engine
        ws = self._ws
        while ws.state is not CLOSED:
            if engine.should_pause():
                while engine.should_pause():
                    await self._space_lot.park()  # read backpressure: stop reading
                self.stats.read_resumed_at = trio.current_time()
            try:
                data = await self.transport_stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                engine.receive_eof()
                return exc
            if not data:
                engine.receive_eof()
                return None
            engine.receive_data(data, trio.current_time())
            self._take_output()
        return None

    def _take_output(self) -> None:
        """After input: queue what websockets answered (pong, close) for the flusher,
        and re-arm the timer if the engine's deadline moved."""
        writes = self._engine.data_to_send()
        if writes:
            self._outbox.extend(writes)
            self._flush_lot.unpark_all()
        if self._engine.deadline != self._armed:
            self._timer_lot.unpark_all()

    _armed = math.inf  # the deadline the timer task sleeps until

    async def _timer(self) -> None:
        """Sleep until the engine's deadline (close timeout, keepalive) and act on it."""
        engine = self._engine
        while True:
            self._armed = deadline = engine.deadline
            with trio.move_on_at(deadline):
                await self._timer_lot.park()
            if trio.current_time() < deadline:
                continue  # re-armed
            if engine.timer(trio.current_time()):
                if len(engine.buffer) > self._options.limit:
                    logger.info(
                        "the application left %d received bytes unread while closing "
                        "(reading was paused)",
                        len(engine.buffer),
                    )
                self._reader_scope.cancel()  # drop TCP: _run closes it
                return
            self._take_output()

    async def _flusher(self) -> None:
        while True:
            if not self._outbox:  # checked before parking: no lost wakeup
                await self._flush_lot.park()
            async with self._send_lock:
                try:
                    await self._send_pending()
                except trio.ClosedResourceError:
                    return  # closed by aclose()
                except trio.BrokenResourceError:
                    if not self._send_broken:
                        return  # the reader sees the end of the connection
                    # Sending is broken: keep discarding what websockets queues.

    def _check_sendable(self) -> None:
        """Raise if a frame can no longer be written (call before queueing one)."""
        if self._engine.closed_locally:
            raise trio.ClosedResourceError("this stream was closed")
        if self._send_broken:
            raise trio.BrokenResourceError(
                "a send was cancelled in the middle of a frame, so the peer can no longer "
                "parse what follows: nothing more can be sent on this stream; close it "
                "(aclose() drops the connection at once) and reconnect"
            )

    async def _send_pending(self) -> None:
        """Write what websockets queued; call with the send lock held.

        A write interrupted once it began (cancelled, or any other exception
        than the connection failing) may have left part of a frame on the wire.
        Then sending is broken, following trio's convention (as
        :class:`trio.SSLStream`): what websockets queued and every later frame
        (data, pong, ping, close) is discarded instead of being written into
        the cut frame, later sends raise :exc:`trio.BrokenResourceError` and
        :meth:`aclose` drops the connection at once. Callers check for
        cancellation before queueing a frame, so a send cancelled before it
        wrote anything leaves the stream usable.
        """
        writes = self._engine.data_to_send()
        if self._outbox:
            writes, self._outbox = self._outbox + writes, []
        if self._send_broken:
            self._check_sendable()  # never into the cut frame
        for data in writes:
            try:
                if data:
                    await self.transport_stream.send_all(data)
                elif isinstance(self.transport_stream, trio.abc.HalfCloseableStream):
                    await self.transport_stream.send_eof()
                else:  # TLS: no half-close
                    await trio.aclose_forcefully(self.transport_stream)
            except trio.ClosedResourceError:
                if self._engine.closed_locally:
                    raise
                raise trio.BrokenResourceError("the connection is closed") from None
            except trio.BrokenResourceError as exc:
                raise _broken(exc, "the connection is broken") from None
            except BaseException:
                self._send_broken = True
                logger.info(
                    "a send was interrupted in the middle of a frame: the stream can no "
                    "longer send (pongs, pings and the close frame are dropped too)"
                )
                raise

    # trio.abc.ReceiveStream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Receive up to ``max_bytes`` (default 64 KiB); ``b""`` after the peer's close.

        Raises:
            trio.BusyResourceError: another task is receiving.
            trio.ClosedResourceError: this stream was closed with :meth:`aclose`.
            trio.BrokenResourceError: a text frame, a violation or a lost
                connection, after every byte received before it (see ``__cause__``).
        """
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)  # TypeError for 1.5
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving from this stream")
        self._receiving = True
        engine = self._engine
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            parked = False
            while not len(engine.buffer):
                if engine.closed_locally:
                    raise trio.ClosedResourceError("this stream was closed")
                if engine.read_error is not None:
                    raise _broken(engine.read_error, "the WebSocket connection failed")
                if engine.ended or engine.lost:
                    if not parked:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                await self._data_lot.park()
                parked = True
            if engine.closed_locally:
                raise trio.ClosedResourceError("this stream was closed")
            if not parked:
                await trio.lowlevel.cancel_shielded_checkpoint()
            data, resume = engine.take(max_bytes or _DEFAULT_MAX_BYTES)
            if resume:
                self._space_lot.unpark_all()
            return data
        finally:
            self._receiving = False

    # trio.abc.SendStream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` as binary frames of at most ``max_frame_size`` bytes.

        Cancellation: frames are written whole or not at all as far as the
        peer can tell. Cancelled before it began writing a frame, ``send_all``
        leaves the stream usable (the frames before it were sent whole).
        Cancelled while a frame was being written, it leaves the stream
        *broken*, as :class:`trio.SSLStream` does: the peer got part of a
        frame, so nothing more is written on the connection (no data, pong,
        ping or close frame), later sends raise
        :exc:`trio.BrokenResourceError` and :meth:`aclose` drops TCP at once.
        Receiving is not affected.

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.ClosedResourceError: this stream was closed with :meth:`aclose`.
            trio.BrokenResourceError: the WebSocket is closing or closed (the
                peer's close frame arrived, or :meth:`send_close` was called),
                or an earlier send was cancelled in the middle of a frame.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        engine = self._engine
        try:
            self._check_sendable()
            size = self._options.max_frame_size
            view: bytes | memoryview
            if type(data) is bytes and len(data) <= size:
                view = data  # one frame, framed as it is
            else:
                view = memoryview(data).cast("B")
            lock = self._send_lock
            if lock.locked():
                await lock.acquire()  # the flusher, a ping or a close is writing
            else:
                # Taken without a schedule point of its own (trio.Lock.acquire
                # yields even when free): writing the frame below is one.
                lock.acquire_nowait()
            try:
                if not len(view):
                    await trio.lowlevel.checkpoint()
                for start in range(0, len(view), size):
                    self._check_sendable()
                    refusal = engine.send_refusal()
                    if refusal is not None:
                        raise trio.BrokenResourceError(refusal)
                    # Cancelled here, nothing of this frame was written: the
                    # stream stays usable (frames before it were sent whole).
                    await trio.lowlevel.checkpoint_if_cancelled()
                    engine.send(view[start : start + size] if start or len(view) > size else view)
                    await self._send_pending()
            finally:
                lock.release()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        try:
            self._check_sendable()
            async with self._send_lock:
                self._check_sendable()
                try:
                    await self.transport_stream.wait_send_all_might_not_block()
                except trio.ClosedResourceError:
                    if self._engine.closed_locally:
                        raise
                    raise trio.BrokenResourceError("the connection is closed") from None
        finally:
            self._sending = False

    # Closing

    async def send_close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame; keep receiving until the peer's close, then ``b""``.

        The peer has ``close_timeout`` seconds to answer; then TCP is dropped,
        whether or not the application reads meanwhile (unread data past
        ``limit`` does not hold the deadline back). Without the peer's close
        frame, ``wait_closed()`` returns, the events end with
        ``Closed(1006, clean=False)`` and ``receive_some()`` raises
        :exc:`trio.BrokenResourceError` after the bytes already received.

        Raises:
            trio.ClosedResourceError: this stream was closed with :meth:`aclose`.
            trio.BrokenResourceError: an earlier send was cancelled in the
                middle of a frame (no close frame can follow it), or the
                connection failed while the close frame was written.
        """
        check_close(code, reason)
        self._check_sendable()
        async with self._send_lock:
            self._check_sendable()
            if self._ws.state is OPEN:
                await trio.lowlevel.checkpoint_if_cancelled()
                self._engine.send_close(code, reason, trio.current_time())
                self._timer_lot.unpark_all()
                await self._send_pending()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Perform the closing handshake with ``code``/``reason``, bounded by ``close_timeout``.

        Idempotent. Cancellation-safe: a cancelled ``aclose`` still closes the
        TCP connection. Unread received data is discarded (nothing can read
        it any more). After a send that was cancelled in the middle of a
        frame, no close frame can be sent: TCP is closed at once.
        """
        check_close(code, reason)
        engine = self._engine
        if engine.closed_locally:
            await trio.lowlevel.checkpoint()
            return
        busy = self._sending or engine.lost or self._send_broken
        engine.close(code, reason, trio.current_time(), discard=True, send=not busy)
        self._data_lot.unpark_all()
        self._space_lot.unpark_all()
        self._timer_lot.unpark_all()
        try:
            if not busy:
                # A send blocked (or cut short) mid-frame cannot be followed by
                # a close frame: then the connection is dropped at once.
                with trio.move_on_after(self._options.close_timeout):
                    try:
                        async with self._send_lock:
                            await self._send_pending()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    if not self._send_broken:
                        await self._closed.wait()
        finally:
            self._cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.transport_stream)

    async def wait_closed(self) -> None:
        """Wait until the connection is over (TCP closed)."""
        await self._closed.wait()

    # Extras

    async def ping(self, data: bytes = b"", *, timeout: float | None = None) -> float:
        """Send a ping; return the round-trip time in seconds when its pong arrives.

        An empty ``data`` sends a unique random payload.

        Raises:
            trio.TooSlowError: no pong within ``timeout`` (default
                ``ping_timeout``, else 20 s).
            trio.BrokenResourceError: the connection ended first.
            ValueError: a ping with this payload is already waiting for its pong.
        """
        engine = self._engine
        if engine.closed_locally:
            raise trio.ClosedResourceError("this stream was closed")
        done = trio.Event()
        result: list[float | None] = []

        def waiter(latency: float | None) -> None:
            result.append(latency)
            done.set()

        async with self._send_lock:
            self._check_sendable()
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                payload = engine.ping(data, trio.current_time(), waiter)
            except ConnectionResetError:
                raise trio.BrokenResourceError("cannot ping: the WebSocket is closing") from None
            await self._send_pending()
        try:
            with trio.fail_after(timeout if timeout is not None else self._ping_timeout or 20.0):
                await done.wait()
        finally:
            engine.forget_ping(payload)
        latency = result[0]
        if latency is None:
            raise trio.BrokenResourceError("cannot ping: the connection closed first")
        return latency

    def events(self) -> EventStream[Event]:
        """Subscribe to events from now on: ``async for event in stream.events()``.

        Bounded per subscriber (``max_events``, oldest dropped and counted);
        never slows the data. Iteration ends after ``Closed``.
        """
        return EventStream(self._hub)


class EventStream(Generic[T]):
    """An asynchronous iterator of one subscriber's items (events, or statuses), for trio."""

    def __init__(self, hub: EventHub[T]) -> None:
        self._lot = trio.lowlevel.ParkingLot()
        self._hub = hub
        self._sub: Subscription[T] = hub.subscribe(self._wake)

    def _wake(self) -> None:
        self._lot.unpark_all()

    @property
    def dropped(self) -> int:
        """Items this subscriber lost because it fell behind."""
        return self._sub.dropped

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        sub = self._sub
        while True:
            item = sub.pop()
            if item is not None:
                await trio.lowlevel.checkpoint()
                return item
            if sub.finished():
                raise StopAsyncIteration
            await self._lot.park()

    def close(self) -> None:
        """Unsubscribe; iteration ends."""
        self._hub.unsubscribe(self._sub)
