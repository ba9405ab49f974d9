"""A raw-socket peer breaks RFC 6455; we fail with the right code, event and reader error.

The shared case list of tests/cases.py, run against the blocking shell.
"""

from __future__ import annotations

import time

import pytest

import ws_stream
from ws_stream.events import Closed, Error, PingReceived
from ws_stream.sync import WsSocket

from ..cases import CLIENT_VIOLATION_PARAMS, SEQUENCE_PARAMS, VIOLATION_PARAMS
from ..rawpeer import BINARY, CLOSE, PING, TEXT, build_frame, close_payload
from .helpers import accepting_server, collect_events
from .rawpeer import RawPeer, connect_raw, raw_connection


@pytest.mark.parametrize(("frame", "code"), VIOLATION_PARAMS)
def test_server_fails_the_violating_client(frame: dict[str, object], code: int) -> None:
    with accepting_server(max_size=1000) as (port, accepted):
        peer = connect_raw(port)
        sock = accepted.get(timeout=5)
        events = sock.events()
        peer.send(BINARY, b"prior")
        peer.send(**frame)  # type: ignore[arg-type]
        got_code, _ = peer.recv_close()
        assert got_code == code
        sock.settimeout(5)
        assert sock.recv(5) == b"prior"
        with pytest.raises(ws_stream.ProtocolError) as info:
            sock.recv(10)
        assert info.value.code == code
        peer.wait_eof()  # the server drops TCP
        peer.close_tcp()
        got = collect_events(events)
        assert isinstance(got[0], Error) and isinstance(got[0].error, ws_stream.ProtocolError)
        assert got[0].error.code == code
        assert isinstance(got[-1], Closed) and not got[-1].clean
        with pytest.raises(ws_stream.ProtocolError):
            sock.sendall(b"x")


def test_new_data_frame_inside_a_fragmented_message() -> None:
    with accepting_server() as (port, accepted):
        peer = connect_raw(port)
        sock = accepted.get(timeout=5)
        sock.settimeout(5)
        peer.send(BINARY, b"start", fin=False)
        peer.send(BINARY, b"again")
        assert peer.recv_close()[0] == 1002
        # The first fragment was data of the stream already: it is delivered.
        assert sock.recv(5) == b"start"
        with pytest.raises(ws_stream.ProtocolError):
            sock.recv(10)
        peer.close_tcp()


def test_64_bit_length_with_top_bit_set() -> None:
    with accepting_server() as (port, accepted):
        peer = connect_raw(port)
        sock = accepted.get(timeout=5)
        sock.settimeout(5)
        peer.send_raw(bytes([0x82, 0x80 | 127]) + (2**63).to_bytes(8, "big") + b"\0" * 4)
        assert peer.recv_close()[0] in (1002, 1009)
        with pytest.raises(ws_stream.ProtocolError):
            sock.recv(10)
        peer.close_tcp()


def test_text_frame_to_the_server_is_1003() -> None:
    with accepting_server() as (port, accepted):
        peer = connect_raw(port)
        sock = accepted.get(timeout=5)
        sock.settimeout(5)
        peer.send(BINARY, b"bin")
        peer.send(TEXT, b"txt")
        assert peer.recv_close() == (1003, "text frames are not supported")
        assert sock.recv(10) == b"bin"
        with pytest.raises(ws_stream.TextFrameError):
            sock.recv(10)
        peer.close_tcp()


def test_masked_frame_to_a_client_is_1002() -> None:
    with raw_connection() as (sock, peer):
        sock.settimeout(5)
        peer.send(BINARY, b"prior")
        peer.send(BINARY, b"masked", mask=True)
        assert peer.recv_close()[0] == 1002
        assert sock.recv(5) == b"prior"
        with pytest.raises(ws_stream.ProtocolError) as info:
            sock.recv(10)
        assert info.value.code == 1002


def test_tcp_reset_mid_stream() -> None:
    with accepting_server() as (port, accepted):
        peer = connect_raw(port)
        sock = accepted.get(timeout=5)
        sock.settimeout(5)
        peer.send(BINARY, b"some")
        time.sleep(0.05)
        peer.reset_tcp()
        assert sock.recv(4) == b"some"
        with pytest.raises(ConnectionResetError):
            sock.recv(10)


