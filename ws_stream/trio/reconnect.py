"""reconnecting(): a fresh WsStream for each connection, trio flavour."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Self

import trio

from ..reconnect import (
    ConnectionState,
    IdleTimeoutError,
    ReconnectMachine,
    ReconnectPolicy,
    keepalive_options,
)
from ._util import open_collapsing_nursery
from .api import connect_stream
from .stream import EventStream, WsStream

__all__ = ["Reconnecting", "reconnecting"]


class Reconnecting:
    """``async for stream in conn:`` - a new :class:`WsStream` per connection.

    Same behaviour as the asyncio :class:`ws_stream.Reconnecting`: the old
    stream is closed when the body's iteration ends, the next one opens after
    the backoff delay, fatal first failures raise at once, ``max_attempts``
    consecutive failures raise the last error. Made by :func:`reconnecting`.
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
        self._watchdog: trio.CancelScope | None = None
        self._idle_error: IdleTimeoutError | None = None
        self._closed = False
        self._delay = 0.0

    @property
    def state(self) -> ConnectionState:
        return self._machine.snapshot()

    @property
    def stream(self) -> WsStream | None:
        return self._stream

    def is_healthy(self) -> bool:
        return self._machine.is_healthy(trio.current_time())

    def states(self) -> EventStream[ConnectionState]:
        """Status changes from now on, as snapshots; bounded, ends after ``closed``."""
        return EventStream(self._machine.hub)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WsStream:
        if self._stream is not None:
            error = await self._finish_current()
            self._delay = self._machine.disconnected(error, trio.current_time())
        while True:
            if self._delay and not self._closed:
                await trio.sleep(self._delay)
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
                    self._delay = self._machine.failed(exc)
                except BaseException:
                    self._closed = True
                    raise
                continue
            self._stream = stream
            self._idle_error = None
            self._machine.connected(trio.current_time(), stream.stats)
            if self.policy.idle_timeout is not None:
                self._watchdog = trio.CancelScope()
                self._nursery.start_soon(self._watch_idle, stream, self._watchdog)
            return stream

    async def _watch_idle(self, stream: WsStream, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                deadline = self._machine.idle_deadline()
                if deadline is None:
                    return
                if trio.current_time() >= deadline:
                    break
                await trio.sleep_until(deadline)
            self._idle_error = self._machine.idle_error()
            # The reader then sees b"" once the peer answers, or a broken
            # stream when it does not within close_timeout.
            with (
                trio.move_on_after(stream_close_timeout(stream)),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await stream.send_close(1001, "idle timeout")

    async def _finish_current(self) -> BaseException | None:
        stream, self._stream = self._stream, None
        assert stream is not None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        await stream.aclose()
        return self._idle_error or stream.error

    async def aclose(self) -> None:
        """Close the current stream (1000) and end the iteration."""
        if self._closed and self._stream is None:
            return
        self._closed = True
        if self._stream is not None:
            error = await self._finish_current()
            self._machine.disconnected(error, trio.current_time(), final=True)
        self._machine.close()


def stream_close_timeout(stream: WsStream) -> float:
    return stream.close_timeout


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
