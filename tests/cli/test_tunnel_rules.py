"""The tunnel rules of ``ws-stream`` fed events alone: no sockets, no event loop, no clock."""

from __future__ import annotations

import errno
import logging
import math

import pytest

from ws_stream.cli.rules import SHUTDOWN, Close, Ending, TunnelRules


def rules(**options: object) -> TunnelRules:
    settings: dict[str, object] = {"role": "client", "kind": "tcp", "now": 0.0}
    settings.update(options)
    return TunnelRules(**settings)  # type: ignore[arg-type]


# --linger and --idle-timeout: real silence only


def test_linger_fires_after_real_silence_and_is_an_early_end() -> None:
    r = rules(linger=2.0)
    assert r.deadline() is None  # no EOF yet: no linger
    assert r.local_eof(1.0) is None
    assert r.deadline() == 3.0
    assert r.poll(2.9) is None
    close = r.poll(3.0)
    assert close is not None
    assert (close.code, close.reason, close.early) == (1000, "", True)
    assert "--linger" in close.why
    assert r.deadline() is None and r.poll(10.0) is None  # decided once


def test_bytes_from_the_server_restart_the_linger() -> None:
    r = rules(linger=2.0)
    r.local_eof(0.0)
    assert r.received(1.5, 10) == (10, None)
    assert r.deadline() == 3.5
    assert r.poll(2.0) is None  # the old deadline: not due any more


def test_a_local_write_that_waits_is_not_silence() -> None:
    """A consumer that pauses 4 s is not a server that is silent for 4 s."""
    r = rules(linger=2.0, idle_timeout=1.0)
    r.local_eof(0.0)
    r.received(0.1, 65536)
    r.local_write_started(0.1)
    assert r.deadline() is None  # no timer runs while the local side has not taken the bytes
    assert r.poll(4.0) is None
    r.local_write_finished(4.1)
    assert r.deadline() == 5.1  # idle first: it counts again from the moment they were taken
    r.received(4.2, 65536)
    assert r.deadline() == 5.2
    r.local_write_started(4.2)
    r.local_write_finished(4.2)
    close = r.poll(5.2)
    assert close is not None and close.early and close.reason == "idle timeout"
    assert "--idle-timeout" in close.why


def test_idle_counts_bytes_either_way() -> None:
    r = rules(idle_timeout=5.0)
    assert r.deadline() == 5.0
    r.sent(3.0)
    assert r.deadline() == 8.0
    assert r.poll(5.0) is None
    r.received(7.0, 1)
    assert r.deadline() == 12.0


def test_linger_zero_is_a_clean_close_at_eof_and_inf_never_fires() -> None:
    close = rules(linger=0.0).local_eof(1.0)
    assert close is not None and (close.code, close.early) == (1000, False)
    r = rules(linger=math.inf)
    assert r.local_eof(1.0) is None
    assert r.deadline() is None and r.poll(1e9) is None


def test_max_bytes_delivers_exactly_n_then_a_clean_close() -> None:
    r = rules(max_bytes=100)
    assert r.received(0.0, 60) == (60, None)
    size, close = r.received(0.1, 60)
    assert size == 40
    assert close is not None and (close.code, close.early) == (1000, False)


def test_stop_is_1001_once() -> None:
    r = rules(idle_timeout=1.0)
    assert r.stop() == SHUTDOWN and SHUTDOWN[:2] == (1001, "going away")
    assert r.stop() is None
    assert r.deadline() is None
    timed = rules(idle_timeout=1.0)
    assert timed.poll(1.0) is not None
    assert timed.stop() is None  # a close decided already stays the one


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError):
        rules(linger=-1.0)
    with pytest.raises(ValueError):
        rules(idle_timeout=0.0)


# Local errors: close code, log level, outcome


