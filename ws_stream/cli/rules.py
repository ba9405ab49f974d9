"""The tunnel rules of the ``ws-stream`` command: pure, no I/O, no clock.

A tunnel joins one WebSocket and one local side (a TCP connection: a client of
``forward``, the target of ``serve --to``; or stdin and stdout for ``cat``).
The I/O driver (:class:`ws_stream.cli.tunnel.Tunnel`) moves the bytes and feeds
:class:`TunnelRules` what happens, with the time it happened; the rules answer
what to do. Decided here, once:

* **When ``--linger`` and ``--idle-timeout`` fire.** Only after real silence:
  time spent waiting for the local side to take bytes (a consumer that
  pauses, a full pipe, a TCP client that does not read) is not silence, so
  neither timer runs while a local write is pending, and each counts again
  from the moment the local side took the bytes. ``--linger`` counts from the
  later of the local EOF and the last bytes from the server; ``--idle-timeout``
  from the last bytes either way.
* **What ends a tunnel early.** A close that a timer started (``--linger``
  after a local EOF, ``--idle-timeout``) ends the tunnel before the server's
  own close: the server may have had more to send, so the local side must not
  see a clean end (the shell resets a TCP connection; ``cat`` exits 1 with
  the message). A close the user asked for is a clean end: a signal (1001),
  ``--max-bytes``, ``--linger 0`` (close at the local EOF at once).
* **The end of the local input crosses the WebSocket** (:data:`EOF_MARKER`). A
  WebSocket has no half-close, so when the local side of ``forward`` or
  ``cat`` ends its input, the client sends a ping whose payload is
  :data:`EOF_MARKER` (any peer answers it with a pong and ignores it);
  ``serve`` reads it as "the client's input ended": it half-closes the
  target's TCP connection once the bytes before it are written
  (:meth:`TunnelRules.peer_eof`), and its echo closes with 1000 once it has
  echoed them. So a target that answers at EOF (HTTP/1.0, ``nc -N``, a
  database client's terminate) gets its EOF, and the tunnel ends with the
  server's close, cleanly.
* **How a local error maps to a close code, a log level and the outcome.**
  A TCP reset after the session already ended a direction is a normal end,
  logged at info, closing with 1000: a reset of our read after the peer's
  input ended (the EOF marker) or a close was received or sent; a reset of
  our write after a close was received or sent. A reset of our write after
  the local side's own EOF (a client that closed at once, as psql does after
  its terminate) is a normal end only if nothing more is lost: the tunnel
  waits for the server's close, and bytes the server still sends then make it
  an error (1011). Any other reset or error, in the middle of data, closes
  with 1011 and fails the tunnel. On stdio, a broken pipe on stdout (EPIPE:
  the reader has what it wanted) is a quiet end, any other error on stdout or
  stdin is a failure with the OS error.
* **How the tunnel ended** (:meth:`TunnelRules.ending`): clean or not, and so
  whether the local side gets EOF or a reset.

States, for one tunnel::

    OPEN --local EOF--> DRAINING (linger timer) --timer / server close--> CLOSING
    OPEN --idle timer / stop / max bytes / local failure--> CLOSING
"""

from __future__ import annotations

import errno
import logging
import math
from typing import Final, Literal, NamedTuple

from ..reconnect import NORMAL_CLOSE_CODES

__all__ = [
    "CLEAN_CODES",
    "EOF_MARKER",
    "SHUTDOWN",
    "Close",
    "Ending",
    "LocalFailure",
    "LocalKind",
    "TunnelRules",
]

#: A TCP connection, or stdin and stdout.
LocalKind = Literal["tcp", "stdio"]

#: Close codes that end a stream cleanly (as websockets' OK_CLOSE_CODES).
CLEAN_CODES: Final = NORMAL_CLOSE_CODES

