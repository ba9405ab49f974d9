"""Nothing lost, in every shell: what issue 12 asks of the ``ws-stream`` command.

A slow consumer is not a silent server (``--linger``, ``--idle-timeout``); a
tunnel that ends before the server's close never looks complete; stdio errors
are errors and closed stdio descriptors are /dev/null; SIGHUP ends every
sub-command like SIGTERM; a reset after the end is a normal end; a missing
certificate file is named. Real subprocesses, real TCP targets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

import ws_stream
from ws_stream.events import Closed, CloseReceived

from ..rawpeer import BINARY, CLOSE, PING, close_payload, connect_raw
from .helpers import (
    LISTENING,
    ROOT,
    Cli,
    cli_env,
    command,
    run,
    run_cli,
    shell_command,
    start_tcp_source,
)

Start = Callable[..., Cli]

BLOB = random.Random(12).randbytes(20 * 2**20)
DIGEST = hashlib.sha256(BLOB).hexdigest()
MIB = BLOB[: 2**20]


def start_bridge(cli: Start, target_port: int, *serve_args: str) -> tuple[Cli, str]:
    """``serve --to 127.0.0.1:target_port``; returns it and its URI."""
    serve = cli("serve", "--port", "0", "--to", f"127.0.0.1:{target_port}", *serve_args)
    return serve, f"ws://127.0.0.1:{serve.port()}/"


def recv_all(sock: socket.socket) -> bytes:
    """Everything until EOF; a reset raises ConnectionResetError."""
    chunks = []
    while chunk := sock.recv(2**20):
        chunks.append(chunk)
    return b"".join(chunks)


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0) instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def reset_writer(writer: asyncio.StreamWriter) -> None:
    writer.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    writer.transport.abort()


async def read_stdout(cat: Cli) -> bytes:
    assert cat.proc.stdout is not None
    return await asyncio.to_thread(cat.proc.stdout.read)


# Item 2: a slow consumer is not a silent server.


def test_cat_gives_a_consumer_that_pauses_every_byte(cli: Start) -> None:
    """`ws-stream cat URI </dev/null | (sleep 4; cat)`: 20 MiB, checksum, exit 0."""

    async def main() -> None:
        server, port, _ = await start_tcp_source(BLOB)
        async with server:
            _, uri = await asyncio.to_thread(start_bridge, cli, port)
            cat = cli("cat", uri, stdout=subprocess.PIPE)  # stdin: /dev/null, linger 2 s
            await asyncio.sleep(4)
            out = await read_stdout(cat)
            status = await asyncio.to_thread(cat.wait, 30)
        assert (len(out), hashlib.sha256(out).hexdigest()) == (len(BLOB), DIGEST), cat.stderr
        assert status == 0, cat.stderr
        assert cat.stderr == ""

    run(main())


def test_forward_gives_a_half_closed_client_that_pauses_every_byte(cli: Start) -> None:
    async def main() -> None:
        server, port, _ = await start_tcp_source(BLOB)
        async with server:
            serve, uri = await asyncio.to_thread(start_bridge, cli, port)
            forward = cli("forward", "--listen", "127.0.0.1:0", uri)
            forward_port = await asyncio.to_thread(forward.port)

            def client() -> bytes:
                with socket.create_connection(("127.0.0.1", forward_port), timeout=30) as sock:
                    sock.shutdown(socket.SHUT_WR)
                    time.sleep(4)
                    return recv_all(sock)  # a reset fails the test

            out = await asyncio.to_thread(client)
            assert (len(out), hashlib.sha256(out).hexdigest()) == (len(BLOB), DIGEST)
            await asyncio.to_thread(forward.wait_for, "closed after")
        assert "warning" not in serve.stderr + forward.stderr

    run(main())


def test_idle_timeout_is_not_a_consumer_that_pauses(cli: Start) -> None:
    async def main() -> None:
        server, port, _ = await start_tcp_source(BLOB)
        async with server:
            _, uri = await asyncio.to_thread(start_bridge, cli, port)
            # stdin stays open: only the idle timeout could end this early.
            # 2 s: generous against a loaded machine stalling a busy tunnel; the
            # consumer's pause is twice that.
            cat = cli(
                "cat", "--idle-timeout", "2", uri, stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            await asyncio.sleep(4)
            out = await read_stdout(cat)
            status = await asyncio.to_thread(cat.wait, 30)
            assert cat.proc.stdin is not None
            cat.proc.stdin.close()
        assert (len(out), hashlib.sha256(out).hexdigest()) == (len(BLOB), DIGEST), cat.stderr
        assert status == 0, cat.stderr

    run(main())


def test_a_silent_server_ends_cat_early_and_cat_says_so(cli: Start) -> None:
    """The server really sends nothing for longer than --linger / --idle-timeout."""

    async def main() -> None:
        server, port, _ = await start_tcp_source(MIB, then="silent")
        async with server:
            _, uri = await asyncio.to_thread(start_bridge, cli, port)
            cat = cli("cat", "--linger", "0.5", uri, stdout=subprocess.PIPE)
            out = await read_stdout(cat)
            assert await asyncio.to_thread(cat.wait, 20) == 1
            assert out == MIB  # everything that came, then the error
            assert "error: " in cat.stderr and "--linger" in cat.stderr, cat.stderr

            cat = cli(
                "cat", "--idle-timeout", "0.5", uri, stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            out = await read_stdout(cat)
            assert await asyncio.to_thread(cat.wait, 20) == 1
            assert cat.proc.stdin is not None
            cat.proc.stdin.close()
            assert out == MIB
            assert "error: " in cat.stderr and "--idle-timeout" in cat.stderr, cat.stderr

    run(main())


def test_a_silent_server_ends_forward_early_with_a_reset(cli: Start) -> None:
    async def main() -> None:
        server, port, _ = await start_tcp_source(MIB, then="silent")
        async with server:
            _, uri = await asyncio.to_thread(start_bridge, cli, port)
            forward = cli("forward", "--listen", "127.0.0.1:0", "--linger", "0.5", uri)
            forward_port = await asyncio.to_thread(forward.port)

            def client() -> bytes:
                received = b""
                with socket.create_connection(("127.0.0.1", forward_port), timeout=20) as sock:
                    sock.shutdown(socket.SHUT_WR)
                    with pytest.raises(ConnectionResetError):
                        while chunk := sock.recv(2**20):
                            received += chunk
                return received

            received = await asyncio.to_thread(client)
            assert MIB.startswith(received)
            await asyncio.to_thread(forward.wait_for, "warning: .*--linger")

    run(main())


# Item 9: stdio errors, closed descriptors.


async def run_shell(args: list[str]) -> tuple[int, bytes, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        cwd=ROOT,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, stdout, stderr.decode()


def test_cat_to_a_full_disk_exits_1_with_the_os_error(cli: Start) -> None:
    async def main() -> None:
        server, port, _ = await start_tcp_source(MIB)
        async with server:
            _, uri = await asyncio.to_thread(start_bridge, cli, port)
            status, _, err = await run_shell(
                shell_command("cat", uri, redirect="</dev/null >/dev/full")
            )
        assert status == 1, err
        assert "No space left on device" in err
        assert "Traceback" not in err

    run(main())


@asynccontextmanager
async def recording_server() -> AsyncIterator[tuple[str, list[tuple[bytes, list[object]]]]]:
    """A ws_stream server that says hello, then records what it received and its events."""
    sessions: list[tuple[bytes, list[object]]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        events = writer.get_extra_info("ws_stream").events()
        writer.write(b"hello")
        received = await reader.read()
        sessions.append((received, [event async for event in events]))

    server = await ws_stream.start_server(handle, "127.0.0.1", 0, ping_interval=None)
    async with server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", sessions


def test_a_closed_stdin_is_like_dev_null() -> None:
    async def main() -> None:
        async with recording_server() as (uri, sessions):
            results = []
            for redirect in ("</dev/null", "<&-"):
                status, out, err = await run_shell(
                    shell_command("cat", "--linger", "0", uri, redirect=redirect)
                )
                results.append((status, err))
            for _ in range(100):
                if len(sessions) == 2:
                    break
                await asyncio.sleep(0.05)
        assert results == [(0, ""), (0, "")]
        for received, events in sessions:
            assert received == b""
            assert CloseReceived(1000, "") in events
            assert events[-1] == Closed(1000, "", True)

    run(main())


def test_a_closed_stdout_is_like_dev_null() -> None:
    async def main() -> None:
        async with recording_server() as (uri, sessions):
            status, _, err = await run_shell(
                shell_command("cat", "--linger", "0", uri, redirect="</dev/null >&-")
            )
        assert (status, err) == (0, "")

    run(main())


# Item 10: SIGHUP ends every sub-command like SIGTERM.


def test_sighup_closes_serve_with_1001_and_exits_0(cli: Start) -> None:
    serve = cli("serve", "--port", "0", "--close-timeout", "3")
    port = serve.port()

    async def main() -> None:
        stream = await ws_stream.connect_stream(f"ws://127.0.0.1:{port}/")
        events = stream.events()
        stream.writer.write(b"x")
        assert await stream.reader.readexactly(1) == b"x"
        serve.signal(signal.SIGHUP)
        async with asyncio.timeout(10):
            assert await stream.reader.read() == b""
            seen = [event async for event in events]
        assert seen[-1] == Closed(1001, "going away", True)

    run(main())
    assert serve.wait(10) == 0
    assert "close_sent=1001 close_received=1001" in serve.stderr


async def _one_session_server() -> tuple[
    ws_stream.Server, str, asyncio.Queue[ws_stream.WsStream], asyncio.Event
]:
    accepted: asyncio.Queue[ws_stream.WsStream] = asyncio.Queue()
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(writer.get_extra_info("ws_stream"))
        await done.wait()

    server = await ws_stream.start_server(handle, "127.0.0.1", 0, ping_interval=None)
    return server, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", accepted, done


@pytest.mark.parametrize("command", ["forward", "cat"])
def test_sighup_closes_the_clients_with_1001_and_exits_0(cli: Start, command: str) -> None:
    async def main() -> None:
        server, uri, accepted, done = await _one_session_server()
        async with server:
            if command == "cat":
                proc = cli("cat", "--close-timeout", "3", uri, stdin=subprocess.PIPE)
            else:
                proc = cli("forward", "--listen", "127.0.0.1:0", "--close-timeout", "3", uri)
                port = await asyncio.to_thread(proc.port)
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            stream = await asyncio.wait_for(accepted.get(), 10)
            events = stream.events()
            proc.signal(signal.SIGHUP)
            async with asyncio.timeout(10):
                assert await stream.reader.read() == b""
                seen = [event async for event in events]
            assert seen[-1] == Closed(1001, "going away", True)
            assert await asyncio.to_thread(proc.wait, 10) == 0
            if command == "cat":
                assert proc.proc.stdin is not None
                proc.proc.stdin.close()
            else:
                writer.close()
            done.set()

    run(main())


# Item 12: a reset after the end is a normal end; in the middle of data, an error.


def test_the_postgresql_ending_is_a_normal_end_on_both_sides(cli: Start) -> None:
    """psql with sslmode=require through forward -> serve --to, as the sockets see it.

    The client sends its Terminate and its TLS close_notify and closes at once;
    the server reads the Terminate, sends its own close_notify and closes with
    the client's close_notify unread, so its kernel sends a RST. Healthy: no
    warning and close 1000 on both sides (forward's EOF marker half-closes the
    target, so the target's reset comes after the client's direction ended).
    """

    def target_run(listener: socket.socket, seen: list[str]) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            assert conn.recv(1) == b"Q"
            conn.sendall(b"A")
            assert conn.recv(1) == b"X"  # Terminate
            time.sleep(0.3)  # the client's close_notify arrives meanwhile, unread
            conn.sendall(b"server close_notify")
            seen.append("closing")
        # closed with unread data: the kernel sends a RST

    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []
    thread = threading.Thread(target=target_run, args=(listener, seen), daemon=True)
    thread.start()
    serve, uri = start_bridge(cli, listener.getsockname()[1])
    forward = cli("forward", "--listen", "127.0.0.1:0", uri)
    client = socket.create_connection(("127.0.0.1", forward.port()), timeout=10)
    client.sendall(b"Q")
    assert client.recv(1) == b"A"
    client.sendall(b"X" + b"client close_notify")
    client.close()  # psql closes right after its close_notify
    forward_line = forward.wait_for("closed after")
    serve_line = serve.wait_for("connection closed:")
    thread.join(10)
    listener.close()
    assert seen == ["closing"]
    assert "warning" not in forward.stderr + serve.stderr, forward.stderr + serve.stderr
    assert "close_sent=1000" in serve_line.string, serve.stderr
    assert "received 1000" in forward_line.string, forward.stderr


def test_a_client_reset_while_the_server_still_sends_is_1011(cli: Start) -> None:
    """The client half-closes, reads part of the answer and resets: the rest is lost."""

    async def main() -> None:
        client_gone = asyncio.Event()
        endings: list[str] = []

        async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                assert await reader.readexactly(7) == b"request"
                writer.write(b"answer")
                await client_gone.wait()
                # Keep sending (bounded): the tunnel must reset this connection,
                # not end it cleanly, since what it sends is lost.
                deadline = asyncio.get_running_loop().time() + 8
                while asyncio.get_running_loop().time() < deadline:
                    writer.write(b"z" * 65536)
                    await writer.drain()
                    await asyncio.sleep(0.005)
                endings.append("still open")
            except ConnectionError:
                endings.append("reset")
            writer.close()

        server = await asyncio.start_server(target, "127.0.0.1", 0)
        async with server:
            serve, uri = await asyncio.to_thread(
                start_bridge, cli, server.sockets[0].getsockname()[1]
            )
            forward = cli("forward", "--listen", "127.0.0.1:0", uri)
            port = await asyncio.to_thread(forward.port)

            def client() -> None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.sendall(b"request")
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(6, socket.MSG_WAITALL) == b"answer"
                reset(sock)

            await asyncio.to_thread(client)
            client_gone.set()
            line = await asyncio.to_thread(forward.wait_for, "closed after")
            await asyncio.to_thread(serve.wait_for, "connection closed:")
            for _ in range(200):
                if endings:
                    break
                await asyncio.sleep(0.05)
        assert "close code sent 1011" in line.string, forward.stderr
        assert "warning" in serve.stderr and "the peer closed with 1011" in serve.stderr
        assert "while the server was still sending" in forward.stderr
        assert endings == ["reset"], (endings, serve.stderr)

    run(main())


def test_a_half_close_through_forward_reaches_the_target_as_eof(cli: Start) -> None:
    """An HTTP/1.0-style client: request, half-close, read to EOF; a clean end everywhere."""

    async def main() -> None:
        async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.read()  # until the client's EOF
            writer.write(b"got " + request)
            writer.close()

        server = await asyncio.start_server(target, "127.0.0.1", 0)
        async with server:
            serve, uri = await asyncio.to_thread(
                start_bridge, cli, server.sockets[0].getsockname()[1]
            )
            forward = cli("forward", "--listen", "127.0.0.1:0", "--linger", "inf", uri)
            port = await asyncio.to_thread(forward.port)

            def client() -> bytes:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.sendall(b"request")
                sock.shutdown(socket.SHUT_WR)
                return recv_all(sock)

            assert await asyncio.to_thread(client) == b"got request"
            line = await asyncio.to_thread(forward.wait_for, "closed after")
        assert "received 1000" in line.string, forward.stderr
        assert "warning" not in forward.stderr + serve.stderr

    run(main())


def test_a_target_reset_after_its_eof_is_a_normal_end_of_serve(cli: Start) -> None:
    """The target ends its side, then resets while the client's bytes still arrive."""

    async def main() -> None:
        async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"data" * 1000 + b"last bytes")
            writer.write_eof()
            await asyncio.sleep(0.3)  # not reading: the client's bytes pile up
            reset_writer(writer)

        server = await asyncio.start_server(target, "127.0.0.1", 0)
        async with server:
            serve, uri = await asyncio.to_thread(
                start_bridge, cli, server.sockets[0].getsockname()[1]
            )
            stream = await ws_stream.connect_stream(uri, ping_interval=None)
            events = stream.events()

            async def upload() -> None:
                chunk = b"u" * 2**16
                with pytest.raises(ConnectionError):
                    while True:
                        stream.writer.write(chunk)
                        await stream.writer.drain()

            uploading = asyncio.create_task(upload())
            async with asyncio.timeout(10):
                assert await stream.reader.read() == b"data" * 1000 + b"last bytes"
                seen = [event async for event in events]
            uploading.cancel()
            line = await asyncio.to_thread(serve.wait_for, "connection closed:")
        assert seen[-1] == Closed(1000, "", True)
        assert "warning" not in serve.stderr, serve.stderr
        assert "close_sent=1000" in line.string

    run(main())


