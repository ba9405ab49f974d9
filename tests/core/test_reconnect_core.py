"""Backoff, presets and the reconnect machine, without sockets."""

from __future__ import annotations

import math
import ssl

import pytest
from websockets.frames import Close

from ws_stream import (
    AbnormalClosureError,
    Backoff,
    HandshakeError,
    IdleTimeoutError,
    ReconnectPolicy,
    Status,
    StreamStats,
)
from ws_stream.reconnect import CloseError, ReconnectMachine, close_error, is_fatal


def test_backoff_is_exponential_jittered_capped_and_seeded() -> None:
    a = Backoff(1.0, 2.0, jitter=0.1, max_delay=10.0, seed=7)
    b = Backoff(1.0, 2.0, jitter=0.1, max_delay=10.0, seed=7)
    delays = [a.next_delay() for _ in range(8)]
    assert delays == [b.next_delay() for _ in range(8)]  # deterministic with a seed
    for n, delay in enumerate(delays):
        base = 2.0**n
        assert min(10.0, base * 0.9) <= delay <= min(10.0, base * 1.1)
    assert max(delays) <= 10.0
    a.reset()
    assert 0.9 <= a.next_delay() <= 1.1


def test_backoff_without_jitter_is_exact() -> None:
    backoff = Backoff(0.5, 1.5, jitter=0.0, max_delay=1.0)
    assert [backoff.next_delay() for _ in range(4)] == [0.5, 0.75, 1.0, 1.0]


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": -1}, {"factor": 0.5}, {"jitter": 1.5}, {"initial": 5, "max_delay": 1}],
)
def test_backoff_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_presets() -> None:
    fast = ReconnectPolicy.fast_reconnect()
    assert (fast.backoff.initial, fast.backoff.factor, fast.backoff.max_delay) == (0.5, 1.5, 10.0)
    assert fast.idle_timeout == 10.0
    stable = ReconnectPolicy.stable_connection()
    assert (stable.backoff.initial, stable.backoff.factor, stable.backoff.max_delay) == (
        2.0,
        2.0,
        120.0,
    )
    assert stable.idle_timeout == 60.0
    low = ReconnectPolicy.low_latency(max_attempts=3)
    assert (low.backoff.initial, low.backoff.factor, low.backoff.max_delay) == (0.1, 1.2, 5.0)
    assert (low.idle_timeout, low.max_attempts) == (5.0, 3)
    with pytest.raises(ValueError):
        ReconnectPolicy(max_attempts=0)


@pytest.mark.parametrize(
    ("exc", "fatal"),
    [
        (ValueError("bad uri"), True),
        (HandshakeError("refused", status=401), True),
        (HandshakeError("refused", status=403), True),
        (HandshakeError("refused", status=404), True),
        (HandshakeError("refused", status=503), False),
        (HandshakeError("nonsense"), False),
        (ssl.SSLCertVerificationError("bad cert"), True),
        (ConnectionRefusedError(), False),
        (ConnectionResetError(), False),
        (TimeoutError(), False),
    ],
)
def test_fatal_or_transient(exc: BaseException, fatal: bool) -> None:
    assert is_fatal(exc) is fatal


def test_machine_fails_fast_only_on_a_first_attempt() -> None:
    m = ReconnectMachine(ReconnectPolicy(Backoff(jitter=0)))
    with pytest.raises(HandshakeError):
        m.failed(HandshakeError("no", status=401))
    assert m.status is Status.CLOSED

    m = ReconnectMachine(ReconnectPolicy(Backoff(jitter=0)))
    m.attempt()
    m.connected(0.0, StreamStats())
    assert m.disconnected(ConnectionResetError(), 1.0) == 1.0
    # Once connected before, a 401 is retried (the server may be restarting).
    assert m.failed(HandshakeError("no", status=401)) == 2.0
    assert m.error_count == 2 and m.reconnect_count == 0


def test_machine_max_attempts_counts_consecutive_failures() -> None:
    m = ReconnectMachine(ReconnectPolicy(Backoff(jitter=0), max_attempts=3))
    m.failed(ConnectionRefusedError())
    m.failed(ConnectionRefusedError())
    last = ConnectionRefusedError("third")
    with pytest.raises(ConnectionRefusedError) as info:
        m.failed(last)
    assert info.value is last
    assert m.status is Status.CLOSED


