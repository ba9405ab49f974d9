"""The engine driven by bytes from an independent peer: websockets' Sans-I/O protocol
of the other side, in memory. No sockets, no event loop."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import OPEN, Protocol
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from ws_stream import AbnormalClosureError, ProtocolError, StreamOptions, TextFrameError
from ws_stream._engine import Engine
from ws_stream.events import Closed, CloseReceived, Error, Event, PingReceived

B, T, C = Opcode.BINARY, Opcode.TEXT, Opcode.CONT
SIDES = ["client", "server"]  # the engine's side; the peer is the other one


def open_pair(max_size: int | None = 2**20) -> tuple[ClientProtocol, ServerProtocol]:
    client = ClientProtocol(parse_uri("ws://x/"), max_size=max_size)
    server = ServerProtocol(max_size=max_size)
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    [request] = server.events_received()
    assert isinstance(request, Request)
    server.send_response(server.accept(request))
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()
    assert client.state is OPEN and server.state is OPEN
    return client, server


class Peer:
    """The other side: writes frames the engine reads, decodes what the engine sent."""

    def __init__(self, protocol: Protocol) -> None:
        self.ws = protocol
        self.masked = isinstance(protocol, ClientProtocol)

    def frame(self, opcode: Opcode, data: bytes = b"", *, fin: bool = True, **kw: Any) -> bytes:
        return Frame(opcode, data, fin, **kw).serialize(mask=self.masked, extensions=[])

    def raw(self, first: int, payload: bytes = b"") -> bytes:
        """A frame header byte as given (any opcode, any bits), short payload."""
        assert len(payload) < 126
        if not self.masked:
            return bytes([first, len(payload)]) + payload
        key = b"\x01\x02\x03\x04"
        body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        return bytes([first, 0x80 | len(payload)]) + key + body

    def close(self, code: int, reason: str = "") -> bytes:
        return self.frame(Opcode.CLOSE, Close(code, reason).serialize())

    def read(self, engine: Engine) -> list[Frame]:
        """Feed what the engine queued to the peer; the frames it parsed."""
        self.ws.receive_data(b"".join(engine.data_to_send()))
        return [f for f in self.ws.events_received() if isinstance(f, Frame)]


def make(
    side: str = "client",
    *,
    max_size: int | None = 2**20,
    now: float = 0.0,
    **kw: Any,
) -> tuple[Engine, Peer]:
    fields = set(StreamOptions.__dataclass_fields__) - {"ping_interval", "ping_timeout"}
    options = {k: kw.pop(k) for k in list(kw) if k in fields}
    client, server = open_pair(max_size)
    mine, theirs = (client, server) if side == "client" else (server, client)
    engine = Engine(mine, StreamOptions(**options), now=now, **kw)
    engine.start(now)
    return engine, Peer(theirs)


def events(engine: Engine) -> deque[Event]:
    """The engine's events, as they are published (a live view)."""
    return engine.hub.subscribe(lambda: None).queue


def closes(frames: list[Frame]) -> list[Close]:
    return [Close.parse(f.data) for f in frames if f.opcode is Opcode.CLOSE]


def opcodes(frames: list[Frame]) -> list[Opcode]:
    return [f.opcode for f in frames]


def drain(engine: Engine) -> bytes:
    """Everything the engine's buffer holds (take() may return less than asked)."""
    return b"".join(iter(lambda: engine.take(2**20)[0], b""))


def payload(i: int, n: int) -> bytes:
    return bytes((i * 7 + j) % 251 for j in range(n))


# Data frames


@pytest.mark.parametrize("side", SIDES)
def test_frames_of_many_sizes_fed_one_byte_at_a_time(side: str) -> None:
    engine, peer = make(side)
    sizes = [0, 1, 2, 125, 126, 127, 300, 65535, 65536]
    wire = b"".join(peer.frame(B, payload(i, n)) for i, n in enumerate(sizes))
    # A fragmented message and an empty ping among the data frames.
    wire += peer.frame(B, b"frag", fin=False) + peer.frame(Opcode.PING) + peer.frame(C, b"end")
    for i in range(len(wire)):
        engine.receive_data(wire[i : i + 1], now=1.0)
    expected = b"".join(payload(i, n) for i, n in enumerate(sizes)) + b"fragend"
    assert drain(engine) == expected
    assert engine.stats.bytes_received == len(expected)
    assert engine.stats.frames_received == len(sizes) + 3
    assert opcodes(peer.read(engine)) == [Opcode.PONG]
    assert engine.read_error is None and not engine.ended


