"""Reconnecting: backoff, policy presets, connection state. Runtime-neutral, no I/O.

A reconnecting client never splices two connections into one stream: it hands
out a fresh stream per connection. :class:`ReconnectMachine` decides how long
to wait, when to give up, what counts as idle, what counts as an error and
when the status changes; the asyncio and trio loops
(:func:`ws_stream.reconnecting`, :func:`ws_stream.trio.reconnecting`) only
connect, sleep, yield and report what happened.
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from websockets.frames import Close

from ._policy import EventHub
from .exceptions import HandshakeError, WsStreamError
from .stats import StreamStats

__all__ = [
    "Backoff",
    "CloseError",
    "ConnectionState",
    "IdleTimeoutError",
    "ReconnectMachine",
    "ReconnectPolicy",
    "Status",
    "is_fatal",
    "keepalive_options",
]


class Backoff:
    """Exponential delays with jitter: ``initial * factor**n``, times a random
    factor in ``[1 - jitter, 1 + jitter]``, capped at ``max_delay``.

    Deterministic with ``seed``. :meth:`reset` starts again from ``initial``
    (after a connection that stayed up).
    """

    def __init__(
        self,
        initial: float = 1.0,
        factor: float = 2.0,
        jitter: float = 0.1,
        max_delay: float = 60.0,
        seed: int | None = None,
    ) -> None:
        if not initial >= 0:
            raise ValueError(f"initial must be >= 0 seconds, not {initial!r}")
        if not factor >= 1:
            raise ValueError(f"factor must be >= 1, not {factor!r}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, not {jitter!r}")
        if not max_delay >= initial:
            raise ValueError(f"max_delay ({max_delay!r}) must be >= initial ({initial!r})")
        self.initial = initial
        self.factor = factor
        self.jitter = jitter
        self.max_delay = max_delay
        self.seed = seed
        self._random = random.Random(seed)
        self._attempt = 0

    def __repr__(self) -> str:
        return (
            f"Backoff(initial={self.initial}, factor={self.factor}, jitter={self.jitter}, "
            f"max_delay={self.max_delay}, seed={self.seed})"
        )

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds."""
        base = self.initial * self.factor ** min(self._attempt, 1000)
        self._attempt += 1
        spread = self._random.uniform(1 - self.jitter, 1 + self.jitter)
        return min(self.max_delay, base * spread)

    def reset(self) -> None:
        self._attempt = 0

    def copy(self) -> Backoff:
        """A fresh backoff with the same parameters (and seed)."""
        return Backoff(self.initial, self.factor, self.jitter, self.max_delay, self.seed)