#: The payload of the ping a ``ws-stream`` client sends when its local input
#: ends: the half-close a WebSocket does not have (see the module docstring).
EOF_MARKER: Final = b"ws-stream:eof"
_RESETS: Final = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class Close(NamedTuple):
    """Close the WebSocket with ``code``/``reason``.

    ``early``: the close ends the tunnel before the server's own close (a
    timer started it): the tunnel fails with ``why``, the local side sees no
    clean end. Otherwise ``why`` is only what the shell logs.
    """

    code: int
    reason: str
    why: str = ""
    early: bool = False


class LocalFailure(NamedTuple):
    """What a failed local read or write means.

    ``close``: what the WebSocket closes with (unless a close is under way);
    None: no close yet (the local side is gone after its EOF: the tunnel
    waits for the server's close, see :meth:`TunnelRules.discarded`).
    ``message``: to log at ``level`` now (debug when ``error`` is set: the
    end of the tunnel reports it). ``error``: the tunnel failed (a warning at
    its end, exit status 1 for ``cat``); None when this is a normal end.
    """

    close: Close | None
    level: int
    message: str
    error: str | None


class Ending(NamedTuple):
    """How a tunnel ended: ``error`` (None: cleanly) and whether to reset the local side.

    ``reset_local``: the local peer must not see EOF (TCP: a reset; stdio has
    no reset, the exit status tells).
    """

    error: str | None
    reset_local: bool


SHUTDOWN: Final = Close(1001, "going away", "stopping: closing with 1001")


