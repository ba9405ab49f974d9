"""Streaming over the blocking socket: makefile(), timeouts that lose nothing, full duplex."""

from __future__ import annotations

import hashlib
import os
import queue
import random
import socket
import ssl
import threading
import time

import pytest
import trustme

from ws_stream.sync import WsSocket

from ..rawpeer import BINARY, CLOSE, close_payload
from .helpers import connect, echo, stream_server
from .rawpeer import raw_connection


def test_recv_timeout_consumes_nothing_and_nonblocking_raises_blocking_io() -> None:
    with raw_connection() as (sock, peer):
        sock.settimeout(0.05)
        with pytest.raises(TimeoutError):
            sock.recv(10)
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(10)
        with pytest.raises(BlockingIOError):
            sock.recv_into(bytearray(10))
        peer.send(BINARY, b"abc")
        sock.settimeout(5)
        assert sock.recv(10) == b"abc"


def test_makefile_readline_and_read_survive_timeouts_mid_stream() -> None:
    with raw_connection() as (sock, peer):
        f = sock.makefile("rb")
        sock.settimeout(0.1)
        peer.send(BINARY, b"hel")
        with pytest.raises(TimeoutError):
            f.readline()  # half a line arrived: it stays buffered
        peer.send(BINARY, b"lo\nwor")
        assert f.readline() == b"hello\n"
        with pytest.raises(TimeoutError):
            f.read(10)  # 3 of 10 bytes: nothing consumed
        with pytest.raises(TimeoutError):
            f.read()  # until EOF: nothing consumed either
        assert f.peek(1).startswith(b"wor")
        peer.send(BINARY, b"ld! and more")
        assert f.read(10) == b"world! and"
        peer.send(CLOSE, close_payload(1000))
        assert f.read() == b" more"
        assert f.readline() == b""
        f.close()


def test_many_short_timeouts_lose_and_duplicate_no_byte() -> None:
    rng = random.Random(1234)
    lines = [os.urandom(rng.randrange(0, 300)).replace(b"\n", b"") + b"\n" for _ in range(300)]
    blob = b"".join(lines)

    def trickle(sock: WsSocket) -> None:
        i = 0
        while i < len(blob):
            n = rng.randrange(1, 700)
            sock.sendall(blob[i : i + n])
            i += n
            if rng.random() < 0.2:
                time.sleep(rng.random() * 0.006)

    with stream_server(trickle) as uri, connect(uri) as sock:
        f = sock.makefile("rb")
        sock.settimeout(0.002)
        got = bytearray()
        timeouts = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            op = rng.choice(("readline", "read", "recv", "read1"))
            try:
                if op == "readline":
                    data = f.readline()
                elif op == "read":
                    data = f.read(rng.randrange(1, 500))
                elif op == "read1":
                    data = f.read1(rng.randrange(1, 500))
                else:
                    data = sock.recv(rng.randrange(1, 500))
            except TimeoutError:
                timeouts += 1
                continue
            if not data:
                break
            got += data
        assert timeouts > 10  # the reads did time out mid-stream
        assert bytes(got) == blob


def test_write_timeouts_send_exactly_the_accepted_bytes() -> None:
    """The peer stops reading; send() with a timeout reports what it accepted."""
    release = threading.Event()
    received: queue.Queue[bytes] = queue.Queue()

    def slow_reader(sock: WsSocket) -> None:
        release.wait(20)  # not reading: our buffer (limit) and TCP fill up
        h = hashlib.sha256()
        n = 0
        while data := sock.recv(2**16):
            h.update(data)
            n += len(data)
        received.put(n.to_bytes(8, "big") + h.digest())

    data = os.urandom(64 * 2**20)
    with stream_server(slow_reader, limit=2**16) as uri, connect(uri) as sock:
        sock.settimeout(0.2)
        view = memoryview(data)
        accepted = 0
        with pytest.raises(TimeoutError):
            while accepted < len(data):
                accepted += sock.send(view[accepted : accepted + 2**20])
        assert 0 < accepted < len(data)
        release.set()
        sock.settimeout(10)
        sock.sendall(view[accepted : accepted + 1000])  # resumes in order
        accepted += 1000
        sock.shutdown(socket.SHUT_WR)
        summary = received.get(timeout=20)
        assert int.from_bytes(summary[:8], "big") == accepted
        assert summary[8:] == hashlib.sha256(data[:accepted]).digest()