def test_a_tcp_reset_in_the_middle_of_data_is_1011_and_an_error() -> None:
    r = rules(role="target")
    failure = r.local_failed(ConnectionResetError(104, "reset"), writing=False, ws_closing=False)
    assert failure.close[:2] == (1011, "the target connection was reset")
    assert failure.error == "the target failed: [Errno 104] reset"
    assert r.ending(peer_code=1011, peer_reason="", ws_error=None) == Ending(
        "the target failed: [Errno 104] reset", True
    )
    other = rules(role="target").local_failed(
        OSError(errno.EHOSTUNREACH, "unreachable"), writing=True, ws_closing=False
    )
    assert other.close[:2] == (1011, "the target connection failed") and other.error


@pytest.mark.parametrize("ended", ["close received", "close sent", "peer eof (read)"])
@pytest.mark.parametrize("exc", [ConnectionResetError(104, "x"), BrokenPipeError(32, "x")])
def test_a_tcp_reset_after_a_direction_ended_is_a_normal_end(ended: str, exc: OSError) -> None:
    r = rules(role="client", linger=2.0)
    writing = True
    if ended == "close sent":
        r.closing(Close(1000, ""))
    elif ended == "peer eof (read)":
        assert r.peer_eof() is True  # we half-closed the local side: its reset ends it
        writing = False
    failure = r.local_failed(exc, writing=writing, ws_closing=ended == "close received")
    assert failure.close is not None and failure.close[:2] == (1000, "")
    assert failure.level == logging.INFO and failure.error is None
    assert "the client connection was reset after the end of the stream" in failure.message
    if ended != "close sent":
        r.closing(failure.close)
    # Clean: no error; the local side is reset anyway (its connection is gone).
    assert r.ending(peer_code=1000, peer_reason="", ws_error=None) == Ending(None, True)


def test_a_write_reset_after_the_local_eof_waits_for_the_server() -> None:
    """psql closes right after its terminate: the server's last bytes meet a reset."""
    r = rules(role="client", linger=2.0)
    r.local_eof(0.0)
    failure = r.local_failed(BrokenPipeError(32, "x"), writing=True, ws_closing=False, now=1.0)
    assert failure.close is None and failure.error is None and failure.level == logging.INFO
    # The server sends nothing more and closes: a normal end.
    assert r.ending(peer_code=1000, peer_reason="", ws_error=None) == Ending(None, True)
    # Or it stays silent: the linger timer closes normally (nothing was lost).
    quiet = rules(role="client", linger=2.0)
    quiet.local_eof(0.0)
    quiet.local_failed(BrokenPipeError(32, "x"), writing=True, ws_closing=False, now=1.0)
    due = quiet.deadline()
    assert due == 3.0
    close = quiet.poll(due)
    assert close is not None and close[:2] == (1000, "") and not close.early
    quiet.closing(close)
    assert quiet.ending(peer_code=1000, peer_reason="", ws_error=None).error is None


def test_a_write_reset_after_the_local_eof_is_1011_when_the_server_still_sends() -> None:
    r = rules(role="client", linger=2.0)
    r.local_eof(0.0)
    r.local_failed(ConnectionResetError(104, "x"), writing=True, ws_closing=False, now=1.0)
    close = r.discarded(1.5, 65536)
    assert close is not None and close[:2] == (1011, "the client connection was reset")
    r.closing(close)
    ending = r.ending(peer_code=1011, peer_reason="", ws_error=None)
    assert ending.reset_local and ending.error is not None
    assert "while the server was still sending" in ending.error
    assert r.discarded(1.6, 10) is None  # decided once


def test_the_peer_eof_marker_asks_for_one_half_close() -> None:
    r = rules(role="target")
    assert r.peer_eof() is True
    assert r.peer_eof() is False
    ended = rules(role="target")
    assert ended.stop() is not None
    assert ended.peer_eof() is False  # the tunnel is ending already