sizes_st = st.lists(
    st.one_of(st.integers(0, 300), st.sampled_from([125, 126, 127, 65535, 65536, 70000])),
    max_size=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(side=st.sampled_from(SIDES), sizes=sizes_st, data=st.data())
def test_frames_fed_in_random_splits_arrive_exactly_in_order(
    side: str, sizes: list[int], data: st.DataObject
) -> None:
    engine, peer = make(side)
    chunks = [payload(i, n) for i, n in enumerate(sizes)]
    pings = [data.draw(st.booleans()) for _ in sizes]
    wire = b""
    for chunk, ping in zip(chunks, pings, strict=True):
        wire += peer.frame(B, chunk) + (peer.frame(Opcode.PING, b"k") if ping else b"")
    cuts = sorted(data.draw(st.sets(st.integers(0, len(wire)), max_size=12)))
    start = 0
    for cut in [*cuts, len(wire)]:
        engine.receive_data(wire[start:cut], now=1.0)
        start = cut
    expected = b"".join(chunks)
    assert drain(engine) == expected
    assert engine.stats.bytes_received == len(expected)
    assert engine.stats.frames_received == len(sizes) + sum(pings)
    assert opcodes(peer.read(engine)) == [Opcode.PONG] * sum(pings)


def test_bytes_read_behind_the_handshake_are_decided_frame_by_frame() -> None:
    client, server = open_pair()
    peer = Peer(server)
    wire = peer.frame(B, b"early") + peer.frame(T, b"t") + peer.frame(Opcode.PING, b"p")
    engine = Engine(client, StreamOptions(), now=0.0)
    engine.start(0.0, received=wire)
    assert drain(engine) == b"early"
    assert isinstance(engine.read_error, TextFrameError)
    assert opcodes(peer.read(engine)) == [Opcode.CLOSE]


def test_engine_refuses_a_protocol_that_is_not_open() -> None:
    with pytest.raises(ValueError, match="OPEN"):
        Engine(ClientProtocol(parse_uri("ws://x/")), StreamOptions(), now=0.0)


# The per-frame guarantee


def text_ping_close(peer: Peer) -> tuple[bytes, int]:
    before = peer.frame(B, b"before")
    wire = before + peer.frame(T, b"hi") + peer.frame(Opcode.PING, b"p") + peer.close(1000)
    return wire, len(before)


def assert_failed_with_1003(engine: Engine, peer: Peer, seen: deque[Event]) -> None:
    frames = peer.read(engine)
    assert opcodes(frames) == [Opcode.CLOSE]  # no pong for the ping behind the text
    assert closes(frames)[0].code == 1003
    assert isinstance(engine.read_error, TextFrameError)
    assert engine.read_error.code == 1003
    assert drain(engine) == b"before"
    assert Error(engine.read_error) in seen
    assert not any(isinstance(e, (PingReceived, CloseReceived)) for e in seen)
    assert engine.rcvd is None  # the close behind it is discarded, not echoed
    assert engine.ended and not engine.eof


@pytest.mark.parametrize("side", SIDES)
def test_text_frame_fails_before_the_ping_and_close_behind_it(side: str) -> None:
    engine, peer = make(side)
    seen = events(engine)
    wire, _ = text_ping_close(peer)
    engine.receive_data(wire, now=1.0)
    assert_failed_with_1003(engine, peer, seen)


@pytest.mark.parametrize("side", SIDES)
def test_text_frame_header_split_across_reads(side: str) -> None:
    header = 6 if side == "server" else 2  # a client masks its frames
    for into_header in range(1, header):
        engine, peer = make(side)
        seen = events(engine)
        wire, at = text_ping_close(peer)
        engine.receive_data(wire[: at + into_header], now=1.0)
        assert engine.read_error is None
        engine.receive_data(wire[at + into_header :], now=1.0)
        assert_failed_with_1003(engine, peer, seen)


@settings(max_examples=60, deadline=None)
@given(side=st.sampled_from(SIDES), data=st.data())
def test_text_frame_fails_whatever_the_splits(side: str, data: st.DataObject) -> None:
    engine, peer = make(side)
    seen = events(engine)
    wire, _ = text_ping_close(peer)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(wire)), max_size=6)))
    start = 0
    for cut in [*cuts, len(wire)]:
        engine.receive_data(wire[start:cut], now=1.0)
        start = cut
    assert_failed_with_1003(engine, peer, seen)


