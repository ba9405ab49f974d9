"""yamux sessions on trio: every stream a ``trio.abc.HalfCloseableStream``.

The same :class:`~ws_stream.mux._machine.Machine` as the asyncio shell
decides everything; this shell only moves bytes and wakes tasks:

* a reader task feeds the machine what the stream under the session (a
  :class:`ws_stream.trio.WsStream`, or any ``trio.abc.Stream``) receives;
* a sender task writes what the machine has to send; a stream's
  ``send_all()`` returns once its bytes were handed to the stream under the
  session (backpressure), and waits while the stream's window is closed;
* ``receive_some()`` grants window as it hands bytes over: a stream nobody
  reads stops its peer after one window, and the others go on.

::

    async with ws_stream.mux.trio.open_session(ws, client=True) as session:
        stream = await session.open_stream()
        await stream.send_all(b"hello")
        await stream.send_eof()
        print(await stream.receive_some())
"""

from __future__ import annotations

import contextlib
import operator
from collections import deque
from collections.abc import AsyncIterator
from typing import Final

import trio

from ._machine import (
    CLOSE_TIMEOUT,
    DEFAULT_WINDOW,
    Data,
    Eof,
    GoneAway,
    Machine,
    MuxError,
    Opened,
    Pong,
    Reset,
    SessionFailed,
    Writable,
)

__all__ = ["MuxStream", "Session", "open_session"]

#: Bytes received from the stream under the session at once.
_READ_SIZE: Final = 256 * 1024
#: Default ``receive_some()`` size.
_RECEIVE_SIZE: Final = 64 * 1024


def _reset_error(stream: int) -> ConnectionResetError:
    return ConnectionResetError(f"mux stream {stream} was reset")