def test_a_target_reset_after_the_clients_close_is_a_normal_end(cli: Start) -> None:
    async def main() -> None:
        async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert await reader.readexactly(7) == b"request"
            writer.write(b"answer")
            assert await reader.read() == b""  # the client closed
            writer.write(b"last bytes")
            await asyncio.sleep(0.05)
            reset_writer(writer)

        server = await asyncio.start_server(target, "127.0.0.1", 0)
        async with server:
            serve, uri = await asyncio.to_thread(
                start_bridge, cli, server.sockets[0].getsockname()[1]
            )
            stream = await ws_stream.connect_stream(uri, ping_interval=None)
            events = stream.events()
            stream.writer.write(b"request")
            assert await stream.reader.readexactly(6) == b"answer"
            await stream.close()
            seen = [event async for event in events]
            line = await asyncio.to_thread(serve.wait_for, "connection closed:")
        assert seen[-1] == Closed(1000, "", True)
        assert "warning" not in serve.stderr
        assert "close_sent=1000 close_received=1000" in line.string

    run(main())


def test_a_target_reset_in_the_middle_of_data_is_1011_and_a_warning(cli: Start) -> None:
    async def main() -> None:
        async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"data")
            await writer.drain()
            await asyncio.sleep(0.2)
            reset_writer(writer)

        server = await asyncio.start_server(target, "127.0.0.1", 0)
        async with server:
            serve, uri = await asyncio.to_thread(
                start_bridge, cli, server.sockets[0].getsockname()[1]
            )
            stream = await ws_stream.connect_stream(uri, ping_interval=None)
            events = stream.events()
            async with asyncio.timeout(10):
                assert await stream.reader.read() == b"data"
                seen = [event async for event in events]
            await asyncio.to_thread(serve.wait_for, "warning: connection closed:")
        assert CloseReceived(1011, "the target connection was reset") in seen
        assert "the target failed" in serve.stderr

    run(main())