def test_text_as_bytes_joins_the_stream() -> None:
    engine, peer = make(on_text="bytes")
    euro = "€".encode()
    wire = peer.frame(B, b"a") + peer.frame(T, euro[:1], fin=False) + peer.frame(C, euro[1:])
    engine.receive_data(wire + peer.frame(T, b"z"), now=1.0)
    assert drain(engine) == b"a" + euro + b"z"
    assert engine.read_error is None and peer.read(engine) == []


@pytest.mark.parametrize("side", SIDES)
def test_text_as_bytes_with_invalid_utf8_fails_with_1007_before_the_ping(side: str) -> None:
    engine, peer = make(side, on_text="bytes")
    wire = peer.frame(B, b"before") + peer.frame(T, b"\xff") + peer.frame(Opcode.PING, b"p")
    engine.receive_data(wire, now=1.0)
    frames = peer.read(engine)
    assert opcodes(frames) == [Opcode.CLOSE]
    assert closes(frames)[0].code == 1007
    assert isinstance(engine.read_error, ProtocolError) and engine.read_error.code == 1007
    assert drain(engine) == b"before"


@pytest.mark.parametrize("behind", ["ping", "close"])
def test_invalid_utf8_in_a_text_continuation_fails_before_the_frame_behind_it(
    behind: str,
) -> None:
    # on_text="bytes": a continuation of a text message is decided like its first frame.
    engine, peer = make(on_text="bytes")
    wire = peer.frame(T, b"ok", fin=False) + peer.frame(C, b"\xff")
    wire += peer.frame(Opcode.PING, b"p") if behind == "ping" else peer.close(1000)
    engine.receive_data(wire, now=1.0)
    frames = peer.read(engine)
    assert opcodes(frames) == [Opcode.CLOSE]  # no pong, no echo of the peer's close
    assert closes(frames)[0].code == 1007
    assert isinstance(engine.read_error, ProtocolError) and engine.read_error.code == 1007
    assert drain(engine) == b"ok"


# Pings and pongs


@pytest.mark.parametrize("side", SIDES)
def test_ping_from_the_peer_is_answered_and_published(side: str) -> None:
    engine, peer = make(side)
    seen = events(engine)
    engine.receive_data(peer.frame(Opcode.PING, b"hello"), now=1.0)
    frames = peer.read(engine)
    assert opcodes(frames) == [Opcode.PONG] and frames[0].data == b"hello"
    assert list(seen) == [PingReceived(b"hello")]


@pytest.mark.parametrize("side", SIDES)
def test_ping_latency_is_measured_when_its_pong_arrives(side: str) -> None:
    engine, peer = make(side)
    got: list[float | None] = []
    sent = engine.ping(b"", 1.0, got.append)
    assert len(sent) == 4  # a random payload
    [ping] = peer.read(engine)
    assert ping.opcode is Opcode.PING and ping.data == sent
    engine.receive_data(b"".join(peer.ws.data_to_send()), now=1.25)  # its automatic pong
    assert got == [0.25]
    assert engine.stats.pongs_received == 1 and engine.stats.last_latency == 0.25
    engine.ping(b"x", 2.0, got.append)
    with pytest.raises(ValueError, match="already waiting"):
        engine.ping(b"x", 2.0, got.append)