OnConnect = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a reconnecting client waits, when it gives up, and what it runs on connect.

    ``idle_timeout``: no inbound frame of any kind for that long, while the
    stream was reading, drops the connection with 1001; the reader gets
    :exc:`IdleTimeoutError` after the bytes received before, and it counts as
    an error (keepalive pings are sent at half that interval, so a healthy
    idle link stays up). Time during which the application does not read (the
    stream's buffer is full and TCP reading is paused) is not silence.
    ``max_attempts``: that many consecutive failed attempts raise the last
    error (None: never give up). ``on_connect``: an async callable run after every (re)connect,
    before the stream is handed out. ``stable_after``: a connection that
    stayed up that long resets the backoff.
    """

    backoff: Backoff = field(default_factory=Backoff)
    idle_timeout: float | None = None
    max_attempts: int | None = None
    on_connect: OnConnect | None = None
    stable_after: float = 10.0

    def __post_init__(self) -> None:
        if self.idle_timeout is not None and not self.idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0 seconds or None, not {self.idle_timeout}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 or None, not {self.max_attempts}")

    @classmethod
    def fast_reconnect(cls, **overrides: Any) -> ReconnectPolicy:
        """0.5 s, x1.5, capped at 10 s; idle timeout 10 s."""
        return cls(Backoff(0.5, 1.5, max_delay=10.0), idle_timeout=10.0, **overrides)

    @classmethod
    def stable_connection(cls, **overrides: Any) -> ReconnectPolicy:
        """2 s, x2.0, capped at 120 s; idle timeout 60 s."""
        return cls(Backoff(2.0, 2.0, max_delay=120.0), idle_timeout=60.0, **overrides)

    @classmethod
    def low_latency(cls, **overrides: Any) -> ReconnectPolicy:
        """0.1 s, x1.2, capped at 5 s; idle timeout 5 s."""
        return cls(Backoff(0.1, 1.2, max_delay=5.0), idle_timeout=5.0, **overrides)

    def with_options(self, **changes: Any) -> ReconnectPolicy:
        return replace(self, **changes)


class Status(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing_off"
    CLOSED = "closed"


@dataclass(frozen=True)
class ConnectionState:
    """A snapshot of a reconnecting client."""

    connection_id: int
    status: Status
    reconnect_count: int
    error_count: int
    last_error: BaseException | None
    connected_since: float | None
    bytes_sent: int
    bytes_received: int
    frames_sent: int
    frames_received: int
    last_latency: float | None


class IdleTimeoutError(TimeoutError):
    """No frame of any kind arrived within ``idle_timeout``: dropped with 1001.

    The reader raises it after the bytes received before the timeout (trio:
    the ``__cause__`` of :exc:`trio.BrokenResourceError`); it is never a clean
    EOF, since the peer did not end the stream.
    """


class CloseFrames(NamedTuple):
    """A stream's closing handshake as its shell reports it to the reconnect loop.

    ``received``/``sent``: the close frames (None: none yet);
    ``received_first``: the peer closed first (None: not both yet);
    ``tcp_closed``: the connection is gone.
    """

    received: Close | None
    sent: Close | None
    received_first: bool | None
    tcp_closed: bool


def stream_over(frames: CloseFrames, error: BaseException | None) -> bool:
    """The stream is over for its reader: the peer's close frame, a failure, or TCP gone."""
    return frames.received is not None or error is not None or frames.tcp_closed


class CloseError(WsStreamError):
    """The peer closed the connection with a code other than 1000, 1001 or 1005.

    Recorded as ``last_error`` of a reconnecting client (and counted in
    ``error_count``); the reader itself saw EOF after every byte, since a
    close frame ends the byte stream. :attr:`code` and :attr:`reason` are
    those of the peer's close frame.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        detail = f" ({reason!r})" if reason else ""
        super().__init__(
            f"the peer closed the connection with code {code}{detail}: an error, not a "
            "normal end (1000/1001); see the peer's logs for why"
        )
        self.code = code
        self.reason = reason

    def __reduce__(self) -> tuple[type[CloseError], tuple[int, str]]:
        return (type(self), (self.code, self.reason))


# A normal end, as websockets' OK_CLOSE_CODES: 1005 is an empty close frame.
NORMAL_CLOSE_CODES = frozenset({1000, 1001, 1005})


def close_error(
    rcvd: Close | None, sent: Close | None, rcvd_then_sent: bool | None
) -> CloseError | None:
    """The error a closing handshake reports, if any.

    ``rcvd``/``sent`` are the close frames received and sent (websockets'
    ``close_rcvd``, ``close_sent``), ``rcvd_then_sent`` who closed first
    (``close_rcvd_then_sent``). A code other than 1000/1001/1005 is an error
    when the peer chose it: its close started the handshake, or it answered
    ours with a different code. A code *we* sent first was chosen by this
    side (the application's ``close(code)``) and is not an error: when
    websockets or the stream fail a connection, the stream reports that
    failure itself (``stream.error``), which takes precedence.
    """
    if rcvd is None:
        return None
    if sent is not None and rcvd_then_sent is False and rcvd.code == sent.code:
        return None  # we closed first; the peer echoed the code we chose
    if rcvd.code in NORMAL_CLOSE_CODES:
        return None
    return CloseError(rcvd.code, rcvd.reason)


def keepalive_options(policy: ReconnectPolicy, options: dict[str, Any]) -> dict[str, Any]:
    """With an idle timeout, ping at least twice per timeout so a healthy link stays up."""
    idle = policy.idle_timeout
    if idle is None:
        return options
    options = dict(options)
    interval = options.get("ping_interval", 20.0)
    if interval is None or interval > idle / 2:
        options["ping_interval"] = idle / 2
    # The idle timeout decides when a silent link is dead (and closes it with
    # 1001): a keepalive ping timeout must not pre-empt it.
    timeout = options.get("ping_timeout")
    if timeout is None or timeout >= idle:
        options["ping_timeout"] = None
    return options


logger = logging.getLogger("ws_stream.reconnect")

_FATAL_STATUSES = frozenset({400, 401, 403, 404, 405, 407, 410, 426})


def is_fatal(exc: BaseException) -> bool:
    """True for failures that retrying cannot fix (on a first attempt, raise at once).

    Fatal: an invalid URI or option (ValueError, TypeError), a handshake refused
    with 400/401/403/404/405/407/410/426, a TLS certificate rejected. Transient:
    refused or reset connections, timeouts, HTTP 5xx, anything else.
    """
    if isinstance(exc, ValueError | TypeError):
        return True
    if isinstance(exc, HandshakeError):
        return exc.status in _FATAL_STATUSES
    return isinstance(exc, ssl.SSLCertVerificationError)


class ReconnectMachine:
    """The decisions of a reconnect loop; the runtime loop reports what happens::

        attempt() -> (connect) -> failed(exc) -> delay
                               -> connected(now, stats)
                                  ... idle_check(now, reading_paused=...) -> next check | error
                                  ... disconnected(error, now, close frames) -> delay
        ... close()

    Statuses: ``CONNECTING`` during an attempt, ``CONNECTED`` while the
    current stream is live, ``BACKING_OFF`` from the moment that stream ended
    (EOF or an error delivered to the reader, the connection closed) or an
    attempt failed, until the next attempt; ``CLOSED`` at the end.
    """

    def __init__(self, policy: ReconnectPolicy, uri: str = "") -> None:
        self.policy = policy
        self.uri = uri
        # Every transition publishes a snapshot here (conn.states()).
        self.hub = EventHub[ConnectionState](
            maxlen=256, is_final=lambda state: state.status is Status.CLOSED
        )
        self.backoff = policy.backoff.copy()
        self._ids = itertools.count(1)
        self.connection_id = 0
        self.status = Status.CONNECTING
        self.reconnect_count = 0
        self.error_count = 0
        self.last_error: BaseException | None = None
        self.connected_since: float | None = None
        self.consecutive_failures = 0
        self.ever_connected = False
        self.totals = StreamStats()  # of finished connections
        self.current: StreamStats | None = None
        # The last time the current stream was seen not reading (its buffer
        # full): the idle clock does not run while the application is slow.
        self._busy_at: float | None = None

    def _publish(self) -> None:
        self.hub.publish(self.snapshot())

    def attempt(self) -> Status:
        self.status = Status.CONNECTING
        self._publish()
        return self.status

    def connected(self, now: float, stats: StreamStats) -> Status:
        """A connection is up: its stream (with ``stats``) is handed out."""
        self.connection_id = next(self._ids)
        if self.ever_connected:
            self.reconnect_count += 1
        self.ever_connected = True
        self.consecutive_failures = 0
        self.connected_since = now
        self.current = stats
        self._busy_at = None
        self.status = Status.CONNECTED
        self._publish()
        return self.status

    def failed(self, exc: BaseException) -> float:
        """A connection attempt failed: the delay before the next one.

        Raises ``exc``: it is fatal on the first attempt, or ``max_attempts``
        consecutive attempts failed.
        """
        self.error_count += 1
        self.last_error = exc
        self.consecutive_failures += 1
        limit = self.policy.max_attempts
        if (is_fatal(exc) and not self.ever_connected) or (
            limit is not None and self.consecutive_failures >= limit
        ):
            logger.info("connecting to %s failed (%s); giving up", self.uri, exc)
            self.close()
            raise exc
        self.status = Status.BACKING_OFF
        delay = self.backoff.next_delay()
        logger.info("connecting to %s failed (%s); retrying in %.2f s", self.uri, exc, delay)
        self._publish()
        return delay

    def disconnected(
        self,
        error: BaseException | None,
        now: float,
        *,
        close_rcvd: Close | None = None,
        close_sent: Close | None = None,
        rcvd_then_sent: bool | None = None,
        final: bool = False,
    ) -> float | None:
        """The current connection's stream ended: the delay before reconnecting.

        Report it as soon as the stream ends (its reader got EOF or an error,
        or the connection closed), not when the application is done with it:
        the status leaves ``CONNECTED`` at once and the backoff delay counts
        from now. ``error``: what ended the stream abnormally (the stream's
        error, an :exc:`IdleTimeoutError`), else None; with none, a close
        code chosen by the peer other than 1000/1001/1005 is the error (see
        :func:`close_error`, fed websockets' ``close_rcvd``, ``close_sent``,
        ``close_rcvd_then_sent``). An error is counted and kept as
        ``last_error``.

        Returns None when this connection's end was reported already (later
        reports change nothing). ``final``: the loop is being closed; nothing
        is logged or published.
        """
        if self.current is None:
            return None
        if error is None:
            error = close_error(close_rcvd, close_sent, rcvd_then_sent)
        if error is not None:
            self.error_count += 1
            self.last_error = error
        stayed = self.connected_since is not None and (
            now - self.connected_since >= self.policy.stable_after
        )
        if stayed:
            self.backoff.reset()
        for name in ("bytes_sent", "bytes_received", "frames_sent", "frames_received"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(self.current, name))
        self.totals.last_latency = self.current.last_latency or self.totals.last_latency
        self.current = None
        self.connected_since = None
        delay = self.backoff.next_delay()
        if not final:
            self.status = Status.BACKING_OFF
            logger.info(
                "connection to %s ended (%s); reconnecting in %.2f s",
                self.uri,
                error or "closed",
                delay,
            )
            self._publish()
        return delay

    def close(self) -> Status:
        self.status = Status.CLOSED
        self._publish()
        return self.status

    def idle_check(self, now: float, *, reading_paused: bool) -> float | IdleTimeoutError:
        """The idle watchdog's look at the current stream: when to look again, or the error.

        ``reading_paused``: the stream is not reading the connection because
        the application has not read what it buffered (the buffer is over its
        ``limit``). Then no frame *can* arrive, and that is not the peer's
        silence: the idle clock restarts once reading resumes. While paused,
        look again every quarter of ``idle_timeout``.

        Returns the time of the next look (``math.inf``: nothing to watch -
        no idle timeout, or no live stream), or the :exc:`IdleTimeoutError`
        that ends the stream now (logged): no frame arrived for
        ``idle_timeout`` while the stream was reading. The loop then reports
        it with :meth:`disconnected`, makes the reader raise it after the
        bytes it buffered, and closes with 1001.
        """
        idle = self.policy.idle_timeout
        if idle is None or self.current is None:
            return math.inf
        if reading_paused:
            self._busy_at = now
            return now + idle / 4
        deadline = self.idle_deadline()
        assert deadline is not None
        if now < deadline:
            return deadline
        return self.idle_error()

    def idle_error(self) -> IdleTimeoutError:
        """The error of a connection dropped for idleness (logged)."""
        error = IdleTimeoutError(
            f"no frame from {self.uri} for {self.policy.idle_timeout} s; "
            "dropped the connection with 1001"
        )
        logger.info("%s", error)
        return error

    def snapshot(self) -> ConnectionState:
        current = self.current or StreamStats()
        totals = self.totals
        return ConnectionState(
            connection_id=self.connection_id,
            status=self.status,
            reconnect_count=self.reconnect_count,
            error_count=self.error_count,
            last_error=self.last_error,
            connected_since=self.connected_since,
            bytes_sent=totals.bytes_sent + current.bytes_sent,
            bytes_received=totals.bytes_received + current.bytes_received,
            frames_sent=totals.frames_sent + current.frames_sent,
            frames_received=totals.frames_received + current.frames_received,
            last_latency=current.last_latency or totals.last_latency,
        )

    def is_healthy(self, now: float, *, reading_paused: bool = False) -> bool:
        """Connected, and (with an idle timeout) a frame arrived recently or the
        application is the one not reading (``reading_paused``)."""
        if self.status is not Status.CONNECTED or self.current is None:
            return False
        deadline = self.idle_deadline()
        return deadline is None or reading_paused or now < deadline

    def idle_deadline(self) -> float | None:
        """When the current connection times out if no frame arrives (None: no timeout).

        The idle clock starts at the latest of: the connection, the last frame
        received, the last time the stream resumed reading after read
        backpressure (``stats.read_resumed_at``, recorded by the stream when it
        happens), the last time the stream was seen not reading.
        """
        idle = self.policy.idle_timeout
        if idle is None or self.current is None:
            return None
        last = self.current.last_frame_at or self.connected_since
        if last is None:
            return None
        for busy in (self._busy_at, self.current.read_resumed_at):
            if busy is not None:
                last = max(last, busy)
        return last + idle
