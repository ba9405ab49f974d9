"""``WsStream`` over the WebSockets of uvicorn and aiohttp, and ``TunnelApp`` in 2 workers.

1. Wrapped stream against plain message loop, on the same server. uvicorn
   (``--ws websockets-sansio``, a Starlette app) and aiohttp's web server each
   run in their own process and serve two echo endpoints: ``/stream`` wraps
   the WebSocket (``ws_stream.WsStream(websocket)``) and echoes with
   ``reader.read()`` / ``writer.write()`` / ``drain()``; ``/plain`` is the
   framework's own message loop (Starlette ``receive_bytes``/``send_bytes``;
   aiohttp ``async for msg in ws: await ws.send_bytes(msg.data)``). The client
   is the same for both: websockets' asyncio client (no compression), in this
   process. Bulk: ``--mib`` MiB sent in 64 KiB messages and echoed back, timed
   from the first byte sent to the last byte received; once with that client,
   once with a light one (frames masked in advance, the echo's payload counted,
   not parsed) that leaves the CPUs to the server, so that the server is the
   busier side and the ratio shows what the stream costs it; RTT: the median of
   ``--pings`` sequential 64 B echoes. The ratio (a)/(b) is compared with the
   issue's targets (bulk >= 0.9x, RTT <= 1.1x); a missed target is reported,
   never an error.

2. ``ws_stream.asgi.TunnelApp`` under ``uvicorn --workers 2 --factory``
   (``tests/frontends/tunnel_app.py:make_app``) against ``ws-stream serve --to``
   (one process), and, for context, ``TunnelApp`` under uvicorn with one
   worker: ``--tunnels`` tunnels at once push ``--tunnel-mib`` MiB each to a
   TCP sink in this process. The tunnel clients write frames masked once in
   advance, so this process (clients and sink) costs the servers' CPUs little.
   The issue expects the 2 workers to give > 1.5x the aggregate throughput of
   the single process on 2 cores. The tunnels open one after another before
   the clock starts (``--burst``: all at once): uvicorn's workers accept from
   one shared listening socket, and a burst of connections tends to land on
   whichever worker wakes first; the table shows the tunnels each process got.

Every measurement runs once unmeasured (warm-up), then in interleaved rounds
(A B C, C B A, ...); the tables show medians, and ratios of medians with the
range of the ratios of each round's back-to-back pair. The CPU time of each
server (all its processes, psutil) over each run is shown too: it moves much
less than wall-clock figures when other processes compete for the CPUs. When
the client, not the server, is the busier side of a bulk echo (the "CPUs
busy" row, 1.00 = one CPU), the throughput ratio understates what the stream
costs the server; its CPU per GiB does not.
Nothing here asserts a speed.

    python bench/bench_frontends.py              # 256 MiB echoes, 16 x 32 MiB tunnels, 7 rounds
    python bench/bench_frontends.py --quick      # seconds; proves the script works
    python bench/bench_frontends.py --json frontends.json --rounds 9
    python bench/bench_frontends.py --burst      # the tunnels opened all at once

Needs aiohttp, starlette, uvicorn and psutil (the test extra).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import platform
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
from websockets.asyncio.client import connect

import ws_stream

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 2**16
RTT_BYTES = 64
FRONT_ENDS = {
    "uvicorn": "uvicorn --ws websockets-sansio (Starlette)",
    "aiohttp": "aiohttp web server",
}
VARIANTS = ("stream", "plain")
#: The servers of the tunnel comparison, in table order.
TUNNEL_SERVERS = (
    "TunnelApp, uvicorn --workers 2",
    "ws-stream serve --to",
    "TunnelApp, uvicorn --workers 1",
)
BULK_TARGET = 0.9  # (a)/(b) at least
RTT_TARGET = 1.1  # (a)/(b) at most
TUNNEL_TARGET = 1.5  # workers 2 / serve --to, more than
CLIENT_OPTS: dict[str, Any] = {
    "compression": None,
    "max_size": None,
    "ping_interval": None,
    "open_timeout": 30,
    "close_timeout": 10,
}


# The servers' side: imported by the server processes (uvicorn --factory; --serve aiohttp)


async def _echo_stream(stream: ws_stream.WsStream) -> None:
    async with stream:
        reader, writer = stream.reader, stream.writer
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()


def starlette_app() -> Any:
    """The uvicorn server's app: ``/stream`` (wrapped) and ``/plain`` (message loop)."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def stream_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await _echo_stream(ws_stream.WsStream(websocket))

    async def plain_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_bytes(await websocket.receive_bytes())
        except WebSocketDisconnect:
            pass

    return Starlette(
        routes=[
            WebSocketRoute("/stream", stream_endpoint),
            WebSocketRoute("/plain", plain_endpoint),
        ]
    )


