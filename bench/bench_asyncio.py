"""ws_stream asyncio vs a plain websockets loop, side by side in one run.

Each implementation's server runs in its own subprocess (one core each on a
2-core machine); runs are interleaved (A B C A B C ...) and repeated; the table
shows medians and the ratio to the websockets loop of the same run. Timings on
a shared machine are noisy: only the ratios of one run mean anything.

    python bench/bench_asyncio.py            # 256 MiB bulk, 5 rounds
    python bench/bench_asyncio.py --quick    # seconds; proves the script works
    python bench/bench_asyncio.py --uvloop   # both sides on uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

import ws_stream

IMPLS = ("websockets", "naive_pump", "ws_stream")
WS_OPTS: dict[str, Any] = {"compression": None, "max_size": 2**24, "ping_interval": None}


# Servers (run in a subprocess: `--serve IMPL MODE`)


async def _serve(impl: str, mode: str) -> None:
    async def ws_handler(ws: Any) -> None:
        if mode == "sink":
            n = 0
            async for msg in ws:
                n += len(msg)
            return
        async for msg in ws:  # echo
            await ws.send(msg)

    async def stream_cb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if mode == "sink":
            while await reader.read(2**20):
                pass
        else:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    if impl == "ws_stream":
        server = await ws_stream.start_server(
            stream_cb, "127.0.0.1", 0, ping_interval=None, max_size=2**24
        )
    else:  # the websockets loop serves both websockets and naive-pump clients
        server = await serve(ws_handler, "127.0.0.1", 0, **WS_OPTS)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


# Clients: each returns a number (seconds, or a list of RTTs)


async def _naive_pair(uri: str) -> tuple[Any, asyncio.StreamReader, asyncio.Task[None]]:
    """What users write by hand: recv() into a StreamReader."""
    ws = await connect(uri, **WS_OPTS)
    reader = asyncio.StreamReader(limit=2**20)

    async def pump() -> None:
        try:
            async for msg in ws:
                reader.feed_data(msg)
        finally:
            reader.feed_eof()

    return ws, reader, asyncio.create_task(pump())


async def bulk(impl: str, uri: str, total: int, size: int) -> float:
    chunk = os.urandom(size)
    count = total // size
    if impl == "ws_stream":
        reader, writer = await ws_stream.open_connection(uri, ping_interval=None)
        t0 = time.perf_counter()
        for _ in range(count):
            writer.write(chunk)
            await writer.drain()
        stream = writer.get_extra_info("ws_stream")
        await stream.close()
        return time.perf_counter() - t0
    ws = await connect(uri, **WS_OPTS)
    t0 = time.perf_counter()
    for _ in range(count):
        await ws.send(chunk)
    await ws.close()
    return time.perf_counter() - t0


async def rtt(impl: str, uri: str, rounds: int, size: int = 64) -> list[float]:
    msg = os.urandom(size)
    out = []
    if impl == "websockets":
        ws = await connect(uri, **WS_OPTS)
        for _ in range(rounds):
            t0 = time.perf_counter()
            await ws.send(msg)
            await ws.recv()
            out.append(time.perf_counter() - t0)
        await ws.close()
    elif impl == "naive_pump":
        ws, reader, task = await _naive_pair(uri)
        for _ in range(rounds):
            t0 = time.perf_counter()
            await ws.send(msg)
            await reader.readexactly(size)
            out.append(time.perf_counter() - t0)
        await ws.close()
        await task
    else:
        reader, writer = await ws_stream.open_connection(uri, ping_interval=None)
        for _ in range(rounds):
            t0 = time.perf_counter()
            writer.write(msg)
            await writer.drain()
            await reader.readexactly(size)
            out.append(time.perf_counter() - t0)
        await writer.get_extra_info("ws_stream").close()
    return out


def _start_server(impl: str, mode: str, use_uvloop: bool) -> tuple[subprocess.Popen[str], str]:
    server_impl = "ws_stream" if impl == "ws_stream" else "websockets"
    cmd = [sys.executable, __file__, "--serve", server_impl, mode]
    if use_uvloop:
        cmd.append("--uvloop")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = proc.stdout.readline().strip()
    return proc, f"ws://127.0.0.1:{port}"


def _run(use_uvloop: bool, coro: Awaitable[Any]) -> Any:
    if use_uvloop:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    return asyncio.run(coro)  # type: ignore[arg-type]


def measure(
    name: str,
    mode: str,
    impls: tuple[str, ...],
    rounds: int,
    use_uvloop: bool,
    fn: Callable[[str, str], Awaitable[Any]],
) -> dict[str, list[Any]]:
    servers = {impl: _start_server(impl, mode, use_uvloop) for impl in impls}
    results: dict[str, list[Any]] = {impl: [] for impl in impls}
    try:
        for _ in range(rounds):
            for impl in impls:  # interleaved: A B C A B C ...
                results[impl].append(_run(use_uvloop, fn(impl, servers[impl][1])))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()
    print(f"  {name}: done", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--serve", nargs=2, metavar=("IMPL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _run(args.uvloop, _serve(*args.serve))
        return
    rounds = args.rounds or (2 if args.quick else 5)
    bulk_total = 2**22 if args.quick else 2**28
    small_total = 2**20 if args.quick else 2**24
    rtt_rounds = 200 if args.quick else 5000
    loop_name = "uvloop" if args.uvloop else "asyncio"

    rows = []
    bulk_res = measure(
        "bulk 64 KiB writes",
        "sink",
        ("websockets", "ws_stream"),
        rounds,
        args.uvloop,
        lambda impl, uri: bulk(impl, uri, bulk_total, 2**16),
    )
    rows.append(("bulk 64 KiB writes", "MB/s", bulk_total, bulk_res))
    small_res = measure(
        "256 B writes",
        "sink",
        ("websockets", "ws_stream"),
        rounds,
        args.uvloop,
        lambda impl, uri: bulk(impl, uri, small_total, 256),
    )
    rows.append(("256 B writes", "MB/s", small_total, small_res))
    rtt_res = measure(
        "64 B echo RTT",
        "echo",
        IMPLS,
        rounds,
        args.uvloop,
        lambda impl, uri: rtt(impl, uri, rtt_rounds),
    )

    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "loop": loop_name,
            "websockets": websockets.__version__,
        },
        "rows": [],
    }
    print(
        f"\nws_stream vs websockets ({loop_name}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, {rounds} interleaved rounds, medians)\n"
    )
    print("| scenario | implementation | result | ratio to websockets loop |")
    print("|---|---|---|---|")
    for title, unit, total, res in rows:
        ref = total / statistics.median(res["websockets"]) / 1e6
        for impl, secs in res.items():
            mbps = total / statistics.median(secs) / 1e6
            print(f"| {title} | {impl} | {mbps:.0f} {unit} | {mbps / ref:.2f}x |")
            report["rows"].append(
                {"scenario": title, "impl": impl, "mb_per_s": mbps, "ratio": mbps / ref}
            )
    ref50 = statistics.median(statistics.median(r) for r in rtt_res["websockets"])
    for impl, runs in rtt_res.items():
        p50 = statistics.median(statistics.median(r) for r in runs)
        p99 = statistics.median(statistics.quantiles(r, n=100)[98] for r in runs)
        print(
            f"| 64 B echo RTT | {impl} | p50 {p50 * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us "
            f"| {p50 / ref50:.2f}x (lower is better) |"
        )
        report["rows"].append(
            {
                "scenario": "64 B echo RTT",
                "impl": impl,
                "p50_us": p50 * 1e6,
                "p99_us": p99 * 1e6,
                "ratio": p50 / ref50,
            }
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