@pytest.mark.parametrize(("frame", "code"), CLIENT_VIOLATION_PARAMS)
def test_client_fails_the_violating_server(frame: dict[str, object], code: int) -> None:
    with raw_connection(max_size=1000) as (sock, peer):
        sock.settimeout(5)
        events = sock.events()
        peer.send(BINARY, b"prior")
        peer.send(**frame)  # type: ignore[arg-type]
        assert peer.recv_close()[0] == code
        assert sock.recv(5) == b"prior"
        with pytest.raises(ws_stream.ProtocolError) as info:
            sock.recv(10)
        assert type(info.value) is ws_stream.ProtocolError
        assert info.value.code == code
        peer.close_tcp()  # a client waits for the server to drop TCP
        got = collect_events(events)
        assert [type(e) for e in got] == [Error, Closed]
        assert got[-1] == Closed(1006, "", clean=False)
        assert sock.error is not None and sock.close_code == 1006


def _sequence_outcome(
    peer: RawPeer, sock: WsSocket, frames: list[dict[str, object]], data: bytes, code: int
) -> None:
    events = sock.events()
    sock.settimeout(5)
    peer.send(BINARY, b"prior")
    for frame in frames:
        peer.send(**frame)  # type: ignore[arg-type]
    assert peer.recv_close()[0] == code
    with sock.makefile("rb") as f:
        assert f.read(5 + len(data)) == b"prior" + data
    with pytest.raises(ws_stream.ProtocolError) as info:
        sock.recv(10)
    assert type(info.value) is ws_stream.ProtocolError
    assert info.value.code == code
    peer.close_tcp()
    got = collect_events(events)
    pings = [e.data for e in got if isinstance(e, PingReceived)]
    sent_pings = [f["payload"] for f in frames if f["opcode"] == PING and f.get("fin", True)]
    assert pings == sent_pings
    rest = [e for e in got if not isinstance(e, PingReceived)]
    assert isinstance(rest[0], Error) and isinstance(rest[-1], Closed)


@pytest.mark.parametrize(("frames", "data", "code"), SEQUENCE_PARAMS)
def test_server_fails_a_violating_sequence(
    frames: list[dict[str, object]], data: bytes, code: int
) -> None:
    with accepting_server(max_size=1000) as (port, accepted):
        peer = connect_raw(port)
        _sequence_outcome(peer, accepted.get(timeout=5), frames, data, code)


@pytest.mark.parametrize(("frames", "data", "code"), SEQUENCE_PARAMS)
def test_client_fails_a_violating_sequence(
    frames: list[dict[str, object]], data: bytes, code: int
) -> None:
    with raw_connection(max_size=1000) as (sock, peer):
        _sequence_outcome(peer, sock, frames, data, code)


@pytest.mark.parametrize(
    "follower",
    [
        pytest.param(dict(opcode=BINARY, payload=b"late"), id="binary"),
        pytest.param(dict(opcode=PING, payload=b"p"), id="ping"),
        pytest.param(dict(opcode=CLOSE, payload=close_payload(1000)), id="close"),
        pytest.param(dict(opcode=0x3, payload=b"x"), id="reserved opcode"),
    ],
)
def test_text_frame_and_more_in_one_tcp_segment_is_still_1003(
    follower: dict[str, object],
) -> None:
    """What the wire says must not depend on how TCP cut the bytes."""
    with accepting_server() as (port, accepted):
        peer = connect_raw(port)
        sock = accepted.get(timeout=5)
        sock.settimeout(5)
        events = sock.events()
        segment = build_frame(BINARY, b"bin", mask=True) + build_frame(TEXT, b"txt", mask=True)
        peer.send_raw(segment + build_frame(**follower, mask=True))  # type: ignore[arg-type]
        assert peer.recv_close() == (1003, "text frames are not supported")
        assert sock.recv(10) == b"bin"
        with pytest.raises(ws_stream.TextFrameError) as info:
            sock.recv(10)
        peer.close_tcp()
        # After our close frame, RFC 6455 says to discard what the peer sends.
        assert collect_events(events) == [Error(info.value), Closed(1006, "", clean=False)]


@pytest.mark.parametrize("max_size", [2**20, None])
def test_64_bit_length_with_the_top_bit_set_fails_a_client_at_once(max_size: int | None) -> None:
    with raw_connection(max_size=max_size) as (sock, peer):
        sock.settimeout(5)
        peer.send(BINARY, b"prior")
        peer.send_raw(bytes([0x82, 127]) + (2**63 + 5).to_bytes(8, "big") + b"payload")
        code, _ = peer.recv_close(timeout=3)
        assert code in (1002, 1009)
        assert sock.recv(5) == b"prior"
        with pytest.raises(ws_stream.ProtocolError) as info:
            sock.recv(10)
        assert info.value.code == code