def aiohttp_app() -> Any:
    """The aiohttp server's app: ``/stream`` (wrapped) and ``/plain`` (message loop)."""
    from aiohttp import web

    async def stream_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await _echo_stream(ws_stream.WsStream(ws))
        return ws

    async def plain_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/stream", stream_handler)
    app.router.add_get("/plain", plain_handler)
    return app


def serve_aiohttp(port: int) -> None:
    from aiohttp import web

    web.run_app(aiohttp_app(), host="127.0.0.1", port=port, access_log=None, print=None)


# Processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(name: str, port: int) -> list[str]:
    """How the server ``name`` (a FRONT_ENDS key or a TUNNEL_SERVERS entry) starts."""
    host = ("--host", "127.0.0.1", "--port", str(port))
    if name == "uvicorn":
        return [
            *(sys.executable, "-m", "uvicorn", "--factory", "bench.bench_frontends:starlette_app"),
            *host,
            *("--ws", "websockets-sansio", "--lifespan", "on", "--log-level", "info"),
            "--no-access-log",
        ]
    if name == "aiohttp":
        return [sys.executable, str(Path(__file__).resolve()), "--serve-aiohttp", str(port)]
    if name == "ws-stream serve --to":
        return [sys.executable, "-m", "ws_stream", "serve", "-q", *host[2:], "--to", "TARGET"]
    if name.startswith("TunnelApp, uvicorn --workers "):
        workers = name.rsplit(" ", 1)[1]
        cmd = [
            *(sys.executable, "-m", "uvicorn", "--factory", "tests.frontends.tunnel_app:make_app"),
            *host,
            *("--ws", "websockets-sansio", "--lifespan", "on", "--log-level", "info"),
            "--no-access-log",
        ]
        return cmd + (["--workers", workers] if workers != "1" else [])
    raise ValueError(name)


def startup_lines(name: str) -> int:
    """How many "Application startup complete" lines say a uvicorn server is ready."""
    if name == "uvicorn":
        return 1
    if name.startswith("TunnelApp, uvicorn --workers "):
        return int(name.rsplit(" ", 1)[1])
    return 0


@contextlib.asynccontextmanager
async def server(name: str, target: str | None = None) -> AsyncIterator[tuple[int, int]]:
    """Start the server ``name`` as its own process; yield (port, pid)."""
    port = free_port()
    cmd = [target if arg == "TARGET" and target else arg for arg in server_command(name, port)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if target is not None:
        env["WS_STREAM_TEST_TARGET"] = target
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True
            )
        try:
            await wait_ready(name, port, proc, log_path)
            yield port, proc.pid
        finally:
            stop(proc)
            if proc.returncode not in (0, -signal.SIGINT, -signal.SIGTERM):
                print(
                    f"{name} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}",
                    file=sys.stderr,
                )


