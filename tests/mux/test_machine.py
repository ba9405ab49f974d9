"""The yamux protocol machine (:mod:`ws_stream.mux._machine`), fed bytes and commands.

Frames are built and parsed here by hand, from HashiCorp's yamux spec (12-byte
big-endian header: version, type, flags, stream id, length), not with the
module's ``header()``: the wire format is checked against the spec, not against
itself. The last part drives the machine with random peer frames and local
commands and compares it with a small reference model written here.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from ws_stream.mux._machine import (
    MAX_BLOCKED_ANSWERS,
    Acked,
    Data,
    Eof,
    Event,
    GoneAway,
    Machine,
    MuxError,
    Opened,
    Pinged,
    Pong,
    Reset,
    SessionFailed,
    Writable,
)

# The spec's numbers, written out here (not taken from the module).
DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8
NORMAL, PROTOCOL_ERROR, INTERNAL_ERROR = 0, 1, 2
WINDOW = 256 * 1024
MAX_FRAME = 256 * 1024  # the module's largest frame: the initial window
MAX_U32 = 2**32 - 1
MiB = 2**20


# Frames, by hand


class F(NamedTuple):
    """One frame, as parsed from the wire."""

    type: int
    flags: int
    stream: int
    length: int
    payload: bytes = b""
    version: int = 0


def frame(
    type_: int, flags: int, stream: int, length: int, payload: bytes = b"", version: int = 0
) -> bytes:
    return (
        version.to_bytes(1, "big")
        + type_.to_bytes(1, "big")
        + flags.to_bytes(2, "big")
        + stream.to_bytes(4, "big")
        + length.to_bytes(4, "big")
        + payload
    )


def encode(f: F) -> bytes:
    return frame(f.type, f.flags, f.stream, f.length, f.payload, f.version)


def data(stream: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return frame(DATA, flags, stream, len(payload), payload)


def update(stream: int, delta: int = 0, flags: int = 0) -> bytes:
    return frame(WINDOW_UPDATE, flags, stream, delta)


def ping(opaque: int, flags: int = SYN) -> bytes:
    return frame(PING, flags, 0, opaque)


def go_away(code: int = NORMAL) -> bytes:
    return frame(GO_AWAY, 0, 0, code)


def parse(wire: bytes) -> list[F]:
    """Split bytes written by the machine into frames (every one whole)."""
    frames = []
    at = 0
    while at < len(wire):
        assert len(wire) - at >= 12, f"a truncated header at byte {at}"
        version, type_ = wire[at], wire[at + 1]
        flags = int.from_bytes(wire[at + 2 : at + 4], "big")
        stream = int.from_bytes(wire[at + 4 : at + 8], "big")
        length = int.from_bytes(wire[at + 8 : at + 12], "big")
        at += 12
        payload = b""
        if type_ == DATA:
            payload = wire[at : at + length]
            assert len(payload) == length, f"a truncated payload at byte {at}"
            at += length
        frames.append(F(type_, flags, stream, length, payload, version))
    return frames


def written(m: Machine) -> list[F]:
    return parse(b"".join(bytes(chunk) for chunk in m.data_to_send()))


def feed(m: Machine, *frames: bytes) -> list[Event]:
    m.receive_data(b"".join(frames))
    return m.events()


def ev(events: list[Event]) -> list[tuple[object, ...]]:
    """Events as comparable tuples (named tuples alone compare equal across types)."""
    out: list[tuple[object, ...]] = []
    for event in events:
        if isinstance(event, SessionFailed):
            out.append(("SessionFailed", event.code, event.by_peer))
        else:
            out.append((type(event).__name__, *event))
    return out


def failed(code: int = PROTOCOL_ERROR, by_peer: bool = False) -> SessionFailed:
    return SessionFailed(code, "", by_peer)


GO_AWAY_PROTOCOL = F(GO_AWAY, 0, 0, PROTOCOL_ERROR)


def server(**kw: int) -> Machine:
    """A server: the peer (a client) opens odd ids."""
    return Machine(client=False, **kw)


def client(**kw: int) -> Machine:
    """A client: the peer (a server) opens even ids."""
    return Machine(client=True, **kw)


def peer_is_refused(m: Machine, stream: int) -> None:
    """The peer's SYN for ``stream`` is answered with RST, and nothing happens here."""
    assert feed(m, update(stream, 0, SYN)) == []
    assert written(m) == [F(WINDOW_UPDATE, RST, stream, 0)]


def peer_opens(m: Machine, stream: int) -> None:
    assert ev(feed(m, update(stream, 0, SYN))) == ev([Opened(stream)])
    assert written(m) == [F(WINDOW_UPDATE, ACK, stream, m.window - WINDOW)]


def we_open(m: Machine) -> int:
    stream = m.open_stream()
    assert written(m) == [F(WINDOW_UPDATE, SYN, stream, m.window - WINDOW)]
    assert ev(feed(m, update(stream, 0, ACK))) == ev([Acked(stream)])
    return stream


def assert_ignored(m: Machine, *frames: bytes) -> None:
    """``frames`` (for streams gone lately) bring no event, no bytes, no failure."""
    assert written(m) == []  # (nothing pending before)
    assert ev(feed(m, *frames)) == []
    assert written(m) == []
    assert m.failed is None


# Opening streams


def test_peer_opens_with_a_window_update_syn() -> None:
    m = server()
    assert ev(feed(m, update(1, 0, SYN))) == ev([Opened(1)])
    assert written(m) == [F(WINDOW_UPDATE, ACK, 1, 0)]
    assert set(m.streams) == {1}
    assert m.send_window(1) == WINDOW


def test_peer_opens_with_a_data_syn_and_payload() -> None:
    m = server()
    assert ev(feed(m, data(1, b"hello", SYN))) == ev([Opened(1), Data(1, b"hello")])
    assert written(m) == [F(WINDOW_UPDATE, ACK, 1, 0)]


def test_client_accepts_even_ids_from_its_peer() -> None:
    m = client()
    assert ev(feed(m, data(2, b"x", SYN))) == ev([Opened(2), Data(2, b"x")])
    assert written(m) == [F(WINDOW_UPDATE, ACK, 2, 0)]


def test_peer_syn_with_a_window_delta_grows_the_send_window() -> None:
    m = server()
    assert ev(feed(m, update(1, 1000, SYN))) == ev([Opened(1), Writable(1)])
    assert m.send_window(1) == WINDOW + 1000
    assert m.send(1, bytes(2 * WINDOW)) == WINDOW + 1000