class TunnelRules:
    """The decisions of one tunnel, fed events with their time (seconds, any clock).

    Not thread-safe; one instance per tunnel. The shell arms one timer at
    :meth:`deadline` and calls :meth:`poll` when it fires.
    """

    def __init__(
        self,
        *,
        role: str,
        kind: LocalKind,
        now: float,
        linger: float = 0.0,
        idle_timeout: float | None = None,
        max_bytes: int | None = None,
    ) -> None:
        if linger < 0 or (idle_timeout is not None and idle_timeout <= 0):
            raise ValueError("linger must be >= 0 and idle_timeout > 0")
        self.role = role
        self.kind: LocalKind = kind
        self.linger = linger
        self.idle_timeout = idle_timeout
        self._remaining = max_bytes
        self._last_received = now  # bytes from the server
        self._last_any = now  # bytes either way
        self._unblocked_at = now  # the local side last took what we wrote
        self._writing = False  # a local write is pending
        self._eof_at: float | None = None
        self._peer_eof = False  # the WebSocket peer's input ended (EOF_MARKER)
        self._eof_passed = False  # ... and the local side got its EOF
        self._delivering = False  # our EOF marker's pong has not come yet
        self._gone_at: float | None = None  # our write failed after the local EOF
        self._closed = False  # a close decision was returned: no more timers
        self.our_close: Close | None = None
        self.local_error: str | None = None
        self.local_broken = False

    # Events

    def received(self, now: float, size: int) -> tuple[int, Close | None]:
        """``size`` bytes came from the server: how many to deliver, and a close if that's all.

        With ``max_bytes``, delivers exactly that many in total, then closes
        with 1000 (a clean end: the user asked for it).
        """
        self._last_received = self._last_any = now
        if self._eof_passed:
            # The peer said its input ended, and the local side has its EOF:
            # bytes now have nowhere to go. A broken peer: fail, say so.
            if self.local_error is None:
                self.local_error = (
                    f"the peer sent {size} bytes after its end-of-input marker "
                    f"({EOF_MARKER.decode()}): a broken peer"
                )
            return 0, self._decide(Close(1002, "data after the end of input"))
        if self._remaining is None:
            return size, None
        size = min(size, self._remaining)
        self._remaining -= size
        if self._remaining > 0:
            return size, None
        return size, self._decide(Close(1000, "", "received --max-bytes bytes: closing"))

    def local_write_started(self, now: float) -> None:
        """Bytes are being handed to the local side: until they are taken, nothing is silence."""
        self._writing = True

    def local_write_finished(self, now: float) -> None:
        """The local side took the bytes (or the write ended anyway)."""
        self._writing = False
        self._unblocked_at = now

    def sent(self, now: float) -> None:
        """Bytes from the local side went to the server."""
        self._last_any = now

    def local_eof(self, now: float, *, marker: bool = False) -> Close | None:
        """The local side ended (EOF). Returns a close to send now (``--linger 0``), or None.

        ``marker``: the shell sends the :data:`EOF_MARKER` ping now; the
        ``--linger`` clock then starts only at :meth:`input_delivered` (its
        pong: the server has read every byte before it), so a slow uplink still
        carrying our last bytes is not the server's silence.
        """
        self._eof_at = now
        if self.linger == 0:
            return self._decide(Close(1000, "", f"{self.role}: EOF: closing"))
        self._delivering = marker
        return None

    def input_delivered(self, now: float) -> None:
        """The pong to the EOF marker came (or the ping failed): start the linger clock."""
        if self._delivering:
            self._delivering = False
            self._eof_at = max(self._eof_at or now, now)

    def peer_eof(self) -> bool:
        """The WebSocket peer's input ended (a ping carrying :data:`EOF_MARKER`).

        Returns True when the shell must half-close the local side (TCP
        ``write_eof``; stdout: close it) once every byte received before the
        marker is written; False when the tunnel is ending already.
        """
        if self._closed or self._peer_eof:
            return False
        self._peer_eof = True
        return True

    def eof_passed(self) -> None:
        """The shell half-closed the local side after :meth:`peer_eof`: nothing may follow."""
        self._eof_passed = True

    def discarded(self, now: float, size: int) -> Close | None:
        """``size`` bytes from the server had nowhere to go (the local side failed).

        After a reset of our write that followed the local EOF, that is data
        lost: the tunnel fails with 1011.
        """
        if self._gone_at is None or self.local_error is not None:
            return None
        self.local_error = (
            f"the {self.role} reset the connection after its EOF while the server was still "
            f"sending ({size} more bytes lost)"
        )
        return self._decide(Close(1011, f"the {self.role} connection was reset"))

    def stop(self) -> Close | None:
        """The process stops (SIGINT, SIGTERM, SIGHUP): close with 1001, a clean end."""
        return self._decide(SHUTDOWN)

    def closing(self, close: Close) -> None:
        """The shell sent ``close`` (no close from the server had arrived before)."""
        self.our_close = close

    def local_failed(
        self, exc: OSError, *, writing: bool, ws_closing: bool, now: float | None = None
    ) -> LocalFailure:
        """A local read (``writing`` False) or write failed with ``exc`` at ``now``.

        ``ws_closing``: a close was received from the server or sent already.
        """
        self.local_broken = True
        what = str(exc) or type(exc).__name__
        if self.kind == "stdio":
            if writing and (isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE):
                return self._fail(
                    Close(1000, ""), logging.DEBUG, f"stdout: {what}: the reader is gone", None
                )
            if writing:
                error = f"cannot write to stdout: {what}"
                return self._fail(
                    Close(1011, "cannot write the output"), logging.DEBUG, error, error
                )
            error = f"cannot read stdin: {what}"
            return self._fail(Close(1011, "cannot read the input"), logging.DEBUG, error, error)
        closing = ws_closing or self.our_close is not None
        ended = closing or (not writing and self._peer_eof)
        if isinstance(exc, _RESETS):
            if writing and not closing and self._eof_at is not None:
                # The local side closed right after its EOF (e.g. psql after its
                # terminate): a normal end unless the server still sends.
                self._gone_at = self._last_any if now is None else now
                self._unblocked_at = max(self._unblocked_at, self._gone_at)  # silence from here
                return LocalFailure(
                    None,
                    logging.INFO,
                    f"the {self.role} connection was reset after its EOF ({what}): "
                    "waiting for the server's close",
                    None,
                )
            if ended:
                message = (
                    f"the {self.role} connection was reset after the end of the stream "
                    f"({what}): closing normally"
                )
                return self._fail(Close(1000, ""), logging.INFO, message, None)
            reason = f"the {self.role} connection was reset"
        else:
            reason = f"the {self.role} connection failed"
        error = f"the {self.role} failed: {what}"
        return self._fail(Close(1011, reason), logging.DEBUG, error, error)

    # Timers

    def deadline(self) -> float | None:
        """When to call :meth:`poll` next; None: no timer is due (yet)."""
        if self._closed or self._writing:
            return None
        due = math.inf
        if self._eof_at is not None and 0 < self.linger < math.inf and not self._delivering:
            due = max(self._last_received, self._eof_at, self._unblocked_at) + self.linger
        if self.idle_timeout is not None:
            due = min(due, max(self._last_any, self._unblocked_at) + self.idle_timeout)
        return None if due == math.inf else due

    def poll(self, now: float) -> Close | None:
        """A timer fired at ``now``: the early close to send, or None (not due yet)."""
        due = self.deadline()
        if due is None or now < due:
            return None
        if self._gone_at is not None:
            # Nothing was lost after the local side went away: a normal end.
            why = f"the {self.role} is gone and the server sent nothing more: closing"
            return self._decide(Close(1000, "", why))
        if self._eof_at is not None and 0 < self.linger < math.inf and not self._delivering:
            linger_due = max(self._last_received, self._eof_at, self._unblocked_at) + self.linger
            if now >= linger_due:
                return self._decide(
                    Close(
                        1000,
                        "",
                        f"the server sent nothing for {self.linger:g} s after the end of the "
                        f"{self._local_input()} and had not closed: closed early (--linger); "
                        "what it sent may be incomplete",
                        early=True,
                    )
                )
        assert self.idle_timeout is not None
        return self._decide(
            Close(
                1000,
                "idle timeout",
                f"no data for {self.idle_timeout:g} s and the server had not closed: "
                "closed early (--idle-timeout); what it sent may be incomplete",
                early=True,
            )
        )

    # The end

    def ending(
        self,
        *,
        peer_code: int | None,
        peer_reason: str,
        ws_error: str | None,
        local_late: bool = False,
    ) -> Ending:
        """How the tunnel ended, once the WebSocket is done.

        ``peer_code``/``peer_reason``: the server's close frame (None: none
        arrived). ``ws_error``: the WebSocket reader's error, if it ended with
        one. ``local_late``: a close began and the local side did not take
        the last bytes within the close timeout.
        """
        ours = self.our_close
        error: str | None = None
        if local_late:
            self.local_broken = True
            error = f"the {self.role} did not take the last bytes in time"
        elif self.local_error is not None:
            error = self.local_error
        elif ws_error is not None and ours is None:
            error = f"the WebSocket failed: {ws_error}"
        elif ours is None and peer_code is not None and peer_code not in CLEAN_CODES:
            error = f"the peer closed with {peer_code}" + (
                f" ({peer_reason})" if peer_reason else ""
            )
        elif ours is not None and ours.early:
            error = ours.why
        elif ws_error is not None:
            error = f"the peer did not complete the close: {ws_error}"
        early = ours is not None and ours.early
        reset = self.local_broken or early or (error is not None and ours is None)
        return Ending(error, reset)

    # Helpers

    def _decide(self, close: Close) -> Close | None:
        if self._closed:
            return None
        self._closed = True
        return close

    def _fail(self, close: Close, level: int, message: str, error: str | None) -> LocalFailure:
        if error is not None and self.local_error is None:
            self.local_error = error
        self._closed = True
        return LocalFailure(close, level, message, error)

    def _local_input(self) -> str:
        return "input" if self.kind == "stdio" else f"{self.role}'s data"