async def wait_ready(name: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until ``proc`` accepts connections on ``port`` (and every uvicorn worker started)."""
    lines = startup_lines(name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if log.read_text(errors="replace").count("Application startup complete") >= lines:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                pass
            else:
                writer.close()
                return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{name} is not ready on port {port} after 60 s:\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (uvicorn's and aiohttp's graceful stop; serve's too), then kill what is left."""
    children: list[psutil.Process] = []
    with contextlib.suppress(psutil.NoSuchProcess):
        children = psutil.Process(proc.pid).children(recursive=True)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def family(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def family_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and of its live descendants."""
    total = 0.0
    for proc in family(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def own_cpu() -> float:
    """CPU seconds of this process: the load generator."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_cpu() -> float:
    """CPU seconds of every process on the machine so far (interrupts left out)."""
    times = psutil.cpu_times()
    spent = sum(times) - times.idle
    for field in ("iowait", "irq", "softirq", "steal", "guest", "guest_nice"):
        spent -= getattr(times, field, 0.0)
    return float(spent)


def interleaved(rounds: int, items: tuple[Any, ...]) -> Iterator[tuple[int, Any]]:
    """Every round runs each item once, in an order reversed every other round."""
    for r in range(rounds):
        for item in items if r % 2 == 0 else reversed(items):
            yield r, item


# 1. Wrapped stream against plain message loop


async def bulk_echo(uri: str, pid: int, total: int) -> dict[str, float]:
    """``total`` bytes in CHUNK messages, echoed back; timed to the last byte received."""
    chunk = os.urandom(CHUNK)
    async with connect(uri, **CLIENT_OPTS) as ws:

        async def send() -> None:
            for _ in range(total // CHUNK):
                await ws.send(chunk)

        async def receive() -> None:
            got = 0
            while got < total:
                got += len(await ws.recv())
            if got != total:
                raise RuntimeError(f"echoed {got} bytes, not {total}")

        cpu, client = family_cpu(pid), own_cpu()
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(send(), receive()), 300)
        elapsed = time.perf_counter() - started
        return {
            "seconds": elapsed,
            "cpu": family_cpu(pid) - cpu,
            "client": own_cpu() - client,
        }


async def echo_rtt(uri: str, count: int) -> dict[str, float]:
    """The median round trip of ``count`` sequential RTT_BYTES echoes (after count // 10)."""
    message = os.urandom(RTT_BYTES)
    samples = []
    async with connect(uri, **CLIENT_OPTS) as ws:
        async with asyncio.timeout(300):
            for i in range(count + count // 10):
                started = time.perf_counter()
                await ws.send(message)
                got = 0
                while got < RTT_BYTES:
                    got += len(await ws.recv())
                if i >= count // 10:
                    samples.append(time.perf_counter() - started)
    return {"p50": statistics.median(samples), "p90": statistics.quantiles(samples, n=10)[-1]}


async def measure_front_ends(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, Any] = {
        fe: {kind: {v: [] for v in VARIANTS} for kind in ("bulk", "bulk_server", "rtt")}
        for fe in FRONT_ENDS
    }
    async with contextlib.AsyncExitStack() as stack:
        ports = {}
        for fe in FRONT_ENDS:
            ports[fe] = await stack.enter_async_context(server(fe))

        def uri(fe: str, variant: str) -> str:
            return f"ws://127.0.0.1:{ports[fe][0]}/{variant}"

        items = tuple((fe, v) for fe in FRONT_ENDS for v in VARIANTS)
        for fe, v in items:  # warm-up
            port, pid = ports[fe]
            await bulk_echo(uri(fe, v), pid, min(args.bulk, 2**23))
            await bulk_echo_server_bound(port, f"/{v}", pid, min(args.bulk, 2**23))
            await echo_rtt(uri(fe, v), min(args.pings, 200))
        for r, (fe, v) in interleaved(args.rounds, items):
            port, pid = ports[fe]
            bulk = await bulk_echo(uri(fe, v), pid, args.bulk)
            server_bound = await bulk_echo_server_bound(port, f"/{v}", pid, args.bulk)
            rtt = await echo_rtt(uri(fe, v), args.pings)
            runs[fe]["bulk"][v].append(bulk)
            runs[fe]["bulk_server"][v].append(server_bound)
            runs[fe]["rtt"][v].append(rtt)
            print(
                f"  round {r + 1}: {fe} {v}: bulk {args.bulk / bulk['seconds'] / 1e6:.0f} MB/s "
                f"(server CPU {bulk['cpu']:.2f} s), with the light client "
                f"{args.bulk / server_bound['seconds'] / 1e6:.0f} MB/s, "
                f"RTT p50 {rtt['p50'] * 1e6:.1f} us",
                file=sys.stderr,
            )
    return runs


# 2. TunnelApp in uvicorn workers against ws-stream serve --to


class Sink:
    """A TCP server that counts what it receives; one waiter for a byte count."""

    def __init__(self) -> None:
        self.received = 0
        self.connections = 0
        self._goal = 0
        self._done: asyncio.Future[None] | None = None

    def expect(self, total: int) -> asyncio.Future[None]:
        self.received = 0
        self._goal = total
        self._done = asyncio.get_running_loop().create_future()
        return self._done

    def protocol(self) -> asyncio.BufferedProtocol:
        sink = self
        buffer = bytearray(2**18)

        class Counter(asyncio.BufferedProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sink.connections += 1

            def connection_lost(self, exc: Exception | None) -> None:
                sink.connections -= 1

            def get_buffer(self, sizehint: int) -> bytearray:
                return buffer

            def buffer_updated(self, nbytes: int) -> None:
                sink.received += nbytes
                done = sink._done
                if done is not None and not done.done() and sink.received >= sink._goal:
                    done.set_result(None)

        return Counter()


def masked_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One client frame (FIN, masked) carrying ``payload``."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 2**16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", n)
    key = os.urandom(4)
    mask = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return head + key + masked


class Uploader(asyncio.Protocol):
    """A WebSocket client that only uploads frames masked in advance (nearly free).

    What the server sends after the handshake is ignored.
    """

    BATCH = 16  # frames per write

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[bytes] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._head = b""
        self._writable: asyncio.Future[None] | None = None

    @classmethod
    async def connect(cls, port: int, path: str = "/") -> Uploader:
        loop = asyncio.get_running_loop()
        transport, client = await loop.create_connection(cls, "127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n"
            ).encode()
        )
        try:
            response = await asyncio.wait_for(asyncio.shield(client.handshake), 30)
        except BaseException:
            transport.abort()
            raise
        if not response.startswith(b"HTTP/1.1 101"):
            transport.abort()
            raise RuntimeError(f"handshake refused: {response[:200]!r}")
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is no subclass)

    def data_received(self, data: bytes) -> None:
        if self.handshake.done():
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end >= 0:
            self.handshake.set_result(self._head[: end + 4])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionResetError("closed before the response"))
        if not self.lost.done():
            self.lost.set_result(None)
        self.resume_writing()

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    async def send_all(self, batch: bytes, total: int) -> None:
        """``total`` bytes as ``batch`` (BATCH frames of CHUNK bytes) and single frames."""
        assert self.transport is not None
        per_batch = CHUNK * self.BATCH
        for _ in range(total // per_batch):
            await self._write(batch)
        for _ in range(total % per_batch // CHUNK):
            await self._write(batch[: len(batch) // self.BATCH])

    async def _write(self, data: bytes) -> None:
        if self.lost.done():
            raise ConnectionResetError("the server ended the connection")
        assert self.transport is not None
        self.transport.write(data)
        if self._writable is not None:
            await self._writable

    async def close(self) -> None:
        """A close frame; then wait (5 s at most) for the server to end the connection."""
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(masked_frame(struct.pack("!H", 1000), opcode=0x8))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.lost), 5)
        self.transport.close()


class EchoCounter(Uploader):
    """An :class:`Uploader` that also counts the payload of the frames echoed back
    (their headers parsed, their payload only counted): a client that costs the
    server's CPUs little, so that the server is the busier side of a bulk echo."""

    def __init__(self) -> None:
        super().__init__()
        self.echoed = 0
        self._frame = b""  # the header being read
        self._skip = 0  # payload bytes of the current frame still to come
        self._goal = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def expect(self, total: int) -> None:
        self._goal = total

    def data_received(self, data: bytes) -> None:
        if not self.handshake.done():
            super().data_received(data)
            return
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                self.echoed += take
                pos += take
                continue
            frame = self._frame
            size = 2
            if len(frame) >= 2:
                length = frame[1] & 0x7F
                size += 2 if length == 126 else 8 if length == 127 else 0
            take = min(size - len(frame), end - pos)
            frame = self._frame = frame + data[pos : pos + take]
            pos += take
            if len(frame) < size or (size == 2 and frame[1] & 0x7F >= 126):
                continue
            if frame[0] & 0x0F != 0x2:
                self._finish(RuntimeError(f"the server sent a frame of opcode {frame[0] & 15}"))
                return
            length = frame[1] & 0x7F
            self._skip = length if length < 126 else int.from_bytes(frame[2:], "big")
            self._frame = b""
        if self.echoed >= self._goal > 0:
            self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._finish(ConnectionResetError(f"the server ended the connection: {exc!r}"))

    def _finish(self, exc: Exception | None) -> None:
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)


async def bulk_echo_server_bound(port: int, path: str, pid: int, total: int) -> dict[str, float]:
    """``total`` bytes in CHUNK frames masked in advance (sent BATCH at a time) and
    echoed back, counted without parsing payloads: timed to the last byte back."""
    client = await EchoCounter.connect(port, path)
    assert isinstance(client, EchoCounter)
    batch = masked_frame(os.urandom(CHUNK)) * EchoCounter.BATCH
    try:
        client.expect(total)
        cpu, own = family_cpu(pid), own_cpu()
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(client.send_all(batch, total), client.done), 300)
        elapsed = time.perf_counter() - started
        if client.echoed != total:
            raise RuntimeError(f"echoed {client.echoed} bytes, not {total}")
        return {"seconds": elapsed, "cpu": family_cpu(pid) - cpu, "client": own_cpu() - own}
    finally:
        await client.close()


