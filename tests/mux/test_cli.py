"""``ws-stream serve --mux``, ``forward --mux`` and ``forward --reverse``: real subprocesses.

Every address is on 127.0.0.1 (127.0.0.2 once, as an address the server must
not be asked to listen on), every port is random, every wait is bounded and
every subprocess is killed at the end (the ``cli`` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import random
import re
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from tests.cli.conftest import cli
from tests.cli.helpers import Cli, run, start_tcp_echo
from tests.ports import free_port, reserved_port

# The `cli` fixture of tests/cli (every ws-stream subprocess killed at the end).
__all__ = ["cli"]

Start = Callable[..., Cli]

#: serve -v: one line per WebSocket carrying a yamux session.
MUX_CONNECTED = r"connected \(subprotocol yamux\)"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def exchange(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    """Send ``data``, half-close, and read the answer to EOF."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        writer.write_eof()
        return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def refuses(host: str, port: int) -> bool:
    """Whether a TCP connection to ``host:port`` is refused (nothing listens)."""
    with socket.socket() as sock:
        sock.settimeout(5)
        try:
            sock.connect((host, port))
        except ConnectionRefusedError:
            return True
        return False


def serve_mux(cli: Start, *args: str) -> tuple[Cli, str]:
    """``serve --port 0 --mux -v ARGS``: the process and its ws:// URI."""
    serve = cli("serve", "--port", "0", "--mux", "-v", *args)
    return serve, f"ws://127.0.0.1:{serve.port()}/"


def forward_mux(cli: Start, uri: str, *args: str) -> tuple[Cli, int]:
    """``forward --listen 127.0.0.1:0 --mux ARGS URI``: the process and its port."""
    forward = cli("forward", "--listen", "127.0.0.1:0", "--mux", *args, uri)
    return forward, forward.port()


# forward --mux


def test_200_concurrent_clients_share_one_websocket(cli: Start) -> None:
    count = 200
    rng = random.Random(20240611)
    sizes = [0, 256 * 1024] + [rng.randrange(256 * 1024 + 1) for _ in range(count - 2)]

    async def main() -> Cli:
        server, echo_port, accepted = await start_tcp_echo()
        async with server:
            serve, uri = await asyncio.to_thread(serve_mux, cli, "--to", f"127.0.0.1:{echo_port}")
            forward, port = await asyncio.to_thread(forward_mux, cli, uri)

            async def one(size: int) -> tuple[str, str]:
                data = os.urandom(size)
                return digest(data), digest(await exchange(port, data))

            results = await asyncio.gather(*(one(size) for size in sizes))
            wrong = [i for i, (sent, echoed) in enumerate(results) if sent != echoed]
            assert not wrong, f"{len(wrong)} of {count} echoes differ: clients {wrong[:10]}"
            assert len(accepted) == count
            serve.signal(signal.SIGTERM)
            assert await asyncio.to_thread(serve.wait, 15) == 0
        return serve

    serve = run(main(), 60)
    connected = [line for line in serve.lines if "connected (subprotocol" in line]
    assert len(connected) == 1 and "yamux" in connected[0], serve.stderr
    closed = [line for line in serve.lines if "connection closed:" in line]
    assert len(closed) == 1, serve.stderr
    # Every byte crossed that one WebSocket (plus yamux's frame headers).
    received = re.search(r" received=(\d+)", closed[0])
    assert received and sum(sizes) <= int(received.group(1)) < sum(sizes) + 2**20, closed[0]


def test_reconnect_fast_opens_a_new_session_after_the_server_died(cli: Start) -> None:
    async def main() -> None:
        serve, uri = serve_mux(cli)  # echo
        serve_port = int(uri.rsplit(":", 1)[1].rstrip("/"))
        forward, port = forward_mux(cli, uri, "--reconnect", "fast")

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"before the crash")
        assert await reader.readexactly(16) == b"before the crash"
        serve.signal(signal.SIGKILL)
        # A stream open at the drop is reset: never a clean EOF that looks complete.
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 15)
        writer.close()
        assert await asyncio.to_thread(serve.wait, 10) == -signal.SIGKILL

        again = cli("serve", "--port", str(serve_port), "--mux", "-v")
        assert again.port() == serve_port
        data = os.urandom(300_000)
        assert digest(await exchange(port, data)) == digest(data)
        await asyncio.to_thread(again.wait_for, MUX_CONNECTED)
        await asyncio.to_thread(forward.wait_for, "mux session open to", 10, 2)
        assert len([line for line in again.lines if "connected (subprotocol" in line]) == 1

    run(main(), 45)


