"""Unix sockets both ways: ``serve --unix``, ``serve --to unix:``, ``forward --listen unix:``.

Real subprocesses of the CLI and real socket files under pytest's tmp_path:
the bytes are checked by checksum, the socket files by ``stat`` (kind and
permissions, and that they are gone after the command ends), and the files
that must never be removed (a regular file, a live server's socket) are
still there after the refusal.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

import ws_stream
from ws_stream.cli.args import ForwardConfig, ServeConfig, UnixAddress, parse_config

from .helpers import Cli, run, run_cli

DATA = os.urandom(8 * 2**20)
DIGEST = hashlib.sha256(DATA).hexdigest()


async def start_unix_echo(path: Path) -> asyncio.Server:
    """A plain (not WebSocket) echo server on the Unix socket ``path``."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(2**16):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_unix_server(echo, str(path))


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    """Send DATA, read as many bytes back; the checksum of what came back."""

    async def send() -> None:
        view = memoryview(DATA)
        for start in range(0, len(view), 2**16):
            writer.write(view[start : start + 2**16])
            await writer.drain()

    sender = asyncio.create_task(send())
    got = await reader.readexactly(len(DATA))
    await sender
    return hashlib.sha256(got).hexdigest()


def mode_of(path: Path) -> int:
    info = path.stat()
    assert stat.S_ISSOCK(info.st_mode), f"{path} is not a socket"
    return stat.S_IMODE(info.st_mode)


def test_forward_listen_unix_to_serve_to_unix_target(
    tmp_path: Path, cli: Callable[..., Cli]
) -> None:
    """client -> forward (unix:, --mode 0600) -> ws:// -> serve --to unix: -> echo."""
    target, local = tmp_path / "target.sock", tmp_path / "forward.sock"

    async def body() -> None:
        echo = await start_unix_echo(target)
        async with echo:
            server = cli("serve", "--port", "0", "--to", f"unix:{target}")
            port = await asyncio.to_thread(server.port)
            first = await asyncio.to_thread(server.wait_for, "listening on")
            assert f"bridging every connection to unix:{target}" in first.string
            fwd = cli(
                "forward", "--listen", f"unix:{local}", "--mode", "0600", f"ws://127.0.0.1:{port}/"
            )
            line = await asyncio.to_thread(fwd.wait_for, "listening on")
            assert line.string.endswith(
                f"listening on unix:{local} (each connection tunnels to ws://127.0.0.1:{port}/)"
            ), line.string
            assert mode_of(local) == 0o600
            reader, writer = await asyncio.open_unix_connection(str(local))
            assert await exchange(reader, writer) == DIGEST
            writer.write_eof()  # forward lingers, serve's target answers EOF: a clean end
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            await asyncio.to_thread(fwd.wait_for, r"unix-client#1: closed after .*received 1000")
            for proc in (fwd, server):
                proc.signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait) == 0, proc.stderr
        assert not local.exists(), "forward removes its socket file at exit"

    run(body(), timeout=60)


def test_serve_unix_with_mode_echoes_and_removes_its_socket(
    tmp_path: Path, cli: Callable[..., Cli]
) -> None:
    path = tmp_path / "serve.sock"
    server = cli("serve", "--unix", str(path), "--mode", "660")
    first = server.wait_for(".")
    assert server.lines[0].endswith(f"listening on unix:{path} (ws://, path /; echo)"), first
    assert mode_of(path) == 0o660

    async def body() -> str:
        reader, writer = await ws_stream.open_connection(
            "ws://localhost/", unix=True, path=str(path)
        )
        digest = await exchange(reader, writer)
        writer.close()
        await writer.wait_closed()
        return digest

    assert run(body()) == DIGEST
    server.wait_for(r"connection closed: peer=unix-client#1 .*close_sent=1000 close_received=1000")
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert not path.exists()