def test_a_pong_acknowledges_earlier_pings_and_loss_fails_later_ones() -> None:
    engine, peer = make()
    got: dict[str, list[float | None]] = {"a": [], "b": [], "c": []}
    for name, now in [("a", 1.0), ("b", 2.0), ("c", 2.5)]:
        engine.ping(name.encode(), now, got[name].append)
    engine.receive_data(peer.frame(Opcode.PONG, b"unknown"), now=2.75)
    assert got == {"a": [], "b": [], "c": []}
    engine.receive_data(peer.frame(Opcode.PONG, b"b"), now=3.0)
    assert got == {"a": [2.0], "b": [1.0], "c": []}
    engine.connection_lost(None)
    assert got == {"a": [2.0], "b": [1.0], "c": [None]}


# Violations detected by websockets


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(
    ("violation", "code"),
    [
        pytest.param(lambda p: p.raw(0xC2, b"x"), 1002, id="reserved-bit"),
        pytest.param(lambda p: p.raw(0x83, b"x"), 1002, id="unknown-opcode"),
        pytest.param(lambda p: p.raw(0x09, b""), 1002, id="fragmented-ping"),
        pytest.param(lambda p: p.raw(0x88, b"\x03\xed"), 1002, id="close-code-1005"),
        pytest.param(lambda p: p.raw(0x88, b"\x03\xe8\xff"), 1007, id="close-reason-utf8"),
        pytest.param(lambda p: p.frame(C, b"x"), 1002, id="continuation-first"),
        pytest.param(
            lambda p: Frame(B, b"x").serialize(mask=not p.masked, extensions=[]),
            1002,
            id="wrong-masking",
        ),
        pytest.param(lambda p: p.frame(B, bytes(1001)), 1009, id="over-max-size"),
        pytest.param(
            lambda p: p.frame(B, bytes(600), fin=False) + p.frame(C, bytes(600)),
            1009,
            id="fragmented-over-max-size",
        ),
        pytest.param(
            lambda p: p.frame(B, b"x", fin=False) + p.frame(B, b"y"), 1002, id="unfinished-msg"
        ),
    ],
)
def test_violation_detected_by_websockets(side: str, violation: Any, code: int) -> None:
    engine, peer = make(side, max_size=1000)
    seen = events(engine)
    before = peer.frame(B, b"before")
    engine.receive_data(before + violation(peer) + peer.frame(Opcode.PING, b"p"), now=1.0)
    assert isinstance(engine.read_error, ProtocolError)
    assert not isinstance(engine.read_error, TextFrameError)
    assert engine.read_error.code == code
    assert engine.ended and not engine.eof
    assert Error(engine.read_error) in seen
    assert drain(engine).startswith(b"before")
    frames = peer.read(engine)
    assert Opcode.PONG not in opcodes(frames)
    assert [c.code for c in closes(frames)] == [code]
    assert engine.closing_deadline == 1.0 + engine.options.close_timeout


# The closing handshake


@pytest.mark.parametrize("side", SIDES)
def test_close_frame_from_the_peer_is_eof_after_the_data(side: str) -> None:
    engine, peer = make(side)
    seen = events(engine)
    engine.receive_data(peer.frame(B, b"data") + peer.close(4000, "bye"), now=2.0)
    assert drain(engine) == b"data"
    assert engine.eof and engine.ended and engine.read_error is None
    assert engine.rcvd == Close(4000, "bye")
    assert engine.close_code == 4000 and engine.close_reason == "bye"
    assert list(seen) == [CloseReceived(4000, "bye")]
    assert closes(peer.read(engine)) == [Close(4000, "bye")]  # echoed
    assert engine.sent == Close(4000, "bye") and engine.rcvd_then_sent
    assert engine.closing_deadline == 2.0 + engine.options.close_timeout
    refusal = engine.send_refusal()
    assert refusal is not None and "peer close code 4000" in refusal
    engine.connection_lost(None)
    assert seen[-1] == Closed(4000, "bye", clean=True)
    assert engine.read_error is None and engine.deadline == math.inf


