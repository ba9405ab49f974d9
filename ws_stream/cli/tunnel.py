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
from collections.abc import Callable

from ..asyncio import EventStream, WsStream
from ..events import Event, PingReceived
from .endpoints import Endpoint
from .report import describe
from .rules import EOF_MARKER, Close, TunnelRules

__all__ = ["WS_READ", "Tunnel", "send_eof_marker", "watch_eof_marker"]

logger = logging.getLogger(__name__)

#: Largest read from a WebSocket reader: at least one whole frame, so frames
#: are handed over without copying.
WS_READ = 2**20


async def send_eof_marker(stream: WsStream) -> None:
    """Tell the server that the local input ended: a ping carrying :data:`EOF_MARKER`.

    Any WebSocket peer answers it with a pong; ``ws-stream serve`` also
    half-closes its target (see :mod:`.rules`). Never raises: a connection
    that is closing needs no marker.
    """
    logger.debug("the local input ended: telling the server (EOF marker ping)")
    # After every byte written before it (WsStream.ping's promise); the pong
    # is not needed, only awaited so the ping is not left dangling.
    with contextlib.suppress(ConnectionError, TimeoutError, RuntimeError):
        await stream.ping(EOF_MARKER)


async def watch_eof_marker(events: EventStream[Event], on_marker: Callable[[], None]) -> None:
    """Call ``on_marker`` when the peer's :data:`EOF_MARKER` ping arrives; then return.

    ``events``: the stream's events, subscribed early enough (events are not
    kept for later subscribers). Every byte the peer sent before the marker is
    in the stream's reader by then (frames are decided in order): the caller
    half-closes its output once the reader is drained. Closes ``events``.
    """
    try:
        async for event in events:
            if isinstance(event, PingReceived) and event.data == EOF_MARKER:
                logger.debug("the peer's input ended (EOF marker ping)")
                on_marker()
                return
    finally:
        events.close()


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
        events: EventStream[Event] | None = None,
    ) -> None:
        self.stream = stream
        # The peer's EOF marker is watched from here (or from when the caller
        # subscribed ``events``, to miss none that came earlier).
        self._events = events if events is not None else stream.events()
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
        self._local_gone = False  # a local write failed: what arrives is discarded
        self._writing_local = False
        self._eof_pending = False  # the peer's input ended: half-close the local side
        self._marker: asyncio.Task[None] | None = None
        #: Why the tunnel did not end cleanly; None when it did.
        self.error: str | None = None

    async def run(self) -> None:
        """Move bytes until both sides are done; never raises for I/O errors."""
        try:
            async with asyncio.timeout(None) as self._deadline:
                self._up = asyncio.create_task(self._local_to_ws())
                self._marker = asyncio.create_task(
                    watch_eof_marker(self._events, self._on_peer_eof)
                )
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
            for task in (self._up, self._marker):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
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
                if self._local_gone:
                    self._decided(rules.discarded(loop.time(), len(data)))
                continue
            size, close = rules.received(loop.time(), len(data))
            if not size:
                discarding = True
                self._decided(close)
                continue
            if size < len(data):
                data = data[:size]
            rules.local_write_started(loop.time())
            self._writing_local = True
            try:
                local.write(data)
                await local.drain()
            except OSError as exc:
                discarding = self._local_gone = True
                self._local_failed(exc, writing=True)
                continue
            finally:
                self._writing_local = False
                rules.local_write_finished(loop.time())
            self._maybe_send_local_eof()
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
                close = self.rules.local_eof(self._loop.time(), marker=True)
                if close is not None:
                    self._begin_close(close)
                else:
                    self._arm()
                    await send_eof_marker(self.stream)
                    # Its pong: the server has read all we sent; linger from now.
                    self.rules.input_delivered(self._loop.time())
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
            exc, writing=writing, ws_closing=self.stream.writer.is_closing(), now=self._loop.time()
        )
        logger.log(failure.level, "%s", failure.message)
        if failure.close is not None:
            self._begin_close(failure.close)
        else:
            self._arm()  # the local side is gone: wait for the server's close

    def _decided(self, close: Close | None) -> None:
        if close is not None:
            self._begin_close(close)

    def _on_peer_eof(self) -> None:
        if self.rules.peer_eof():
            self._eof_pending = True
            self._maybe_send_local_eof()

    def _maybe_send_local_eof(self) -> None:
        """Half-close the local side once every byte before the peer's EOF marker is written."""
        if not self._eof_pending or self._writing_local or self.stream.reader.buffered:
            return
        self._eof_pending = False
        logger.debug("%s: the peer's input ended: passing the EOF on", self.local.role)
        try:
            self.local.send_eof()
        except OSError as exc:
            self._local_failed(exc, writing=True)
            return
        self.rules.eof_passed()

    def _begin_close(self, close: Close | None) -> None:
        """Send a close frame; the WebSocket reader still delivers until the peer's close.

        From now on the tunnel ends within ``close_timeout`` + 1 s, whatever
        the local side does. ``None``: only that bound.
        """
        if self._deadline is not None and self._deadline.when() is None:
            self._deadline.reschedule(self._loop.time() + self._close_timeout + 1)
        if self._up is not None and self._up is not asyncio.current_task():
            self._up.cancel()
        if close is None or self.rules.our_close is not None or self.stream.writer.is_closing():
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