# Item 14: errors that say what to do.


def test_a_missing_certificate_or_key_file_is_named(tmp_path: object) -> None:
    for args, named in (
        (["--cert", "/nonexistent/cert.pem", "--key", "/nonexistent/key.pem"], "cert.pem"),
        (["--cert", __file__, "--key", "/nonexistent/key.pem"], "/nonexistent/key.pem"),
    ):
        result = run_cli("serve", "--port", "0", *args)
        stderr = result.stderr.decode()
        assert result.returncode in (1, 2), stderr
        assert named in stderr, stderr
        assert "Traceback" not in stderr


def test_the_bench_says_more_or_less_correctly() -> None:
    from bench.bench_tunnel import _compare

    # ws-stream used twice the CPU of websockify: "2.00x more", never "0.50x less".
    assert _compare(ours=2.0, theirs=1.0) == "2.00x more"
    assert _compare(ours=1.0, theirs=2.0) == "2.00x less"
    assert _compare(ours=1.0, theirs=1.0) == "the same"
    assert _compare(ours=0.0, theirs=1.0) == "n/a (too short to time)"


def test_sighup_is_kept_ignored_under_nohup() -> None:
    """``nohup ws-stream serve`` must outlive its terminal: an ignored SIGHUP stays ignored."""
    nohup = shutil.which("nohup")
    assert nohup is not None, "coreutils' nohup is part of every Debian system"
    proc = subprocess.Popen(
        [nohup, *command("serve", "--port", "0")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline().decode()
        match = LISTENING.search(first)
        assert match, first
        port = int(match.group(1))
        proc.send_signal(signal.SIGHUP)

        async def echo_once() -> None:
            stream = await ws_stream.connect_stream(f"ws://127.0.0.1:{port}/")
            stream.writer.write(b"still here")
            assert await stream.reader.readexactly(10) == b"still here"
            await stream.close()

        time.sleep(0.5)  # a handled SIGHUP would be stopping the server by now
        assert proc.poll() is None, "serve stopped on SIGHUP although nohup ignored it"
        run(echo_once())
        assert proc.poll() is None
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


@pytest.mark.parametrize(
    "args",
    [
        ["cat", "ws://user:se/cr?et@127.0.0.1:notaport/"],
        ["cat", "http://user:se/cr?et@127.0.0.1:1/"],
        ["cat", "--proxy", "http://user:se/cr?et@127.0.0.1:notaport", "ws://127.0.0.1:1/"],
    ],
)
def test_bad_arguments_never_show_a_password(args: list[str]) -> None:
    result = run_cli(*args, timeout=30)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert "***@" in err, err
    assert "se/cr" not in err and "cr?et" not in err and "et@" not in err, err


def test_data_after_the_eof_marker_fails_the_tunnel_with_1002(cli: Start) -> None:
    """A broken client: bytes, the end-of-input marker, then more bytes."""

    async def main() -> None:
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await got.put(await reader.read())  # until the half-close
            await asyncio.sleep(5)  # stays open: only the violation ends the tunnel
            writer.close()

        server = await asyncio.start_server(target, "127.0.0.1", 0)
        async with server:
            serve, uri = await asyncio.to_thread(
                start_bridge, cli, server.sockets[0].getsockname()[1]
            )
            peer = await connect_raw(int(uri.rsplit(":", 1)[1].rstrip("/")))
            peer.send(BINARY, b"before")
            peer.send(PING, b"ws-stream:eof")
            assert await asyncio.wait_for(got.get(), 10) == b"before"  # then EOF
            peer.send(BINARY, b"after")
            code, _ = await peer.recv_close()
            peer.send(CLOSE, close_payload(code))  # the closing handshake
            await peer.writer.drain()
            peer.close_tcp()
            line = await asyncio.to_thread(serve.wait_for, "connection closed:")
        assert code == 1002
        assert "after its end-of-input marker" in line.string, serve.stderr

    run(main())