def test_a_front_ends_own_answer_to_the_peers_close_is_what_was_sent() -> None:
    """aiohttp answers the peer's close with 1000 whatever its code: recorded as sent;
    an answer after our own close changes nothing (ours went first)."""
    engine, peer = make("server")
    peer.read(engine)
    engine.receive_data(peer.close(1002, "peer"), now=1.0)
    peer.read(engine)
    assert engine.sent == Close(1002, "peer")  # websockets' echo, not sent by aiohttp
    engine.front_end_answered(Close(1000, ""), ours_first=False)
    assert engine.sent == Close(1000, "") and engine.rcvd_then_sent
    assert engine.rcvd == Close(1002, "peer")
    ours, peer = make("server")
    ours.close(4001, "bye", now=1.0)
    peer.read(ours)
    ours.receive_data(peer.close(4001, "bye"), now=1.5)
    peer.read(ours)
    ours.front_end_answered(Close(1000, ""), ours_first=True)
    assert ours.sent == Close(4001, "bye") and ours.rcvd_then_sent is False


@pytest.mark.parametrize("side", SIDES)
def test_our_close_completes_when_the_peer_answers(side: str) -> None:
    engine, peer = make(side)
    seen = events(engine)
    engine.write(b"queued", first=False)
    engine.close(1000, "done", now=5.0)
    frames = peer.read(engine)
    assert opcodes(frames) == [Opcode.BINARY, Opcode.CLOSE]  # writes flushed first
    assert frames[0].data == b"queued" and closes(frames) == [Close(1000, "done")]
    assert engine.closing_deadline == 5.0 + engine.options.close_timeout
    engine.receive_data(b"".join(peer.ws.data_to_send()), now=5.5)  # the peer's echo
    assert engine.eof and engine.rcvd == Close(1000, "done")
    assert engine.rcvd_then_sent is False
    engine.connection_lost(None)
    assert seen[-1] == Closed(1000, "done", clean=True)
    assert engine.read_error is None


@pytest.mark.parametrize("side", SIDES)
def test_close_times_out_without_the_peers_close_frame(side: str) -> None:
    engine, peer = make(side, close_timeout=3.0)
    seen = events(engine)
    engine.close(1001, "going", now=5.0)
    assert closes(peer.read(engine)) == [Close(1001, "going")]
    assert engine.closing_deadline == 8.0 and engine.deadline == 8.0
    assert engine.timer(7.9) is False
    assert engine.timer(8.0) is True
    engine.connection_lost()
    assert isinstance(engine.read_error, AbnormalClosureError)
    assert "timed out" in str(engine.read_error)
    assert seen[-1] == Closed(1006, "", clean=False)
    assert engine.close_code == 1006


# Writes


@pytest.mark.parametrize("side", SIDES)
def test_writes_coalesce_until_flush_and_are_refused_after_the_close(side: str) -> None:
    engine, peer = make(side)
    assert engine.send_refusal() is None and engine.is_open
    assert engine.write(b"first", first=True)
    assert engine.write(b"a", first=False) and engine.write(b"b", first=False)
    assert engine.pending_size == 2
    assert [f.data for f in peer.read(engine)] == [b"first"]
    engine.flush()
    assert engine.pending_size == 0
    assert [f.data for f in peer.read(engine)] == [b"ab"]  # ONE frame
    assert engine.stats.frames_sent == 2 and engine.stats.bytes_sent == 7
    engine.close(1000, "", now=1.0)
    assert engine.send_refusal() == "this stream was closed: data can no longer be sent"
    assert not engine.is_open
    assert engine.write(b"late", first=True) is False
    assert engine.write(b"later", first=False) is False
    assert engine.lost_writes == 2
    assert opcodes(peer.read(engine)) == [Opcode.CLOSE]