def test_a_half_closed_tunnel_is_reset_when_the_session_dies(cli: Start) -> None:
    """The target sent its answer and ended its side (FIN); the local client read it
    and keeps its own side open. When the server dies, the client's connection is
    reset at once (it was left open for good), and forward stops promptly."""

    async def main() -> None:
        async def banner_then_fin(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            writer.write(b"hello")
            writer.write_eof()  # ends its side, still reads
            with contextlib.suppress(ConnectionError):
                await reader.read()
            writer.close()

        target = await asyncio.start_server(banner_then_fin, "127.0.0.1", 0)
        async with target:
            target_port = target.sockets[0].getsockname()[1]
            serve, uri = serve_mux(cli, "--to", f"127.0.0.1:{target_port}")
            forward, port = forward_mux(cli, uri, "--reconnect", "fast")
            client = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port), 10)
            with client:  # (blocking calls in threads: the target runs in this loop)
                assert await asyncio.to_thread(client.recv, 10) == b"hello"
                assert await asyncio.to_thread(client.recv, 10) == b""  # EOF
                serve.signal(signal.SIGKILL)
                assert await asyncio.to_thread(serve.wait, 10) == -signal.SIGKILL

                def reset_within(seconds: float) -> bool:
                    """Whether the connection (its EOF already read) is reset in time;
                    the client writes nothing, so nothing else provokes it. Linux
                    reports a reset after the peer's FIN as a pending EPIPE."""
                    for _ in range(int(seconds / 0.05)):
                        error = client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if error in (errno.ECONNRESET, errno.EPIPE):
                            return True
                        time.sleep(0.05)
                    return False

                assert await asyncio.to_thread(reset_within, 5)
            forward.signal(signal.SIGTERM)
            assert await asyncio.to_thread(forward.wait, 5) == 0
            assert "Exception in callback" not in forward.stderr

    run(main(), 45)


def test_the_log_of_a_failed_stream_counts_the_bytes_it_carried(cli: Start) -> None:
    """The target sends 500 000 bytes, then resets: the client gets them, then the
    reset, and both processes' lines for the stream count them (they said 0)."""
    size = 500_000

    async def main() -> None:
        async def send_then_reset(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"x" * size)
            await writer.drain()
            await asyncio.sleep(0.5)  # they left
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

        target = await asyncio.start_server(send_then_reset, "127.0.0.1", 0)
        async with target:
            target_port = target.sockets[0].getsockname()[1]
            serve, uri = serve_mux(cli, "--to", f"127.0.0.1:{target_port}")
            forward, port = forward_mux(cli, uri)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert len(await asyncio.wait_for(reader.readexactly(size), 10)) == size
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), 10)
            writer.close()
            served = (await asyncio.to_thread(serve.wait_for, "stream closed:", 10)).string
            forwarded = (await asyncio.to_thread(forward.wait_for, "stream=", 10)).string
        assert f"received={size}" in served, served
        assert f"sent={size}" in forwarded, forwarded

    run(main(), 45)


def test_unreachable_target_resets_the_stream_not_the_session(cli: Start) -> None:
    target_port = reserved_port()  # refused first, then the test listens on it

    async def main() -> None:
        serve, uri = serve_mux(cli, "--to", f"127.0.0.1:{target_port}")
        forward, port = forward_mux(cli, uri)
        # The server resets the stream it cannot bridge; forward resets its client
        # (a ConnectionResetError, never an empty answer that looks complete).
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(exchange(port, b"anyone there?"), 15)
        await asyncio.to_thread(serve.wait_for, rf"cannot connect to 127\.0\.0\.1:{target_port}")

        # The session lives on: once the target listens, the next client gets through.
        accepted: list[int] = []
        target = await asyncio.start_server(
            lambda r, w: _echo_once(r, w, accepted), "127.0.0.1", target_port
        )
        async with target:
            data = os.urandom(100_000)
            assert digest(await asyncio.wait_for(exchange(port, data), 15)) == digest(data)
        assert len(accepted) == 1
        assert len([line for line in serve.lines if "connected (subprotocol" in line]) == 1

    run(main(), 45)