def test_serve_replaces_a_stale_socket_file(tmp_path: Path, cli: Callable[..., Cli]) -> None:
    """A socket file nobody accepts on (its server died) is replaced."""
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    assert stat.S_ISSOCK(path.stat().st_mode)
    server = cli("serve", "--unix", str(path))
    server.wait_for(f"listening on unix:{path}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.connect(str(path))  # the new server accepts


def test_serve_refuses_a_live_socket_and_leaves_it(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()
        result = run_cli("serve", "--unix", str(path))
        assert result.returncode == 1
        assert (
            f"cannot listen on unix:{path}: another process is listening on {path}: "
            "stop it or choose another path"
        ) in result.stderr.decode()
        assert stat.S_ISSOCK(path.stat().st_mode), "a live server's socket is never removed"


@pytest.mark.parametrize("command", ["serve", "forward"])
def test_a_file_that_is_not_a_socket_is_never_removed(tmp_path: Path, command: str) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("keep me\n")
    if command == "serve":
        result = run_cli("serve", "--unix", str(path))
    else:
        result = run_cli("forward", "--listen", f"unix:{path}", "ws://127.0.0.1:1/")
    assert result.returncode == 1
    assert (
        f"cannot listen on unix:{path}: {path} exists and is not a socket (a regular file): "
        "remove it or choose another path"
    ) in result.stderr.decode()
    assert path.read_text() == "keep me\n"


def test_serve_to_a_missing_unix_target_closes_1014(
    tmp_path: Path, cli: Callable[..., Cli]
) -> None:
    missing = tmp_path / "nothing-here.sock"
    server = cli("serve", "--port", "0", "--to", f"unix:{missing}")
    port = server.port()

    async def body() -> int | None:
        reader, writer = await ws_stream.open_connection(f"ws://127.0.0.1:{port}/")
        assert await asyncio.wait_for(reader.read(), 10) == b""
        stream = writer.get_extra_info("ws_stream")
        writer.close()
        await writer.wait_closed()
        code: int | None = stream.close_code
        return code

    assert run(body()) == 1014
    server.wait_for(
        rf"close_sent=1014 .*cannot connect to the target unix:{missing}: "
        r".*No such file or directory"
    )


def test_unix_addresses_in_the_config() -> None:
    config = parse_config(["serve", "--unix", "/run/ws.sock", "--to", "unix:/run/vnc.sock"])
    assert isinstance(config, ServeConfig)
    assert config.unix == UnixAddress("/run/ws.sock")
    assert config.target == UnixAddress("/run/vnc.sock")
    assert str(config.target) == "unix:/run/vnc.sock"
    assert config.mode is None
    # --unix takes unix:PATH too, like --to and --listen
    relative = parse_config(["serve", "--unix", "unix:rel.sock"])
    assert isinstance(relative, ServeConfig) and relative.unix == UnixAddress("rel.sock")
    forward = parse_config(["forward", "--listen", "unix:f.sock", "--mode", "0o640", "ws://h/"])
    assert isinstance(forward, ForwardConfig)
    assert (forward.listen, forward.mode) == (UnixAddress("f.sock"), 0o640)


LONG = "/tmp/" + "x" * 110


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--to", "unix:"], "expected unix:PATH (for example unix:/run/ws-stream.sock)"),
        (["serve", "--unix", ""], "the path is missing"),
        (["serve", "--unix", LONG], "bytes long; this system allows 107: use a shorter path"),
        (["forward", "--listen", f"unix:{LONG}", "ws://h/"], "use a shorter path"),
        (["serve", "--unix", "s.sock", "--port", "8000"], "--unix replaces --host and --port"),
        (["serve", "--unix", "s.sock", "--host", "::1"], "--unix replaces --host and --port"),
        (["serve", "--mode", "0600"], "--mode applies to the Unix socket of --unix only"),
        (["serve", "--unix", "s.sock", "--mode", "rw"], "expected octal permissions such as 0600"),
        (["serve", "--unix", "s.sock", "--mode", "0800"], "expected octal permissions"),
        (["serve", "--unix", "s.sock", "--mode", "01777"], "expected octal permissions"),
        (
            ["serve", "--unix", "s.sock", "--mode", "0444"],
            "0444 lets nobody connect: connecting to a Unix socket needs write permission",
        ),
        (
            ["forward", "--listen", "8000", "--mode", "0600", "ws://h/"],
            "--mode applies to a Unix socket only: --listen unix:PATH",
        ),
    ],
)
def test_bad_unix_options_exit_2(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr.decode()
