"""The life of a ``ws-stream`` process: start, the live sessions, signals, shutdown, exit status.

Owns:

* the exit statuses (0 done, also after a signal; 1 runtime error; 2 bad
  arguments, which argparse exits with);
* :func:`reserve_stdio`: descriptors 0-2 kept out of the event loop's hands
  before it starts;
* :class:`Sessions`, the registry of live sessions: each gets a ``stop``
  future, set at shutdown; the registry counts their bytes for ``--stats``,
  waits for them and, past the close timeout, drops them;
* :class:`Shutdown`: SIGINT, SIGTERM and SIGHUP; the first stops gracefully
  (every connection closes with 1001 within ``--close-timeout``), a second
  one drops everything at once;
* :func:`until_shutdown`, the main loop of the listening sub-commands, and
  :func:`unless_stopped`, which gives up a step (connecting) at shutdown.

What a session does when told to stop (close with 1001) is decided by the
tunnel rules (:mod:`.rules`) or the echo; this module only tells it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from ..asyncio import WsStream
from .report import stats_output

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "STOP_SIGNALS",
    "Sessions",
    "Shutdown",
    "Slot",
    "Stopped",
    "reserve_stdio",
    "unless_stopped",
    "until_shutdown",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

#: The signals that stop every sub-command gracefully. SIGHUP too: OpenSSH
#: sends it to its ProxyCommand (``cat``) when it exits, and a terminal that
#: goes away sends it to what runs in it.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def reserve_stdio() -> None:
    """Open /dev/null on whichever of descriptors 0, 1 and 2 is closed (``<&-``, ``>&-``).

    Otherwise the event loop's own descriptors would take those numbers, and
    ``cat`` would read its epoll descriptor as stdin, or logging write into a
    socket. A closed stdin reads as empty, a closed stdout or stderr discards.
    """
    for fd, flags in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, flags)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stderr is None:  # Python found fd 2 closed at startup
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115


# The live sessions


@dataclass(eq=False)
class Slot:
    """One session's place in :class:`Sessions`."""

    stop: asyncio.Future[None]
    stream: WsStream | None = None


class Sessions:
    """The live sessions of this process: stop them all, count their bytes."""

    def __init__(self) -> None:
        self._slots: dict[Slot, asyncio.Task[Any] | None] = {}
        self.stopping = False
        self.opened = 0
        self.started = time.monotonic()
        self._received = 0
        self._sent = 0

    @contextlib.contextmanager
    def session(self) -> Iterator[Slot]:
        """A slot for the current task; its ``stop`` future is set at shutdown."""
        slot = Slot(asyncio.get_running_loop().create_future())
        if self.stopping:
            slot.stop.set_result(None)
        self._slots[slot] = asyncio.current_task()
        try:
            yield slot
        finally:
            del self._slots[slot]
            if slot.stream is not None:
                self._received += slot.stream.bytes_received
                self._sent += slot.stream.bytes_sent

    def attach(self, slot: Slot, stream: WsStream) -> None:
        """Count ``stream``'s bytes as this slot's."""
        slot.stream = stream
        self.opened += 1

    @property
    def open(self) -> int:
        """Sessions with an open WebSocket now."""
        return sum(1 for slot in self._slots if slot.stream is not None)

    def totals(self) -> tuple[int, int]:
        """Payload bytes (received, sent) over WebSockets so far."""
        streams = [slot.stream for slot in self._slots if slot.stream is not None]
        return (
            self._received + sum(s.bytes_received for s in streams),
            self._sent + sum(s.bytes_sent for s in streams),
        )

    def stop_all(self) -> None:
        """Set every slot's ``stop`` future, and those of sessions that start from now on."""
        self.stopping = True
        for slot in self._slots:
            if not slot.stop.done():
                slot.stop.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Wait for every session's task; after ``timeout``, drop what is left."""
        tasks = {task for task in self._slots.values() if task is not None}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                self.abort_all()
                _, pending = await asyncio.wait(pending, timeout=1.0)
                for task in pending:
                    task.cancel()

    def abort_all(self) -> None:
        """Drop every open WebSocket's TCP connection at once."""
        for slot in list(self._slots):
            if slot.stream is not None:
                slot.stream.transport.abort()


class Stopped(Exception):
    """The process is shutting down."""


async def unless_stopped(stop: asyncio.Future[None], coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; raise :class:`Stopped` if ``stop`` completes first."""
    task = asyncio.ensure_future(coro)
    waiters: set[asyncio.Future[Any]] = {task, stop}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.cancelled():
        raise Stopped
    return task.result()


# Signals and shutdown


def _install_signal_handlers(on_signal: Callable[[], None]) -> None:
    """Handle :data:`STOP_SIGNALS`, except a SIGHUP that was ignored when we started.

    ``nohup ws-stream serve`` starts with SIGHUP ignored so that the command
    outlives its terminal: that choice is kept (as Python keeps an ignored
    SIGINT).
    """
    loop = asyncio.get_running_loop()
    hup = getattr(signal, "SIGHUP", None)
    for sig in STOP_SIGNALS:
        if sig == hup and signal.getsignal(sig) == signal.SIG_IGN:
            logger.debug("SIGHUP is ignored (nohup): keeping it so")
            continue
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)


class Shutdown:
    """SIGINT/SIGTERM/SIGHUP: the first stops gracefully, a second one stops now.

    Create it in the main task: a second signal cancels that task.
    """

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        #: Done at the first signal.
        self.requested: asyncio.Future[None] = loop.create_future()
        self._main = asyncio.current_task()
        #: A second signal came: the main task was cancelled.
        self.forced = False
        _install_signal_handlers(self._signal)

    def _signal(self) -> None:
        if not self.requested.done():
            logger.info("stopping: closing every connection with 1001")
            self.requested.set_result(None)
        elif not self.forced and self._main is not None:
            logger.warning("second signal: dropping every connection now")
            self.forced = True
            self._main.cancel()


async def until_shutdown(
    shutdown: Shutdown,
    sessions: Sessions,
    stop: Callable[[], Awaitable[None]],
    *,
    prog: str,
    stats_interval: float | None,
) -> int:
    """Serve (with ``--stats``) until SIGINT/SIGTERM/SIGHUP, then ``stop()``; a second forces.

    Returns the exit status: 0 after a graceful stop, 1 when a second signal
    cut it short.
    """
    with stats_output(sessions, prog, stats_interval):
        try:
            await shutdown.requested
            await stop()
        except asyncio.CancelledError:
            if not shutdown.forced:
                raise
            sessions.abort_all()
            return EXIT_ERROR
    return EXIT_OK
