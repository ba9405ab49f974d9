"""Backoff, presets and the reconnect machine, without sockets."""

from __future__ import annotations

import ssl

import pytest

from ws_stream import Backoff, HandshakeError, ReconnectPolicy, Status, StreamStats
from ws_stream.reconnect import ReconnectMachine, is_fatal


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