def test_stdio_epipe_is_quiet_other_errors_fail_with_the_os_error() -> None:
    r = rules(role="stdio", kind="stdio")
    quiet = r.local_failed(BrokenPipeError(32, "Broken pipe"), writing=True, ws_closing=False)
    assert (quiet.close[:2], quiet.level, quiet.error) == ((1000, ""), logging.DEBUG, None)
    r.closing(quiet.close)
    assert r.ending(peer_code=1000, peer_reason="", ws_error=None).error is None

    full = rules(role="stdio", kind="stdio")
    failure = full.local_failed(
        OSError(errno.ENOSPC, "No space left on device"), writing=True, ws_closing=False
    )
    assert failure.close[:2] == (1011, "cannot write the output")
    assert failure.error == "cannot write to stdout: [Errno 28] No space left on device"
    full.closing(failure.close)
    assert full.ending(peer_code=1011, peer_reason="", ws_error=None).error == failure.error

    unreadable = rules(role="stdio", kind="stdio")
    failure = unreadable.local_failed(OSError(errno.EIO, "I/O"), writing=False, ws_closing=False)
    assert failure.close[:2] == (1011, "cannot read the input")
    assert failure.error == "cannot read stdin: [Errno 5] I/O"


# How a tunnel ends


def test_the_servers_clean_close_is_a_clean_end() -> None:
    r = rules(linger=2.0)
    r.local_eof(0.0)
    for code in (1000, 1001, None):
        assert r.ending(peer_code=code, peer_reason="", ws_error=None) == Ending(None, False)


def test_an_error_close_or_a_failure_of_the_websocket_resets_the_local_side() -> None:
    assert rules().ending(peer_code=1011, peer_reason="oops", ws_error=None) == Ending(
        "the peer closed with 1011 (oops)", True
    )
    assert rules().ending(peer_code=None, peer_reason="", ws_error="lost (1006)") == Ending(
        "the WebSocket failed: lost (1006)", True
    )


def test_a_timer_close_is_never_a_clean_end() -> None:
    r = rules(role="stdio", kind="stdio", linger=0.5)
    r.local_eof(0.0)
    close = r.poll(0.5)
    assert close is not None
    r.closing(close)  # sent: no close from the server had arrived
    ending = r.ending(peer_code=1000, peer_reason="", ws_error=None)
    assert ending == Ending(close.why, True)
    assert "input" in close.why


def test_a_timer_close_that_the_servers_close_overtook_is_clean() -> None:
    r = rules(idle_timeout=1.0)
    assert r.poll(1.0) is not None  # but the shell saw the server's close under way: not sent
    assert r.ending(peer_code=1000, peer_reason="", ws_error=None) == Ending(None, False)


def test_a_clean_close_of_ours_that_the_server_does_not_complete() -> None:
    r = rules()
    r.closing(SHUTDOWN)
    assert r.ending(peer_code=None, peer_reason="", ws_error="no close frame") == Ending(
        "the peer did not complete the close: no close frame", False
    )


def test_a_local_side_that_does_not_take_the_last_bytes_in_time() -> None:
    r = rules(role="client")
    r.closing(SHUTDOWN)
    assert r.ending(peer_code=1001, peer_reason="", ws_error=None, local_late=True) == Ending(
        "the client did not take the last bytes in time", True
    )


def test_data_after_the_peer_eof_marker_is_a_broken_peer() -> None:
    r = rules(role="target")
    assert r.peer_eof() is True
    assert r.received(0.0, 5) == (5, None)  # still before the half-close: written
    r.eof_passed()
    size, close = r.received(1.0, 7)
    assert size == 0 and close is not None and close[:2] == (1002, "data after the end of input")
    r.closing(close)
    ending = r.ending(peer_code=1002, peer_reason="", ws_error=None)
    assert ending.error is not None and "after its end-of-input marker" in ending.error


def test_linger_starts_when_the_server_has_read_our_last_bytes() -> None:
    """A slow uplink still carrying our bytes after the local EOF is not silence."""
    r = rules(role="client", linger=2.0)
    assert r.local_eof(0.0, marker=True) is None
    assert r.deadline() is None  # the marker's pong has not come
    assert r.poll(5.0) is None
    r.input_delivered(6.0)  # the server read everything before the marker
    assert r.deadline() == 8.0
    close = r.poll(8.0)
    assert close is not None and close.early
