"""The I/O driver of one tunnel: a WebSocket and a local endpoint, bytes both ways.

Owns :class:`Tunnel`: two copy loops (WebSocket -> local, local ->
WebSocket), the one timer the rules ask for, the start of a close, and the
bounded wait for the end. It feeds :class:`~.rules.TunnelRules` every event
with the time it happened and does what they answer: every decision (when
``--linger`` and ``--idle-timeout`` fire, what a local error means, whether
the tunnel ended cleanly and so whether the local side gets EOF or a reset)
is theirs, never made here.

The tunnel does not know which sub-command runs it: ``serve --to`` gives it
the target's TCP connection, ``forward`` a local client's, ``cat`` stdin and
stdout (:mod:`.endpoints`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..asyncio import WsStream
from .endpoints import Endpoint
from .report import describe
from .rules import Close, TunnelRules

__all__ = ["WS_READ", "Tunnel"]

logger = logging.getLogger(__name__)

#: Largest read from a WebSocket reader: at least one whole frame, so frames
#: are handed over without copying.
WS_READ = 2**20


class Tunnel:
    """Bytes both ways between a WebSocket and a local endpoint, and how they end.

    The I/O half of the tunnel: it moves bytes, waits and wakes; every
    decision (when ``linger`` and ``idle_timeout`` fire, what a local error
    means, how the tunnel ended) is :class:`~ws_stream.cli.rules.TunnelRules`'s.

    The WebSocket reader is drained until the end of the WebSocket, always:
    every other ending (the local side ends or fails, ``max_bytes``, a timer,
    the process stops) *starts* a close, and the close handshake, bounded by
    ``close_timeout``, ends the WebSocket. Only then is the local side
    finished (EOF) or aborted (reset), as the rules decide.

    ``linger``: after local EOF, close with 1000 once the server has sent
    nothing for that many seconds (0: at once; ``math.inf``: never). Time
    spent waiting for the local side to take bytes is not silence.
    """

    def __init__(
        self,
        stream: WsStream,
        local: Endpoint,
        *,
        stop: asyncio.Future[None],
        close_timeout: float,
        linger: float = 0.0,
        idle_timeout: float | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.stream = stream
        self.local = local
        self._stop = stop
        self._close_timeout = close_timeout
        self._loop = asyncio.get_running_loop()
        self.rules = TunnelRules(
            role=local.role,
            kind=local.kind,
            now=self._loop.time(),
            linger=linger,
            idle_timeout=idle_timeout,
            max_bytes=max_bytes,
        )
        self._up: asyncio.Task[None] | None = None
        self._deadline: asyncio.Timeout | None = None
        self._closing: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ws_error: ConnectionError | None = None
        self._local_late = False
        #: Why the tunnel did not end cleanly; None when it did.
        self.error: str | None = None

    async def run(self) -> None:
        """Move bytes until both sides are done; never raises for I/O errors."""
        try:
            async with asyncio.timeout(None) as self._deadline:
                self._up = asyncio.create_task(self._local_to_ws())
                self._stop.add_done_callback(self._on_stop)
                self._arm()
                await self._ws_to_local()
        except TimeoutError:
            # Only our deadline: a close began and the local side never took
            # the last bytes (the WebSocket itself is bounded by close_timeout).
            self._local_late = True
        finally:
            self._stop.remove_done_callback(self._on_stop)
            if self._timer is not None:
                self._timer.cancel()
            if self._up is not None:
                self._up.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._up
        await self._end()

    async def _ws_to_local(self) -> None:
        reader = self.stream.reader
        local = self.local
        rules = self.rules
        loop = self._loop
        discarding = False  # the local side failed or has enough: drain until the close
        while True:
            try:
                data = await reader.read(WS_READ)
            except ConnectionError as exc:
                self._ws_error = exc
                return
            if not data:
                return
            if discarding:
                continue
            size, close = rules.received(loop.time(), len(data))
            if size < len(data):
                data = data[:size]
            rules.local_write_started(loop.time())
            try:
                local.write(data)
                await local.drain()
            except OSError as exc:
                discarding = True
                self._local_failed(exc, writing=True)
                continue
            finally:
                rules.local_write_finished(loop.time())
            if self._timer is None:
                self._arm()  # a timer waits while the local side is not taking bytes
            if close is not None:
                discarding = True
                self._begin_close(close)

    async def _local_to_ws(self) -> None:
        writer = self.stream.writer
        while True:
            try:
                data = await self.local.read()
            except OSError as exc:
                self._local_failed(exc, writing=False)
                return
            if not data:
                logger.debug("%s: EOF", self.local.role)
                close = self.rules.local_eof(self._loop.time())
                if close is not None:
                    self._begin_close(close)
                else:
                    self._arm()
                return
            if writer.is_closing():
                return  # the peer closed: _ws_to_local sees how
            self.rules.sent(self._loop.time())
            writer.write(data)
            try:
                await writer.drain()
            except ConnectionError:
                return  # the same

    # What starts a close

    def _arm(self) -> None:
        """Have a timer at the rules' deadline (they say when one is due)."""
        due = self.rules.deadline()
        if due is None:
            return
        if self._timer is not None:
            if self._timer.when() <= due:
                return  # it fires first, and asks again
            self._timer.cancel()
        self._timer = self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        close = self.rules.poll(self._loop.time())
        if close is not None:
            self._begin_close(close)
        else:
            self._arm()

    def _on_stop(self, _: asyncio.Future[None]) -> None:
        close = self.rules.stop()
        if close is not None:
            self._begin_close(close)
        else:
            self._begin_close(None)  # a close is under way: still bound the tunnel

    def _local_failed(self, exc: OSError, *, writing: bool) -> None:
        failure = self.rules.local_failed(
            exc, writing=writing, ws_closing=self.stream.writer.is_closing()
        )
        logger.log(failure.level, "%s", failure.message)
        self._begin_close(failure.close)

    def _begin_close(self, close: Close | None) -> None:
        """Send a close frame; the WebSocket reader still delivers until the peer's close.

        From now on the tunnel ends within ``close_timeout`` + 1 s, whatever
        the local side does. ``None``: only that bound.
        """
        if self._deadline is not None and self._deadline.when() is None:
            self._deadline.reschedule(self._loop.time() + self._close_timeout + 1)
        if self._up is not None and self._up is not asyncio.current_task():
            self._up.cancel()
        if close is None or self.rules.close_sent is not None or self.stream.writer.is_closing():
            return  # a close is under way already (ours, or the peer's)
        logger.debug("%s", close.why or "closing")  # an early end is reported at the end
        self.rules.closing(close)
        self._closing = asyncio.create_task(self.stream.close(close.code, close.reason))

    # How it ends

    async def _end(self) -> None:
        stream = self.stream
        ending = self.rules.ending(
            peer_code=stream.close_code,
            peer_reason=stream.close_reason or "",
            ws_error=None if self._ws_error is None else describe(self._ws_error),
            local_late=self._local_late,
        )
        self.error = ending.error
        if ending.reset_local:
            # The stream did not end cleanly: the local peer must not see EOF.
            await self.local.fail(self._close_timeout)
        else:
            await self.local.finish(self._close_timeout)
        if self._closing is not None:
            await self._closing
        else:
            await stream.close()