async def _echo_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, accepted: list[int]
) -> None:
    accepted.append(1)
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    finally:
        writer.close()


def test_forward_mux_to_a_server_without_mux_says_serve_mux(cli: Start) -> None:
    async def main() -> None:
        serve = cli("serve", "--port", "0", "-v")
        forward, port = forward_mux(cli, f"ws://127.0.0.1:{serve.port()}/")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(exchange(port, b"hello"), 15)
        await asyncio.to_thread(forward.wait_for, r"cannot open a stream")
        assert "serve --mux" in forward.stderr, forward.stderr

    run(main(), 30)


# forward --reverse


def test_reverse_tunnel_end_to_end(cli: Start) -> None:
    remote = reserved_port()
    size = 1024 * 1024

    async def main() -> None:
        server, echo_port, accepted = await start_tcp_echo()
        async with server:
            serve, uri = serve_mux(cli, "--allow-reverse", f"127.0.0.1:{remote}-{remote}")
            forward = cli("forward", "--reverse", f"127.0.0.1:{remote}:127.0.0.1:{echo_port}", uri)
            await asyncio.to_thread(serve.wait_for, rf"reverse=127\.0\.0\.1:{remote} listening")

            async def one() -> tuple[str, str]:
                data = os.urandom(size)
                echoed = await exchange(remote, data)
                assert len(echoed) == size
                return digest(data), digest(echoed)

            results = await asyncio.gather(*(one() for _ in range(6)))
            assert all(sent == echoed for sent, echoed in results)
            assert len(accepted) == 6
            assert len([line for line in serve.lines if "connected (subprotocol" in line]) == 1

            # The server listens there only while the tunnel's session lives.
            forward.signal(signal.SIGTERM)
            assert await asyncio.to_thread(forward.wait, 15) == 0
            await asyncio.to_thread(serve.wait_for, "connection closed:")
            assert refuses("127.0.0.1", remote)

    run(main(), 45)


@pytest.mark.parametrize(
    "case", ["outside the range", "another IP", "no --allow-reverse", "no --mux"]
)
def test_reverse_tunnel_refused(cli: Start, case: str) -> None:
    allowed, other = reserved_port(), reserved_port()
    host, port = "127.0.0.1", allowed
    serve_args = ["--mux", "--allow-reverse", f"127.0.0.1:{allowed}-{allowed}"]
    status, reason = 403, "is not allowed"
    if case == "outside the range":
        port = other
    elif case == "another IP":
        host = "127.0.0.2"
    elif case == "no --allow-reverse":
        serve_args = ["--mux"]
        reason = "allows no reverse tunnels"
    else:
        serve_args = []
        status, reason = 400, ""
    serve = cli("serve", "--port", "0", "-v", *serve_args)
    uri = f"ws://127.0.0.1:{serve.port()}/"
    forward = cli("forward", "--reverse", f"{host}:{port}:127.0.0.1:{free_port()}", uri)
    assert forward.wait(20) == 1
    assert f"reverse tunnel {host}:{port}" in forward.stderr, forward.stderr
    assert f"refused the WebSocket handshake with HTTP {status}" in forward.stderr, forward.stderr
    serve.wait_for(rf"refused: .*status={status}.*{reason}", 5)
    assert refuses(host, port)


def test_a_reverse_port_already_taken_ends_the_tunnel_with_the_servers_reason(
    cli: Start,
) -> None:
    """A second forwarder asks for a reverse port the first one holds: the server
    cannot listen there, and says so with close 1011 and its reason (it closed with
    1000, so the forwarder could only say "the connection under the session closed")."""
    remote = reserved_port()
    serve, uri = serve_mux(cli, "--allow-reverse", f"127.0.0.1:{remote}-{remote}")
    first = cli("forward", "--reverse", f"127.0.0.1:{remote}:127.0.0.1:{free_port()}", uri)
    serve.wait_for(rf"reverse=127\.0\.0\.1:{remote} listening")
    second = cli("forward", "--reverse", f"127.0.0.1:{remote}:127.0.0.1:{free_port()}", uri)
    assert second.wait(20) == 1
    assert "cannot listen on" in second.stderr, second.stderr
    serve.wait_for(r"close_sent=1011", 5)
    first.signal(signal.SIGTERM)
    assert first.wait(15) == 0