def test_one_reader_thread_and_one_writer_thread_full_duplex() -> None:
    """Both peers write a lot while reading: no deadlock (plain websockets.sync has one)."""
    data = os.urandom(24 * 2**20)
    with stream_server(echo, limit=2**18) as uri, connect(uri, limit=2**18) as sock:
        got = bytearray()
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                while len(got) < len(data):
                    chunk = sock.recv(2**16)
                    if not chunk:
                        break
                    got.extend(chunk)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def pinger() -> None:  # a third thread, on the same connection
            try:
                while len(got) < len(data):
                    rtts.append(sock.ping(timeout=10))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        rtts: list[float] = []
        sock.settimeout(20)
        threads = [threading.Thread(target=reader), threading.Thread(target=pinger)]
        for thread in threads:
            thread.start()
        for i in range(0, len(data), 1 << 20):
            sock.sendall(data[i : i + (1 << 20)])
        for thread in threads:
            thread.join(20)
            assert not thread.is_alive()
        assert not errors
        assert bytes(got) == data
        assert rtts


def test_makefile_binary_loops_and_line_iteration() -> None:
    lines = [b"line %d %s\n" % (i, b"x" * (i % 97)) for i in range(2000)]
    with stream_server(echo) as uri, connect(uri) as sock:
        sock.settimeout(10)
        wfile = sock.makefile("wb")
        rfile = sock.makefile("rb")
        writer = threading.Thread(target=lambda: [wfile.write(line) for line in lines])
        writer.start()
        writer.join(10)
        wfile.flush()
        got = [next(rfile) for _ in range(1000)]
        buf = bytearray(4096)
        rest = bytearray()
        expected_rest = b"".join(lines[1000:])
        while len(rest) < len(expected_rest):
            n = rfile.readinto1(buf)
            assert n > 0
            rest += buf[:n]
        assert got == lines[:1000] and bytes(rest) == expected_rest
        wfile.close()
        rfile.close()


def test_rwb_file_unbuffered_writes_and_closing_order() -> None:
    with stream_server(echo) as uri:
        sock = connect(uri)
        sock.settimeout(5)
        f = sock.makefile("rwb", buffering=0)
        assert f.write(b"ping\n") == 5  # unbuffered: sent at once
        assert f.readline() == b"ping\n"
        sock.close()  # as http.client does: the file keeps the connection open
        with pytest.raises(OSError):
            sock.recv(1)
        f.write(b"still\n")
        assert f.readline() == b"still\n"
        f.close()  # the last reference: now the connection closes
        assert sock.close_code == 1000
        with pytest.raises(ValueError):
            f.readline()
        with pytest.raises(ValueError):
            sock.makefile("r")


def test_file_write_timeout_keeps_unsent_bytes() -> None:
    release = threading.Event()
    received: queue.Queue[int] = queue.Queue()

    def slow_reader(sock: WsSocket) -> None:
        release.wait(20)
        n = 0
        while data := sock.recv(2**16):
            assert data == b"z" * len(data)
            n += len(data)
        received.put(n)

    with stream_server(slow_reader, limit=2**16) as uri, connect(uri) as sock:
        f = sock.makefile("wb", buffering=2**20)
        sock.settimeout(0.2)
        written = 0
        with pytest.raises(TimeoutError):
            while written < 256 * 2**20:
                written += f.write(b"z" * 2**18)
        release.set()
        sock.settimeout(10)
        f.close()  # flushes what the timeout left in the buffer
        sock.shutdown(socket.SHUT_WR)
        assert received.get(timeout=20) == written


def test_events_iterator_get_timeout_and_close() -> None:
    with stream_server(echo) as uri, connect(uri) as sock:
        events = sock.events()
        with pytest.raises(TimeoutError):
            events.get(timeout=0.05)
        events.close()
        assert list(events) == []


def test_tls_inside_wss_round_trip_and_timeouts() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    data = os.urandom(3 * 2**20)
    with stream_server(echo, ssl=server_ctx) as uri:
        wss = uri.replace("ws://127.0.0.1", "wss://localhost")
        with connect(wss, ssl=client_ctx) as sock:
            sock.settimeout(0.01)
            with pytest.raises(TimeoutError):
                sock.recv(1)
            sock.settimeout(10)
            got = bytearray()
            thread = threading.Thread(target=sock.sendall, args=(data,))
            thread.start()
            while len(got) < len(data):
                got += sock.recv(2**16)
            thread.join(10)
            assert bytes(got) == data
