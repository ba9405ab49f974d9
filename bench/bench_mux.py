"""yamux (``ws_stream.mux``) against what it replaces: one WebSocket per stream.

The server is this script (``--serve``) in its own process, on asyncio's
default loop: ``ws_stream.start_server`` listening twice, on ws:// and on
wss:// (a trustme certificate made by this process, which trusts its CA). By
path it serves plain WebSockets (``/sink``, ``/echo``: the ``WsStream``'s own
reader and writer) or yamux sessions whose every stream is a sink or an echo
(``/mux-sink``, ``/mux-echo``: ``ws_stream.mux.open_session(on_stream=...)``).
The clients are ``ws_stream.connect_stream`` and ``Session.open_stream`` in
this process. On a 2-core machine, the server and the clients each have a CPU:
neither side's Python code slows the other's, in both variants alike.

1. Aggregate throughput, ``--streams`` concurrent uploads of ``--mib`` MiB
   each (client -> server): (a) streams of ONE mux session over one WebSocket,
   (b) as many separate WebSockets. Each upload is an 8-byte length, then the
   bytes in writes of ``--write-kib`` KiB (64; ``write()`` + ``drain()``); the
   server reads and discards them, then answers one byte, which ends the
   upload's clock. Every stream or WebSocket is open before the clock
   starts; the clock runs until the last upload's answer. Target: (a)/(b) >=
   0.9x. The CPU rows split each side's time: user time is Python (ours and
   websockets'), the rest is the kernel's (the sockets).

2. Opening: (a) a stream on a session already open, (b) a new WebSocket, on
   ws:// and on wss://; each open is timed until the first byte came back
   (open, write 1 byte, read the echoed byte); the stream or WebSocket is then
   closed, untimed, before the next open. ``--opens`` sequential opens per
   round, median. Target: the stream is >= 10x faster ((b)/(a)).
   Its floor is measured in the same rounds: (c) a 1-byte echo on a plain
   WebSocket already open to the same server (a ``WsStream``, same scheme). A
   stream's open and first byte back cross the WebSocket under the session at
   least once, so (b)/(c) is the best ratio any stream could reach here.

3. Round trip: ``--pings`` sequential 64-byte echoes (after ``--pings`` // 10
   unmeasured) on (a) a mux stream, (b) a plain ``WsStream``, both on ws://,
   median. Target: (a)/(b) <= 1.2x.

Every measurement runs once unmeasured (warm-up), then in interleaved rounds
(A B, B A, ...); the table shows medians, and ratios of medians with the range
of the ratios of each round's back-to-back pair. The CPU time of the server
process and of this one over each upload run is shown too: it moves much less
than wall-clock figures when other processes compete for the CPUs. Timings on a
shared machine are noisy: only the ratios of one run mean anything. glibc's
default malloc thresholds make bulk figures bimodal run to run (README,
"Performance"): ``MALLOC_MMAP_THRESHOLD_=4194304 MALLOC_TRIM_THRESHOLD_=33554432``
in the environment steadies them (the server inherits it; the table's title
says which applied). Nothing here asserts a speed.

    python bench/bench_mux.py            # 16 x 64 MiB, 200 opens, 2000 pings, 7 rounds (~20 s)
    python bench/bench_mux.py --quick    # seconds; proves the script works
    python bench/bench_mux.py --json mux.json --rounds 9
    python bench/bench_mux.py --write-kib 256   # bigger writes: bigger yamux frames

Needs psutil and trustme (the test extra).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import signal
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil

import ws_stream
import ws_stream.mux

ROOT = Path(__file__).resolve().parent.parent

CHUNK = 2**16
RTT_BYTES = 64
#: Options of every WebSocket, both sides: no keepalive pings during a run.
WS_OPTS: dict[str, Any] = {"ping_interval": None, "open_timeout": 30}
SCHEMES = ("ws", "wss")
THROUGHPUT_TARGET = 0.9  # mux / separate, at least
OPEN_TARGET = 10.0  # new WebSocket / new stream, at least
RTT_TARGET = 1.2  # mux / plain, at most
DONE = b"\x01"
#: glibc's malloc thresholds: their defaults make bulk figures move run to run
#: (README, "Performance"); the server process inherits them from this one.
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


# The server process


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read an 8-byte length and that many bytes, discard them, answer DONE."""
    (left,) = struct.unpack("!Q", await reader.readexactly(8))
    while left:
        data = await reader.read(min(left, 2**18))
        if not data:
            raise ConnectionError(f"EOF with {left} bytes still to come")
        left -= len(data)
    writer.write(DONE)
    await writer.drain()
    # The client closes; reading on sees its FIN (or close frame).
    while await reader.read(CHUNK):
        pass


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()