def test_large_writes_are_cut_at_max_frame_size() -> None:
    engine, peer = make(max_frame_size=100)
    assert engine.send(payload(0, 250)) == 3
    engine.write(b"x" * 60, first=True)
    engine.write(b"y" * 60, first=False)  # 60 pending
    engine.write(b"z" * 60, first=False)  # 120 pending: over max_frame_size, flushed
    frames = peer.read(engine)
    assert [len(f.data) for f in frames] == [100, 100, 50, 60, 100, 20]
    assert b"".join(f.data for f in frames) == payload(0, 250) + b"x" * 60 + b"y" * 60 + b"z" * 60


def test_a_message_engine_leaves_nothing_to_collect_after_a_write_or_a_delivery() -> None:
    """A message front end's engine: data messages go to its sink, never through
    websockets, so the shell may skip data_to_send() after a write or a delivered
    message; it must collect after a close."""
    sent: list[bytes] = []
    engine, peer = make("server", max_frame_size=4, send_message=sent.append)
    assert engine.writes_framed is False and make()[0].writes_framed is True
    assert engine.write(b"first", first=True) and engine.write(b"ab", first=False)
    engine.flush()
    assert sent == [b"firs", b"t", b"ab"]
    assert engine.data_to_send() == [] and engine.deadline == math.inf
    assert engine.receive_message(b"in", now=1.0) is False
    assert drain(engine) == b"in" and engine.data_to_send() == []
    engine.close(1000, "bye", now=2.0)
    assert closes(peer.read(engine)) == [Close(1000, "bye")]
    assert engine.deadline < math.inf
    assert engine.receive_message(b"late", now=2.1) is False  # read until the peer's close
    assert drain(engine) == b"late" and engine.data_to_send() == []


@pytest.mark.parametrize(
    ("code", "reason", "why"), [(1009, "", "Message size 9 exceeds 4"), (1002, "bad", None)]
)
def test_a_front_ends_own_verdict_ends_the_reader_after_its_data(
    code: int, reason: str, why: str | None
) -> None:
    """A message front end refused the peer's message and failed the connection with
    ``code`` and ``reason`` itself: the data before it, then ProtocolError of that
    code saying why (the reason when no explanation is given); that close is the one
    sent, and nothing goes out from the engine (the front end sent it)."""
    engine, peer = make("server", send_message=[].append)
    engine.receive_message(b"before", now=1.0)
    engine.violation(code, reason, why)
    assert drain(engine) == b"before"
    error = engine.read_error
    assert isinstance(error, ProtocolError) and error.code == code
    assert (why or reason) in str(error)
    assert engine.sent == Close(code, reason)
    assert peer.read(engine) == []
    engine.violation(1002, "again")  # once only
    assert engine.read_error is error and engine.sent == Close(code, reason)


@pytest.mark.parametrize("payload", [Close(4000, "bye").serialize(), b"\x13\x88bye"])
def test_a_front_ends_answer_replaces_the_echo_or_the_refusal_it_did_not_send(
    payload: bytes,
) -> None:
    """The front end answered the peer's close itself (aiohttp: 1000) instead of the
    engine's echo, or of its 1002 for a code no peer may send (5000): that answer is
    the close sent; the reader's ending stays the engine's (EOF, ProtocolError)."""
    engine, peer = make("server", send_message=[].append)
    engine.receive_data(peer.frame(Opcode.CLOSE, payload), now=1.0)
    queued = closes(peer.read(engine))
    assert [c.code for c in queued] == [4000 if payload[:2] == b"\x0f\xa0" else 1002]
    engine.front_end_answered(Close(1000, ""), ours_first=False)
    assert engine.sent == Close(1000, "")
    if queued[0].code == 1002:
        assert isinstance(engine.read_error, ProtocolError)
    else:
        assert engine.read_error is None and engine.eof


def test_a_front_ends_verdict_with_a_code_no_frame_carries_is_a_lost_connection() -> None:
    """A verdict whose code no close frame carries (1006): nothing is recorded as
    sent, and the reader's end is the lost connection's."""
    engine, _ = make("server", send_message=[].append)
    engine.violation(1006, "", "the front end lost the connection")
    assert engine.sent is None and engine.read_error is None
    engine.connection_lost(None)
    assert isinstance(engine.read_error, AbnormalClosureError)
    assert engine.sent is None


