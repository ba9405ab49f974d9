"""One timer thread for every blocking connection: it wakes each at its engine's deadline.

The engine says when it must be called next (``Engine.deadline``: a keepalive
ping, a pong overdue, the closing handshake's ``close_timeout``); a connection
schedules itself here whenever that moves, and :meth:`Timers.schedule` calls
its ``_timer_fired(when)`` then. A reader thread blocked on the socket, paused
by read backpressure, or a deadline set by another thread (``shutdown()``)
changes nothing: the timer thread does not depend on any of them.

Entries are never removed: a connection whose deadline moved ignores the
stale call (``when`` is not its current deadline). They hold the connection
weakly. The thread is a daemon, started with the first entry; it only takes
a connection's lock for a moment and never waits on a socket.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
import weakref
from typing import Protocol

__all__ = ["TIMERS", "Timed", "Timers"]

logger = logging.getLogger("ws_stream.sync")


class Timed(Protocol):
    def _timer_fired(self, when: float) -> None: ...


class Timers:
    """A heap of (when, connection) served by one daemon thread."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, weakref.ref[Timed]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, target: Timed, when: float) -> None:
        """Call ``target._timer_fired(when)`` at ``when`` (``time.monotonic()``)."""
        with self._cond:
            self._push(target, when)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="ws_stream timers", daemon=True
                )
                self._thread.start()

    def try_schedule(self, target: Timed, when: float) -> bool:
        """:meth:`schedule` without blocking or starting a thread (for finalizers)."""
        if not self._cond.acquire(blocking=False):
            return False
        try:
            if self._thread is None or not self._thread.is_alive():
                return False
            self._push(target, when)
            return True
        finally:
            self._cond.release()

    def _push(self, target: Timed, when: float) -> None:
        heap = self._heap
        heapq.heappush(heap, (when, next(self._seq), weakref.ref(target)))
        if heap[0][0] == when:
            self._cond.notify()

    def _run(self) -> None:
        heap = self._heap
        cond = self._cond
        while True:
            with cond:
                while True:
                    now = time.monotonic()
                    if heap and heap[0][0] <= now:
                        when, _, ref = heapq.heappop(heap)
                        break
                    cond.wait(heap[0][0] - now if heap else None)
            target = ref()
            if target is None:
                continue
            try:
                target._timer_fired(when)
            except Exception:  # pragma: no cover - a bug: keep serving the others
                logger.exception("a connection's timer failed")
            del target


TIMERS = Timers()

if hasattr(os, "register_at_fork"):
    # A child starts without the thread (and perhaps with the lock held).
    os.register_at_fork(after_in_child=TIMERS._reset)
