"""Smoke tests: every asyncio example in examples/ runs as a real program.

Each example runs in a subprocess (``sys.executable examples/xxx.py ...``, from
the repository root, with the repository first on ``PYTHONPATH`` so that the
code under test is this checkout's). The tests check the exit status and the
lines the examples print, and that nothing was written to stderr (no
traceback, no warning logged by websockets or ws_stream). Everything listens
on 127.0.0.1 only.

The trio example has its own test in test_example_trio.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

from .ports import refused_port

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTHONASYNCIODEBUG", None)  # debug mode's slow-callback warnings are noise
    return env


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<args[0]>`` with the rest of ``args``; wait at most TIMEOUT."""
    return subprocess.run(
        [sys.executable, f"examples/{args[0]}", *args[1:]],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def run_ok(*args: str) -> list[str]:
    """Run an example that must succeed silently on stderr; return its stdout lines."""
    result = run_example(*args)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stderr == "", result.stderr
    return result.stdout.splitlines()


def _readline(stream: IO[str]) -> str:
    """One line from a pipe, with a deadline (readline() alone could block forever)."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(TIMEOUT)
    if not lines:
        pytest.fail(f"no line on the server's stdout within {TIMEOUT} s")
    return lines[0]


@contextmanager
def server_process(*args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Start a server example with ``--port 0``; yield (its URI, the process).

    The URI comes from the first stdout line, ``listening on ws://HOST:PORT/``.
    The process is stopped with SIGTERM on exit, killed if it does not stop.
    """
    process = subprocess.Popen(
        [sys.executable, f"examples/{args[0]}", *args[1:]],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        first = _readline(process.stdout)
        match = re.fullmatch(r"listening on (ws://127\.0\.0\.1:(\d+)/).*\n", first)
        if match is None:
            process.kill()
            pytest.fail(f"unexpected first line {first!r}; stderr: {process.stderr.read()!r}")
        assert int(match[2]) != 0
        yield match[1], process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stdout.close()
        process.stderr.close()


def stop_server(process: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM the server; it must exit 0 (POSIX); return the rest of (stdout, stderr)."""
    process.terminate()
    out, err = process.communicate(timeout=TIMEOUT)
    if sys.platform != "win32":  # there terminate() kills: no clean shutdown to check
        assert process.returncode == 0, f"exit {process.returncode}\n{out}\n{err}"
    return out, err


# line_echo_server.py / line_echo_client.py


def test_line_echo_server_and_client() -> None:
    with server_process("line_echo_server.py", "--port", "0") as (uri, server):
        lines = ["hello", "two words here", "x" * 100_000, "bye"]
        out = run_ok("line_echo_client.py", uri, *lines)
        expected: list[str] = []
        for line in lines:
            expected += [f"sent: {line}", f"echo: {line}"]
        assert out == expected

        # Without lines: the default ones; without a URI: --host and --port.
        port = uri.rsplit(":", 1)[1].rstrip("/")
        out = run_ok("line_echo_client.py", "--host", "127.0.0.1", "--port", port)
        assert out == [
            "sent: hello",
            "echo: hello",
            "sent: WebSocket as a byte stream",
            "echo: WebSocket as a byte stream",
            "sent: bye",
            "echo: bye",
        ]

        rest, err = stop_server(server)
    assert err == ""
    # The server saw both clients come and go, then shut down on SIGTERM.
    assert rest.count(": connected") == 2
    assert rest.count(": disconnected") == 2
    assert rest.splitlines()[-1] == "shutting down"


def test_line_echo_client_reports_a_refused_connection() -> None:
    result = run_example("line_echo_client.py", f"ws://127.0.0.1:{refused_port()}/", "hello")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "cannot talk to ws://127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


# length_prefixed_rpc.py


def test_length_prefixed_rpc_demo() -> None:
    out = run_ok("length_prefixed_rpc.py", "demo")
    assert re.fullmatch(r"server listening on ws://127\.0\.0\.1:\d+/", out[0])
    assert out[1:] == [
        "add(1, 2, 3) = 6",
        "upper('hello') = 'HELLO'",
        "divide(1, 0) failed: ZeroDivisionError: division by zero",
        "nope() failed: unknown method 'nope'",
        "pipelined add(i, i) for i in 0..9 = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]",
        "echo of a 200000 character string: True",
        "demo done",
    ]


def test_length_prefixed_rpc_serve_and_call() -> None:
    with server_process("length_prefixed_rpc.py", "serve", "--port", "0") as (uri, server):
        assert run_ok("length_prefixed_rpc.py", "call", uri, "add", "1", "2", "39") == ["42"]
        assert run_ok("length_prefixed_rpc.py", "call", uri, "upper", "ws") == ['"WS"']
        assert run_ok("length_prefixed_rpc.py", "call", uri, "echo", '{"a": [1]}') == [
            '[{"a": [1]}]'
        ]

        failed = run_example("length_prefixed_rpc.py", "call", uri, "divide", "1", "0")
        assert failed.returncode == 1
        assert failed.stdout == ""
        assert failed.stderr == "error: ZeroDivisionError: division by zero\n"

        rest, err = stop_server(server)
    assert (rest, err) == ("", "")


# accept_wrap_auth.py


def test_accept_wrap_auth_demo() -> None:
    out = run_ok("accept_wrap_auth.py", "demo")
    assert re.fullmatch(r"server listening on ws://127\.0\.0\.1:\d+/", out[0])
    assert out[1:] == [
        "good token /whoami: ok: ['you are alice']",
        "good token /echo: ok: ['one', 'two']",
        "wrong token /echo: refused: HandshakeError status=401",
        "good token /nowhere: refused: HandshakeError status=404",
        "demo done",
    ]


def test_accept_wrap_auth_client_command() -> None:
    with server_process("accept_wrap_auth.py", "serve", "--port", "0") as (uri, server):
        base = uri.rstrip("/")
        out = run_ok("accept_wrap_auth.py", "client", "--token", "t0ken", f"{base}/whoami")
        assert out == ["you are bob"]
        out = run_ok("accept_wrap_auth.py", "client", "--token", "s3cret", f"{base}/echo", "a", "b")
        assert out == ["a", "b"]

        refused = run_example("accept_wrap_auth.py", "client", "--token", "bad", f"{base}/echo")
        assert refused.returncode == 1
        assert refused.stderr.startswith("refused (HTTP 401): ")

        rest, err = stop_server(server)
    assert err == ""


# events_observer.py


def test_events_observer_demo() -> None:
    out = run_ok("events_observer.py", "demo")
    assert re.fullmatch(r"server listening on ws://127\.0\.0\.1:\d+/", out[0])
    assert out[-1] == "demo done"

    client = [line for line in out if line.startswith("client: ")]
    server = [line for line in out if line.startswith("server: ")]
    rtt = re.compile(r"(client|server): ping round trip \d+\.\d\d ms")

    # The server's ping with its own payload: a ping on the client, a pong back.
    assert "client: PingReceived data=b'from server' (websockets sent the pong)" in client
    assert "server: PongReceived data=b'from server'" in server
    assert sum(bool(rtt.fullmatch(line)) for line in server) == 1

    # The client's three pings with random payloads: seen by the server, answered.
    client_pongs = [line for line in client if line.startswith("client: PongReceived data=")]
    server_pings = [line for line in server if line.startswith("server: PingReceived data=")]
    assert len(client_pongs) == len(server_pings) == 3
    # A random payload may hold a space: cut the fixed suffix, not at a space.
    suffix = " (websockets sent the pong)"
    payloads = {line.split("data=", 1)[1].removesuffix(suffix) for line in server_pings}
    assert {line.split("data=", 1)[1] for line in client_pongs} == payloads
    assert sum(bool(rtt.fullmatch(line)) for line in client) == 3

    # The data was unaffected, then the server's close reached the client.
    assert "client: 50 lines echoed; the reader saw no control frame" in client
    assert "client: CloseReceived code=1000 reason='demo finished'" in client
    assert "client: EOF after 0 more bytes" in client
    assert "client: close_code=1000 close_reason='demo finished'" in client

    # Nothing went wrong, and Closed is the last event of each side.
    assert not [line for line in out if re.match(r"(client|server): Error ", line)]
    closed = "Closed code=1000 reason='demo finished' clean=True"
    for side, lines in (("client", client), ("server", server)):
        names = "PingReceived|PongReceived|CloseReceived|Error|Closed"
        events = [line for line in lines if re.match(rf"{side}: ({names}) ", line)]
        assert events[-1] == f"{side}: {closed}", lines
        assert sum(closed in line for line in lines) == 1


def test_fastapi_app_streams_lines_and_tunnels() -> None:
    pytest.importorskip("fastapi", reason="fastapi is in the test extra: pip install -e '.[test]'")
    import asyncio

    import ws_stream

    async def target_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def check(uri: str, serving: asyncio.Server) -> None:
        async with serving:
            reader, writer = await ws_stream.open_connection(uri + "upper", ping_interval=None)
            writer.write(b"hello\nbyte stream\n")
            assert await reader.readline() == b"HELLO\n"
            assert await reader.readline() == b"BYTE STREAM\n"
            await writer.get_extra_info("ws_stream").close()
            reader, writer = await ws_stream.open_connection(
                uri + "tunnel/", ping_interval=None, subprotocols=["binary"]
            )
            blob = os.urandom(300_000)
            writer.write(blob)
            assert await reader.readexactly(len(blob)) == blob
            await writer.get_extra_info("ws_stream").close()

    async def main() -> None:
        serving = await asyncio.start_server(target_echo, "127.0.0.1", 0)
        port = serving.sockets[0].getsockname()[1]
        with server_process("fastapi_app.py", "--port", "0", "--to", f"127.0.0.1:{port}") as (
            uri,
            process,
        ):
            await check(uri, serving)
            out, err = await asyncio.to_thread(stop_server, process)  # the target runs here
            assert "Traceback" not in err, err

    asyncio.run(main())