def tunnels_per_process(pid: int, sink_port: int) -> list[int]:
    """Connections to the sink per process of ``pid``'s family (largest first)."""
    counts = []
    for proc in family(pid):
        try:
            conns = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        n = sum(
            1
            for c in conns
            if c.raddr and c.raddr.port == sink_port and c.status == psutil.CONN_ESTABLISHED
        )
        if n:
            counts.append(n)
    return sorted(counts, reverse=True)


async def upload_tunnels(
    port: int,
    pid: int,
    sink: Sink,
    sink_port: int,
    count: int,
    each: int,
    batch: bytes,
    burst: bool = False,
) -> dict[str, Any]:
    """``count`` tunnels at once, ``each`` bytes up each; until the sink counted them all.

    The tunnels open one after another (``burst``: all at once), before the clock starts.
    """
    results: list[Uploader | BaseException] = []
    if burst:
        results += await asyncio.gather(
            *(Uploader.connect(port) for _ in range(count)), return_exceptions=True
        )
    else:
        for _ in range(count):
            try:
                results.append(await Uploader.connect(port))
            except Exception as exc:
                results.append(exc)
                break
    clients = [r for r in results if isinstance(r, Uploader)]
    try:
        for result in results:
            if isinstance(result, BaseException):
                raise result
        async with asyncio.timeout(30):  # every tunnel reached the sink
            while sink.connections < count:
                await asyncio.sleep(0.01)
        done = sink.expect(count * each)
        cpu, load, machine = family_cpu(pid), own_cpu(), machine_cpu()
        started = time.perf_counter()
        await asyncio.gather(*(client.send_all(batch, each) for client in clients))
        await asyncio.wait_for(done, 300)
        elapsed = time.perf_counter() - started
        cpu, load = family_cpu(pid) - cpu, own_cpu() - load
        others = max(0.0, machine_cpu() - machine - cpu - load) / elapsed
        split = tunnels_per_process(pid, sink_port)
    finally:
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
    async with asyncio.timeout(30):  # every tunnel ended before the next run
        while sink.connections:
            await asyncio.sleep(0.01)
    return {"seconds": elapsed, "cpu": cpu, "load": load, "others": others, "split": split}


