"""``ws-stream serve --to`` vs websockify, side by side in one run.

Both bridges run as they ship (``python -m ws_stream serve --to`` and
``python -m websockify``), each in its own processes, in front of the same TCP
sink and the same TCP source, which live in this process with the WebSocket
client (websockets, 64 KiB binary messages, offering the ``binary``
subprotocol). After one unmeasured warm-up run of each bridge, runs are
interleaved (A B, B A, ...) and repeated; the table shows medians and the
ratio. Throughput is timed until the last byte reached the far end (the TCP
sink, or the client); the CPU time of each bridge (all its processes) over the
same span is read with psutil. Then each bridge holds idle tunnels, and the
memory they cost is read too: the unique set size (USS) of the ws-stream
process before and after, and the USS of every process websockify forks (one
per connection).

Timings on a shared machine are noisy: only the ratios of one run mean
anything, and CPU time per GiB moves much less than wall-clock throughput when
other processes compete for the CPUs. Nothing here asserts a speed.

    python bench/bench_tunnel.py            # 256 MiB each way, 5 rounds; 1 000 idle tunnels
    python bench/bench_tunnel.py --quick    # seconds; proves the script works
    python bench/bench_tunnel.py --plot tunnel.png --json tunnel.json
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
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

IMPLS = ("ws-stream", "websockify")
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


@contextlib.asynccontextmanager
async def bridge(impl: str, target_port: int) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start one bridge in front of ``target_port``; yield its URI and process."""
    port = free_port()
    if impl == "ws-stream":
        cmd = [
            sys.executable,
            *("-m", "ws_stream", "serve", "-q", "--port", str(port)),
            *("--to", f"127.0.0.1:{target_port}"),
        ]
    else:
        cmd = [sys.executable, "-m", "websockify", f"127.0.0.1:{port}", f"127.0.0.1:{target_port}"]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        try:
            await wait_listening(port, proc, impl)
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
    """A WebSocket client reduced to nearly nothing, the same for both bridges.

    Uploads write frames masked once in advance; downloads only parse frame
    headers to count payload bytes. So the client costs the bridges' peers
    almost no CPU, and the bridges, not the client, set the pace.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, uri: str) -> RawClient:
        host_port = uri.split("/")[2]
        host, port = host_port.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port), limit=2**20)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n"
            ).encode()
        )
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        if not response.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {response[:200]!r}")
        return cls(reader, writer)

    async def send_all(self, total: int) -> None:
        """``total`` bytes as masked binary frames of CHUNK bytes (16 per write)."""
        batch = masked_frame(os.urandom(CHUNK)) * 16
        for _ in range(total // (CHUNK * 16)):
            self.writer.write(batch)
            await self.writer.drain()
        rest = total % (CHUNK * 16)
        for _ in range(rest // CHUNK):
            self.writer.write(batch[: len(batch) // 16])
        await self.writer.drain()

    async def receive(self, total: int) -> None:
        """Read frames until ``total`` payload bytes arrived."""
        reader = self.reader
        received = 0
        while received < total:
            head = await reader.readexactly(2)
            opcode, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await reader.readexactly(8))
            if head[1] & 0x80:
                await reader.readexactly(4)
            if opcode == 0x8:
                raise RuntimeError(f"closed after {received} of {total} bytes")
            if opcode in (0x0, 0x1, 0x2):
                received += n
            while n:  # skip the payload
                n -= len(await reader.read(min(n, 2**20)))

    async def close(self) -> None:
        self.writer.write(masked_frame(struct.pack("!H", 1000), opcode=0x8))
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            async with asyncio.timeout(5):
                while await self.reader.read(2**16):
                    pass
        self.writer.close()


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
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
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


def interleaved(rounds: int) -> Iterator[tuple[int, str]]:
    for r in range(rounds):
        for impl in IMPLS if r % 2 == 0 else reversed(IMPLS):
            yield r, impl


async def measure(
    name: str,
    rounds: int,
    bridges: dict[str, tuple[str, subprocess.Popen[bytes]]],
    fn: Callable[[int, str, int], Awaitable[Run]],
    total: int,
) -> dict[str, list[dict[str, float]]]:
    """Interleaved runs after one unmeasured warm-up run of each bridge."""
    for impl in IMPLS:
        uri, proc = bridges[impl]
        await fn(proc.pid, uri, total)
    results: dict[str, list[dict[str, float]]] = {impl: [] for impl in IMPLS}
    for r, impl in interleaved(rounds):
        uri, proc = bridges[impl]
        run = await fn(proc.pid, uri, total)
        results[impl].append({"seconds": run.seconds, "user": run.user, "system": run.system})
        print(
            f"  {name}, round {r + 1}: {impl} {run.seconds:.2f} s, "
            f"bridge CPU user {run.user:.2f} s + system {run.system:.2f} s",
            file=sys.stderr,
        )
    return results


def seconds(runs: list[dict[str, float]], key: str = "seconds") -> list[float]:
    return [run[key] for run in runs]


def mb_per_s(total: int, runs: list[dict[str, float]]) -> float:
    return total / statistics.median(seconds(runs)) / 1e6


def cpu_per_gib(total: int, runs: list[dict[str, float]], kinds: tuple[str, ...]) -> float:
    return statistics.median(sum(run[k] for k in kinds) for run in runs) * 2**30 / total


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    rounds = args.rounds or (2 if args.quick else 5)
    total = (2**24 if args.quick else 2**28) if args.mib is None else args.mib * 2**20
    tunnels = {"ws-stream": 100 if args.quick else 1000, "websockify": 20 if args.quick else 100}

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
            "numpy": _maybe_version("numpy"),
        },
        "total_bytes": total,
        "rounds": rounds,
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


def print_table(report: dict[str, Any]) -> None:
    machine = report["machine"]
    total = report["total_bytes"]
    mib = total // 2**20
    print(
        f"\nws-stream serve --to vs websockify {machine['websockify']} "
        f"(Python {machine['python']}, websockets {machine['websockets']}, "
        f"numpy {machine['numpy']}, {machine['cpus']} CPUs; "
        f"{report['rounds']} interleaved rounds, medians)\n"
    )
    print("| measure | ws-stream serve --to | websockify | ws-stream / websockify |")
    print("|---|---|---|---|")
    for key, title in (
        ("upload", f"{mib} MiB client -> TCP sink"),
        ("download", f"{mib} MiB TCP source -> client"),
    ):
        ours = mb_per_s(total, report[key]["ws-stream"])
        theirs = mb_per_s(total, report[key]["websockify"])
        # Each round's pair ran back to back: the spread of their ratios.
        runs = zip(
            seconds(report[key]["ws-stream"]), seconds(report[key]["websockify"]), strict=True
        )
        pairs = [theirs_s / ours_s for ours_s, theirs_s in runs]
        spread = f"rounds {min(pairs):.2f}-{max(pairs):.2f}x"
        print(
            f"| {title} | {ours:.0f} MB/s | {theirs:.0f} MB/s | {ours / theirs:.2f}x ({spread}) |"
        )
        both = ("user", "system")
        ours_cpu = cpu_per_gib(total, report[key]["ws-stream"], both)
        theirs_cpu = cpu_per_gib(total, report[key]["websockify"], both)
        ours_user = cpu_per_gib(total, report[key]["ws-stream"], ("user",))
        theirs_user = cpu_per_gib(total, report[key]["websockify"], ("user",))
        print(
            f"| bridge CPU per GiB, {title.split(' ', 2)[2]} | {ours_cpu:.2f} s "
            f"(user {ours_user:.2f} s) | {theirs_cpu:.2f} s (user {theirs_user:.2f} s) | "
            f"{_compare(ours_cpu, theirs_cpu)} (user: {_compare(ours_user, theirs_user)}) |"
        )
    ours_idle, theirs_idle = report["idle"]["ws-stream"], report["idle"]["websockify"]
    ours_kb = ours_idle["bytes_per_tunnel"] / 1e3
    theirs_kb = theirs_idle["bytes_per_tunnel"] / 1e3
    print(
        f"| memory per idle tunnel (USS) | {ours_kb:.0f} kB ({ours_idle['tunnels']} tunnels, "
        f"{ours_idle['processes']} process) | {theirs_kb:.0f} kB ({theirs_idle['tunnels']} "
        f"tunnels, {theirs_idle['processes']} processes) | "
        f"{_compare(ours_kb, theirs_kb)} |"
    )


def _compare(ours: float, theirs: float) -> str:
    """How much ws-stream used against websockify: "2.00x less", "1.50x more", "the same".

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
    width = 0.38
    for i, impl in enumerate(IMPLS):
        values = [mb_per_s(total, report[key][impl]) for key in ("upload", "download")]
        xs = [x + (i - 0.5) * width for x in range(len(labels))]
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
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--plot", help="also draw the throughput to this image (matplotlib)")
    args = parser.parse_args()
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