class MuxStream(trio.abc.HalfCloseableStream):
    """One yamux stream as a trio stream.

    ``send_all`` raises :exc:`trio.BrokenResourceError` once the stream was
    reset (by either side, :meth:`reset` included) or the session ended (the
    cause chained), ``ClosedResourceError`` after :meth:`aclose` or, for
    sends, :meth:`send_eof`. ``receive_some`` returns the bytes received,
    then ``b""`` after the peer's FIN, and raises ``BrokenResourceError`` on a
    reset, never a clean EOF; a stream closed both ways (both FINs crossed)
    is over, and its unread bytes and EOF stay readable when the session
    ends later. Tasks waiting in ``receive_some`` or ``send_all`` wake with
    the same errors.
    """

    def __init__(self, session: Session, stream: int) -> None:
        self._session = session
        self.stream = stream
        self._received: deque[bytes] = deque()
        self._eof = False
        self._error: BaseException | None = None
        self._closed = False
        self._eof_sent = False
        self._readable = trio.Event()
        self._writable = trio.Event()
        self._send_lock = trio.Lock()
        self._receive_lock = trio.Lock()

    # The session's calls

    def _data(self, data: bytes) -> None:
        self._received.append(data)
        self._readable.set()

    def _end(self, error: BaseException | None) -> None:
        if error is None:
            self._eof = True
        elif self._error is None:
            self._error = error
        self._readable.set()
        self._writable.set()

    def _wake_writer(self) -> None:
        self._writable.set()

    # trio.abc.Stream

    def _check_sendable(self) -> None:
        if self._closed or self._eof_sent:
            raise trio.ClosedResourceError("the mux stream is closed for sending")
        if self._error is not None:
            raise trio.BrokenResourceError(str(self._error)) from self._error

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._send_lock.locked():
            raise trio.BusyResourceError("another task is sending on this mux stream")
        async with self._send_lock:
            await trio.lowlevel.checkpoint()  # a checkpoint, even with room in the window
            view = memoryview(bytes(data)) if not isinstance(data, bytes) else memoryview(data)
            session = self._session
            while True:
                self._check_sendable()
                sent = session._send_data(self.stream, view) if view else 0
                view = view[sent:]
                if not view:
                    break
                if sent == 0:
                    self._writable = trio.Event()
                    if session.machine.send_window(self.stream) == 0:
                        await self._writable.wait()
            await session._flushed()
            self._check_sendable()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()
        while self._session.machine.send_window(self.stream) == 0:
            self._check_sendable()
            self._writable = trio.Event()
            await self._writable.wait()

    async def send_eof(self) -> None:
        """Half-close (FIN): the peer reads EOF; this side may still receive."""
        async with self._send_lock:
            await trio.lowlevel.checkpoint()
            if self._closed or self._eof_sent:
                return
            self._eof_sent = True
            self._session._close_stream(self.stream)
            await self._session._flushed()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receive_lock.locked():
            raise trio.BusyResourceError("another task is receiving on this mux stream")
        async with self._receive_lock:
            await trio.lowlevel.checkpoint()  # a checkpoint, even with bytes waiting
            size = _RECEIVE_SIZE if max_bytes is None else operator.index(max_bytes)
            if size < 1:
                raise ValueError("max_bytes must be at least 1")
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("the mux stream is closed")
                if self._received:
                    head = self._received[0]
                    if len(head) <= size:
                        self._received.popleft()
                    else:
                        self._received[0] = head[size:]
                        head = head[:size]
                    self._session._consumed(self.stream, len(head))
                    return head
                if self._error is not None:
                    raise trio.BrokenResourceError(str(self._error)) from self._error
                if self._eof:
                    return b""
                self._readable = trio.Event()
                await self._readable.wait()

    async def aclose(self) -> None:
        """Close both ways: FIN if not sent; bytes that still arrive reset the stream (as TCP).

        Closed at once, even if cancelled (``trio.aclose_forcefully``): the
        FIN or RST is queued before the first checkpoint. A peer that does not
        answer with its own FIN within ``CLOSE_TIMEOUT`` (10 s) gets an RST,
        and the stream's slot is freed.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        unread = bool(self._received)
        self._received.clear()
        self._readable.set()
        self._writable.set()
        if unread:
            self._session._reset(self.stream)  # unread bytes: a reset, as TCP
        elif self._error is None:
            self._session.machine.stop_reading(self.stream)  # later bytes reset it
            if not self._eof_sent:
                self._session._close_stream(self.stream)
            self._session._reset_later(self.stream)  # unless the peer's FIN comes
        await trio.lowlevel.checkpoint()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._session._flushed()

    async def reset(self) -> None:
        """Reset the stream (RST): both directions end at once, unread bytes are dropped.

        From then on (tasks waiting included) ``send_all`` and
        ``receive_some`` raise :exc:`trio.BrokenResourceError` (the reset),
        unless the stream was closed already (``ClosedResourceError``).
        """
        self._received.clear()
        self._session._reset(self.stream)
        # Also when the session had forgotten the stream (ended both ways, or the session over).
        self._end(_reset_error(self.stream))
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._session._flushed()


class Session:
    """One yamux session on trio (:func:`open_session` runs it)."""

    def __init__(self, transport: trio.abc.Stream, machine: Machine) -> None:
        self._transport = transport
        self.machine = machine
        self._streams: dict[int, MuxStream] = {}
        self._accepted: deque[MuxStream] = deque()  # opened by the peer, not yet accepted
        self._acceptable = trio.Event()  # set (and renewed) when accept() may go on
        self._pings: dict[int, tuple[trio.Event, float, list[float]]] = {}
        self._wake = trio.Event()
        self._written = 0  # output batches written
        self._queued = 0  # output batches made
        self._progress = trio.Event()
        self._out: list[bytes | memoryview] = []
        self.error: SessionFailed | None = None
        self._nursery: trio.Nursery | None = None  # the session's tasks (open_session)

    # Moving bytes

    async def _read(self) -> None:
        reason = "the connection under the session closed"
        try:
            while self.machine.failed is None:
                data = await self._transport.receive_some(_READ_SIZE)
                if not data:
                    break
                self.machine.receive_data(data)
                self._process()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = f"the connection under the session failed: {exc}"
        self.machine.lost(reason)
        self._process()

    async def _send(self) -> None:
        try:
            while True:
                if not self._out:
                    if self.machine.failed is not None:
                        return
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                out, self._out = self._out, []
                batch = self._queued
                self.machine.output_blocked = True  # what comes meanwhile waits
                await self._transport.send_all(b"".join(out))
                self.machine.output_blocked = False
                self._written = batch
                self._wake_flushed()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.machine.lost(f"the connection under the session failed: {exc}")
            self._process()

    def _wake_flushed(self) -> None:
        # Every waiter waits on the current event: set it, then make the next.
        self._progress.set()
        self._progress = trio.Event()

    def _output(self) -> None:
        frames = self.machine.data_to_send()
        if frames:
            self._out += frames
            self._queued += 1
            self._wake.set()

    async def _flushed(self) -> None:
        """Wait until what was queued so far is written (or the session ended)."""
        target = self._queued
        while self._written < target and self.error is None:
            await self._progress.wait()
        if self.error is not None and self._written < target:
            raise trio.BrokenResourceError(f"mux session ended: {self.error.reason}")

    def _process(self) -> None:
        for event in self.machine.events():
            if isinstance(event, Data):
                stream = self._streams.get(event.stream)
                if stream is not None:
                    stream._data(event.data)
            elif isinstance(event, Writable):
                stream = self._streams.get(event.stream)
                if stream is not None:
                    stream._wake_writer()
            elif isinstance(event, Opened):
                stream = self._streams[event.stream] = MuxStream(self, event.stream)
                self._accepted.append(stream)
                self._wake_acceptors()
            elif isinstance(event, Eof):
                stream = self._streams.get(event.stream)
                if stream is not None:
                    stream._end(None)
                    if event.stream not in self.machine.streams:
                        # Closed both ways: over, whatever happens to the session later.
                        del self._streams[event.stream]
            elif isinstance(event, Reset):
                stream = self._streams.pop(event.stream, None)
                if stream is not None:
                    stream._end(_reset_error(event.stream))
            elif isinstance(event, Pong):
                waiter = self._pings.pop(event.opaque, None)
                if waiter is not None:
                    waiter[2].append(trio.current_time() - waiter[1])
                    waiter[0].set()
            elif isinstance(event, SessionFailed):
                self.error = event
                error = ConnectionAbortedError(f"mux session ended: {event.reason}")
                for stream in self._streams.values():
                    stream._end(error)
                self._streams.clear()
                for waiter in self._pings.values():
                    waiter[0].set()
                self._wake_acceptors()
                self._wake_flushed()
                self._wake.set()
            elif isinstance(event, GoneAway):
                self._wake_acceptors()  # no new streams: accept() ends once none is queued
        self._output()

    def _wake_acceptors(self) -> None:
        # Every waiter waits on the current event: set it, then make the next.
        self._acceptable.set()
        self._acceptable = trio.Event()

    def _consumed(self, stream: int, count: int) -> None:
        self.machine.consumed(stream, count)
        self._output()

    def _close_stream(self, stream: int) -> None:
        self.machine.close_stream(stream)
        if stream not in self.machine.streams:
            self._streams.pop(stream, None)
        self._output()

    def _reset_later(self, stream: int) -> None:
        """Reset a closed stream after CLOSE_TIMEOUT if the peer's FIN has not ended it."""
        if stream in self.machine.streams and self._nursery is not None:
            self._nursery.start_soon(self._reset_after, stream)

    async def _reset_after(self, stream: int) -> None:
        await trio.sleep(CLOSE_TIMEOUT)
        # Stream ids are never reused: still there, it is the same stream.
        if stream in self.machine.streams and self.machine.failed is None:
            self._reset(stream)

    def _reset(self, stream: int) -> None:
        self.machine.reset_stream(stream)
        self._process()  # its own Reset: the stream's waiting tasks wake

    def _send_data(self, stream: int, data: memoryview) -> int:
        sent = self.machine.send(stream, data)
        self._output()
        return sent

    # Public API

    async def open_stream(self) -> MuxStream:
        """Open a stream (data may be sent before the peer's ACK).

        Raises:
            MuxError: the session ended, is going away, or has ``max_streams`` open.
        """
        stream_id = self.machine.open_stream()
        stream = self._streams[stream_id] = MuxStream(self, stream_id)
        self._output()
        await trio.lowlevel.checkpoint()
        return stream

    async def accept(self) -> MuxStream:
        """The next stream the peer opens (those it opened before going away first).

        Raises:
            MuxError: the session ended (or the peer went away) with no stream waiting.
        """
        await trio.lowlevel.checkpoint()
        while not self._accepted:
            self.machine.check_incoming()
            await self._acceptable.wait()
        stream = self._accepted.popleft()
        self.machine.take(stream.stream)
        return stream

    def __aiter__(self) -> AsyncIterator[MuxStream]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[MuxStream]:
        while True:
            try:
                yield await self.accept()
            except MuxError:
                return

    async def ping(self, timeout: float = 30.0) -> float:
        """A yamux ping's round trip, in seconds.

        Raises:
            MuxError: the session ended first.
            trio.TooSlowError: no answer within ``timeout`` seconds.
        """
        opaque = self.machine.ping()
        event, result = trio.Event(), list[float]()
        self._pings[opaque] = (event, trio.current_time(), result)
        self._output()
        try:
            with trio.fail_after(timeout):
                await event.wait()
        finally:
            self._pings.pop(opaque, None)  # answered, ended, timed out or cancelled
        if not result:
            raise MuxError(f"the session ended: {self.error.reason if self.error else ''}")
        return result[0]

    def go_away(self) -> None:
        """Refuse new streams from now on (the peer is told); open streams go on."""
        self.machine.go_away()
        self._output()