async def measure_tunnels(args: argparse.Namespace) -> dict[str, Any]:
    sink = Sink()
    sink_server = await asyncio.get_running_loop().create_server(sink.protocol, "127.0.0.1", 0)
    sink_port = sink_server.sockets[0].getsockname()[1]
    target = f"127.0.0.1:{sink_port}"
    batch = masked_frame(os.urandom(CHUNK)) * Uploader.BATCH
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in TUNNEL_SERVERS}
    try:
        async with contextlib.AsyncExitStack() as stack:
            servers = {}
            for name in TUNNEL_SERVERS:
                servers[name] = await stack.enter_async_context(server(name, target))

            async def run(name: str, each: int) -> dict[str, Any]:
                port, pid = servers[name]
                return await upload_tunnels(
                    port, pid, sink, sink_port, args.tunnels, each, batch, args.burst
                )

            for name in TUNNEL_SERVERS:  # warm-up
                await run(name, min(args.each, 2**21))
            for r, name in interleaved(args.rounds, TUNNEL_SERVERS):
                result = await run(name, args.each)
                runs[name].append(result)
                total = args.tunnels * args.each
                print(
                    f"  round {r + 1}: {name}: {total / result['seconds'] / 1e6:.0f} MB/s, "
                    f"server CPU {result['cpu']:.2f} s, load {result['load']:.2f} s, "
                    f"tunnels per process {'/'.join(map(str, result['split']))}",
                    file=sys.stderr,
                )
    finally:
        sink_server.close()
    return runs


# Report


