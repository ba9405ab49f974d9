"""``ws-stream forward`` -> ``ws-stream serve --to``: a TCP tunnel through WebSockets."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import os
import signal
import socket
import struct
import threading
import urllib.request
from collections.abc import Callable, Iterator

import pytest

import ws_stream
from ws_stream.events import Closed, CloseReceived

from ..ports import refused_port, reserved_port
from .helpers import Cli, run, start_tcp_echo

Start = Callable[..., Cli]
#: How forward and serve log a clean end (the end of a connection's line).
CLEAN_END = r"close code sent 1000, received 1000|close_sent=1000 close_received=1000"


def start_tunnel(cli: Start, target_port: int, *forward_args: str) -> tuple[Cli, Cli, int]:
    """serve --to 127.0.0.1:target_port, and forward to it; returns both and forward's port."""
    serve = cli("serve", "--port", "0", "--to", f"127.0.0.1:{target_port}")
    serve_port = serve.port()
    forward = cli(
        "forward", "--listen", "127.0.0.1:0", *forward_args, f"ws://127.0.0.1:{serve_port}/"
    )
    return serve, forward, forward.port()


def test_200_concurrent_tunnels(cli: Start) -> None:
    count = 200

    async def main() -> None:
        server, echo_port, accepted = await start_tcp_echo()
        async with server:
            serve, forward, port = await asyncio.to_thread(start_tunnel, cli, echo_port)

            async def one(i: int) -> bool:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                data = os.urandom(50_000 + i)
                writer.write(data)
                await writer.drain()
                writer.write_eof()  # the tunnel keeps the answer coming (--linger)
                # The echo target closes only at its EOF, which only forward's
                # --linger close brings: an early end, so the client is reset
                # after the answer (test_a_reset_travels_through_the_tunnel_both_ways).
                echoed = await reader.readexactly(len(data))
                writer.close()
                return echoed == data

            results = await asyncio.gather(*(one(i) for i in range(count)))
            assert all(results)
            assert len(accepted) == count
            for proc in (serve, forward):
                await asyncio.to_thread(proc.wait_for, CLEAN_END, 20, count)

    run(main(), timeout=60)


class _Handler(http.server.BaseHTTPRequestHandler):
    blob = os.urandom(3 * 2**20)

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.blob)))
        self.end_headers()
        self.wfile.write(self.blob)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        digest = hashlib.sha256(body).hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(digest)))
        self.end_headers()
        self.wfile.write(digest)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_http_through_forward_and_serve(cli: Start, http_port: int) -> None:
    serve, forward, port = start_tunnel(cli, http_port)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    base = f"http://127.0.0.1:{port}"
    for _ in range(3):
        with opener.open(f"{base}/blob", timeout=20) as response:
            assert response.status == 200
            assert response.read() == _Handler.blob
    body = os.urandom(2**20)
    with opener.open(urllib.request.Request(f"{base}/upload", data=body), timeout=20) as response:
        assert response.read() == hashlib.sha256(body).hexdigest().encode()
    # Each request: the target's close ended the WebSocket with 1000, without waiting.
    serve.wait_for("close_sent=1000 close_received=1000", count=4)
    assert "Traceback" not in serve.stderr + forward.stderr