@contextlib.asynccontextmanager
async def open_session(
    transport: trio.abc.Stream,
    *,
    client: bool,
    window: int = DEFAULT_WINDOW,
    max_streams: int = 1024,
    backlog: int = 256,
) -> AsyncIterator[Session]:
    """Run a yamux session over ``transport`` (a :class:`ws_stream.trio.WsStream`) while inside.

    ``client``, ``window``, ``max_streams`` and ``backlog`` as in
    :func:`ws_stream.mux.open_session`. On exit, the session goes away, its
    open streams are reset (their tasks wake with ``BrokenResourceError``),
    it ends (``session.error`` says "the session was closed"; ``open_stream()``
    and ``ping()`` raise :exc:`MuxError`, and so does ``accept()`` once the
    streams the peer opened before are handed out, reset), and its tasks end;
    ``transport`` stays open (close it yourself).
    """
    session = Session(
        transport, Machine(client=client, window=window, max_streams=max_streams, backlog=backlog)
    )
    async with trio.open_nursery() as nursery:
        session._nursery = nursery
        nursery.start_soon(session._read)
        nursery.start_soon(session._send)
        try:
            yield session
        finally:
            if session.machine.failed is None:
                session.go_away()
                for stream_id in list(session.machine.streams):
                    session.machine.reset_stream(stream_id)
                session._process()  # their Resets wake their tasks
                with trio.move_on_after(5) as scope:
                    scope.shield = True
                    await session._flushed()
                session.machine.lost("the session was closed")
                session._process()  # pings and accept() waiting wake
            nursery.cancel_scope.cancel()