def _version(name: str) -> str | None:
    try:
        return version(name)
    except Exception:
        return None


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            **{
                name: _version(name)
                for name in ("ws-stream", "websockets", "uvicorn", "starlette", "aiohttp")
            },
            "uvloop": _version("uvloop") if importlib.util.find_spec("uvloop") else None,
        },
        "settings": {
            "rounds": args.rounds,
            "bulk_bytes": args.bulk,
            "chunk": CHUNK,
            "pings": args.pings,
            "rtt_bytes": RTT_BYTES,
            "tunnels": args.tunnels,
            "each_bytes": args.each,
            "client": "websockets.asyncio.client (compression=None) on asyncio's default loop",
            "opening": "all at once" if args.burst else "one after another",
        },
    }
    started = time.perf_counter()
    print("wrapped stream vs plain message loop", file=sys.stderr)
    report["front_ends"] = await measure_front_ends(args)
    print(f"{args.tunnels} tunnels", file=sys.stderr)
    report["tunnels"] = await measure_tunnels(args)
    report["seconds"] = time.perf_counter() - started
    report["summary"] = summarize(report)
    return report


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The ratios of the tables, and whether each target is met."""
    summary: dict[str, Any] = {}
    settings = report["settings"]
    for fe in FRONT_ENDS:
        bulk, rtt = report["front_ends"][fe]["bulk"], report["front_ends"][fe]["rtt"]
        light = report["front_ends"][fe]["bulk_server"]
        throughput = {v: mb_per_s(settings["bulk_bytes"], bulk[v]) for v in VARIANTS}
        light_throughput = {v: mb_per_s(settings["bulk_bytes"], light[v]) for v in VARIANTS}
        light_ratio = light_throughput["stream"] / light_throughput["plain"]
        p50 = {v: statistics.median(run["p50"] for run in rtt[v]) for v in VARIANTS}
        cpu = {v: cpu_per_gib(2 * settings["bulk_bytes"], bulk[v]) for v in VARIANTS}
        bulk_ratio = throughput["stream"] / throughput["plain"]
        rtt_ratio = p50["stream"] / p50["plain"]
        summary[fe] = {
            "bulk_mb_per_s": throughput,
            "bulk_ratio": bulk_ratio,
            "bulk_round_ratios": speedups(bulk),
            "bulk_target_met": bulk_ratio >= BULK_TARGET,
            "light_mb_per_s": light_throughput,
            "light_ratio": light_ratio,
            "light_round_ratios": speedups(light),
            "light_target_met": light_ratio >= BULK_TARGET,
            "light_cpu_s_per_gib": {
                v: cpu_per_gib(2 * settings["bulk_bytes"], light[v]) for v in VARIANTS
            },
            "light_busy": {
                v: statistics.median(run["cpu"] / run["seconds"] for run in light[v])
                for v in VARIANTS
            },
            "rtt_p50_us": {v: p50[v] * 1e6 for v in VARIANTS},
            "rtt_ratio": rtt_ratio,
            "rtt_round_ratios": [
                s["p50"] / p["p50"] for s, p in zip(rtt["stream"], rtt["plain"], strict=True)
            ],
            "rtt_target_met": rtt_ratio <= RTT_TARGET,
            "cpu_s_per_gib": cpu,
            "cpu_ratio": cpu["stream"] / cpu["plain"] if cpu["plain"] > 0 else None,
            # Of one CPU, over the runs: is the server or the client the bottleneck?
            "busy": {
                v: {
                    who: statistics.median(run[key] / run["seconds"] for run in bulk[v])
                    for who, key in (("server", "cpu"), ("client", "client"))
                }
                for v in VARIANTS
            },
        }
    total = settings["tunnels"] * settings["each_bytes"]
    tunnels = report["tunnels"]
    base = tunnels["ws-stream serve --to"]
    rows = {}
    for name in TUNNEL_SERVERS:
        runs = tunnels[name]
        rows[name] = {
            "mb_per_s": mb_per_s(total, runs),
            "ratio": mb_per_s(total, runs) / mb_per_s(total, base),
            "round_ratios": [b["seconds"] / r["seconds"] for r, b in zip(runs, base, strict=True)],
            "cpu_s_per_gib": cpu_per_gib(total, runs),
            "load_cpu_s_per_gib": cpu_per_gib(total, runs, "load"),
            "others_cpus": statistics.median(run["others"] for run in runs),
            "split": [run["split"] for run in runs],
        }
    two, one = rows[TUNNEL_SERVERS[0]], rows["ws-stream serve --to"]
    ratio = two["ratio"]
    cpus = report["machine"]["cpus"] or 1
    left = cpus - statistics.median(run["others"] for runs in tunnels.values() for run in runs)
    costs = (
        one["cpu_s_per_gib"],
        two["cpu_s_per_gib"],
        statistics.mean(row["load_cpu_s_per_gib"] for row in (one, two)),
        settings["tunnels"] / statistics.median(max(split) for split in two["split"]),
    )
    summary["tunnels"] = {
        "rows": rows,
        "ratio": ratio,
        "target_met": ratio > TUNNEL_TARGET,
        "cpus_left": left,
        "ceiling_idle": ceiling(cpus, *costs),
        "ceiling_left": ceiling(left, *costs),
    }
    return summary


def speedups(runs: dict[str, list[dict[str, Any]]]) -> list[float]:
    """Each round's throughput ratio, stream / plain (the plain run's time over the stream's)."""
    return [p["seconds"] / s["seconds"] for s, p in zip(runs["stream"], runs["plain"], strict=True)]