def test_machine_resets_backoff_after_a_stable_connection_and_sums_counters() -> None:
    m = ReconnectMachine(ReconnectPolicy(Backoff(1.0, 2.0, jitter=0), stable_after=5.0))
    stats = StreamStats(bytes_sent=10, bytes_received=20, frames_sent=1, frames_received=2)
    m.connected(0.0, stats)
    assert m.disconnected(None, 1.0) == 1.0  # short-lived: the backoff grows
    m.connected(2.0, StreamStats(bytes_sent=5))
    assert m.snapshot().bytes_sent == 15
    assert m.disconnected(None, 2.5) == 2.0
    m.connected(10.0, StreamStats())
    assert m.disconnected(None, 20.0) == 1.0  # stayed up 10 s >= 5 s: reset
    state = m.snapshot()
    assert (state.bytes_sent, state.bytes_received, state.frames_received) == (15, 20, 2)
    assert state.reconnect_count == 2 and state.connection_id == 3


def test_machine_idle_deadline_and_health() -> None:
    m = ReconnectMachine(ReconnectPolicy(idle_timeout=5.0))
    stats = StreamStats()
    m.connected(100.0, stats)
    assert m.idle_deadline() == 105.0
    assert m.is_healthy(104.0) and not m.is_healthy(106.0)
    stats.last_frame_at = 103.0
    assert m.idle_deadline() == 108.0


def test_idle_means_no_frame_while_reading() -> None:
    m = ReconnectMachine(ReconnectPolicy(idle_timeout=4.0))
    stats = StreamStats()
    m.connected(100.0, stats)
    assert m.idle_check(101.0, reading_paused=False) == 104.0
    stats.last_frame_at = 102.0
    assert m.idle_check(104.0, reading_paused=False) == 106.0
    # The consumer stopped reading: the buffer is full, TCP reading paused. No
    # frame can arrive; that is not the peer's silence. Look again soon.
    assert m.idle_check(106.0, reading_paused=True) == 107.0
    assert m.is_healthy(109.0, reading_paused=True)
    assert m.idle_check(109.0, reading_paused=True) == 110.0
    # Reading resumed (last seen paused at 109): the clock runs from there.
    assert m.idle_check(110.0, reading_paused=False) == 113.0
    assert m.is_healthy(112.9) and not m.is_healthy(113.0)
    verdict = m.idle_check(113.0, reading_paused=False)
    assert isinstance(verdict, IdleTimeoutError)
    assert "1001" in str(verdict)
    assert m.status is Status.CONNECTED  # the loop reports the end with disconnected()
    assert m.disconnected(verdict, 113.0) is not None
    assert m.status is Status.BACKING_OFF
    assert (m.error_count, m.last_error) == (1, verdict)
    assert m.idle_check(114.0, reading_paused=False) == math.inf  # nothing left to watch


def test_a_pause_between_two_looks_still_counts() -> None:
    """Reading paused and resumed between two looks of the watchdog: not silence.

    The stream records when it resumed reading (``stats.read_resumed_at``), so
    a pause that no look saw still restarts the idle clock.
    """
    m = ReconnectMachine(ReconnectPolicy(idle_timeout=1.0))
    stats = StreamStats()
    m.connected(0.0, stats)
    stats.last_frame_at = 0.0
    assert m.idle_check(0.1, reading_paused=False) == 1.0
    stats.read_resumed_at = 0.85  # paused from 0.15 to 0.85: no look saw it
    assert m.idle_check(1.10, reading_paused=False) == 1.85
    assert isinstance(m.idle_check(1.85, reading_paused=False), IdleTimeoutError)


def test_without_idle_timeout_nothing_is_watched() -> None:
    m = ReconnectMachine(ReconnectPolicy())
    m.connected(0.0, StreamStats())
    assert m.idle_check(1e6, reading_paused=False) == math.inf
    assert m.is_healthy(1e6)


