"""The Python a ``WsStream`` adds per message over an ASGI front end, measured in memory.

An ASGI front end written here hands messages over from memory: ``receive()``
returns the next message of a fixed payload, ``BATCH`` of them per event-loop
iteration (a busy server delivers several per iteration; one per iteration is
the round-trip case, where every receive waits), and ``send()`` counts what
comes back. Two applications run on it in turn, each echoing ``--count``
messages:

(a) ``ws_stream.asgi.accept(scope, receive, send)``, then ``reader.read(64 KiB)``,
    ``writer.write()``, ``await writer.drain()`` until EOF;
(b) the plain message loop: ``await receive()``, ``await send()`` of the same
    bytes.

No socket, server or other process takes part, and nothing is copied (the
payload is one ``bytes`` object): what is timed is the Python of each loop, so
(a) - (b) per echo is what the stream's layers cost a server per message (the
engine's decisions, the reader, the writer and the transport over the front
end). ``bench/bench_frontends.py`` measures the same layers inside real
servers, where the same Python takes longer (the payloads share the caches).

Rounds are interleaved (a b, b a, ...); the table shows, per loop and message
size, the best round of each (the least disturbed) and the median round's
added microseconds. Nothing here asserts a speed.

    python bench/bench_message_path.py             # 20000 echoes, 9 rounds (~20 s)
    python bench/bench_message_path.py --quick     # a second; proves the script works
    python bench/bench_message_path.py --json path.json --loops asyncio
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

import ws_stream  # noqa: E402
import ws_stream.asgi  # noqa: E402

READ = 2**16  # the echo's read size
#: Message size -> messages the front end hands over per loop iteration.
SIZES = {2**16: 4, 64: 1}


class MemoryFrontEnd:
    """An accepted ASGI WebSocket whose peer sends ``count`` copies of ``payload``,
    ``batch`` per loop iteration, then closes with 1000; it counts the echo."""

    def __init__(self, payload: bytes, count: int, batch: int) -> None:
        self.payload = payload
        self.count = count
        self.batch = batch
        self.given = 0
        self.echoed = 0
        self.connected = False
        self.closed: int | None = None

    async def receive(self) -> dict[str, Any]:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        if self.given % self.batch == 0:
            await asyncio.sleep(0)  # the next batch comes in the next loop iteration
        if self.given >= self.count:
            return {"type": "websocket.disconnect", "code": 1000, "reason": ""}
        self.given += 1
        return {"type": "websocket.receive", "bytes": self.payload}

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            self.echoed += len(message["bytes"])
        elif kind == "websocket.close":
            self.closed = message.get("code", 1000)


SCOPE = {"type": "websocket", "path": "/", "headers": [], "subprotocols": []}


async def stream_echo(front: MemoryFrontEnd) -> float:
    """(a): seconds from the first read to the EOF, the stream closed after."""
    stream = await ws_stream.asgi.accept(dict(SCOPE), front.receive, front.send)
    reader, writer = stream.reader, stream.writer
    started = time.perf_counter()
    while data := await reader.read(READ):
        writer.write(data)
        await writer.drain()
    elapsed = time.perf_counter() - started
    await stream.close()
    return elapsed


async def plain_echo(front: MemoryFrontEnd) -> float:
    """(b): seconds of the plain message loop, from its first receive to the end."""
    await front.receive()  # websocket.connect
    await front.send({"type": "websocket.accept"})
    started = time.perf_counter()
    while True:
        message = await front.receive()
        if message["type"] != "websocket.receive":
            break
        await front.send({"type": "websocket.send", "bytes": message["bytes"]})
    return time.perf_counter() - started


async def one(
    app: Callable[[MemoryFrontEnd], Coroutine[Any, Any, float]], size: int, count: int
) -> float:
    """Microseconds per echo of ``app``; checks that every byte came back."""
    front = MemoryFrontEnd(os.urandom(size), count, SIZES[size])
    seconds = await asyncio.wait_for(app(front), 120)
    if front.echoed != size * count:
        raise RuntimeError(f"{app.__name__}: echoed {front.echoed} bytes, not {size * count}")
    return seconds / count * 1e6


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every size on the running loop: interleaved rounds after one warm-up each."""
    rows = []
    for size in SIZES:
        for app in (stream_echo, plain_echo):
            await one(app, size, max(args.count // 10, 10))
        stream: list[float] = []
        plain: list[float] = []
        for i in range(args.rounds):
            order = (stream_echo, plain_echo) if i % 2 == 0 else (plain_echo, stream_echo)
            for app in order:
                (stream if app is stream_echo else plain).append(await one(app, size, args.count))
        rows.append({"size": size, "batch": SIZES[size], "stream_us": stream, "plain_us": plain})
    return rows


def run_on(loop_name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    if loop_name == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(measure(args))
    return asyncio.run(measure(args))


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        stream, plain = row["stream_us"], row["plain_us"]
        added = [a - b for a, b in zip(stream, plain, strict=True)]
        out.append(
            {
                **row,
                "stream_best_us": min(stream),
                "plain_best_us": min(plain),
                "added_best_us": min(stream) - min(plain),
                "added_median_us": statistics.median(added),
                "ratio_best": min(stream) / min(plain),
            }
        )
    return out


def size_name(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


def print_table(report: dict[str, Any]) -> None:
    settings = report["settings"]
    print(
        f"\nEcho through an in-memory ASGI front end: (a) WsStream (asgi.accept, read/write/"
        f"drain) vs (b) the plain message loop (Python {settings['python']}, "
        f"ws_stream {settings['ws_stream']}; {settings['count']} echoes per round, "
        f"{settings['rounds']} interleaved rounds)\n"
    )
    print(
        "| loop | message (per iteration) | (a) WsStream, best | (b) plain loop, best "
        "| added per echo, best / median round | (a)/(b) |"
    )
    print("|---|---|---|---|---|---|")
    for loop_name, rows in report["loops"].items():
        for row in rows:
            print(
                f"| {loop_name} | {size_name(row['size'])} ({row['batch']}) "
                f"| {row['stream_best_us']:.2f} us | {row['plain_best_us']:.2f} us "
                f"| {row['added_best_us']:.2f} us / {row['added_median_us']:.2f} us "
                f"| {row['ratio_best']:.2f}x |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a second: proves it works")
    parser.add_argument("--count", type=int, default=None, help="echoes per round (20000)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (9)")
    parser.add_argument(
        "--loops", default="asyncio,uvloop", help="event loops, comma-separated (asyncio,uvloop)"
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    args.count = args.count or (500 if args.quick else 20000)
    args.rounds = args.rounds or (2 if args.quick else 9)
    loops = [name for name in args.loops.split(",") if name]
    unknown = set(loops) - {"asyncio", "uvloop"}
    if unknown or not loops:
        parser.error(f"--loops takes asyncio and uvloop, not {sorted(unknown) or 'nothing'}")
    if args.count < 1 or args.rounds < 1:
        parser.error("--count and --rounds must be at least 1")
    report = {
        "settings": {
            "count": args.count,
            "rounds": args.rounds,
            "python": platform.python_version(),
            "ws_stream": ws_stream.__version__,
        },
        "loops": {name: summarize(run_on(name, args)) for name in loops},
    }
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
