"""ws_stream.sync vs a plain websockets.sync send/recv loop, side by side in one run.

Each implementation's server runs in its own subprocess (its own GIL); runs are
interleaved (A B A B ...) and repeated; the table shows medians and the ratio
to the websockets loop of the same run. Timings on a shared machine are noisy:
only the ratios of one run mean anything. Nothing here asserts a speed.

Bulk: the client sends ``total`` bytes in writes of one size; the clock stops
when the server has read them all and its one-byte acknowledgement is back.
RTT: a 64-byte message echoed, one at a time.

    python bench/bench_sync.py            # 256 MiB bulk, 5 rounds
    python bench/bench_sync.py --quick    # seconds; proves the script works
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import websockets
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import ServerConnection
from websockets.sync.server import serve as ws_serve

import ws_stream.sync

IMPLS = ("websockets", "ws_stream")
WS_OPTS: dict[str, Any] = {"compression": None, "max_size": 2**24, "ping_interval": None}
STREAM_OPTS: dict[str, Any] = {"max_size": 2**24, "ping_interval": None}


# Servers (run in a subprocess: `--serve IMPL MODE`)


def _stream_sink(sock: ws_stream.sync.WsSocket) -> None:
    with sock.makefile("rb") as f:
        total = int.from_bytes(f.read(8), "big")
    n = 0
    while n < total:
        data = sock.recv(2**20)
        if not data:
            return
        n += len(data)
    sock.sendall(b"k")
    sock.recv(1)  # until the client closes


def _stream_echo(sock: ws_stream.sync.WsSocket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


def _ws_sink(ws: ServerConnection) -> None:
    total = int.from_bytes(ws.recv(), "big")  # type: ignore[arg-type]
    n = 0
    while n < total:
        n += len(ws.recv())
    ws.send(b"k")
    for _ in ws:
        pass


def _ws_echo(ws: ServerConnection) -> None:
    for msg in ws:
        ws.send(msg)


def _serve(impl: str, mode: str) -> None:
    if impl == "ws_stream":
        handler = _stream_sink if mode == "sink" else _stream_echo
        server = ws_stream.sync.serve(handler, "127.0.0.1", 0, **STREAM_OPTS)
    else:
        ws_handler = _ws_sink if mode == "sink" else _ws_echo
        server = ws_serve(ws_handler, "127.0.0.1", 0, **WS_OPTS)
    print(server.socket.getsockname()[1], flush=True)
    server.serve_forever()


# Clients: each returns a number (seconds) or a list of RTTs


def bulk(impl: str, uri: str, total: int, size: int) -> float:
    chunk = os.urandom(size)
    count = total // size
    header = (count * size).to_bytes(8, "big")
    if impl == "ws_stream":
        with ws_stream.sync.connect(uri, **STREAM_OPTS) as sock:
            sock.sendall(header)
            t0 = time.perf_counter()
            for _ in range(count):
                sock.sendall(chunk)
            assert sock.recv(1) == b"k"
            return time.perf_counter() - t0
    with ws_connect(uri, **WS_OPTS) as ws:
        ws.send(header)
        t0 = time.perf_counter()
        for _ in range(count):
            ws.send(chunk)
        assert ws.recv() == b"k"
        return time.perf_counter() - t0


def rtt(impl: str, uri: str, rounds: int, size: int = 64) -> list[float]:
    msg = os.urandom(size)
    out = []
    if impl == "ws_stream":
        with ws_stream.sync.connect(uri, **STREAM_OPTS) as sock:
            for _ in range(rounds):
                t0 = time.perf_counter()
                sock.sendall(msg)
                got = sock.recv(size)
                while len(got) < size:
                    got += sock.recv(size - len(got))
                out.append(time.perf_counter() - t0)
        return out
    with ws_connect(uri, **WS_OPTS) as ws:
        for _ in range(rounds):
            t0 = time.perf_counter()
            ws.send(msg)
            ws.recv()
            out.append(time.perf_counter() - t0)
    return out


def _start_server(impl: str, mode: str) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, __file__, "--serve", impl, mode]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = proc.stdout.readline().strip()
    return proc, f"ws://127.0.0.1:{port}/"


def measure(
    name: str, mode: str, rounds: int, fn: Callable[[str, str], Any]
) -> dict[str, list[Any]]:
    servers = {impl: _start_server(impl, mode) for impl in IMPLS}
    results: dict[str, list[Any]] = {impl: [] for impl in IMPLS}
    try:
        for _ in range(rounds):
            for impl in IMPLS:  # interleaved: A B A B ...
                results[impl].append(fn(impl, servers[impl][1]))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()
    print(f"  {name}: done", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--serve", nargs=2, metavar=("IMPL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(*args.serve)
        return
    rounds = args.rounds or (2 if args.quick else 5)
    bulk_total = 2**22 if args.quick else 2**28
    mid_total = 2**22 if args.quick else 2**26
    small_total = 2**19 if args.quick else 2**24
    rtt_rounds = 200 if args.quick else 5000

    rows = []
    for title, total, size in (
        ("bulk 64 KiB writes", bulk_total, 2**16),
        ("bulk 1 MiB writes", mid_total, 2**20),
        ("256 B writes", small_total, 256),
    ):
        res = measure(title, "sink", rounds, lambda i, u, t=total, s=size: bulk(i, u, t, s))
        rows.append((title, total, res))
    rtt_res = measure("64 B echo RTT", "echo", rounds, lambda i, u: rtt(i, u, rtt_rounds))

    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "websockets": websockets.__version__,
        },
        "rows": [],
    }
    print(
        f"\nws_stream.sync vs websockets.sync (Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, {rounds} interleaved rounds, medians)\n"
    )
    print("| scenario | implementation | result | ratio to websockets loop |")
    print("|---|---|---|---|")
    for title, total, res in rows:
        ref = total / statistics.median(res["websockets"]) / 1e6
        for impl, secs in res.items():
            mbps = total / statistics.median(secs) / 1e6
            print(f"| {title} | {impl} | {mbps:.0f} MB/s | {mbps / ref:.2f}x |")
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
