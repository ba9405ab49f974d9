"""The engine's deadlines in the blocking shell: keepalive pings, a pong overdue, and
``close_timeout`` after a close nobody waits for (the timer thread, not a caller).

Also the peer's first frames arriving in the same TCP segment as the handshake."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
import time

import pytest

import ws_stream
import ws_stream.sync
from ws_stream.events import Closed

from ..rawpeer import BINARY, CLOSE, GUID, PING, PONG, TEXT, build_frame, close_payload
from .helpers import collect_events
from .rawpeer import raw_connection


def test_keepalive_pings_are_sent_and_their_latency_measured() -> None:
    with raw_connection(ping_interval=0.2, ping_timeout=5) as (sock, peer):
        t0 = time.monotonic()
        ping = peer.recv_frame(timeout=3)
        assert ping.opcode == PING
        assert 0.1 < time.monotonic() - t0 < 3
        assert sock.stats.pings_sent == 1
        peer.send(PONG, ping.payload)
        deadline = time.monotonic() + 3
        while sock.stats.last_latency is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sock.stats.last_latency is not None and sock.stats.last_latency < 3
        second = peer.recv_frame(timeout=3)  # the next one, an interval later
        assert second.opcode == PING and second.payload != ping.payload


def test_a_pong_overdue_fails_the_connection_with_1011() -> None:
    with raw_connection(ping_interval=0.2, ping_timeout=0.3) as (sock, peer):
        events = sock.events()
        assert peer.recv_frame(timeout=3).opcode == PING  # never answered
        assert peer.recv_close(timeout=3) == (1011, "keepalive ping timeout")
        peer.send(CLOSE, close_payload(1011))
        sock.settimeout(5)
        with pytest.raises(ConnectionResetError) as info:
            sock.recv(1)
        assert isinstance(info.value, ws_stream.AbnormalClosureError)
        assert "ping_timeout" in str(info.value)
        peer.close_tcp()
        # After failing the connection, what the peer sends is discarded (RFC 6455 7.1.7).
        assert collect_events(events)[-1] == Closed(1006, "", clean=False)


def test_shutdown_wr_against_a_silent_peer_ends_after_close_timeout() -> None:
    """Nobody waits after shutdown(SHUT_WR): the timer thread drops TCP on time."""
    with raw_connection(close_timeout=0.3) as (sock, peer):
        events = sock.events()
        sock.shutdown(socket.SHUT_WR)
        assert peer.recv_close() == (1000, "")  # then the peer stays silent
        t0 = time.monotonic()
        got = collect_events(events, timeout=5)
        assert got[-1] == Closed(1006, "", clean=False)
        assert time.monotonic() - t0 < 0.3 + 2
        assert peer.wait_eof() == b""  # TCP dropped
        with pytest.raises(ConnectionResetError):
            sock.recv(1)


def test_a_paused_reader_still_honours_close_timeout() -> None:
    """The application reads nothing (reading is paused at ``limit``) and the peer never
    answers our close frame: the connection still ends after close_timeout, and the
    buffered bytes are still readable, then the error."""
    with raw_connection(limit=2**14, close_timeout=0.3) as (sock, peer):
        events = sock.events()
        payload = b"z" * 2**14
        peer.sock.settimeout(0.5)
        sent = 0
        with pytest.raises(TimeoutError):
            while True:  # until our reader stopped reading and TCP is full
                peer.send(BINARY, payload)
                sent += 1
        assert sock.websocket.reading_paused
        sock.shutdown(socket.SHUT_WR)
        got = collect_events(events, timeout=5)
        assert got[-1] == Closed(1006, "", clean=False)
        sock.settimeout(5)
        with sock.makefile("rb") as f:
            data = f.read(len(payload))
            assert data == payload  # what was buffered before the end
            with pytest.raises(ConnectionResetError):
                while f.read(len(payload)):
                    pass


def _raw_server_greeting_first(
    frames: bytes,
) -> tuple[socket.socket, threading.Thread, list[socket.socket]]:
    """A server that answers the upgrade and sends ``frames`` in the same write."""
    listener = socket.create_server(("127.0.0.1", 0))
    peers: list[socket.socket] = []

    def serve() -> None:
        conn, _ = listener.accept()
        peers.append(conn)
        conn.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        response = (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
        conn.sendall(response + frames)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread, peers


def test_frames_behind_the_handshake_response_are_decided_like_any_other() -> None:
    frames = build_frame(BINARY, b"early") + build_frame(TEXT, b"boom") + build_frame(PING, b"p")
    listener, thread, peers = _raw_server_greeting_first(frames)
    try:
        port = listener.getsockname()[1]
        sock = ws_stream.sync.connect(f"ws://127.0.0.1:{port}/", ping_interval=None)
        thread.join(5)
        peer = peers[0]
        sock.settimeout(5)
        assert sock.recv(10) == b"early"
        with pytest.raises(ws_stream.TextFrameError):
            sock.recv(10)
        # The ping behind the text frame is never answered: the close frame comes first.
        peer.settimeout(5)
        data = peer.recv(2)
        assert data[0] == 0x80 | CLOSE
        peer.close()
        sock.close()
    finally:
        listener.close()
