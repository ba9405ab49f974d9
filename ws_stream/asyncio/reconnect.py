"""reconnecting(): a fresh reader/writer pair for each connection, asyncio flavour."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any, Self

from ..reconnect import (
    ConnectionState,
    IdleTimeoutError,
    ReconnectMachine,
    ReconnectPolicy,
    keepalive_options,
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
    closed and the next one is opened after the backoff delay.

    Fatal failures on the first attempt (invalid URI, HTTP 401/403/404, TLS
    certificate rejected) raise at once; transient ones are retried;
    ``max_attempts`` consecutive failures raise the last error. Close with
    :meth:`aclose` (or ``async with``).
    """

    def __init__(self, uri: str, *, policy: ReconnectPolicy | None = None, **options: Any) -> None:
        self.uri = uri
        self.policy = policy if policy is not None else ReconnectPolicy()
        self._options = keepalive_options(self.policy, options)
        self._machine = ReconnectMachine(self.policy, uri)
        self._stream: WsStream | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._idle_error: IdleTimeoutError | None = None
        self._closed = False
        self._delay = 0.0

    # State

    @property
    def state(self) -> ConnectionState:
        """A snapshot: status, counters, last error, current connection's figures."""
        return self._machine.snapshot()

    @property
    def stream(self) -> WsStream | None:
        """The current connection's :class:`WsStream`, if connected."""
        return self._stream

    def is_healthy(self) -> bool:
        """Connected, and (with an idle timeout) a frame arrived recently."""
        return self._machine.is_healthy(asyncio.get_running_loop().time())

    def states(self) -> EventStream[ConnectionState]:
        """Status changes from now on, as snapshots; bounded, ends after ``closed``."""
        return EventStream(self._machine.hub, asyncio.get_running_loop())

    # Iteration

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Pair:
        loop = asyncio.get_running_loop()
        if self._stream is not None:
            error = await self._finish_current()
            self._delay = self._machine.disconnected(error, loop.time())
        while True:
            if self._delay and not self._closed:
                await asyncio.sleep(self._delay)
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
                    self._delay = self._machine.failed(exc)
                except BaseException:
                    self._closed = True
                    raise
                continue
            self._stream = stream
            self._idle_error = None
            self._machine.connected(loop.time(), stream.stats)
            if self.policy.idle_timeout is not None:
                self._watchdog = loop.create_task(self._watch_idle(stream))
            return stream.reader, stream.writer

    async def _watch_idle(self, stream: WsStream) -> None:
        loop = asyncio.get_running_loop()
        while True:
            deadline = self._machine.idle_deadline()
            if deadline is None:
                return
            if loop.time() >= deadline:
                break
            await asyncio.sleep(deadline - loop.time())
        self._idle_error = self._machine.idle_error()
        await stream.close(1001, "idle timeout")

    async def _finish_current(self) -> BaseException | None:
        stream, self._stream = self._stream, None
        assert stream is not None
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        await stream.close()
        return self._idle_error or stream.error

    # Closing

    async def aclose(self) -> None:
        """Close the current connection (1000) and end the iteration."""
        if self._closed and self._stream is None:
            return
        self._closed = True
        if self._stream is not None:
            error = await self._finish_current()
            self._machine.disconnected(error, asyncio.get_running_loop().time(), final=True)
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