def test_a_reset_travels_through_the_tunnel_both_ways(cli: Start) -> None:
    """A TCP reset at one end is a reset at the other end, never a clean EOF."""

    async def main() -> None:
        arrivals: asyncio.Queue[bytes] = asyncio.Queue()
        endings: asyncio.Queue[str] = asyncio.Queue()

        async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                first = await reader.read(100)
                if first == b"reset me":
                    _reset(writer)
                    return
                await arrivals.put(first)
                while await reader.read(65536):
                    pass
                await endings.put("eof")
            except ConnectionResetError:
                await endings.put("reset")
            writer.close()

        server = await asyncio.start_server(target, "127.0.0.1", 0)
        async with server:
            _, _, port = await asyncio.to_thread(
                start_tunnel, cli, server.sockets[0].getsockname()[1]
            )
            # The target resets: the client is reset.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"reset me")
            with pytest.raises(ConnectionResetError):
                async with asyncio.timeout(10):
                    await reader.read()
            writer.close()
            # The client resets: the target is reset.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hello")
            await writer.drain()
            assert await asyncio.wait_for(arrivals.get(), 10) == b"hello"  # through
            _reset(writer)
            async with asyncio.timeout(10):
                assert await endings.get() == "reset"
            # A half-close is an EOF at the target at once (forward's EOF
            # marker; serve half-closes the target); the target's own close then
            # ends the tunnel cleanly: the client gets EOF, not a reset.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"bye")
            writer.write_eof()
            async with asyncio.timeout(10):
                assert await endings.get() == "eof"
                assert await reader.read() == b""
            writer.close()

    run(main())


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def test_forward_resets_its_client_when_the_websocket_cannot_open(cli: Start) -> None:
    forward = cli("forward", "--listen", "127.0.0.1:0", f"ws://127.0.0.1:{refused_port()}/")
    port = forward.port()
    for _ in range(2):  # and it keeps serving
        # The reset may come so fast that connect() itself reports it (on loopback,
        # the RST can beat the check of the connection's state): either counts.
        with (
            pytest.raises(ConnectionResetError),
            socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        ):
            sock.recv(1)
        forward.wait_for("cannot open ws://127.0.0.1:")
    assert "Traceback" not in forward.stderr


def test_forward_sends_on_connect_on_every_connection(cli: Start) -> None:
    port = cli("serve", "--port", "0").port()
    forward = cli(
        "forward",
        "--listen",
        "0",  # a bare port: 127.0.0.1
        "--send-on-connect",
        r"HELLO\r\n\x00",
        f"ws://127.0.0.1:{port}/",
    )
    forward_port = forward.port()
    assert forward.lines[0].startswith("ws-stream forward: listening on 127.0.0.1:")
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", forward_port), timeout=10) as sock:
            sock.sendall(b"data")
            received = b""
            while len(received) < 11:
                received += sock.recv(100)
            assert received == b"HELLO\r\n\x00data"


def test_sigterm_closes_forward_tunnels_with_1001_and_exits_0(cli: Start) -> None:
    async def main() -> None:
        accepted: asyncio.Queue[ws_stream.WsStream] = asyncio.Queue()
        done = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accepted.put(writer.get_extra_info("ws_stream"))
            await done.wait()

        server = await ws_stream.start_server(handle, "127.0.0.1", 0)
        async with server:
            uri = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
            forward = cli("forward", "--listen", "127.0.0.1:0", "--close-timeout", "3", uri)
            port = await asyncio.to_thread(forward.port)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"x")
            stream = await asyncio.wait_for(accepted.get(), 10)
            events = stream.events()
            assert await stream.reader.readexactly(1) == b"x"
            forward.signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                assert await stream.reader.read() == b""
                seen = [event async for event in events]
                assert await reader.read() == b""  # the local client gets EOF
            writer.close()
            assert CloseReceived(1001, "going away") in seen
            assert seen[-1] == Closed(1001, "going away", True)
            assert await asyncio.to_thread(forward.wait, 10) == 0
            done.set()

    run(main())


def test_forward_reconnect_waits_for_a_server_that_comes_up_late(cli: Start) -> None:
    """--reconnect: the client's WebSocket is retried with the preset's backoff."""
    port = reserved_port()
    forward = cli(
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--reconnect",
        "low-latency",
        "--reconnect-attempts",
        "50",
        f"ws://127.0.0.1:{port}/",
    )
    forward_port = forward.port()
    with socket.create_connection(("127.0.0.1", forward_port), timeout=20) as sock:
        sock.sendall(b"early bytes")  # held while the WebSocket cannot open yet
        forward.wait_for("retrying in")
        serve = cli("serve", "--port", str(port))  # the echo server comes up now
        serve.port()
        received = b""
        while len(received) < 11:
            received += sock.recv(100)
        assert received == b"early bytes"
    assert "Traceback" not in forward.stderr


def test_forward_reconnect_gives_up_after_the_attempts(cli: Start) -> None:
    forward = cli(
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--reconnect",
        "low-latency",
        "--reconnect-attempts",
        "2",
        f"ws://127.0.0.1:{refused_port()}/",
    )
    with (
        pytest.raises(ConnectionResetError),  # at connect() or after: see above
        socket.create_connection(("127.0.0.1", forward.port()), timeout=20) as sock,
    ):
        sock.recv(1)
    forward.wait_for("giving up")