# Keepalive


def test_keepalive_ping_answered_clears_the_timeout() -> None:
    engine, peer = make("server", ping_interval=1, ping_timeout=2)
    assert engine.deadline == 1.0
    assert engine.timer(1.0) is False
    [ping] = peer.read(engine)
    assert ping.opcode is Opcode.PING
    assert engine.deadline == 2.0
    engine.receive_data(b"".join(peer.ws.data_to_send()), now=1.5)  # the pong
    assert engine.stats.last_latency == 0.5
    assert engine.deadline == 2.0  # the next ping; no timeout pending
    assert engine.timer(2.0) is False
    assert opcodes(peer.read(engine)) == [Opcode.PING]
    assert engine.deadline == 3.0
    engine.receive_data(b"".join(peer.ws.data_to_send()), now=2.1)
    assert engine.timer(3.0) is False and engine.read_error is None
    assert opcodes(peer.read(engine)) == [Opcode.PING]  # the third one, no failure


@pytest.mark.parametrize("side", SIDES)
def test_keepalive_without_pong_fails_with_1011(side: str) -> None:
    engine, peer = make(side, ping_interval=1, ping_timeout=2, close_timeout=5.0)
    seen = events(engine)
    engine.timer(1.0)
    assert opcodes(peer.read(engine)) == [Opcode.PING]
    peer.ws.data_to_send()  # the pong is lost
    engine.timer(2.0)
    assert peer.read(engine) == []  # one keepalive ping at a time
    assert engine.timer(3.0) is False
    assert closes(peer.read(engine))[0].code == 1011
    assert isinstance(engine.read_error, AbnormalClosureError)
    assert "ping_timeout" in str(engine.read_error)
    assert Error(engine.read_error) in seen
    assert engine.closing_deadline == 8.0
    assert engine.timer(8.0) is True


# Flow control


def test_buffer_pauses_past_limit_and_resumes_at_half() -> None:
    engine, peer = make(limit=10)
    engine.receive_data(peer.frame(B, b"0123456789"), now=1.0)
    assert not engine.should_pause()
    engine.receive_data(peer.frame(B, b"A"), now=1.0)
    assert engine.should_pause()
    assert engine.take(3) == (b"012", False)  # 8 left
    assert engine.take(3) == (b"345", True)  # 5 left: resume
    engine.receive_data(peer.frame(B, b"BCDEFG"), now=1.0)
    assert engine.should_pause()
    engine.close(1000, "", now=2.0, discard=True)
    assert len(engine.buffer) == 0 and not engine.should_pause()


def test_after_our_close_a_full_reader_never_holds_the_handshake_back() -> None:
    engine, peer = make(limit=4)
    engine.close(1000, "", now=1.0)
    engine.receive_data(peer.frame(B, b"12345"), now=1.1)
    assert not engine.should_pause()  # the reader is full: later data is discarded
    engine.receive_data(peer.frame(B, b"more") + peer.close(1000), now=1.2)
    assert drain(engine) == b"12345"
    assert engine.eof and engine.rcvd == Close(1000, "")


# The end of TCP


@pytest.mark.parametrize("side", SIDES)
def test_eof_in_the_middle_of_a_frame_is_an_abnormal_closure(side: str) -> None:
    engine, peer = make(side)
    seen = events(engine)
    got: list[float | None] = []
    engine.ping(b"p", 1.0, got.append)
    wire = peer.frame(B, b"before") + peer.frame(B, b"cut short")[:-3]
    engine.receive_data(wire, now=1.0)
    engine.receive_eof()
    assert engine.read_error is None and not engine.ended
    engine.connection_lost(None)
    assert isinstance(engine.read_error, AbnormalClosureError)
    assert drain(engine) == b"before"
    assert got == [None]
    assert list(seen)[-2:] == [Error(engine.read_error), Closed(1006, "", clean=False)]
    assert engine.close_code == 1006 and engine.deadline == math.inf
