"""Each semantic of the blocking socket, against real peers on 127.0.0.1.

The same cases as tests/asyncio/test_semantics.py, with socket-shaped calls.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection
from websockets.sync.server import serve as ws_serve

import ws_stream
import ws_stream.sync
from ws_stream.events import Closed, CloseReceived, Error, PingReceived, PongReceived

from ..ports import refused_port
from ..rawpeer import BINARY, CLOSE, CONT, PING, PONG, TEXT, close_payload
from .helpers import collect_events, connect, echo, stream_server
from .rawpeer import RawServer, raw_connection

# Read side


def test_readline_across_three_frames_and_large_frame_remainder() -> None:
    with raw_connection() as (sock, peer):
        f = sock.makefile("rb")
        peer.send(BINARY, b"hel")
        peer.send(BINARY, b"lo wo")
        peer.send(BINARY, b"rld\nnext")
        assert f.readline() == b"hello world\n"
        big = bytes(range(256)) * 1000
        peer.send(BINARY, big)
        assert f.read(4) == b"next"
        assert sock.recv(100) == big[:100]
        assert f.read(len(big) - 100) == big[100:]
        peer.send(CLOSE, close_payload(1000))
        assert f.read() == b""
        assert sock.recv(10) == b""
        f.close()


def test_fragmented_message_and_empty_frames_are_one_byte_run() -> None:
    with raw_connection() as (sock, peer):
        peer.send(BINARY, b"ab", fin=False)
        peer.send(CONT, b"", fin=False)
        peer.send(CONT, b"cd", fin=True)
        peer.send(BINARY, b"")
        peer.send(BINARY, b"ef")
        peer.send(CLOSE, close_payload(1000))
        with sock.makefile("rb") as f:
            assert f.read() == b"abcdef"
        assert sock.recv(1) == b""


def test_recv_into_and_small_frames_joined() -> None:
    with raw_connection() as (sock, peer):
        for i in range(50):
            peer.send(BINARY, bytes([i]) * 10)
        peer.send(CLOSE, close_payload(1000))
        got = bytearray()
        buf = bytearray(128)
        while n := sock.recv_into(buf, 100):
            assert n <= 100
            got += buf[:n]
        assert bytes(got) == b"".join(bytes([i]) * 10 for i in range(50))


# Write side


def test_writes_are_split_into_max_frame_size_frames() -> None:
    with raw_connection(max_frame_size=1000) as (sock, peer):
        sock.sendall(b"x" * 2500)
        sizes = [len(peer.recv_frame().payload) for _ in range(3)]
        assert sizes == [1000, 1000, 500]
        assert sock.send(bytearray(b"mutable")) == 7
        frame = peer.recv_frame()
        assert (frame.opcode, frame.fin, frame.payload) == (BINARY, True, b"mutable")
        assert sock.send(b"") == 0
        with pytest.raises(TypeError):
            sock.sendall("text")  # type: ignore[arg-type]
        assert sock.stats.bytes_sent == 2507 and sock.stats.frames_sent == 4
        sock.shutdown(socket.SHUT_WR)
        assert peer.recv_close() == (1000, "")


# Text frames


def test_text_frame_fails_with_1003_after_prior_bytes() -> None:
    with raw_connection() as (sock, peer):
        events = sock.events()
        peer.send(BINARY, b"before")
        peer.send(TEXT, b"hello")
        peer.send(BINARY, b"after")  # discarded: the connection is failed
        assert peer.recv_close() == (1003, "text frames are not supported")
        peer.send(CLOSE, close_payload(1003))
        assert sock.recv(100) == b"before"
        with pytest.raises(ws_stream.TextFrameError) as info:
            sock.recv(100)
        assert info.value.code == 1003
        with pytest.raises(ws_stream.TextFrameError):
            sock.recv(100)  # the error stays
        peer.close_tcp()
        got = collect_events(events)
        assert isinstance(got[0], Error) and isinstance(got[0].error, ws_stream.TextFrameError)
        assert isinstance(got[-1], Closed)
        with pytest.raises(ws_stream.TextFrameError):
            sock.sendall(b"too late")
        assert isinstance(sock.error, ws_stream.TextFrameError)


def test_on_text_bytes_joins_utf8_payloads() -> None:
    with raw_connection(on_text="bytes") as (sock, peer):
        text = "héllo wörld €".encode()
        peer.send(TEXT, text[:2], fin=False)  # splits a multi-byte character
        peer.send(CONT, text[2:])
        peer.send(BINARY, b"|bin")
        peer.send(CLOSE, close_payload(1000))
        with sock.makefile("rb") as f:
            assert f.read() == text + b"|bin"


def test_on_text_bytes_rejects_invalid_utf8_with_1007() -> None:
    with raw_connection(on_text="bytes") as (sock, peer):
        peer.send(BINARY, b"ok")
        peer.send(TEXT, b"\xff\xfe")
        code, _ = peer.recv_close()
        assert code == 1007
        assert sock.recv(10) == b"ok"
        with pytest.raises(ws_stream.ProtocolError) as info:
            sock.recv(10)
        assert info.value.code == 1007


# Control frames and the closing handshake


def test_ping_and_pong_are_events_never_data() -> None:
    with raw_connection() as (sock, peer):
        events = sock.events()
        peer.send(BINARY, b"a")
        peer.send(PING, b"are you there")
        peer.send(PONG, b"unsolicited")
        peer.send(BINARY, b"b")
        pong = peer.recv_frame()
        assert (pong.opcode, pong.payload) == (PONG, b"are you there")
        peer.send(CLOSE, close_payload(4001, "bye"))
        with sock.makefile("rb") as f:
            assert f.read() == b"ab"
        assert peer.recv_close() == (4001, "bye")  # we answered by ourselves
        peer.close_tcp()
        got = collect_events(events)
        assert got == [
            PingReceived(b"are you there"),
            PongReceived(b"unsolicited"),
            CloseReceived(4001, "bye"),
            Closed(4001, "bye", clean=True),
        ]
        assert (sock.close_code, sock.close_reason) == (4001, "bye")
        assert sock.stats.frames_received == 5 and sock.stats.pongs_received == 1


def test_ping_returns_round_trip_seconds() -> None:
    with stream_server(echo) as uri:
        sock = connect(uri)
        assert 0 <= sock.ping() < 5
        assert 0 <= sock.ping(b"payload", timeout=5) < 5
        assert sock.stats.pings_sent == 2 and sock.stats.last_latency is not None
        sock.close()
        with pytest.raises(OSError):
            sock.ping()


def test_ping_after_the_peer_closed_is_connection_reset() -> None:
    with raw_connection() as (sock, peer):
        peer.send(CLOSE, close_payload(1000))
        assert sock.recv(1) == b""
        with pytest.raises(ConnectionResetError):
            sock.ping(timeout=2)


def test_lost_connection_raises_connection_reset_after_data() -> None:
    with raw_connection() as (sock, peer):
        events = sock.events()
        peer.send(BINARY, b"last words")
        peer.close_tcp()
        with sock.makefile("rb") as f:
            assert f.read(10) == b"last words"
            with pytest.raises(ConnectionResetError) as info:
                f.read(10)
        assert isinstance(info.value, ws_stream.AbnormalClosureError)
        got = collect_events(events)
        assert got[-1] == Closed(1006, "", clean=False)
        assert isinstance(got[0], Error)
        assert sock.close_code == 1006
        with pytest.raises(ConnectionResetError):
            sock.sendall(b"x")


def test_partial_read_before_an_error_returns_the_data_first() -> None:
    with raw_connection() as (sock, peer):
        peer.send(BINARY, b"line without end")
        peer.close_tcp()
        with sock.makefile("rb") as f:
            assert f.readline() == b"line without end"  # as at EOF
            with pytest.raises(ConnectionResetError):
                f.readline()


def test_frame_cut_by_tcp_close_is_connection_reset() -> None:
    with raw_connection() as (sock, peer):
        peer.send(BINARY, b"whole")
        peer.send_raw(bytes([0x82, 100]) + b"only part")
        peer.close_tcp()
        assert sock.recv(5) == b"whole"
        with pytest.raises(ConnectionResetError):
            sock.recv(10)


def test_shutdown_wr_sends_close_and_keeps_reading() -> None:
    with raw_connection() as (sock, peer):
        sock.sendall(b"request")
        sock.shutdown(socket.SHUT_WR)
        frames = peer.recv_data()
        assert b"".join(f.payload for f in frames) == b"request"
        assert peer.last_close is not None
        assert peer.last_close.payload[:2] == close_payload(1000)
        with pytest.raises(BrokenPipeError):
            sock.sendall(b"more")
        peer.send(BINARY, b"in-flight reply")
        peer.send(CLOSE, close_payload(1000))
        assert sock.recv(100) == b"in-flight reply"
        assert sock.recv(100) == b""
        peer.close_tcp()


def test_shutdown_rd_discards_input() -> None:
    with raw_connection() as (sock, peer):
        peer.send(BINARY, b"unwanted")
        time.sleep(0.05)
        sock.shutdown(socket.SHUT_RD)
        assert sock.recv(10) == b""
        sock.sendall(b"still writing")
        assert peer.recv_frame().payload == b"still writing"


def test_close_with_code_reaches_the_peer() -> None:
    with RawServer() as raw:
        sock = connect(raw.uri)
        peer = raw.accept()
        sock.sendall(b"flushed first")
        closing = threading.Thread(target=sock.close, args=(4002, "bye"))
        closing.start()
        frames = peer.recv_data()
        assert b"".join(f.payload for f in frames) == b"flushed first"
        assert peer.last_close is not None
        assert peer.last_close.payload == close_payload(4002, "bye")
        peer.send(CLOSE, close_payload(4002, "bye"))
        peer.close_tcp()
        closing.join(5)
        assert not closing.is_alive()
        with pytest.raises(OSError):
            sock.sendall(b"x")
        with pytest.raises(OSError):
            sock.recv(1)
        sock.close()  # idempotent
        with pytest.raises(ValueError):
            sock.close(1006)  # checked even when closed: a bug in the caller


def test_close_against_a_silent_peer_is_bounded() -> None:
    with RawServer() as raw:
        sock = connect(raw.uri, close_timeout=0.5)
        events = sock.events()
        raw.accept()  # never answers anything
        t0 = time.monotonic()
        sock.close()
        assert time.monotonic() - t0 < 0.5 + 1
        got = collect_events(events)
        assert got[-1] == Closed(1006, "", clean=False)


def test_failed_connection_against_a_silent_peer_ends_after_close_timeout() -> None:
    with raw_connection(close_timeout=0.3) as (sock, peer):
        events = sock.events()
        peer.send(TEXT, b"boom")
        peer.recv_close()  # we failed with 1003; the peer stays silent
        t0 = time.monotonic()
        got = collect_events(events, timeout=0.3 + 2)
        assert time.monotonic() - t0 < 0.3 + 1.5
        assert got[-1] == Closed(1006, "", clean=False)
        with pytest.raises(ws_stream.TextFrameError):
            sock.recv(1)


def test_events_after_close_do_not_hang() -> None:
    with stream_server(echo) as uri:
        sock = connect(uri)
        sock.close()
        assert collect_events(sock.events(), timeout=2) == [Closed(1000, "", clean=True)]


def test_slow_subscriber_drops_oldest_and_never_blocks_data() -> None:
    with raw_connection(max_events=3) as (sock, peer):
        events = sock.events()
        for i in range(10):
            peer.send(PING, bytes([i]))
        peer.send(BINARY, b"data")
        assert sock.recv(4) == b"data"
        peer.send(CLOSE, close_payload(1000))
        assert sock.recv(1) == b""
        peer.close_tcp()
        got = collect_events(events)
        assert got[-1] == Closed(1000, "", clean=True)
        assert len(got) + events.dropped == 12
        assert events.dropped >= 7
        assert got[-2:] == [CloseReceived(1000, ""), Closed(1000, "", clean=True)]


def test_receive_buffer_is_bounded_by_limit() -> None:
    limit = 2**16
    with raw_connection(limit=limit, max_size=2**20) as (sock, peer):
        payload = bytes(range(256)) * 64  # 16 KiB frames
        frame_count = 32 * 2**20 // len(payload)  # far more than kernel buffers hold
        sent = 0
        peer.sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            for _ in range(frame_count):  # our side stops reading: TCP fills up
                peer.send(BINARY, payload)
                sent += 1
        # Bounded: the limit, plus what one recv() of the background thread brings.
        assert sock.websocket.buffered() <= limit + sock.websocket.recv_bufsize + len(payload)
        with sock.makefile("rb") as f:
            for _ in range(sent):
                assert f.read(len(payload)) == payload


# Opening


def test_refused_handshake_has_the_http_status() -> None:
    def reject(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(403, "no\n")

    def never(websocket: ServerConnection) -> None:
        raise AssertionError("the handler must not run")

    with ws_serve(never, "127.0.0.1", 0, process_request=reject) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        with pytest.raises(ws_stream.HandshakeError) as info:
            connect(f"ws://127.0.0.1:{port}/")
        assert info.value.status == 403
        assert isinstance(info.value, ConnectionError)


def test_silent_server_times_out_after_open_timeout() -> None:
    with RawServer(respond=False) as raw:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            connect(raw.uri, open_timeout=0.5)
        assert time.monotonic() - t0 < 3


def test_bad_uri_refused_port_and_bad_options() -> None:
    with pytest.raises(ValueError):
        connect("http://127.0.0.1:1/")
    port = refused_port()
    with pytest.raises(OSError):
        connect(f"ws://127.0.0.1:{port}/", open_timeout=5)
    with pytest.raises(ValueError):
        connect(f"ws://127.0.0.1:{port}/", on_text="latin-1")
    with pytest.raises(ValueError):
        ws_stream.sync.serve(echo, "127.0.0.1", 0, limit=0)


def test_addresses_timeouts_and_websocket() -> None:
    with stream_server(echo, subprotocols=["binary"]) as uri:
        sock = connect(uri, subprotocols=["binary"])
        assert sock.getpeername() == ("127.0.0.1", int(uri.rsplit(":", 1)[1].strip("/")))
        assert sock.getsockname()[0] == "127.0.0.1"
        assert sock.websocket.subprotocol == "binary"
        assert sock.gettimeout() is None and sock.getblocking()
        sock.settimeout(2.5)
        assert sock.gettimeout() == 2.5
        sock.setblocking(False)
        assert sock.gettimeout() == 0.0 and not sock.getblocking()
        sock.setblocking(True)
        assert sock.gettimeout() is None
        with pytest.raises(ValueError):
            sock.settimeout(-1)
        sock.close()
        with pytest.raises(OSError):
            sock.getpeername()


def test_handler_error_closes_with_1011() -> None:
    def broken(sock: ws_stream.sync.WsSocket) -> None:
        raise RuntimeError("bug in the application")

    with stream_server(broken) as uri, connect(uri) as sock:
        sock.settimeout(5)
        assert sock.recv(10) == b""
        assert sock.close_code == 1011


def test_handler_return_closes_the_connection() -> None:
    def hello(sock: ws_stream.sync.WsSocket) -> None:
        sock.sendall(b"hello")
        sock.makefile("rb")  # an open file does not keep the connection alive

    with stream_server(hello) as uri, connect(uri) as sock:
        sock.settimeout(5)
        with sock.makefile("rb") as f:
            assert f.read() == b"hello"
        assert sock.close_code == 1000


def test_server_shutdown_closes_connections_with_1001() -> None:
    seen: list[bytes] = []

    def handler(sock: ws_stream.sync.WsSocket) -> None:
        sock.settimeout(10)
        seen.append(sock.recv(10))

    with stream_server(handler) as uri:
        sock = connect(uri)
        sock.settimeout(5)
    # stream_server's exit shut the server down, closing the connection.
    assert sock.recv(10) == b""
    assert sock.close_code == 1001
    assert seen == [b""]
    sock.close()
