"""reconnecting(): a fresh WsStream for each connection, trio flavour."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Self

import trio

from .._policy import EventHub
from ..reconnect import (
    ConnectionState,
    IdleTimeoutError,
    ReconnectMachine,
    ReconnectPolicy,
    Status,
    keepalive_options,
)
from ._util import open_collapsing_nursery
from .api import connect_stream
from .stream import EventStream, WsStream

__all__ = ["Reconnecting", "reconnecting"]

logger = logging.getLogger("ws_stream.reconnect")


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
        self._machine = ReconnectMachine(self.policy)
        self._hub = EventHub[ConnectionState](
            maxlen=256, is_final=lambda state: state.status is Status.CLOSED
        )
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
        return EventStream(self._hub)

    def _publish(self) -> None:
        self._hub.publish(self._machine.snapshot())

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WsStream:
        if self._stream is not None:
            error = await self._finish_current()
            self._delay = self._machine.disconnected(error, trio.current_time())
            self._publish()
            logger.info(
                "connection to %s ended (%s); reconnecting in %.2f s",
                self.uri,
                error or "closed",
                self._delay,
            )
        while True:
            if self._delay and not self._closed:
                await trio.sleep(self._delay)
            if self._closed:
                raise StopAsyncIteration
            self._machine.attempt()
            self._publish()
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
                    self._publish()
                    raise
                self._publish()
                logger.info(
                    "connecting to %s failed (%s); retrying in %.2f s", self.uri, exc, self._delay
                )
                continue
            self._stream = stream
            self._idle_error = None
            self._machine.connected(trio.current_time(), stream.stats)
            self._publish()
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
            self._idle_error = IdleTimeoutError(
                f"no frame from {self.uri} for {self.policy.idle_timeout} s; "
                "dropped the connection with 1001"
            )
            logger.info("%s", self._idle_error)
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
            self._machine.disconnected(error, trio.current_time())
        self._machine.close()
        self._publish()


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