def test_the_status_leaves_connected_when_the_stream_ends_and_only_once() -> None:
    m = ReconnectMachine(ReconnectPolicy(Backoff(1.0, 2.0, jitter=0)))
    states = []
    sub = m.hub.subscribe(lambda: None)
    m.attempt()
    m.connected(0.0, StreamStats(bytes_received=5))
    assert m.disconnected(None, 1.0, close_rcvd=Close(1000, ""), close_sent=Close(1000, "")) == 1.0
    assert m.status is Status.BACKING_OFF and m.connected_since is None
    # Later reports of the same end (the TCP teardown, the loop closing the
    # stream) change nothing: no second count, no second delay.
    assert m.disconnected(AbnormalClosureError("late"), 2.0) is None
    assert (m.error_count, m.last_error) == (0, None)
    assert m.snapshot().bytes_received == 5
    while (state := sub.pop()) is not None:
        states.append(state.status)
    assert states == [Status.CONNECTING, Status.CONNECTED, Status.BACKING_OFF]


def test_a_final_end_is_not_published() -> None:
    m = ReconnectMachine(ReconnectPolicy(Backoff(jitter=0)))
    m.connected(0.0, StreamStats())
    sub = m.hub.subscribe(lambda: None)
    assert m.disconnected(None, 1.0, final=True) == 1.0
    assert sub.pop() is None
    m.close()
    popped = sub.pop()
    assert popped is not None and popped.status is Status.CLOSED


def c(code: int, reason: str = "") -> Close:
    return Close(code, reason)


@pytest.mark.parametrize(
    ("rcvd", "sent", "rcvd_then_sent", "error_code"),
    [
        (c(1000), c(1000), True, None),  # the peer's normal close, echoed
        (c(1001), c(1001), True, None),  # going away
        (c(1005), c(1005), True, None),  # an empty close frame
        (c(1011, "boom"), c(1011, "boom"), True, 1011),  # the peer's error
        (c(4000), c(4000), True, 4000),  # an application code the peer chose
        (c(1011), None, None, 1011),  # the peer's close, TCP gone before our answer
        (c(4000), c(4000), False, None),  # our chosen code, echoed
        (c(1000), c(1000), False, None),  # our normal close
        (c(1011), c(1000), False, 1011),  # our 1000, answered with an error code
        (None, c(4000), None, None),  # no answer: the stream's own error says so
        (None, None, None, None),
    ],
)
def test_close_codes_that_are_errors(
    rcvd: Close | None, sent: Close | None, rcvd_then_sent: bool | None, error_code: int | None
) -> None:
    error = close_error(rcvd, sent, rcvd_then_sent)
    if error_code is None:
        assert error is None
    else:
        assert isinstance(error, CloseError)
        assert rcvd is not None and (error.code, error.reason) == (error_code, rcvd.reason)
        assert str(error_code) in str(error)


def test_a_close_with_an_error_code_counts_as_an_error() -> None:
    m = ReconnectMachine(ReconnectPolicy(Backoff(jitter=0)))
    for n in (1, 2):
        m.connected(float(n), StreamStats())
        m.disconnected(
            None,
            n + 0.5,
            close_rcvd=c(1011, "boom"),
            close_sent=c(1011, "boom"),
            rcvd_then_sent=True,
        )
        assert m.error_count == n
    assert isinstance(m.last_error, CloseError) and m.last_error.code == 1011
    # The stream's own error (a text frame, a lost connection, an idle
    # timeout) takes precedence over the close code.
    m.connected(3.0, StreamStats())
    lost = AbnormalClosureError("lost")
    m.disconnected(lost, 3.5, close_rcvd=c(1011), close_sent=None, rcvd_then_sent=None)
    assert m.last_error is lost and m.error_count == 3


def test_a_stream_is_over_at_the_peers_close_a_failure_or_the_tcp_end() -> None:
    from ws_stream.reconnect import CloseFrames, stream_over

    open_ = CloseFrames(None, None, None, tcp_closed=False)
    assert not stream_over(open_, None)
    assert not stream_over(CloseFrames(None, Close(1000, ""), None, False), None)  # ours only
    assert stream_over(CloseFrames(Close(1000, ""), None, None, False), None)
    assert stream_over(open_, ConnectionResetError())
    assert stream_over(CloseFrames(None, None, None, tcp_closed=True), None)