@pytest.mark.parametrize("preset", ["fast", "stable"])
def test_sigterm_while_a_reverse_tunnel_dials_an_unreachable_server(
    cli: Start, preset: str
) -> None:
    """Shutdown while the dialer retries: exit 0 at once (it waited the close
    timeout and more, or exited 1 with the dial's error)."""
    nothing_there = free_port()
    forward = cli(
        "forward",
        "--reverse",
        f"127.0.0.1:{reserved_port()}:127.0.0.1:{free_port()}",
        "--reconnect",
        preset,
        f"ws://127.0.0.1:{nothing_there}/",
    )
    forward.wait_for("retrying", 10)
    started = time.monotonic()
    forward.signal(signal.SIGTERM)
    assert forward.wait(10) == 0, forward.stderr
    assert time.monotonic() - started < 3, forward.stderr


def test_reverse_tunnel_to_a_name_is_refused(cli: Start) -> None:
    port = reserved_port()
    serve, uri = serve_mux(cli, "--allow-reverse", f"127.0.0.1:{port}")
    # forward takes an IP address only ...
    forward = cli("forward", "--reverse", f"localhost:{port}:127.0.0.1:{free_port()}", uri)
    assert forward.wait(20) == 2
    assert "expected REMOTE_IP:PORT" in forward.stderr, forward.stderr

    # ... and serve, asked directly, resolves no name either.
    async def ask() -> int:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                uri,
                subprotocols=[Subprotocol("yamux")],
                additional_headers={"X-WS-Stream-Reverse": f"localhost:{port}"},
                proxy=None,
                open_timeout=10,
            ):
                pass
        return refused.value.response.status_code

    assert run(ask(), 20) == 400
    serve.wait_for(r"refused: .*status=400.*must be IP:PORT", 5)
    assert refuses("127.0.0.1", port)


def test_reverse_tunnel_needs_the_bearer_token(cli: Start, tmp_path: Path) -> None:
    remote = reserved_port()
    token = "s3cret-reverse-token"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{token} alice\n")

    async def main() -> None:
        server, echo_port, _ = await start_tcp_echo()
        async with server:
            serve, uri = serve_mux(
                cli, "--allow-reverse", f"127.0.0.1:{remote}", "--bearer-file", str(tokens)
            )
            reverse = f"127.0.0.1:{remote}:127.0.0.1:{echo_port}"
            without = cli("forward", "--reverse", reverse, uri)
            assert await asyncio.to_thread(without.wait, 20) == 1
            assert "HTTP 401" in without.stderr, without.stderr
            await asyncio.to_thread(serve.wait_for, r"refused: .*status=401")
            assert refuses("127.0.0.1", remote)

            cli("forward", "--reverse", reverse, "--bearer", token, uri)
            await asyncio.to_thread(serve.wait_for, rf"reverse=127\.0\.0\.1:{remote} listening")
            data = os.urandom(200_000)
            assert digest(await asyncio.wait_for(exchange(remote, data), 15)) == digest(data)
            assert token not in serve.stderr

    run(main(), 40)


@pytest.mark.parametrize("port", ["\u00b2", "+9000", "9_000", "9000 0"])
def test_a_reverse_request_with_a_port_not_in_ascii_digits_is_refused(port: str) -> None:
    """The header a forwarder sends: only ASCII digits make a port (a superscript
    two, a Latin-1 character, raised ValueError in the handshake)."""
    from websockets.datastructures import Headers

    from ws_stream.cli.gateway.reverse import (
        REVERSE_HEADER,
        NotAllowed,
        parse_allowed,
        reverse_request,
    )

    allowed = (parse_allowed("127.0.0.1:9000-9100"),)
    result = reverse_request(Headers({REVERSE_HEADER: f"127.0.0.1:{port}"}), allowed, mux=True)
    assert isinstance(result, NotAllowed) and result.status == 400, result