async def _mux_stream(
    handler: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        await handler(reader, writer)
        writer.write_eof()
        await reader.read()  # until the client's FIN: then the stream is done
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    path = writer.get_extra_info("request").path
    handler = _sink if path.endswith("sink") else _echo
    if path.startswith("/mux-"):

        async def on_stream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await _mux_stream(handler, r, w)

        session = await ws_stream.mux.open_session(
            reader, writer, client=False, on_stream=on_stream
        )
        await session.wait_closed()
        await session.close()
        return
    try:
        await handler(reader, writer)
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(cert_dir: str) -> None:
    """Listen on ws:// and wss:// (127.0.0.1, free ports); print both ports; until SIGINT."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(Path(cert_dir) / "cert.pem", Path(cert_dir) / "key.pem")
    plain = await ws_stream.start_server(_serve_connection, "127.0.0.1", 0, **WS_OPTS)
    secure = await ws_stream.start_server(_serve_connection, "127.0.0.1", 0, ssl=context, **WS_OPTS)
    ports = [server.sockets[0].getsockname()[1] for server in (plain, secure)]
    print(*ports, flush=True)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    await stop
    for server in (plain, secure):
        server.close()
        await server.wait_closed()


# The client side


@contextlib.contextmanager
def server_process() -> Iterator[tuple[dict[str, str], int, ssl.SSLContext]]:
    """The server process: yield (base URI per scheme, its pid, a client SSL context)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with tempfile.TemporaryDirectory() as tmp:
        cert.private_key_pem.write_to_path(str(Path(tmp) / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(Path(tmp) / "cert.pem"))
        for pem in cert.cert_chain_pems[1:]:
            pem.write_to_path(str(Path(tmp) / "cert.pem"), append=True)
        log_path = Path(tmp) / "log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--serve", tmp],
                cwd=ROOT,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            if not line:
                proc.wait(10)
                raise RuntimeError(
                    f"the server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
                )
            ws_port, wss_port = line.split()
            uris = {"ws": f"ws://127.0.0.1:{ws_port}", "wss": f"wss://127.0.0.1:{wss_port}"}
            yield uris, proc.pid, client_ctx
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            errors = log_path.read_text(errors="replace")
            if proc.returncode not in (0, -signal.SIGINT) or "Traceback" in errors:
                print(
                    f"the server exited with {proc.returncode}:\n{errors[-3000:]}", file=sys.stderr
                )


def process_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of the server process: (user + system, user)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system), float(times.user)