def ceiling(cpus: float, one: float, two: float, load: float, spread: float) -> float | None:
    """The best workers 2 / serve --to ratio these CPU costs allow on ``cpus`` CPUs.

    ``one``, ``two``: CPU seconds per GiB of serve --to (one process: one CPU
    at most) and of the 2 workers, whose busier one carries the larger share
    of the tunnels (``spread``: tunnels / its tunnels, 2 when even); ``load``:
    this process's, on the same CPUs. None when a cost is too small to time.
    """
    if min(one, two, load) <= 0 or cpus <= 0:
        return None
    best_one = min(1 / one, cpus / (one + load))
    best_two = min(spread / two, cpus / (two + load))
    return best_two / best_one


def mb_per_s(total: int, runs: list[dict[str, Any]]) -> float:
    return total / float(statistics.median(run["seconds"] for run in runs)) / 1e6


def cpu_per_gib(total: int, runs: list[dict[str, Any]], key: str = "cpu") -> float:
    return float(statistics.median(run[key] for run in runs)) * 2**30 / total


def _ratio(ratio: float, rounds: list[float]) -> str:
    return f"{ratio:.2f}x (rounds {min(rounds):.2f}-{max(rounds):.2f}x)"


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


def print_table(report: dict[str, Any]) -> None:
    machine, settings, summary = report["machine"], report["settings"], report["summary"]
    mib = settings["bulk_bytes"] // 2**20
    print(
        f"\nWsStream(websocket) against the same server's plain message loop "
        f"(Python {machine['python']}, websockets {machine['websockets']}, uvicorn "
        f"{machine['uvicorn']}, starlette {machine['starlette']}, aiohttp {machine['aiohttp']}, "
        f"{machine['cpus']} CPUs; client: {settings['client']}; "
        f"{settings['rounds']} interleaved rounds, medians)\n"
    )
    print("| front end | measure | (a) WsStream | (b) plain loop | (a)/(b) | target | met |")
    print("|---|---|---|---|---|---|---|")
    for fe, title in FRONT_ENDS.items():
        s = summary[fe]
        mbs, us, cpu = s["bulk_mb_per_s"], s["rtt_p50_us"], s["cpu_s_per_gib"]
        print(
            f"| {title} | bulk echo, {mib} MiB in 64 KiB messages | "
            f"{mbs['stream']:.0f} MB/s | {mbs['plain']:.0f} MB/s | "
            f"{_ratio(s['bulk_ratio'], s['bulk_round_ratios'])} | >= {BULK_TARGET}x | "
            f"{_yes(s['bulk_target_met'])} |"
        )
        print(
            f"| {title} | {RTT_BYTES} B echo RTT p50 ({settings['pings']} pings) | "
            f"{us['stream']:.1f} us | {us['plain']:.1f} us | "
            f"{_ratio(s['rtt_ratio'], s['rtt_round_ratios'])} | <= {RTT_TARGET}x | "
            f"{_yes(s['rtt_target_met'])} |"
        )
        cpu_ratio = "n/a" if s["cpu_ratio"] is None else f"{s['cpu_ratio']:.2f}x"
        print(
            f"| {title} | server CPU per GiB moved (in + out), bulk echo | "
            f"{cpu['stream']:.2f} s | {cpu['plain']:.2f} s | {cpu_ratio} | - | - |"
        )
        busy = [f"{s['busy'][v]['server']:.2f} / {s['busy'][v]['client']:.2f}" for v in VARIANTS]
        print(
            f"| {title} | CPUs busy during bulk echo, server / client | "
            f"{busy[0]} | {busy[1]} | - | - | - |"
        )
        light, light_cpu = s["light_mb_per_s"], s["light_cpu_s_per_gib"]
        print(
            f"| {title} | bulk echo, {mib} MiB, light client (the server busier) | "
            f"{light['stream']:.0f} MB/s | {light['plain']:.0f} MB/s | "
            f"{_ratio(s['light_ratio'], s['light_round_ratios'])} | >= {BULK_TARGET}x | "
            f"{_yes(s['light_target_met'])} |"
        )
        print(
            f"| {title} | the same, server CPU per GiB moved / CPUs busy | "
            f"{light_cpu['stream']:.2f} s / {s['light_busy']['stream']:.2f} | "
            f"{light_cpu['plain']:.2f} s / {s['light_busy']['plain']:.2f} | "
            f"{light_cpu['stream'] / light_cpu['plain']:.2f}x | - | - |"
        )
    t = summary["tunnels"]
    count, each = settings["tunnels"], settings["each_bytes"] // 2**20
    uvloop = f"uvloop {machine['uvloop']}" if machine["uvloop"] else "asyncio"
    print(
        f"\n{count} tunnels at once (opened {settings['opening']}), {each} MiB each, "
        "clients -> TCP sink "
        f"(uvicorn --ws websockets-sansio --loop auto: {uvloop}; ws-stream serve: asyncio; "
        f"{settings['rounds']} interleaved rounds, medians)\n"
    )
    print(
        "| server | aggregate throughput | / serve --to | server CPU per GiB "
        "| load generator CPU per GiB | CPUs busy with other processes "
        "| tunnels per process (each round) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in TUNNEL_SERVERS:
        row = t["rows"][name]
        split = "; ".join("/".join(map(str, s)) for s in row["split"])
        ratio = (
            "1.00x (reference)"
            if name == "ws-stream serve --to"
            else _ratio(row["ratio"], row["round_ratios"])
        )
        print(
            f"| {name} | {row['mb_per_s']:.0f} MB/s | {ratio} "
            f"| {row['cpu_s_per_gib']:.2f} s | {row['load_cpu_s_per_gib']:.2f} s "
            f"| {row['others_cpus']:.2f} | {split} |"
        )
    print(
        f"\nTunnelApp under uvicorn --workers 2 / ws-stream serve --to: {t['ratio']:.2f}x "
        f"(the issue expects > {TUNNEL_TARGET}x on 2 cores: "
        f"{'met' if t['target_met'] else 'not met'})"
    )
    cells = [
        "n/a" if value is None else f"{value:.2f}x"
        for value in (t["ceiling_idle"], t["ceiling_left"])
    ]
    print(
        f"The best ratio these CPU costs allow (the load generator shares the CPUs; "
        f"the busier worker sets the pace): {cells[0]} on {machine['cpus']} idle CPUs, "
        f"{cells[1]} on the {t['cpus_left']:.2f} CPUs other processes left."
    )
    print(f"Measured in {report['seconds']:.0f} s.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (7; quick 2)")
    parser.add_argument("--mib", type=int, default=None, help="MiB per bulk echo (256; quick 64)")
    parser.add_argument("--pings", type=int, default=None, help="echoes per RTT run (2000; 300)")
    parser.add_argument("--tunnels", type=int, default=16, help="tunnels at once")
    parser.add_argument("--tunnel-mib", type=int, default=None, help="MiB per tunnel (32; quick 8)")
    parser.add_argument(
        "--burst", action="store_true", help="open the tunnels all at once, not one by one"
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--serve-aiohttp", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_aiohttp is not None:
        serve_aiohttp(args.serve_aiohttp)
        return
    args.rounds = args.rounds or (2 if args.quick else 7)
    args.bulk = (args.mib or (64 if args.quick else 256)) * 2**20
    args.pings = args.pings or (300 if args.quick else 2000)
    args.each = (args.tunnel_mib or (8 if args.quick else 32)) * 2**20
    if min(args.rounds, args.bulk, args.pings, args.tunnels, args.each) < 1:
        parser.error("--rounds, --mib, --pings, --tunnels and --tunnel-mib must be >= 1")
    report = asyncio.run(main_async(args))
    print_table(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
