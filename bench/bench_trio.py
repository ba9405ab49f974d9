"""ws_stream.trio vs a plain websockets.trio loop vs trio-websocket, in one run.

Each implementation's server runs in its own subprocess; runs are interleaved
(A B C A B C ...) and repeated; the table shows medians and the ratio to the
websockets.trio loop of the same run. Only the ratios of one run mean anything
on a shared machine.

    python bench/bench_trio.py            # 256 MiB bulk, 5 rounds
    python bench/bench_trio.py --quick    # seconds; proves the script works

Needs the bench extra (trio-websocket): pip install -e '.[bench]'
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

IMPLS = ("websockets.trio", "trio-websocket", "ws_stream.trio")
MAX = 2**24


async def _serve(impl: str, mode: str) -> None:
    if impl == "ws_stream.trio":
        from ws_stream.trio import WsStream, serve_websocket_stream

        async def stream_handler(stream: WsStream) -> None:
            while data := await stream.receive_some(2**20):
                if mode == "echo":
                    await stream.send_all(data)

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(
                    serve_websocket_stream,
                    stream_handler,
                    0,
                    host="127.0.0.1",
                    ping_interval=None,
                    max_size=MAX,
                )
            )
            print(listeners[0].socket.getsockname()[1], flush=True)
    elif impl == "websockets.trio":
        from websockets.trio.server import serve

        async def ws_handler(ws: Any) -> None:
            async for msg in ws:
                if mode == "echo":
                    await ws.send(msg)

        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(
                    serve,
                    ws_handler,
                    0,
                    host="127.0.0.1",
                    compression=None,
                    ping_interval=None,
                    max_size=MAX,
                )
            )
            print(server.listeners[0].socket.getsockname()[1], flush=True)
    else:
        from trio_websocket import serve_websocket

        async def tw_handler(request: Any) -> None:
            ws = await request.accept()
            try:
                while True:
                    msg = await ws.get_message()
                    if mode == "echo":
                        await ws.send_message(msg)
            except Exception:
                pass

        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(
                    serve_websocket,
                    tw_handler,
                    "127.0.0.1",
                    0,
                    ssl_context=None,
                    max_message_size=MAX,
                )
            )
            print(server.port, flush=True)


class Client:
    """A uniform send / receive-exactly / close surface over the three clients."""

    def __init__(self, impl: str, uri: str) -> None:
        self.impl, self.uri = impl, uri

    async def __aenter__(self) -> Client:
        if self.impl == "ws_stream.trio":
            from ws_stream.trio import open_websocket_stream

            self._cm = open_websocket_stream(self.uri, ping_interval=None, max_size=MAX)
            self.s = await self._cm.__aenter__()
        elif self.impl == "websockets.trio":
            from websockets.trio.client import connect

            self._cm = connect(self.uri, compression=None, ping_interval=None, max_size=MAX)
            self.s = await self._cm.__aenter__()
        else:
            from trio_websocket import open_websocket_url

            self._cm = open_websocket_url(self.uri, max_message_size=MAX)
            self.s = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)

    async def send(self, data: bytes) -> None:
        if self.impl == "ws_stream.trio":
            await self.s.send_all(data)
        elif self.impl == "websockets.trio":
            await self.s.send(data)
        else:
            await self.s.send_message(data)

    async def recv_exactly(self, n: int) -> None:
        got = 0
        while got < n:
            if self.impl == "ws_stream.trio":
                got += len(await self.s.receive_some(n - got))
            elif self.impl == "websockets.trio":
                got += len(await self.s.recv())
            else:
                got += len(await self.s.get_message())


async def bulk(impl: str, uri: str, total: int, size: int) -> float:
    chunk = os.urandom(size)
    async with Client(impl, uri) as client:
        t0 = time.perf_counter()
        for _ in range(total // size):
            await client.send(chunk)
    return time.perf_counter() - t0  # includes the close handshake: all data was read


async def rtt(impl: str, uri: str, rounds: int) -> list[float]:
    msg = os.urandom(64)
    out = []
    async with Client(impl, uri) as client:
        for _ in range(rounds):
            t0 = time.perf_counter()
            await client.send(msg)
            await client.recv_exactly(64)
            out.append(time.perf_counter() - t0)
    return out


def _start(impl: str, mode: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", impl, mode], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, f"ws://127.0.0.1:{proc.stdout.readline().strip()}/"


def measure(
    mode: str, rounds: int, fn: Callable[[str, str], Awaitable[Any]]
) -> dict[str, list[Any]]:
    servers = {impl: _start(impl, mode) for impl in IMPLS}
    results: dict[str, list[Any]] = {impl: [] for impl in IMPLS}
    try:
        for _ in range(rounds):
            for impl in IMPLS:
                results[impl].append(trio.run(fn, impl, servers[impl][1]))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--json")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(_serve, *args.serve)
        return
    rounds = args.rounds or (2 if args.quick else 5)
    bulk_total = 2**22 if args.quick else 2**28
    small_total = 2**19 if args.quick else 2**23
    rtt_rounds = 200 if args.quick else 5000
    rows: list[dict[str, Any]] = []
    print(
        f"\nws_stream.trio vs websockets.trio vs trio-websocket (Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, {rounds} interleaved rounds, "
        "medians)\n"
    )
    print("| scenario | implementation | result | ratio to websockets.trio loop |")
    print("|---|---|---|---|")
    for title, total, size in (
        ("bulk 64 KiB writes", bulk_total, 2**16),
        ("256 B writes", small_total, 256),
    ):
        res = measure("sink", rounds, lambda i, u, t=total, s=size: bulk(i, u, t, s))
        ref = total / statistics.median(res["websockets.trio"]) / 1e6
        for impl, secs in res.items():
            mbps = total / statistics.median(secs) / 1e6
            print(f"| {title} | {impl} | {mbps:.0f} MB/s | {mbps / ref:.2f}x |")
            rows.append({"scenario": title, "impl": impl, "mb_per_s": mbps, "ratio": mbps / ref})
    res = measure("echo", rounds, lambda i, u: rtt(i, u, rtt_rounds))
    ref50 = statistics.median(statistics.median(r) for r in res["websockets.trio"])
    for impl, runs in res.items():
        p50 = statistics.median(statistics.median(r) for r in runs)
        p99 = statistics.median(statistics.quantiles(r, n=100)[98] for r in runs)
        print(
            f"| 64 B echo RTT | {impl} | p50 {p50 * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us | "
            f"{p50 / ref50:.2f}x (lower is better) |"
        )
        rows.append(
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
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