def own_cpu() -> tuple[float, float]:
    """CPU seconds of this process, the clients: (user + system, user)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_utime


def interleaved(rounds: int, items: tuple[Any, ...]) -> Iterator[tuple[int, Any]]:
    """Every round runs each item once, in an order reversed every other round."""
    for r in range(rounds):
        for item in items if r % 2 == 0 else reversed(items):
            yield r, item


class Client:
    """This process's side: the server's addresses, and one mux session per path and scheme."""

    def __init__(self, uris: dict[str, str], pid: int, context: ssl.SSLContext) -> None:
        self.uris = uris
        self.pid = pid
        self.context = context
        self._sessions: dict[tuple[str, str], tuple[ws_stream.WsStream, ws_stream.mux.Session]] = {}

    async def connect(self, scheme: str, path: str) -> ws_stream.WsStream:
        tls = {"ssl": self.context} if scheme == "wss" else {}
        return await ws_stream.connect_stream(f"{self.uris[scheme]}{path}", **WS_OPTS, **tls)

    async def session(self, scheme: str, path: str) -> ws_stream.mux.Session:
        """The session on ``path`` (opened at the first call, kept for the whole run)."""
        if (scheme, path) not in self._sessions:
            stream = await self.connect(scheme, path)
            session = await ws_stream.mux.open_session(stream.reader, stream.writer, client=True)
            self._sessions[scheme, path] = (stream, session)
        return self._sessions[scheme, path][1]

    async def close(self) -> None:
        """Close the sessions, then their WebSockets (a step that hangs is reported, not waited)."""
        for (scheme, path), (stream, session) in self._sessions.items():
            for step, closing in (("session", session.close()), ("WebSocket", stream.close())):
                try:
                    async with asyncio.timeout(30):
                        await closing
                except TimeoutError:
                    print(f"closing the {step} of {scheme}:// {path} hung", file=sys.stderr)


async def close_pair(writer: asyncio.StreamWriter, stream: ws_stream.WsStream | None) -> None:
    """A mux stream: FIN, until the server's; a WebSocket: the closing handshake."""
    if stream is not None:
        await stream.close()
    else:
        writer.close()
        await writer.wait_closed()


# 1. Aggregate throughput


