"""``ws_stream.asgi.TunnelApp``: every WebSocket bridged to one TCP or Unix target.

Mounted in a Starlette app and alone, under uvicorn and hypercorn (in this
event loop), and under ``uvicorn --workers 2 --factory`` (a subprocess), with
ws_stream's client. The targets are echo servers that count their connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

import ws_stream
from ws_stream.asgi import TunnelApp

from ..rawpeer import send_handshake
from .helpers import STEP, free_socket, run_asgi, stream_of

ASGI_SERVERS = ("uvicorn-sansio", "uvicorn-wsproto", "hypercorn")
ROOT = Path(__file__).resolve().parents[2]
MiB = 2**20


class Target:
    """An echo server (TCP, or Unix with ``path``) that counts its connections.

    ``greeting``: sent on connect, then the target closes instead of echoing.
    """

    def __init__(self, path: Path | None = None, greeting: bytes | None = None) -> None:
        self.path = path
        self.greeting = greeting
        self.connections = 0
        self.endings: list[str] = []  # how each connection ended: "eof" or "reset"
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Target:
        if self.path is not None:
            self.server = await asyncio.start_unix_server(self._serve, str(self.path))
        else:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.greeting is not None:
                writer.write(self.greeting)
                await writer.drain()
                return
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            self.endings.append("eof")
        except ConnectionResetError:
            self.endings.append("reset")
        finally:
            writer.close()


async def _echo_through(uri: str, size: int = 2 * MiB, **options: Any) -> ws_stream.WsStream:
    """Send ``size`` random bytes through the tunnel, check the echo, close with 1000."""
    reader, writer = await ws_stream.open_connection(uri, ping_interval=None, **options)
    data = os.urandom(size)

    async def send() -> None:
        view = memoryview(data)
        for start in range(0, size, 100_000):
            writer.write(view[start : start + 100_000])
            await writer.drain()

    async def receive() -> str:
        digest = hashlib.sha256()
        got = 0
        while got < size:
            chunk = await reader.read(65536)
            assert chunk, f"EOF after {got} bytes"
            digest.update(chunk)
            got += len(chunk)
        return digest.hexdigest()

    _, echoed = await asyncio.gather(send(), receive())
    assert echoed == hashlib.sha256(data).hexdigest()
    stream = stream_of(writer)
    await asyncio.wait_for(stream.close(), STEP)
    return stream


@contextlib.asynccontextmanager
async def mounted(server: str, tunnel: TunnelApp, **settings: Any) -> AsyncIterator[str]:
    """``tunnel`` mounted at /vnc in a Starlette app; yields the WebSocket URI."""
    app = Starlette(routes=[Mount("/vnc", app=tunnel)])
    async with run_asgi(server, app, **settings) as port:
        yield f"ws://127.0.0.1:{port}/vnc/"


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_mounted_in_starlette_bytes_both_ways(server: str) -> None:
    async with asyncio.timeout(60), Target() as target:
        tunnel = TunnelApp(target.address, close_timeout=3.0)
        async with mounted(server, tunnel) as uri:
            streams = await asyncio.gather(
                *(_echo_through(uri, subprotocols=["binary"]) for _ in range(3))
            )
        assert [s.subprotocol for s in streams] == ["binary"] * 3
        assert target.connections == 3


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_standalone_to_a_unix_target(server: str, tmp_path: Path) -> None:
    async with asyncio.timeout(60), Target(tmp_path / "target.sock") as target:
        tunnel = TunnelApp(target.address, close_timeout=3.0)
        async with run_asgi(server, tunnel, **_lifespan(server)) as port:
            stream = await _echo_through(f"ws://127.0.0.1:{port}/any/path", 3 * MiB)
            assert stream.subprotocol is None  # none offered: accepted without
            await _wait_for(lambda: target.endings)
        assert target.connections == 1
        assert target.endings == ["eof"]  # a Unix socket has no reset


async def _wait_for(condition: Any) -> None:
    async with asyncio.timeout(STEP):
        while not condition():
            await asyncio.sleep(0.01)


#: How a TCP target sees the client's clean close (1000) through the tunnel.
#: hypercorn reports every client close as 1006, and a failed WebSocket resets
#: the target's connection (README: "How a tunnel ends").
TARGET_SEES = {"uvicorn-sansio": "eof", "uvicorn-wsproto": "eof", "hypercorn": "reset"}


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_the_clients_clean_close_reaches_a_tcp_target(server: str) -> None:
    async with asyncio.timeout(60), Target() as target:
        async with mounted(server, TunnelApp(target.address, close_timeout=3.0)) as uri:
            await _echo_through(uri, 100_000)
            await _wait_for(lambda: target.endings)
        assert target.endings == [TARGET_SEES[server]]


def _lifespan(server: str) -> dict[str, Any]:
    # TunnelApp answers the lifespan protocol itself.
    return {} if server == "hypercorn" else {"lifespan": "on"}


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_the_targets_close_is_a_clean_end(server: str) -> None:
    async with (
        asyncio.timeout(30),
        Target(greeting=b"220 hello\r\n") as target,
        mounted(server, TunnelApp(target.address, close_timeout=3.0)) as uri,
    ):
        reader, writer = await ws_stream.open_connection(uri, ping_interval=None)
        assert await asyncio.wait_for(reader.read(), STEP) == b"220 hello\r\n"
        stream = stream_of(writer)
        await asyncio.wait_for(stream.wait_closed(), STEP)
        assert stream.close_code == 1000


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_target_down_is_1014(server: str) -> None:
    sock = free_socket()  # bound, never listening: connections are refused
    port = sock.getsockname()[1]
    try:
        async with (
            asyncio.timeout(30),
            mounted(server, TunnelApp(f"127.0.0.1:{port}", close_timeout=3.0)) as uri,
        ):
            reader, writer = await ws_stream.open_connection(uri, ping_interval=None)
            assert await asyncio.wait_for(reader.read(), STEP) == b""
            stream = stream_of(writer)
            await asyncio.wait_for(stream.wait_closed(), STEP)
            assert (stream.close_code, stream.close_reason) == (1014, "cannot reach the target")
    finally:
        sock.close()


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_a_disallowed_origin_gets_403_and_never_reaches_the_target(server: str) -> None:
    async with asyncio.timeout(30), Target() as target:
        tunnel = TunnelApp(target.address, origins=["https://ok.example"], close_timeout=3.0)
        async with mounted(server, tunnel) as uri:
            for origin in ("https://evil.example", None):
                with pytest.raises(ws_stream.HandshakeError) as refused:
                    await ws_stream.open_connection(uri, origin=origin, ping_interval=None)
                assert refused.value.status == 403
            assert target.connections == 0
            await _echo_through(uri, 100_000, origin="https://ok.example")
            assert target.connections == 1


async def _handshake_status(uri: str, *header_lines: str) -> bytes:
    """The status line a raw WebSocket handshake to ``uri`` gets, with ``header_lines``."""
    host, _, path = uri.removeprefix("ws://").partition("/")
    headers = "".join(f"{line}\r\n" for line in header_lines)
    reader, writer = await send_handshake(int(host.partition(":")[2]), f"/{path}", headers)
    try:
        return await asyncio.wait_for(reader.readline(), STEP)
    finally:
        writer.close()


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_several_origin_headers_are_refused_whatever_their_order(server: str) -> None:
    """Only one Origin may decide: an allowed one after a refused one does not pass."""
    async with asyncio.timeout(30), Target() as target:
        tunnel = TunnelApp(target.address, origins=["https://ok.example"], close_timeout=3.0)
        async with mounted(server, tunnel) as uri:
            for first, second in (("evil", "ok"), ("ok", "evil"), ("ok", "ok")):
                status = await _handshake_status(
                    uri, f"Origin: https://{first}.example", f"Origin: https://{second}.example"
                )
                assert status.startswith(b"HTTP/1.1 4"), (first, second, status)
            assert target.connections == 0


async def test_origins_may_allow_clients_without_one() -> None:
    async with asyncio.timeout(30), Target() as target:
        tunnel = TunnelApp(target.address, origins=["https://ok.example", None])
        async with mounted("uvicorn-sansio", tunnel) as uri:
            await _echo_through(uri, 100_000)
        assert target.connections == 1


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_plain_http_gets_426(server: str) -> None:
    async with asyncio.timeout(30), Target() as target:
        async with mounted(server, TunnelApp(target.address)) as uri:
            port = int(uri.split(":")[2].split("/")[0])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            request = f"GET /vnc/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            response = await asyncio.wait_for(reader.read(), STEP)
            writer.close()
        assert target.connections == 0
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 426"), head
    assert b"upgrade: websocket" in head.lower()
    assert b"WebSocket tunnel" in body


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_subprotocols(server: str) -> None:
    async with (
        asyncio.timeout(30),
        Target() as target,
        mounted(server, TunnelApp(target.address, close_timeout=3.0)) as uri,
    ):
        with pytest.raises(ws_stream.HandshakeError) as refused:
            await ws_stream.open_connection(uri, subprotocols=["chat"], ping_interval=None)
        assert refused.value.status == 403
        assert target.connections == 0
        stream = await _echo_through(uri, 100_000, subprotocols=["chat", "binary"])
        assert stream.subprotocol == "binary"
        stream = await _echo_through(uri, 100_000)
        assert stream.subprotocol is None
        assert target.connections == 2


TUNNELS = 200


async def _close_code_at_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    assert await reader.read() == b""  # a clean end, not a reset
    code = stream_of(writer).close_code
    assert code is not None
    return code


async def test_uvicorn_two_workers_factory() -> None:
    """200 concurrent tunnels through 2 uvicorn workers, checksummed; SIGTERM ends them."""
    async with asyncio.timeout(100), Target() as target:
        sock = free_socket()
        port = sock.getsockname()[1]
        sock.close()  # uvicorn binds it again (SO_REUSEADDR)
        env = dict(os.environ, WS_STREAM_TEST_TARGET=target.address)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "tests.frontends.tunnel_app:make_app",
            "--workers",
            "2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--lifespan",
            "on",
            "--ws",
            "websockets-sansio",
            "--log-level",
            "info",
            cwd=ROOT,
            env=env,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        log: list[str] = []
        started = asyncio.Event()

        async def read_log() -> None:
            assert proc.stderr is not None
            while line := await proc.stderr.readline():
                log.append(line.decode(errors="replace").rstrip())
                if sum("Application startup complete" in entry for entry in log) == 2:
                    started.set()

        reading = asyncio.create_task(read_log())
        workers: list[psutil.Process] = []
        try:
            await asyncio.wait_for(started.wait(), 30)
            workers = [
                child
                for child in psutil.Process(proc.pid).children()
                if "resource_tracker" not in " ".join(child.cmdline())
            ]
            uri = f"ws://127.0.0.1:{port}/"
            opened = list(
                await asyncio.gather(
                    *(
                        ws_stream.open_connection(uri, subprotocols=["binary"], ping_interval=None)
                        for _ in range(TUNNELS)
                    )
                )
            )
            blobs = [os.urandom(64 * 1024 + n) for n in range(len(opened))]

            async def check(pair: Any, blob: bytes) -> None:
                reader, writer = pair
                writer.write(blob)
                assert await reader.readexactly(len(blob)) == blob

            await asyncio.gather(*(check(p, b) for p, b in zip(opened, blobs, strict=True)))
            # Who serves whom: each worker's connections to the target.
            served = {
                w.pid: sum(
                    1
                    for c in w.net_connections("tcp")
                    if c.raddr and c.raddr[1] == int(target.address.split(":")[1])
                )
                for w in workers
            }
            print(f"\nWORKERS connections to the target per worker pid: {served}")
            assert sum(served.values()) == TUNNELS
            assert all(served.values()), served  # both workers serve
            # SIGTERM with every tunnel open: uvicorn closes each WebSocket with
            # 1012 (service restart) and the tunnels end cleanly on both sides.
            proc.send_signal(signal.SIGTERM)
            codes = await asyncio.gather(
                *(
                    asyncio.wait_for(_close_code_at_eof(reader, writer), 30)
                    for reader, writer in opened
                )
            )
            assert set(codes) == {1012}, sorted(set(codes))
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            assert target.connections == TUNNELS
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    for worker in workers:
                        with contextlib.suppress(psutil.NoSuchProcess):
                            worker.kill()
                    proc.kill()
                    await proc.wait()
            reading.cancel()
        assert len(workers) == 2, log
        assert proc.returncode == 0, log