def test_a_larger_window_is_granted_with_the_ack() -> None:
    m = server(window=4 * WINDOW)
    assert ev(feed(m, update(1, 0, SYN))) == ev([Opened(1)])
    assert written(m) == [F(WINDOW_UPDATE, ACK, 1, 3 * WINDOW)]
    payload = bytes(range(256)) * (4 * WINDOW // 256)
    assert ev(feed(m, data(1, payload))) == ev([Data(1, payload)])
    assert m.failed is None
    events = feed(m, data(1, b"!"))
    assert ev(events) == ev([failed()])


def test_open_stream_sends_syn_with_increasing_ids_of_its_parity() -> None:
    c = client()
    assert [c.open_stream(), c.open_stream(), c.open_stream()] == [1, 3, 5]
    assert written(c) == [F(WINDOW_UPDATE, SYN, s, 0) for s in (1, 3, 5)]
    s = server()
    assert [s.open_stream(), s.open_stream()] == [2, 4]
    assert written(s) == [F(WINDOW_UPDATE, SYN, i, 0) for i in (2, 4)]


def test_a_larger_window_is_granted_with_the_syn() -> None:
    m = client(window=WINDOW + 1)
    stream = m.open_stream()
    assert written(m) == [F(WINDOW_UPDATE, SYN, stream, 1)]
    assert ev(feed(m, data(stream, bytes(WINDOW + 1), ACK))) == ev(
        [Acked(stream), Data(stream, bytes(WINDOW + 1))]
    )
    assert m.failed is None


def test_ack_of_our_open() -> None:
    m = client()
    first, second = m.open_stream(), m.open_stream()
    written(m)
    assert ev(feed(m, update(first, 0, ACK))) == ev([Acked(first)])
    assert feed(m, update(first, 0, ACK)) == []  # a second ACK says nothing new
    assert ev(feed(m, data(second, b"hi", ACK))) == ev([Acked(second), Data(second, b"hi")])
    assert written(m) == []


def test_ack_with_a_window_delta() -> None:
    m = client()
    stream = m.open_stream()
    written(m)
    assert ev(feed(m, update(stream, 5000, ACK))) == ev([Acked(stream), Writable(stream)])
    assert m.send_window(stream) == WINDOW + 5000


def test_data_may_be_sent_before_the_ack() -> None:
    m = client()
    stream = m.open_stream()
    assert m.send(stream, b"early") == 5
    assert written(m) == [F(WINDOW_UPDATE, SYN, stream, 0), F(DATA, 0, stream, 5, b"early")]


def test_peer_refuses_our_open_with_rst() -> None:
    m = client()
    stream = m.open_stream()
    written(m)
    assert ev(feed(m, update(stream, 0, RST))) == ev([Reset(stream, True)])
    assert stream not in m.streams
    with pytest.raises(MuxError):
        m.send(stream, b"x")


# Data, FIN, RST


def test_data_both_ways() -> None:
    m = server()
    peer_opens(m, 1)
    assert ev(feed(m, data(1, b"ping"))) == ev([Data(1, b"ping")])
    assert m.send(1, b"pong") == 4
    assert m.send(1, bytearray(b"ba")) == 2
    assert m.send(1, memoryview(b"mv")) == 2
    assert written(m) == [
        F(DATA, 0, 1, 4, b"pong"),
        F(DATA, 0, 1, 2, b"ba"),
        F(DATA, 0, 1, 2, b"mv"),
    ]
    assert m.send(1, b"") == 0
    assert written(m) == []


def test_peer_fin_first_then_ours() -> None:
    m = server()
    peer_opens(m, 1)
    assert ev(feed(m, data(1, b"last", FIN))) == ev([Data(1, b"last"), Eof(1)])
    assert m.send(1, b"still") == 5  # half-closed: this side still writes
    assert written(m) == [F(DATA, 0, 1, 5, b"still")]
    m.close_stream(1)
    assert written(m) == [F(WINDOW_UPDATE, FIN, 1, 0)]
    assert 1 not in m.streams  # both FINs: forgotten
    with pytest.raises(MuxError):
        m.send(1, b"x")
    assert m.send_window(1) == 0
    assert_ignored(m, data(1, b"in flight"), update(1, 10), update(1, 0, FIN), update(1, 0, RST))


def test_our_fin_first_then_the_peers() -> None:
    m = client()
    stream = we_open(m)
    m.close_stream(stream)
    assert written(m) == [F(WINDOW_UPDATE, FIN, stream, 0)]
    with pytest.raises(MuxError):
        m.send(stream, b"x")
    assert m.send_window(stream) == 0
    # the peer still writes, and a window update brings no Writable (we may not write)
    assert ev(feed(m, data(stream, b"more"), update(stream, 100))) == ev([Data(stream, b"more")])
    assert ev(feed(m, update(stream, 0, FIN))) == ev([Eof(stream)])
    assert stream not in m.streams
    assert_ignored(m, data(stream, b"late"), update(stream, 0, RST))


def test_close_twice_sends_one_fin() -> None:
    m = server()
    peer_opens(m, 1)
    m.close_stream(1)
    m.close_stream(1)
    assert written(m) == [F(WINDOW_UPDATE, FIN, 1, 0)]


def test_a_second_fin_from_the_peer_is_harmless() -> None:
    m = server()
    peer_opens(m, 1)
    assert ev(feed(m, update(1, 0, FIN))) == ev([Eof(1)])
    assert feed(m, data(1, b"", FIN)) == []
    assert m.failed is None


def test_peer_reset() -> None:
    m = server()
    peer_opens(m, 1)
    assert ev(feed(m, update(1, 0, RST))) == ev([Reset(1, True)])
    assert 1 not in m.streams
    with pytest.raises(MuxError):
        m.send(1, b"x")
    m.close_stream(1)
    m.reset_stream(1)
    m.consumed(1, 10)
    assert_ignored(m, data(1, b"in flight"), update(1, 5), update(1, 0, FIN))


def test_local_reset() -> None:
    m = server()
    peer_opens(m, 1)
    m.reset_stream(1)
    assert written(m) == [F(WINDOW_UPDATE, RST, 1, 0)]
    assert ev(m.events()) == ev([Reset(1, False)])
    m.reset_stream(1)  # gone: nothing
    assert ev(m.events()) == []
    assert_ignored(m, data(1, b"in flight"), update(1, 5), update(1, 0, FIN), update(1, 0, RST))


# Ping and Go Away


@pytest.mark.parametrize("opaque", [0, 1, 0xDEADBEEF, MAX_U32])
def test_peer_ping_is_answered_with_the_same_opaque(opaque: int) -> None:
    m = server()
    assert ev(feed(m, ping(opaque))) == ev([Pinged(opaque)])
    assert written(m) == [F(PING, ACK, 0, opaque)]


def test_our_ping_and_its_pong() -> None:
    m = client()
    first = m.ping()
    second = m.ping()
    assert first != second
    assert written(m) == [F(PING, SYN, 0, first), F(PING, SYN, 0, second)]
    assert ev(feed(m, ping(second, ACK), ping(first, ACK))) == ev([Pong(second), Pong(first)])
    assert written(m) == []


@pytest.mark.parametrize("provoke", ["pings", "refused opens"])
def test_answers_a_peer_provokes_while_it_does_not_read_are_bounded(provoke: str) -> None:
    # While the byte stream under the session is backed up (the shell says so), a
    # peer that pings or opens refused streams without reading the answers makes
    # them pile up: past MAX_BLOCKED_ANSWERS the session fails instead.
    m = server(backlog=1)
    peer_opens(m, 1)
    written(m)
    m.output_blocked = True
    frames = (
        [ping(i) for i in range(MAX_BLOCKED_ANSWERS + 1)]
        if provoke == "pings"
        else [update(3 + 2 * i, 0, SYN) for i in range(MAX_BLOCKED_ANSWERS + 1)]
    )
    events = feed(m, *frames[:-1])
    assert not any(isinstance(e, SessionFailed) for e in events)
    assert len(written(m)) == MAX_BLOCKED_ANSWERS  # (written: not sent, the shell holds them)
    events = feed(m, frames[-1])
    assert [e for e in events if isinstance(e, SessionFailed)] == [
        SessionFailed(PROTOCOL_ERROR, m.failed.reason if m.failed else "", False)
    ]
    assert m.failed is not None and "without reading" in m.failed.reason
    assert written(m)[-1] == F(GO_AWAY, 0, 0, PROTOCOL_ERROR)


def test_a_peer_whose_answers_leave_may_ping_without_end() -> None:
    # The count is of answers queued since the output last drained: a peer that
    # reads, however slowly (the output unblocks now and then), is never failed,
    # even if every one of its pings arrives while the output is blocked.
    m = server()
    for _ in range(3):
        m.output_blocked = True
        feed(m, *[ping(i) for i in range(MAX_BLOCKED_ANSWERS)])
        m.output_blocked = False  # the output drained: the count starts again
    m.output_blocked = True
    feed(m, *[ping(i) for i in range(MAX_BLOCKED_ANSWERS)])
    assert m.failed is None
    m.output_blocked = False
    feed(m, *[ping(i) for i in range(3 * MAX_BLOCKED_ANSWERS)])  # never blocked
    assert m.failed is None


def test_check_incoming_says_when_no_more_streams_will_come() -> None:
    m = client()
    m.check_incoming()  # open: more may come
    feed(m, go_away(NORMAL))
    with pytest.raises(MuxError, match="no more streams: the peer went away"):
        m.check_incoming()
    m = client()
    feed(m, frame(99, 0, 0, 0))  # an unknown type: the session fails
    with pytest.raises(MuxError, match="no more streams: yamux protocol error: unknown frame"):
        m.check_incoming()


def test_peer_go_away_normal() -> None:
    m = client()
    stream = we_open(m)
    assert ev(feed(m, go_away(NORMAL))) == ev([GoneAway(NORMAL)])
    assert written(m) == []
    with pytest.raises(MuxError):
        m.open_stream()
    assert feed(m, go_away(NORMAL)) == []  # said once
    # existing streams go on, both ways
    assert m.send(stream, b"on") == 2
    assert written(m) == [F(DATA, 0, stream, 2, b"on")]
    assert ev(feed(m, data(stream, b"on"))) == ev([Data(stream, b"on")])
    assert m.failed is None


@pytest.mark.parametrize("code", [PROTOCOL_ERROR, INTERNAL_ERROR, 7])
def test_peer_go_away_with_an_error(code: int) -> None:
    m = client()
    stream = we_open(m)
    assert ev(feed(m, go_away(code))) == ev([failed(code, by_peer=True)])
    assert written(m) == []  # no answer
    assert m.streams == {}
    feed(m, data(stream, b"x"), ping(1), update(2, 0, SYN))
    assert m.events() == []
    assert written(m) == []
    for command in (m.open_stream, m.ping, lambda: m.send(stream, b"x")):
        with pytest.raises(MuxError):
            command()
    assert m.send_window(stream) == 0


def test_local_go_away_normal_refuses_new_streams() -> None:
    m = server()
    peer_opens(m, 1)
    m.go_away()
    assert written(m) == [F(GO_AWAY, 0, 0, NORMAL)]
    m.go_away()
    assert written(m) == []  # said once
    assert feed(m, data(3, b"refused", SYN)) == []
    assert written(m) == [F(WINDOW_UPDATE, RST, 3, 0)]
    with pytest.raises(MuxError):
        m.open_stream()
    assert ev(feed(m, data(1, b"still"))) == ev([Data(1, b"still")])
    assert m.send(1, b"on") == 2
    written(m)
    assert_ignored(m, data(3, b"in flight"))  # the refused id was used: ignored


def test_local_go_away_with_an_error_ends_the_session() -> None:
    m = server()
    peer_opens(m, 1)
    m.go_away(INTERNAL_ERROR)
    assert written(m) == [F(GO_AWAY, 0, 0, INTERNAL_ERROR)]
    assert ev(m.events()) == ev([failed(INTERNAL_ERROR)])
    assert feed(m, data(1, b"x"), ping(3)) == []
    assert written(m) == []
    with pytest.raises(MuxError):
        m.send(1, b"x")


def test_lost_ends_the_session_without_output() -> None:
    m = server()
    peer_opens(m, 1)
    m.lost("connection reset")
    assert ev(m.events()) == ev([failed(INTERNAL_ERROR)])
    assert written(m) == []
    m.lost("again")
    assert m.events() == []
    with pytest.raises(MuxError):
        m.open_stream()


# Windows


def test_send_takes_at_most_the_window_in_frames_of_at_most_max_frame() -> None:
    m = server()
    peer_opens(m, 1)
    payload = bytes(i % 251 for i in range(WINDOW + 5000))
    assert m.send(1, payload) == WINDOW
    frames = written(m)
    whole, rest = divmod(WINDOW, MAX_FRAME)
    assert [f.length for f in frames] == [MAX_FRAME] * whole + ([rest] if rest else [])
    assert all(f.type == DATA and f.flags == 0 and f.stream == 1 for f in frames)
    assert b"".join(f.payload for f in frames) == payload[:WINDOW]
    assert m.send_window(1) == 0
    assert m.send(1, payload) == 0
    assert written(m) == []
    assert ev(feed(m, update(1, 1000))) == ev([Writable(1)])
    assert m.send_window(1) == 1000
    assert m.send(1, payload[WINDOW:]) == 1000
    assert written(m) == [F(DATA, 0, 1, 1000, payload[WINDOW : WINDOW + 1000])]


def test_a_large_send_is_split_into_frames_of_at_most_max_frame() -> None:
    m = server()
    assert ev(feed(m, update(1, 3 * WINDOW, SYN))) == ev([Opened(1), Writable(1)])
    written(m)
    size = 2 * MAX_FRAME + 1000
    assert m.send(1, bytes(size)) == size
    assert [f.length for f in written(m)] == [MAX_FRAME, MAX_FRAME, 1000]


def test_consumed_grants_back_once_half_the_window_is_read() -> None:
    m = server()
    peer_opens(m, 1)
    half = WINDOW // 2
    feed(m, data(1, bytes(WINDOW)))
    m.consumed(1, half - 1)
    assert written(m) == []
    m.consumed(1, 1)
    assert written(m) == [F(WINDOW_UPDATE, 0, 1, half)]
    m.consumed(1, 100_000)
    assert written(m) == []
    m.consumed(1, 60_000)  # 160 000 read since the last grant: granted exactly
    assert written(m) == [F(WINDOW_UPDATE, 0, 1, 160_000)]
    # the peer may now send exactly what was granted
    assert ev(feed(m, data(1, bytes(half + 160_000)))) == ev([Data(1, bytes(half + 160_000))])
    assert m.failed is None
    assert ev(feed(m, data(1, b"!"))) == ev([failed()])


def test_consumed_uses_half_of_a_larger_window() -> None:
    m = server(window=2 * WINDOW)
    peer_opens(m, 1)
    feed(m, data(1, bytes(2 * WINDOW)))
    m.consumed(1, WINDOW - 1)
    assert written(m) == []
    m.consumed(1, 1)
    assert written(m) == [F(WINDOW_UPDATE, 0, 1, WINDOW)]


def test_no_grant_after_the_peers_fin() -> None:
    m = server()
    peer_opens(m, 1)
    feed(m, data(1, bytes(WINDOW), FIN))
    m.consumed(1, WINDOW)
    assert written(m) == []


def test_window_update_up_to_the_u32_limit_is_fine() -> None:
    m = server()
    peer_opens(m, 1)
    assert ev(feed(m, update(1, MAX_U32 - WINDOW))) == ev([Writable(1)])
    assert m.send_window(1) == MAX_U32
    assert m.failed is None


# Protocol errors: Go Away code 1, SessionFailed(1), then silence

Case = Callable[[], tuple[Machine, bytes]]


def _opened(stream: int = 1, **kw: int) -> Machine:
    m = server(**kw)
    peer_opens(m, stream)
    return m


def _reset_by_peer() -> Machine:
    m = _opened()
    feed(m, update(1, 0, RST))
    return m


def _closed_both_ways() -> Machine:
    m = _opened()
    feed(m, update(1, 0, FIN))
    m.close_stream(1)
    written(m)
    m.events()
    return m


def _full_window() -> Machine:
    m = _opened()
    feed(m, data(1, bytes(WINDOW)))
    return m


def _peer_fin() -> Machine:
    m = _opened()
    feed(m, update(1, 0, FIN))
    return m


def _near_u32() -> Machine:
    m = _opened()
    feed(m, update(1, MAX_U32 - WINDOW))
    return m


def _we_opened() -> Machine:
    m = server()
    we_open(m)
    return m


ERRORS: dict[str, Case] = {
    "unknown type 4": lambda: (server(), frame(4, 0, 0, 0)),
    "unknown type 255 on a stream": lambda: (_opened(), frame(255, 0, 1, 0)),
    "version 1": lambda: (server(), frame(WINDOW_UPDATE, SYN, 1, 0, version=1)),
    "version 2 ping": lambda: (server(), frame(PING, SYN, 0, 5, version=2)),
    "syn for an open id": lambda: (_opened(), update(1, 0, SYN)),
    "syn for a reset id": lambda: (_reset_by_peer(), data(1, b"x", SYN)),
    "syn for a closed id": lambda: (_closed_both_ways(), update(1, 0, SYN)),
    "syn below the last id": lambda: (_opened(5), update(3, 0, SYN)),
    "syn with our parity": lambda: (server(), update(2, 0, SYN)),
    "syn with our parity (client)": lambda: (client(), data(1, b"x", SYN)),
    "syn on id 0": lambda: (server(), update(0, 0, SYN)),
    "data syn on id 0": lambda: (server(), data(0, b"x", SYN)),
    "data beyond the window": lambda: (_opened(), data(1, bytes(WINDOW + 1))),
    "data beyond the window, 2 frames": lambda: (_full_window(), data(1, b"x")),
    "data beyond a larger window": lambda: (
        _opened(window=2 * WINDOW),
        data(1, bytes(2 * WINDOW + 1)),
    ),
    "syn with data beyond the window": lambda: (server(), data(1, bytes(WINDOW + 1), SYN)),
    "window overflow": lambda: (_opened(), update(1, MAX_U32 - WINDOW + 1)),
    "window overflow, 2 updates": lambda: (_near_u32(), update(1, 1)),
    "window overflow, max delta": lambda: (_opened(), update(1, MAX_U32)),
    "data after the peer's fin": lambda: (_peer_fin(), data(1, b"x")),
    "data on stream 0": lambda: (server(), data(0, b"x")),
    "empty data on stream 0": lambda: (server(), data(0)),
    "window update on stream 0": lambda: (server(), update(0, 10)),
    "ping on a stream": lambda: (_opened(), frame(PING, SYN, 1, 0)),
    "ping ack on a stream": lambda: (_opened(), frame(PING, ACK, 1, 0)),
    "go away on a stream": lambda: (_opened(), frame(GO_AWAY, 0, 1, 0)),
    "data for a never-opened peer id": lambda: (server(), data(1, b"x")),
    "update for a never-opened own id": lambda: (server(), update(2, 5)),
    "data beyond the last peer id": lambda: (_opened(), data(3, b"x")),
    "ack beyond our last id": lambda: (_we_opened(), update(4, 0, ACK)),
    "rst for a never-opened id": lambda: (server(), update(1, 0, RST)),
}


@pytest.mark.parametrize("case", ERRORS.values(), ids=list(ERRORS))
def test_protocol_error(case: Case) -> None:
    m, bad = case()
    m.events()
    written(m)
    events = feed(m, bad)
    assert ev(events)[-1] == ev([failed()])[0]
    assert m.failed is not None and m.failed.code == PROTOCOL_ERROR and not m.failed.by_peer
    out = written(m)
    assert out[-1] == GO_AWAY_PROTOCOL
    assert [f for f in out if f.type == GO_AWAY] == [GO_AWAY_PROTOCOL]
    assert m.streams == {}
    # then nothing more, whatever comes
    feed(m, ping(9), update(101, 0, SYN), data(1, b"x"))
    assert m.events() == []
    assert written(m) == []
    with pytest.raises(MuxError):
        m.open_stream()
    with pytest.raises(MuxError):
        m.ping()


def test_protocol_error_mid_chunk_keeps_what_came_before() -> None:
    m = server()
    events = feed(m, ping(1), frame(9, 0, 0, 0), ping(2), update(1, 0, SYN))
    assert ev(events) == ev([Pinged(1), failed()])
    assert written(m) == [F(PING, ACK, 0, 1), GO_AWAY_PROTOCOL]


def test_data_header_beyond_the_window_fails_before_its_payload() -> None:
    """A Data header longer than the receive window is an error at once.

    The length is known from the header: waiting for the payload would make
    this side buffer up to 4 GiB for one frame (the module promises memory
    bounded by the window; HashiCorp's yamux checks the window on the header,
    before reading the body).
    """
    m = _opened()
    events = feed(m, frame(DATA, 0, 1, MAX_U32) + bytes(MAX_FRAME))
    assert ev(events) == ev([failed()])
    assert written(m) == [GO_AWAY_PROTOCOL]


def test_a_huge_frame_for_a_stream_gone_lately_is_not_held_in_memory() -> None:
    """A frame for a stream gone lately is ignored, but not by holding it whole.

    Its length (here 4 GiB - 1) exceeds any window this side grants: the
    machine may fail the session at the header, or drop the payload as it
    comes, but not buffer up to 4 GiB (the module bounds memory by the window).
    """
    m = _reset_by_peer()
    m.events()
    written(m)
    chunk = bytes(MiB)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        m.receive_data(frame(DATA, 0, 1, MAX_U32))
        for _ in range(32):
            m.receive_data(chunk)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 4 * MiB, f"{held} bytes held for an ignored frame"


# Frames for streams gone lately: ignored


def _ended_by_peer_rst(m: Machine) -> int:
    peer_opens(m, 1)
    feed(m, update(1, 0, RST))
    return 1


def _ended_by_local_rst(m: Machine) -> int:
    peer_opens(m, 1)
    m.reset_stream(1)
    return 1


def _ended_peer_fin_first(m: Machine) -> int:
    peer_opens(m, 1)
    feed(m, update(1, 0, FIN))
    m.close_stream(1)
    return 1


def _ended_local_fin_first(m: Machine) -> int:
    stream = we_open(m)
    m.close_stream(stream)
    feed(m, update(stream, 0, FIN))
    return stream


def _ended_refused_max_streams(m: Machine) -> int:
    peer_opens(m, 1)
    feed(m, update(3, 0, SYN))  # max_streams=1 below
    return 3


def _ended_refused_go_away(m: Machine) -> int:
    m.go_away()
    feed(m, update(1, 0, SYN))
    return 1


ENDINGS = {
    "peer rst": _ended_by_peer_rst,
    "local rst": _ended_by_local_rst,
    "peer fin first": _ended_peer_fin_first,
    "local fin first": _ended_local_fin_first,
    "refused (max_streams)": _ended_refused_max_streams,
    "refused (go away)": _ended_refused_go_away,
}
LATE_FRAMES: dict[str, Callable[[int], bytes]] = {
    "data": lambda s: data(s, b"in flight"),
    "empty data": lambda s: data(s),
    "window update": lambda s: update(s, 1000),
    "fin": lambda s: update(s, 0, FIN),
    "data fin": lambda s: data(s, b"x", FIN),
    "rst": lambda s: update(s, 0, RST),
    "ack": lambda s: update(s, 0, ACK),
}


@pytest.mark.parametrize("late", LATE_FRAMES.values(), ids=list(LATE_FRAMES))
@pytest.mark.parametrize("end", ENDINGS.values(), ids=list(ENDINGS))
def test_frames_for_a_stream_gone_lately_are_ignored(
    end: Callable[[Machine], int], late: Callable[[int], bytes]
) -> None:
    m = client(max_streams=1) if end is _ended_local_fin_first else server(max_streams=1)
    stream = end(m)
    assert stream not in m.streams
    m.events()
    written(m)
    assert_ignored(m, late(stream))


@pytest.mark.parametrize("end", ENDINGS.values(), ids=list(ENDINGS))
def test_data_beyond_any_window_for_a_stream_gone_fails_at_its_header(
    end: Callable[[Machine], int],
) -> None:
    """No Data frame may be longer than the largest window this side grants, even late."""
    m = client(max_streams=1) if end is _ended_local_fin_first else server(max_streams=1)
    stream = end(m)
    m.events()
    written(m)
    events = feed(m, frame(DATA, 0, stream, WINDOW + 1))  # the header alone
    assert ev(events) == ev([failed()])
    assert written(m) == [GO_AWAY_PROTOCOL]


# Limits


def test_max_streams_refuses_the_peers_syn_with_rst() -> None:
    m = server(max_streams=2)
    peer_opens(m, 1)
    peer_opens(m, 3)
    assert feed(m, data(5, b"refused", SYN)) == []
    assert written(m) == [F(WINDOW_UPDATE, RST, 5, 0)]
    assert set(m.streams) == {1, 3}
    with pytest.raises(MuxError):
        m.open_stream()
    m.reset_stream(1)
    written(m)
    m.events()
    peer_opens(m, 7)  # a place is free again
    m.reset_stream(3)
    written(m)
    assert m.open_stream() == 2


def test_max_streams_counts_both_directions() -> None:
    m = client(max_streams=2)
    m.open_stream()
    written(m)
    peer_opens(m, 2)
    with pytest.raises(MuxError):
        m.open_stream()
    peer_is_refused(m, 4)


def test_backlog_refuses_streams_not_taken() -> None:
    m = server(backlog=2)
    peer_opens(m, 1)
    peer_opens(m, 3)
    peer_is_refused(m, 5)
    m.take(1)
    m.take(1)  # taken once only
    peer_opens(m, 7)
    peer_is_refused(m, 9)
    # a stream that ends before it is taken keeps its place until it is taken
    # (the shell still hands it out): opening and resetting cannot flood the queue
    feed(m, update(3, 0, RST))
    m.events()
    peer_is_refused(m, 11)
    m.take(3)
    m.take(3)  # taken once only
    peer_opens(m, 13)
    peer_is_refused(m, 15)


def test_streams_taken_as_they_open_are_not_in_the_backlog() -> None:
    # A session with a callback takes every stream as it opens: a burst of SYNs in
    # one read, more than the backlog, all open (they were refused past it).
    m = Machine(client=False, backlog=2, take_on_open=True)
    events = feed(m, *[update(1 + 2 * i, 0, SYN) for i in range(5)])
    assert ev(events) == ev([Opened(1 + 2 * i) for i in range(5)])
    assert all(f.flags == ACK for f in written(m))
    m.take(3)  # a no-op


def test_streams_we_open_are_not_in_the_backlog() -> None:
    m = server(backlog=1)
    m.open_stream()
    m.open_stream()
    written(m)
    peer_opens(m, 1)


# Byte splitting


def _run(wire: bytes, cuts: list[int]) -> tuple[list[tuple[object, ...]], bytes, bool]:
    """Feed ``wire`` cut at ``cuts`` to a server: its events (the pieces of one frame's
    payload joined), its output, failed or not."""
    m = server()
    events: list[Event] = []
    out = b""
    start = 0
    for cut in [*sorted(cuts), len(wire)]:
        m.receive_data(wire[start:cut])
        start = cut
        events += m.events()
        out += b"".join(bytes(chunk) for chunk in m.data_to_send())
    joined: list[Event] = []
    for event in events:
        last = joined[-1] if joined else None
        if isinstance(event, Data) and isinstance(last, Data) and last.stream == event.stream:
            joined[-1] = Data(event.stream, last.data + event.data)
            continue
        joined.append(event)
    return ev(joined), out, m.failed is not None


CONVERSATION = b"".join(
    [
        update(1, 0, SYN),
        data(3, b"opened with data", SYN),
        data(1, b"a" * 40),
        ping(0x01020304),
        update(1, 1234, ACK),
        data(3, b"", FIN),
        update(5, 77, SYN | FIN),
        update(5, 0, RST),
        data(5, b"ignored"),
        ping(1, ACK),
        go_away(NORMAL),
        data(1, b"end", FIN),
        data(3, b"after fin: a protocol error"),
        ping(99),
    ]
)


def test_conversation_split_at_every_offset() -> None:
    whole = _run(CONVERSATION, [])
    assert whole[0] == ev(
        [
            Opened(1),
            Opened(3),
            Data(3, b"opened with data"),
            Data(1, b"a" * 40),
            Pinged(0x01020304),
            Writable(1),
            Eof(3),
            Opened(5),
            Writable(5),
            Eof(5),
            Reset(5, True),
            Pong(1),
            GoneAway(NORMAL),
            Data(1, b"end"),
            Eof(1),
            failed(),
        ]
    )
    assert parse(whole[1]) == [
        F(WINDOW_UPDATE, ACK, 1, 0),
        F(WINDOW_UPDATE, ACK, 3, 0),
        F(PING, ACK, 0, 0x01020304),
        F(WINDOW_UPDATE, ACK, 5, 0),
        GO_AWAY_PROTOCOL,
    ]
    for offset in range(len(CONVERSATION) + 1):
        assert _run(CONVERSATION, [offset]) == whole, offset
    assert _run(CONVERSATION, list(range(len(CONVERSATION)))) == whole


def test_a_payload_cut_across_reads_is_handed_on_piece_by_piece() -> None:
    """Nothing waits for the rest of a frame: each read's part of the payload is a
    Data event at once (so the machine keeps no payload, only a header cut short);
    the frame's FIN comes after its last piece, and the window counts the frame once."""
    m = server()
    wire = data(1, b"0123456789", SYN | FIN)
    assert ev(feed(m, wire[:5])) == []
    assert ev(feed(m, wire[5:15])) == ev([Opened(1), Data(1, b"012")])
    assert m.streams[1].recv_window == m.window - 10
    assert ev(feed(m, wire[15:16])) == ev([Data(1, b"3")])
    assert ev(feed(m, wire[16:])) == ev([Data(1, b"456789"), Eof(1)])
    # A stream this side resets while a payload is coming gets no more of it.
    wire = data(3, b"abcdef", SYN)
    assert ev(feed(m, wire[:14])) == ev([Opened(3), Data(3, b"ab")])
    m.reset_stream(3)
    after = data(5, b"next", SYN)  # and the frame behind it is parsed as usual
    assert ev(feed(m, wire[14:] + after)) == ev([Reset(3, False), Opened(5), Data(5, b"next")])


@st.composite
def conversations(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A random valid conversation from a client to a server (and maybe a bad last frame)."""
    frames: list[bytes] = []
    room: dict[int, int] = {}  # open streams: receive window left
    fin: set[int] = set()
    gone: list[int] = []
    next_id = 1
    for _ in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from(["open", "data", "update", "fin", "rst", "ping", "stray"]))
        streams = sorted(room)
        if kind == "open" or not streams:
            stream, next_id = next_id, next_id + 2
            room[stream] = WINDOW
            if draw(st.booleans()):
                payload = draw(st.binary(max_size=300))
                room[stream] -= len(payload)
                frames.append(data(stream, payload, SYN))
            else:
                frames.append(update(stream, draw(st.integers(0, 10_000)), SYN))
            continue
        stream = draw(st.sampled_from(streams))
        if kind == "data" and stream not in fin:
            size = draw(st.integers(0, min(room[stream], 5000)))
            room[stream] -= size
            frames.append(
                data(stream, bytes([stream % 256]) * size, draw(st.sampled_from([0, ACK])))
            )
        elif kind == "update":
            frames.append(update(stream, draw(st.integers(0, 100_000))))
        elif kind == "fin":
            fin.add(stream)
            frames.append(update(stream, 0, FIN) if draw(st.booleans()) else data(stream, b"", FIN))
        elif kind == "rst":
            del room[stream]
            gone.append(stream)
            frames.append(update(stream, 0, RST))
        elif kind == "ping":
            frames.append(ping(draw(st.integers(0, MAX_U32)), draw(st.sampled_from([SYN, ACK]))))
        elif kind == "stray" and gone:
            frames.append(data(draw(st.sampled_from(gone)), b"late"))
    bad = draw(st.booleans())
    if bad:
        frames.append(frame(draw(st.integers(4, 255)), 0, 0, 0))
        frames.append(ping(1))
    return b"".join(frames), bad


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_conversation_split_anywhere_gives_the_same_events(choices: st.DataObject) -> None:
    wire, bad = choices.draw(conversations())
    cuts = choices.draw(st.lists(st.integers(0, len(wire)), max_size=12))
    whole = _run(wire, [])
    assert whole[2] == bad  # a valid conversation does not fail; a bad frame does
    assert _run(wire, cuts) == whole
    if len(wire) < 400:
        assert _run(wire, list(range(len(wire)))) == whole


# A reference model, and random peer frames and commands against it


class _Stream:
    """The model's view of one stream."""

    def __init__(self, recv: int, *, acked: bool, taken: bool) -> None:
        self.send = WINDOW  # what this side may send
        self.recv = recv  # what the peer may send
        self.grant = 0  # read, not yet granted back
        self.unread = 0  # received, not yet consumed (to drive consumed() sensibly)
        self.local_fin = False
        self.remote_fin = False
        self.acked = acked
        self.taken = taken


class Model:
    """What a yamux endpoint does, by the spec and the module's documented choices."""

    def __init__(self, *, client: bool, window: int, max_streams: int, backlog: int) -> None:
        self.client = client
        self.window = window
        self.max_streams = max_streams
        self.backlog = backlog
        self.streams: dict[int, _Stream] = {}
        self.ours: set[int] = set()  # ids this side opened
        self.theirs: set[int] = set()  # ids the peer sent a SYN for
        self.next_id = 1 if client else 2
        self.peer_next = 2 if client else 1
        self.local_go_away = False
        self.remote_go_away = False
        self.failed = False
        self.pings = 0
        self.events: list[tuple[object, ...]] = []
        self.out: list[F] = []
        self.gone_untaken: set[int] = set()  # ended before taken: still in the backlog

    def take_events(self) -> list[tuple[object, ...]]:
        events, self.events = self.events, []
        return events

    def take_out(self) -> list[F]:
        out, self.out = self.out, []
        return out

    def is_ours(self, stream: int) -> bool:
        return stream % 2 == (1 if self.client else 0)

    def gone(self) -> list[int]:
        return sorted((self.ours | self.theirs) - set(self.streams))

    def _drop(self, stream: int) -> None:
        if not self.streams.pop(stream).taken:
            self.gone_untaken.add(stream)

    def _protocol_error(self) -> None:
        self.out.append(GO_AWAY_PROTOCOL)
        self._end(PROTOCOL_ERROR, False)

    def _end(self, code: int, by_peer: bool) -> None:
        self.failed = True
        self.streams.clear()
        self.gone_untaken.clear()
        self.events.append(("SessionFailed", code, by_peer))

    # the peer's frames

    def receive(self, f: F) -> None:
        if self.failed:
            return
        if f.version != 0:
            self._protocol_error()
        elif f.type == PING:
            if f.stream != 0:
                self._protocol_error()
            elif f.flags & SYN:
                self.out.append(F(PING, ACK, 0, f.length))
                self.events.append(("Pinged", f.length))
            elif f.flags & ACK:
                self.events.append(("Pong", f.length))
        elif f.type == GO_AWAY:
            if f.stream != 0:
                self._protocol_error()
            elif f.length != NORMAL:
                self._end(f.length, True)
            elif not self.remote_go_away:
                self.remote_go_away = True
                self.events.append(("GoneAway", NORMAL))
        elif f.type in (DATA, WINDOW_UPDATE):
            self._stream_frame(f)
        else:
            self._protocol_error()

    def _stream_frame(self, f: F) -> None:
        stream = f.stream
        if f.type == DATA:
            # The module checks a Data frame's length at its header: against the
            # initial window for a SYN, the stream's window, or (a stream gone)
            # the largest window this side grants.
            if f.flags & SYN:
                limit = WINDOW
            elif stream in self.streams:
                limit = self.streams[stream].recv
            else:
                limit = self.window
            if f.length > limit:
                return self._protocol_error()
        if f.flags & SYN:
            if stream == 0 or self.is_ours(stream) or stream < self.peer_next:
                return self._protocol_error()
            self.theirs.add(stream)
            self.peer_next = stream + 2
            pending = sum(not s.taken for s in self.streams.values()) + len(self.gone_untaken)
            if (
                self.local_go_away
                or len(self.streams) >= self.max_streams
                or pending >= self.backlog
            ):
                self.out.append(F(WINDOW_UPDATE, RST, stream, 0))
                return None
            s = self.streams[stream] = _Stream(self.window, acked=True, taken=False)
            self.out.append(F(WINDOW_UPDATE, ACK, stream, self.window - WINDOW))
            self.events.append(("Opened", stream))
        elif stream in self.streams:
            s = self.streams[stream]
        elif stream in self.ours or stream in self.theirs:
            return None  # gone lately: in flight
        else:
            return self._protocol_error()  # stream 0, or never opened
        if f.flags & ACK and not s.acked:
            s.acked = True
            self.events.append(("Acked", stream))
        if f.type == WINDOW_UPDATE and f.length:
            if s.send + f.length > MAX_U32:
                return self._protocol_error()
            s.send += f.length
            if not s.local_fin:
                self.events.append(("Writable", stream))
        if f.type == DATA and f.length:
            if s.remote_fin or f.length > s.recv:
                return self._protocol_error()
            s.recv -= f.length
            s.unread += f.length
            self.events.append(("Data", stream, f.payload))
        if f.flags & RST:
            self._drop(stream)
            self.events.append(("Reset", stream, True))
        elif f.flags & FIN and not s.remote_fin:
            s.remote_fin = True
            self.events.append(("Eof", stream))
            if s.local_fin:
                self._drop(stream)
        return None

    # this side's commands (None: MuxError expected)

    def open_stream(self) -> int | None:
        if (
            self.failed
            or self.local_go_away
            or self.remote_go_away
            or len(self.streams) >= self.max_streams
        ):
            return None
        stream = self.next_id
        self.next_id += 2
        self.ours.add(stream)
        self.streams[stream] = _Stream(self.window, acked=False, taken=True)
        self.out.append(F(WINDOW_UPDATE, SYN, stream, self.window - WINDOW))
        return stream

    def send(self, stream: int, payload: bytes) -> int | None:
        s = self.streams.get(stream)
        if self.failed or s is None or s.local_fin:
            return None
        count = min(len(payload), s.send)
        for at in range(0, count, MAX_FRAME):
            chunk = payload[at : min(count, at + MAX_FRAME)]
            self.out.append(F(DATA, 0, stream, len(chunk), chunk))
        s.send -= count
        return count

    def send_window(self, stream: int) -> int:
        s = self.streams.get(stream)
        return 0 if self.failed or s is None or s.local_fin else s.send

    def consumed(self, stream: int, count: int) -> None:
        s = self.streams.get(stream)
        if self.failed or s is None:
            return
        s.unread -= count
        if s.remote_fin:
            return
        s.grant += count
        if s.grant >= self.window // 2:
            self.out.append(F(WINDOW_UPDATE, 0, stream, s.grant))
            s.recv += s.grant
            s.grant = 0

    def close(self, stream: int) -> None:
        s = self.streams.get(stream)
        if self.failed or s is None or s.local_fin:
            return
        s.local_fin = True
        self.out.append(F(WINDOW_UPDATE, FIN, stream, 0))
        if s.remote_fin:
            self._drop(stream)

    def reset(self, stream: int) -> None:
        if self.failed or stream not in self.streams:
            return
        self._drop(stream)
        self.out.append(F(WINDOW_UPDATE, RST, stream, 0))
        self.events.append(("Reset", stream, False))

    def take(self, stream: int) -> None:
        if stream in self.streams:
            self.streams[stream].taken = True
        self.gone_untaken.discard(stream)

    def ping(self) -> int | None:
        if self.failed:
            return None
        self.pings += 1
        self.out.append(F(PING, SYN, 0, self.pings))
        return self.pings

    def go_away(self, code: int) -> None:
        if self.failed or (self.local_go_away and code == NORMAL):
            return
        self.local_go_away = True
        self.out.append(F(GO_AWAY, 0, 0, code))
        if code != NORMAL:
            self._end(code, False)

    def lost(self) -> None:
        if not self.failed:
            self._end(INTERNAL_ERROR, False)


SIZES = st.one_of(st.integers(0, 64), st.integers(0, 3 * WINDOW // 2))
DELTAS = st.one_of(
    st.integers(0, 1000), st.integers(0, 2 * WINDOW), st.integers(MAX_U32 - 3 * WINDOW, MAX_U32)
)
PICK = st.integers(0, 1000)


class Conversation(RuleBasedStateMachine):
    """Random peer frames and commands; after each, the machine and the model agree."""

    m: Machine
    model: Model

    @initialize(
        is_client=st.booleans(),
        window=st.sampled_from([WINDOW, WINDOW + 1, 3 * WINDOW]),
        max_streams=st.sampled_from([1, 2, 3, 1024]),
        backlog=st.sampled_from([1, 2, 256]),
        bad=st.sampled_from([False, False, True]),
    )
    def start(
        self, is_client: bool, window: int, max_streams: int, backlog: int, bad: bool
    ) -> None:
        options = {"window": window, "max_streams": max_streams, "backlog": backlog}
        self.m = Machine(client=is_client, **options)
        self.model = Model(client=is_client, **options)
        self.bad = bad  # whether protocol errors are sent on purpose
        self.count = 0

    def check(self) -> None:
        m, model = self.m, self.model
        assert ev(m.events()) == model.take_events()
        assert written(m) == model.take_out()
        assert set(m.streams) == set(model.streams)
        for stream in model.streams:
            assert m.send_window(stream) == model.send_window(stream)

    def payload(self, size: int) -> bytes:
        self.count += 1
        return bytes([self.count % 256]) * size

    def peer(self, *frames: F) -> None:
        self.m.receive_data(b"".join(encode(f) for f in frames))
        for f in frames:
            self.model.receive(f)
        self.check()

    def target(self, pick: int, *, gone: bool = True) -> int | None:
        """An open stream, or (with ``gone``) one gone lately."""
        pool = sorted(self.model.streams) + (self.model.gone() if gone else [])
        return pool[pick % len(pool)] if pool else None

    # the peer

    @rule(
        as_data=st.booleans(),
        size=st.integers(0, 2000),
        delta=st.integers(0, 5000),
        fin=st.booleans(),
    )
    def peer_opens(self, as_data: bool, size: int, delta: int, fin: bool) -> None:
        stream = self.model.peer_next
        flags = SYN | (FIN if fin else 0)
        if as_data:
            payload = self.payload(size)
            self.peer(F(DATA, flags, stream, size, payload))
        else:
            self.peer(F(WINDOW_UPDATE, flags, stream, delta))

    @rule(pick=PICK, size=SIZES, flags=st.sampled_from([0, 0, ACK, FIN, RST, FIN | ACK]))
    def peer_data(self, pick: int, size: int, flags: int) -> None:
        stream = self.target(pick)
        if stream is None:
            return
        s = self.model.streams.get(stream)
        if s is not None and not self.bad:
            size = 0 if s.remote_fin else min(size, s.recv)
        self.peer(F(DATA, flags, stream, size, self.payload(size)))

    @rule(pick=PICK, delta=DELTAS, flags=st.sampled_from([0, 0, ACK, FIN, RST]))
    def peer_update(self, pick: int, delta: int, flags: int) -> None:
        stream = self.target(pick)
        if stream is None:
            return
        s = self.model.streams.get(stream)
        if s is not None and not self.bad:
            delta = min(delta, MAX_U32 - s.send)
        self.peer(F(WINDOW_UPDATE, flags, stream, delta))

    @rule(pick=PICK, delta=st.integers(0, 100_000))
    def peer_acks(self, pick: int, delta: int) -> None:
        waiting = sorted(i for i, s in self.model.streams.items() if not s.acked)
        if waiting:
            self.peer(F(WINDOW_UPDATE, ACK, waiting[pick % len(waiting)], delta))

    @rule(opaque=st.integers(0, MAX_U32), answer=st.booleans())
    def peer_pings(self, opaque: int, answer: bool) -> None:
        self.peer(F(PING, ACK if answer else SYN, 0, opaque))

    @rule(roll=st.integers(0, 3))
    def peer_goes_away(self, roll: int) -> None:
        if roll == 0:  # rarely: no new streams after it
            self.peer(F(GO_AWAY, 0, 0, NORMAL))

    @rule(pick=PICK, extra=st.integers(0, 1))
    def peer_fills_the_window(self, pick: int, extra: int) -> None:
        stream = self.target(pick, gone=False)
        if stream is None:
            return
        s = self.model.streams[stream]
        size = s.recv + extra if self.bad else 0 if s.remote_fin else s.recv
        self.peer(F(DATA, 0, stream, size, self.payload(size)))

    @precondition(lambda self: self.bad)
    @rule(
        kind=st.sampled_from(
            [
                "version",
                "type",
                "reuse",
                "parity",
                "zero syn",
                "zero data",
                "zero update",
                "ping on stream",
                "go away on stream",
                "never opened (peer)",
                "never opened (ours)",
                "go away error",
            ]
        ),
        pick=PICK,
    )
    def peer_breaks_the_protocol(self, kind: str, pick: int) -> None:
        model = self.model
        ours = 1 if model.client else 2
        bad = {
            "version": F(WINDOW_UPDATE, 0, 0, 0, version=1 + pick % 255),
            "type": F(4 + pick % 252, 0, 0, 0),
            "reuse": F(WINDOW_UPDATE, SYN, model.peer_next - 2 if model.theirs else 0, 0),
            "parity": F(WINDOW_UPDATE, SYN, ours + 2 * pick, 0),
            "zero syn": F(DATA, SYN, 0, 1, b"x"),
            "zero data": F(DATA, 0, 0, 1, b"x"),
            "zero update": F(WINDOW_UPDATE, 0, 0, 1),
            "ping on stream": F(PING, SYN, 1 + pick, 0),
            "go away on stream": F(GO_AWAY, 0, 1 + pick, 0),
            "never opened (peer)": F(WINDOW_UPDATE, 0, model.peer_next, 0),
            "never opened (ours)": F(DATA, 0, model.next_id, 1, b"x"),
            "go away error": F(GO_AWAY, 0, 0, 1 + pick % 3),
        }[kind]
        self.peer(bad)

    # this side

    @rule()
    def open_stream(self) -> None:
        expected = self.model.open_stream()
        if expected is None:
            with pytest.raises(MuxError):
                self.m.open_stream()
        else:
            assert self.m.open_stream() == expected
        self.check()

    @rule(pick=PICK, size=SIZES)
    def send(self, pick: int, size: int) -> None:
        stream = self.target(pick)
        if stream is None:
            return
        payload = self.payload(size)
        expected = self.model.send(stream, payload)
        if expected is None:
            with pytest.raises(MuxError):
                self.m.send(stream, payload)
        else:
            assert self.m.send(stream, payload) == expected
        self.check()

    @rule(pick=PICK, amount=st.one_of(st.integers(0, 3 * WINDOW), st.just(-1)))
    def consume(self, pick: int, amount: int) -> None:
        stream = self.target(pick, gone=False)
        if stream is None:
            return
        unread = self.model.streams[stream].unread
        count = unread if amount == -1 else min(amount, unread)  # -1: all of it
        self.model.consumed(stream, count)
        self.m.consumed(stream, count)
        self.check()

    @rule(pick=PICK)
    def close(self, pick: int) -> None:
        stream = self.target(pick)
        if stream is not None:
            self.model.close(stream)
            self.m.close_stream(stream)
            self.check()

    @rule(pick=PICK)
    def reset(self, pick: int) -> None:
        stream = self.target(pick)
        if stream is not None:
            self.model.reset(stream)
            self.m.reset_stream(stream)
            self.check()

    @rule(pick=PICK)
    def take(self, pick: int) -> None:
        stream = self.target(pick)
        if stream is not None:
            self.model.take(stream)
            self.m.take(stream)
            self.check()

    @rule()
    def ping(self) -> None:
        expected = self.model.ping()
        if expected is None:
            with pytest.raises(MuxError):
                self.m.ping()
        else:
            assert self.m.ping() == expected
        self.check()

    @rule(code=st.sampled_from([NORMAL, NORMAL, INTERNAL_ERROR]), roll=st.integers(0, 3))
    def go_away(self, code: int, roll: int) -> None:
        if roll != 0:  # rarely: no new streams after it
            return
        if not self.bad:
            code = NORMAL
        self.model.go_away(code)
        self.m.go_away(code)
        self.check()

    @precondition(lambda self: self.bad)
    @rule()
    def lost(self) -> None:
        self.model.lost()
        self.m.lost("gone")
        self.check()


Conversation.TestCase.settings = settings(max_examples=400, stateful_step_count=50, deadline=None)
TestConversation = Conversation.TestCase


def test_data_after_stop_reading_resets_the_stream() -> None:
    """The application closed the stream: bytes nobody will read reset it, as TCP does."""
    m = server()
    peer_opens(m, 1)
    assert ev(feed(m, data(1, b"read"))) == ev([Data(1, b"read")])
    m.stop_reading(1)
    m.close_stream(1)
    written(m)
    assert ev(feed(m, data(1, b"late"))) == ev([Reset(1, by_peer=False)])
    assert written(m) == [F(WINDOW_UPDATE, RST, 1, 0)]
    assert 1 not in m.streams