async def upload(
    client: Client, variant: str, streams: int, each: int, chunk: bytes
) -> dict[str, float]:
    """``streams`` uploads of ``each`` bytes at once; timed until the last one was answered."""
    pairs: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, ws_stream.WsStream | None]] = []
    if variant == "mux":
        session = await client.session("ws", "/mux-sink")
        for _ in range(streams):
            reader, writer = await session.open_stream()
            pairs.append((reader, writer, None))
    else:
        for _ in range(streams):
            stream = await client.connect("ws", "/sink")
            pairs.append((stream.reader, stream.writer, stream))

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(struct.pack("!Q", each))
        for _ in range(each // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        if each % len(chunk):
            writer.write(chunk[: each % len(chunk)])
        if await reader.readexactly(1) != DONE:
            raise RuntimeError("the server did not answer DONE")

    try:
        server, own = process_cpu(client.pid), own_cpu()
        started = time.perf_counter()
        async with asyncio.timeout(600):
            await asyncio.gather(*(one(r, w) for r, w, _ in pairs))
        elapsed = time.perf_counter() - started
        server_end, own_end = process_cpu(client.pid), own_cpu()
    finally:
        await asyncio.gather(*(close_pair(w, s) for _, w, s in pairs), return_exceptions=True)
    return {
        "seconds": elapsed,
        "server_cpu": server_end[0] - server[0],
        "server_user": server_end[1] - server[1],
        "client_cpu": own_end[0] - own[0],
        "client_user": own_end[1] - own[1],
    }


async def measure_throughput(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    chunk = os.urandom(args.write)
    variants = ("mux", "separate")
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for v in variants:  # warm-up
        await upload(client, v, args.streams, min(args.each, 2**22), chunk)
    for r, v in interleaved(args.rounds, variants):
        result = await upload(client, v, args.streams, args.each, chunk)
        runs[v].append(result)
        total = args.streams * args.each
        print(
            f"  round {r + 1}: {v}: {total / result['seconds'] / 1e6:.0f} MB/s "
            f"(server CPU {result['server_cpu']:.2f} s, client CPU {result['client_cpu']:.2f} s)",
            file=sys.stderr,
        )
    return runs


# 2. Opening


async def open_once(client: Client, variant: str, scheme: str) -> float:
    """Seconds from the open to the first byte echoed; then closes (untimed)."""
    stream: ws_stream.WsStream | None = None
    if variant == "stream":
        session = await client.session(scheme, "/mux-echo")
        started = time.perf_counter()
        reader, writer = await session.open_stream()
    else:
        started = time.perf_counter()
        stream = await client.connect(scheme, "/echo")
        reader, writer = stream.reader, stream.writer
    writer.write(b"x")
    got = await reader.readexactly(1)
    elapsed = time.perf_counter() - started
    if got != b"x":
        raise RuntimeError(f"echoed {got!r}")
    await close_pair(writer, stream)
    return elapsed


async def opens(client: Client, variant: str, scheme: str, count: int) -> dict[str, float]:
    if variant == "echo":
        return await echoes(client, scheme, count)
    async with asyncio.timeout(600):
        samples = [await open_once(client, variant, scheme) for _ in range(count)]
    return {"p50": statistics.median(samples), "p90": quantile90(samples)}


async def echoes(client: Client, scheme: str, count: int) -> dict[str, float]:
    """The floor of an open: ``count`` 1-byte echoes on one plain WebSocket, open already."""
    stream = await client.connect(scheme, "/echo")
    samples = []
    try:
        async with asyncio.timeout(600):
            for _ in range(count):
                started = time.perf_counter()
                stream.writer.write(b"x")
                await stream.reader.readexactly(1)
                samples.append(time.perf_counter() - started)
    finally:
        await stream.close()
    return {"p50": statistics.median(samples), "p90": quantile90(samples)}


def quantile90(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=10)[-1] if len(samples) > 1 else samples[0]


OPEN_ITEMS = tuple((v, s) for s in SCHEMES for v in ("stream", "websocket", "echo"))


async def measure_opens(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        s: {"stream": [], "websocket": [], "echo": []} for s in SCHEMES
    }
    for v, s in OPEN_ITEMS:  # warm-up
        await opens(client, v, s, min(args.opens, 20))
    for r, (v, s) in interleaved(args.rounds, OPEN_ITEMS):
        result = await opens(client, v, s, args.opens)
        runs[s][v].append(result)
        print(
            f"  round {r + 1}: {v} over {s}://: p50 {result['p50'] * 1e6:.0f} us", file=sys.stderr
        )
    return runs


# 3. Round trip


async def echo_rtt(client: Client, variant: str, count: int) -> dict[str, float]:
    """The median round trip of ``count`` sequential RTT_BYTES echoes (after count // 10)."""
    stream: ws_stream.WsStream | None = None
    if variant == "mux":
        session = await client.session("ws", "/mux-echo")
        reader, writer = await session.open_stream()
    else:
        stream = await client.connect("ws", "/echo")
        reader, writer = stream.reader, stream.writer
    message = os.urandom(RTT_BYTES)
    samples = []
    try:
        async with asyncio.timeout(600):
            for i in range(count + count // 10):
                started = time.perf_counter()
                writer.write(message)
                await reader.readexactly(RTT_BYTES)
                if i >= count // 10:
                    samples.append(time.perf_counter() - started)
    finally:
        await close_pair(writer, stream)
    return {"p50": statistics.median(samples), "p90": quantile90(samples)}


async def measure_rtt(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    variants = ("mux", "plain")
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for v in variants:  # warm-up
        await echo_rtt(client, v, min(args.pings, 200))
    for r, v in interleaved(args.rounds, variants):
        result = await echo_rtt(client, v, args.pings)
        runs[v].append(result)
        print(f"  round {r + 1}: {v}: RTT p50 {result['p50'] * 1e6:.1f} us", file=sys.stderr)
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
            **{name: _version(name) for name in ("ws-stream", "websockets")},
            "malloc": {name: os.environ.get(name) for name in MALLOC_ENV},
        },
        "settings": {
            "rounds": args.rounds,
            "streams": args.streams,
            "each_bytes": args.each,
            "chunk": args.write,
            "opens": args.opens,
            "pings": args.pings,
            "rtt_bytes": RTT_BYTES,
            "server": "this script --serve, its own process, asyncio's default loop",
            "upload": "client -> server; the server reads and discards, then answers 1 byte",
        },
    }
    started = time.perf_counter()
    with server_process() as (uris, pid, context):
        client = Client(uris, pid, context)
        try:
            print(f"{args.streams} concurrent uploads", file=sys.stderr)
            report["throughput"] = await measure_throughput(client, args)
            print("opening a stream vs a WebSocket", file=sys.stderr)
            report["opens"] = await measure_opens(client, args)
            print(f"{RTT_BYTES} B round trip", file=sys.stderr)
            report["rtt"] = await measure_rtt(client, args)
        finally:
            await client.close()
    report["seconds"] = time.perf_counter() - started
    report["summary"] = summarize(report)
    return report


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The ratios of the table, and whether each target is met."""
    settings = report["settings"]
    total = settings["streams"] * settings["each_bytes"]
    runs = report["throughput"]
    mbs = {v: total / statistics.median(run["seconds"] for run in runs[v]) / 1e6 for v in runs}
    ratio = mbs["mux"] / mbs["separate"]
    summary: dict[str, Any] = {
        "throughput": {
            "mb_per_s": mbs,
            "ratio": ratio,
            "round_ratios": [
                s["seconds"] / m["seconds"]
                for m, s in zip(runs["mux"], runs["separate"], strict=True)
            ],
            "target_met": ratio >= THROUGHPUT_TARGET,
            "cpu_s_per_gib": {
                v: {
                    who: statistics.median(run[who] for run in runs[v]) * 2**30 / total
                    for who in ("server_cpu", "server_user", "client_cpu", "client_user")
                }
                for v in runs
            },
            # Of one CPU, over the runs: which side is the bottleneck?
            "busy": {
                v: {
                    who: statistics.median(run[f"{who}_cpu"] / run["seconds"] for run in runs[v])
                    for who in ("server", "client")
                }
                for v in runs
            },
        }
    }
    for scheme in SCHEMES:
        runs = report["opens"][scheme]
        p50 = {v: statistics.median(run["p50"] for run in runs[v]) for v in runs}
        ratio = p50["websocket"] / p50["stream"]
        summary[f"open_{scheme}"] = {
            "p50_us": {v: p50[v] * 1e6 for v in p50},
            "ratio": ratio,
            "round_ratios": [
                w["p50"] / s["p50"] for s, w in zip(runs["stream"], runs["websocket"], strict=True)
            ],
            "target_met": ratio >= OPEN_TARGET,
            # The best (b)/(a) any stream could reach: (a) crosses the WebSocket at least once.
            "ceiling": p50["websocket"] / p50["echo"],
        }
    runs = report["rtt"]
    p50 = {v: statistics.median(run["p50"] for run in runs[v]) for v in runs}
    ratio = p50["mux"] / p50["plain"]
    summary["rtt"] = {
        "p50_us": {v: p50[v] * 1e6 for v in p50},
        "ratio": ratio,
        "round_ratios": [
            m["p50"] / p["p50"] for m, p in zip(runs["mux"], runs["plain"], strict=True)
        ],
        "target_met": ratio <= RTT_TARGET,
    }
    return summary


def _ratio(ratio: float, rounds: list[float]) -> str:
    return f"{ratio:.2f}x (rounds {min(rounds):.2f}-{max(rounds):.2f}x)"


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


def _us(value: float) -> str:
    return f"{value:.0f} us" if value >= 100 else f"{value:.1f} us"


def print_table(report: dict[str, Any]) -> None:
    machine, settings, summary = report["machine"], report["settings"], report["summary"]
    malloc = (
        ", ".join(f"{k}={v}" for k, v in machine["malloc"].items() if v is not None)
        or "default thresholds"
    )
    print(
        f"\nws_stream.mux (yamux) against one WebSocket per stream (Python {machine['python']}, "
        f"websockets {machine['websockets']}, {machine['cpus']} CPUs; server: "
        f"{settings['server']}; glibc malloc: {malloc}; "
        f"{settings['rounds']} interleaved rounds, medians)\n"
    )
    print("| measure | (a) mux | (b) without mux | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    t = summary["throughput"]
    n, mib = settings["streams"], settings["each_bytes"] / 2**20
    print(
        f"| {n} x {mib:g} MiB uploads at once, aggregate: (a) {n} streams of one session, "
        f"(b) {n} WebSockets | {t['mb_per_s']['mux']:.0f} MB/s | "
        f"{t['mb_per_s']['separate']:.0f} MB/s | {_ratio(t['ratio'], t['round_ratios'])} | "
        f"(a)/(b) >= {THROUGHPUT_TARGET}x | {_yes(t['target_met'])} |"
    )
    cpu = t["cpu_s_per_gib"]
    for who, what in (
        ("server_cpu", "server CPU per GiB uploaded"),
        ("server_user", "server user CPU per GiB (Python; the rest is the kernel's)"),
        ("client_cpu", "client CPU per GiB uploaded"),
        ("client_user", "client user CPU per GiB"),
    ):
        mux, separate = cpu["mux"][who], cpu["separate"][who]
        ratio = f"{mux / separate:.2f}x" if mux > 0 and separate > 0 else "n/a (too short to time)"
        print(f"| {what} | {mux:.2f} s | {separate:.2f} s | {ratio} | - | - |")
    busy = [f"{t['busy'][v]['server']:.2f} / {t['busy'][v]['client']:.2f}" for v in t["busy"]]
    print(f"| CPUs busy during the uploads, server / client | {busy[0]} | {busy[1]} | - | - | - |")
    for scheme in SCHEMES:
        o = summary[f"open_{scheme}"]
        print(
            f"| open + 1-byte echo, {scheme}://, p50 of {settings['opens']}: (a) a stream on an "
            f"open session, (b) a new WebSocket | {_us(o['p50_us']['stream'])} | "
            f"{_us(o['p50_us']['websocket'])} | {_ratio(o['ratio'], o['round_ratios'])} | "
            f"(b)/(a) >= {OPEN_TARGET:g}x | {_yes(o['target_met'])} |"
        )
    for scheme in SCHEMES:
        o = summary[f"open_{scheme}"]
        print(
            f"| floor of (a), {scheme}://: (c) a 1-byte echo on an open plain WebSocket, p50 of "
            f"{settings['opens']} | {_us(o['p50_us']['echo'])} | - | best (b)/(a) possible: "
            f"(b)/(c) = {o['ceiling']:.2f}x | - | - |"
        )
    r = summary["rtt"]
    print(
        f"| {settings['rtt_bytes']} B echo RTT p50 ({settings['pings']} pings): (a) a mux stream, "
        f"(b) a plain WsStream | {_us(r['p50_us']['mux'])} | {_us(r['p50_us']['plain'])} | "
        f"{_ratio(r['ratio'], r['round_ratios'])} | (a)/(b) <= {RTT_TARGET}x | "
        f"{_yes(r['target_met'])} |"
    )
    print(
        f"\nUploads: {settings['upload']}, in {settings['chunk'] // 2**10} KiB writes; every "
        "stream or WebSocket opened before the clock starts, the clock stops at the last answer."
    )
    print(f"Measured in {report['seconds']:.0f} s.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (7; quick 2)")
    parser.add_argument("--streams", type=int, default=16, help="concurrent uploads")
    parser.add_argument("--mib", type=int, default=None, help="MiB per upload (64; quick 1)")
    parser.add_argument("--opens", type=int, default=None, help="opens per run (200; quick 20)")
    parser.add_argument("--pings", type=int, default=None, help="echoes per RTT run (2000; 200)")
    parser.add_argument("--write-kib", type=int, default=64, help="upload write size (64 KiB)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--serve", metavar="CERT_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.serve))
        return
    args.rounds = args.rounds or (2 if args.quick else 7)
    args.each = (args.mib or (1 if args.quick else 64)) * 2**20
    args.opens = args.opens or (20 if args.quick else 200)
    args.pings = args.pings or (200 if args.quick else 2000)
    args.write = args.write_kib * 2**10
    if min(args.rounds, args.streams, args.each, args.opens, args.pings, args.write) < 1:
        parser.error("--rounds, --streams, --mib, --opens, --pings and --write-kib must be >= 1")
    report = asyncio.run(main_async(args))
    print_table(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
