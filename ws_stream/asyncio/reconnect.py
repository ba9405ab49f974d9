"""reconnecting(): a fresh reader/writer pair for each connection, asyncio flavour."""

from __future__ import annotations

import asyncio
import contextlib
import math
from types import TracebackType
from typing import Any, Self

from .._policy import Subscription
from ..events import Event
from ..reconnect import (
    ConnectionState,
    IdleTimeoutError,
    ReconnectMachine,
    ReconnectPolicy,
    keepalive_options,
    stream_over,
)
from .client import connect_stream
from .stream import EventStream, WsStream

__all__ = ["Reconnecting", "reconnecting"]


Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Reconnecting:
    """``async for reader, writer in ws_stream.reconnecting(uri, policy=...):``.

    Each iteration yields the pair of a *new* connection: bytes of one
    connection never appear in the next. When the body's iteration ends (the
    connection ended, or the body ``continue``\\ s), the old connection is
    closed and the next one is opened once the backoff delay, counted from
    the end of the old stream, has passed.

    Fatal failures on the first attempt (invalid URI, HTTP 401/403/404, TLS
    certificate rejected) raise at once; transient ones are retried;
    ``max_attempts`` consecutive failures raise the last error. Close with
    :meth:`aclose` (or ``async with``).

    :attr:`state` leaves ``connected`` as soon as the stream ends (the reader
    got EOF or an error, or the connection closed). With an ``idle_timeout``,
    a connection on which no frame arrived for that long *while the stream
    was reading* is closed with 1001 and the reader raises
    :exc:`~ws_stream.IdleTimeoutError` after the bytes it already buffered.
    """

    def __init__(self, uri: str, *, policy: ReconnectPolicy | None = None, **options: Any) -> None:
        self.uri = uri
        self.policy = policy if policy is not None else ReconnectPolicy()
        self._options = keepalive_options(self.policy, options)
        self._machine = ReconnectMachine(self.policy, uri)
        self._stream: WsStream | None = None
        self._watch: Subscription[Event] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._idle_error: IdleTimeoutError | None = None
        self._closed = False
        self._retry_at = -math.inf

    # State

    @property
    def state(self) -> ConnectionState:
        """A snapshot: status, counters, last error, current connection's figures."""
        return self._machine.snapshot()

    @property
    def stream(self) -> WsStream | None:
        """The :class:`WsStream` of the pair last handed out, until the next iteration."""
        return self._stream

    def is_healthy(self) -> bool:
        """Connected, and (with an idle timeout) a frame arrived recently."""
        stream = self._stream
        paused = stream is not None and _reading_paused(stream)
        return self._machine.is_healthy(asyncio.get_running_loop().time(), reading_paused=paused)

    def states(self) -> EventStream[ConnectionState]:
        """Status changes from now on, as snapshots; bounded, ends after ``closed``."""
        return EventStream(self._machine.hub, asyncio.get_running_loop())

    # Iteration

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Pair:
        loop = asyncio.get_running_loop()
        if self._stream is not None:
            await self._finish_current()
        while True:
            if not self._closed and self._retry_at > loop.time():
                await asyncio.sleep(self._retry_at - loop.time())
            if self._closed:
                raise StopAsyncIteration
            self._machine.attempt()
            stream: WsStream | None = None
            try:
                stream = await connect_stream(self.uri, **self._options)
                if self.policy.on_connect is not None:
                    await self.policy.on_connect(stream.reader, stream.writer)
            except Exception as exc:
                if stream is not None:
                    await stream.close(1011, "on_connect failed")
                try:
                    self._retry_at = loop.time() + self._machine.failed(exc)
                except BaseException:
                    self._closed = True
                    raise
                continue
            self._stream = stream
            self._idle_error = None
            self._machine.connected(loop.time(), stream.stats)
            self._watch_end(stream)
            if self.policy.idle_timeout is not None:
                self._watchdog = loop.create_task(self._watch_idle(stream))
            return stream.reader, stream.writer

    def _watch_end(self, stream: WsStream) -> None:
        """Report the stream's end as it happens, before its reader wakes up.

        The stream publishes an event (CloseReceived, Error, Closed) in the
        same call that hands the reader its EOF or error; our subscription is
        woken synchronously, so the state has left CONNECTED by the time the
        reader sees the end.
        """

        def wake() -> None:
            if self._watch is not None:
                self._watch.queue.clear()  # only the moment matters
            if stream is self._stream and _ended(stream):
                self._ended(stream)

        self._watch = stream._hub.subscribe(wake)
        wake()  # it may have ended already (during on_connect)

    def _ended(self, stream: WsStream) -> None:
        loop = asyncio.get_running_loop()
        frames = stream._close_frames()
        delay = self._machine.disconnected(
            self._idle_error or stream.error,
            loop.time(),
            close_rcvd=frames.received,
            close_sent=frames.sent,
            rcvd_then_sent=frames.received_first,
            final=self._closed,
        )
        if delay is not None:
            self._retry_at = loop.time() + delay

    async def _watch_idle(self, stream: WsStream) -> None:
        loop = asyncio.get_running_loop()
        while True:
            verdict = self._machine.idle_check(loop.time(), reading_paused=_reading_paused(stream))
            if isinstance(verdict, IdleTimeoutError):
                break
            if verdict == math.inf:
                return
            await asyncio.sleep(max(0.0, verdict - loop.time()))
        error = self._idle_error = verdict
        self._ended(stream)
        # The reader gets the error after the bytes it buffered, never a clean
        # EOF: the peer did not end the stream, we gave up on it.
        stream.reader.set_exception(error)
        await stream.close(1001, "idle timeout")
        if stream.reader.exception() is not error:
            # The TCP teardown (a peer that never answers our close) must not
            # replace the reason the stream ended.
            stream.reader.set_exception(error)

    async def _finish_current(self) -> None:
        stream = self._stream
        assert stream is not None
        if self._watchdog is not None:
            if self._idle_error is None:
                self._watchdog.cancel()
            # else: it is closing with 1001 (bounded by close_timeout); let it finish.
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        await stream.close()
        self._ended(stream)  # unless reported already
        if self._watch is not None:
            stream._hub.unsubscribe(self._watch)
            self._watch = None
        self._stream = None

    # Closing

    async def aclose(self) -> None:
        """Close the current connection (1000) and end the iteration."""
        if self._closed and self._stream is None:
            return
        self._closed = True
        if self._stream is not None:
            await self._finish_current()
        self._machine.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _ended(stream: WsStream) -> bool:
    """The stream is over for its reader: the peer's close frame, a failure, or TCP gone."""
    return stream_over(stream._close_frames(), stream.error)


def _reading_paused(stream: WsStream) -> bool:
    """The stream is not reading TCP: its reader's buffer is over ``limit`` (or it is closing)."""
    return not stream.transport.is_reading()


def reconnecting(
    uri: str, *, policy: ReconnectPolicy | None = None, **options: Any
) -> Reconnecting:
    """A reconnecting client: ``async for reader, writer in reconnecting(uri, policy=...)``.

    ``options`` are those of :func:`ws_stream.open_connection`. With an
    ``idle_timeout``, ``ping_interval`` is lowered to half of it so that a
    healthy idle link stays up, and the idle timeout (not a keepalive ping
    timeout) decides when a silent link is dead.
    """
    return Reconnecting(uri, policy=policy, **options)
