"""reconnecting(): a fresh WsStream for each connection, trio flavour."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any, Self

import trio

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
from ._util import open_collapsing_nursery
from .api import connect_stream
from .stream import EventStream, WsStream

__all__ = ["Reconnecting", "reconnecting"]


class Reconnecting:
    """``async for stream in conn:`` - a new :class:`WsStream` per connection.

    Same behaviour as the asyncio :class:`ws_stream.Reconnecting`: the old
    stream is closed when the body's iteration ends, the next one opens once
    the backoff delay (counted from the end of the old stream) has passed,
    fatal first failures raise at once, ``max_attempts`` consecutive failures
    raise the last error; :attr:`state` leaves ``connected`` as soon as the
    stream ends; an idle timeout makes ``receive_some()`` raise
    :exc:`trio.BrokenResourceError` caused by :exc:`~ws_stream.IdleTimeoutError`
    after the bytes already received. Made by :func:`reconnecting`.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        uri: str,
        policy: ReconnectPolicy | None,
        options: dict[str, Any],
    ) -> None:
        self.uri = uri
        self.policy = policy if policy is not None else ReconnectPolicy()
        self._options = keepalive_options(self.policy, options)
        self._nursery = nursery
        self._machine = ReconnectMachine(self.policy, uri)
        self._stream: WsStream | None = None
        self._watch: Subscription[Event] | None = None
        self._watchdog: trio.CancelScope | None = None
        self._idle_error: IdleTimeoutError | None = None
        self._idle_closed: trio.Event | None = None  # set once the idle close frame is out
        self._closed = False
        self._retry_at = -math.inf

    @property
    def state(self) -> ConnectionState:
        return self._machine.snapshot()

    @property
    def stream(self) -> WsStream | None:
        return self._stream

    def is_healthy(self) -> bool:
        stream = self._stream
        paused = stream is not None and stream.reading_paused
        return self._machine.is_healthy(trio.current_time(), reading_paused=paused)

    def states(self) -> EventStream[ConnectionState]:
        """Status changes from now on, as snapshots; bounded, ends after ``closed``."""
        return EventStream(self._machine.hub)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WsStream:
        if self._stream is not None:
            await self._finish_current()
        while True:
            if not self._closed:
                await trio.sleep_until(self._retry_at)
            if self._closed:
                raise StopAsyncIteration
            self._machine.attempt()
            stream: WsStream | None = None
            try:
                stream = await connect_stream(self._nursery, self.uri, **self._options)
                if self.policy.on_connect is not None:
                    await self.policy.on_connect(stream)
            except Exception as exc:
                if stream is not None:
                    await stream.aclose(1011, "on_connect failed")
                try:
                    self._retry_at = trio.current_time() + self._machine.failed(exc)
                except BaseException:
                    self._closed = True
                    raise
                continue
            self._stream = stream
            self._idle_error = None
            self._machine.connected(trio.current_time(), stream.stats)
            self._watch_end(stream)
            if self.policy.idle_timeout is not None:
                self._watchdog = trio.CancelScope()
                self._nursery.start_soon(self._watch_idle, stream, self._watchdog)
            return stream

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
        frames = stream._close_frames()
        now = trio.current_time()
        delay = self._machine.disconnected(
            self._idle_error or stream.error,
            now,
            close_rcvd=frames.received,
            close_sent=frames.sent,
            rcvd_then_sent=frames.received_first,
            final=self._closed,
        )
        if delay is not None:
            self._retry_at = now + delay

    async def _watch_idle(self, stream: WsStream, scope: trio.CancelScope) -> None:
        verdict: float | IdleTimeoutError = math.inf
        with scope:  # cancelled when the body's iteration ends first
            while True:
                verdict = self._machine.idle_check(
                    trio.current_time(), reading_paused=stream.reading_paused
                )
                if isinstance(verdict, IdleTimeoutError) or verdict == math.inf:
                    break
                await trio.sleep_until(verdict)
        if not isinstance(verdict, IdleTimeoutError):
            return  # no timeout, the stream ended, or the iteration ended first
        # Decided: from here on, not cancelled by the end of the body's
        # iteration, which waits for this close (and then sends no 1000).
        self._idle_error = verdict
        self._idle_closed = closed = trio.Event()
        self._ended(stream)
        # The reader gets the error after the bytes it buffered, never a clean
        # EOF: the peer did not end the stream, we gave up on it.
        stream._end_reader(verdict)
        try:
            with (
                trio.move_on_after(stream.close_timeout),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await stream.send_close(1001, "idle timeout")
        finally:
            closed.set()

    async def _finish_current(self) -> None:
        stream = self._stream
        assert stream is not None
        if self._watchdog is not None:
            self._watchdog.cancel()  # unless it decided the link is idle:
            self._watchdog = None
        if self._idle_closed is not None:
            await self._idle_closed.wait()  # its 1001 first (bounded by close_timeout)
            self._idle_closed = None
        await stream.aclose()
        self._ended(stream)  # unless reported already
        if self._watch is not None:
            stream._hub.unsubscribe(self._watch)
            self._watch = None
        self._stream = None

    async def aclose(self) -> None:
        """Close the current stream (1000) and end the iteration."""
        if self._closed and self._stream is None:
            return
        self._closed = True
        if self._stream is not None:
            await self._finish_current()
        self._machine.close()


def _ended(stream: WsStream) -> bool:
    """The stream is over for its reader: the peer's close frame, a failure, or TCP gone."""
    return stream_over(stream._close_frames(), stream.error)


@contextlib.asynccontextmanager
async def reconnecting(
    uri: str, *, policy: ReconnectPolicy | None = None, **options: Any
) -> AsyncIterator[Reconnecting]:
    """``async with reconnecting(uri, policy=...) as conn: async for stream in conn:``.

    The ``async with`` owns the nursery the streams run in (trio's rule);
    ``options`` are those of :func:`open_websocket_stream`. ``on_connect``
    receives the new :class:`WsStream`.
    """
    async with open_collapsing_nursery() as nursery:
        conn = Reconnecting(nursery, uri, policy, options)
        try:
            yield conn
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()
