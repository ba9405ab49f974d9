"""The benchmark suite: every runtime against its peers, side by side in one run.

    python -m bench                 # the full matrix (about 15 minutes on 2 cores)
    python -m bench --quick         # small sizes, seconds: proves the suite works (CI)
    python -m bench --only bulk,rtt --impl ws_stream.asyncio,websockets.asyncio

Each implementation's server runs in its own process; runs are interleaved
(A B C A B C ...) and repeated; the report gives medians and, for each row,
three ratios measured in the same run: to the plain websockets loop of the same
runtime ("vs websockets"), to raw TCP streams of the same runtime, the physical
limit ("vs raw TCP"), and, on asyncio and uvloop rows, to picows, the cheapest
WebSocket ("vs picows"). Timings on a shared machine are noisy: only ratios
measured in one run mean anything. Writes ``results.json``, ``results.md`` and
``results.png`` (the "vs websockets" ratio per scenario) to ``--out`` (default
``bench/results/``). An implementation whose package does not import (picows)
is skipped with a printed reason. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from .impls import IMPLS, RAW_TCP, REFERENCE, WS_REFERENCE, run_client, supports, unavailable

ALL_SCENARIOS = ("bulk", "small", "rtt", "slow_reader", "idle", "limit")
LIMITS = (2**16, 2**18, 2**20, 2**22)  # reader limits compared by the "limit" scenario
# The row keys of the three ratios, and what each compares with.
RATIOS = {
    "ratio": "vs websockets",
    "ratio_raw_tcp": "vs raw TCP",
    "ratio_picows": "vs picows",
}


class Server:
    """One implementation's server process; samples its memory on demand.

    The process starts at construction; ``wait_ready()`` reads its port, so
    several servers start at once.
    """

    def __init__(self, impl: str, mode: str) -> None:
        self.impl = impl
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.impls", impl, mode],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        self.port = 0
        self.ps = psutil.Process(self.proc.pid)

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.close()
            raise RuntimeError(f"the {self.impl} server did not start (printed {line!r})")
        self.port = int(line)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class PeakSampler:
    """Samples a server's RSS every 20 ms in a thread; keeps the peak."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak = server.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.server.rss())
            except psutil.Error:
                return

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def interleaved(
    impls: list[str], mode: str, rounds: int, measure: Callable[[str, Server], Any]
) -> dict[str, list[Any]]:
    servers: dict[str, Server] = {}
    results: dict[str, list[Any]] = {impl: [] for impl in impls}
    try:
        for impl in impls:
            servers[impl] = Server(impl, mode)
        for server in servers.values():
            server.wait_ready()
        for _ in range(rounds):
            for impl in impls:
                results[impl].append(measure(impl, servers[impl]))
    finally:
        for server in servers.values():
            server.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds, for CI")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 1)")
    parser.add_argument("--only", help=f"scenarios, comma-separated: {','.join(ALL_SCENARIOS)}")
    parser.add_argument("--impl", help="implementations, comma-separated: " + ",".join(IMPLS))
    parser.add_argument("--out", default="bench/results", help="output folder")
    args = parser.parse_args()
    scenarios = args.only.split(",") if args.only else list(ALL_SCENARIOS)
    impls = args.impl.split(",") if args.impl else list(IMPLS)
    for name in scenarios:
        if name not in ALL_SCENARIOS:
            parser.error(f"unknown scenario {name!r}; choose from {', '.join(ALL_SCENARIOS)}")
    for name in impls:
        if name not in IMPLS:
            parser.error(f"unknown implementation {name!r}; choose from {', '.join(IMPLS)}")
    for name in list(impls):
        if reason := unavailable(name):
            print(f"skipping {name}: {reason}", file=sys.stderr, flush=True)
            impls.remove(name)
    quick = args.quick
    rounds = args.rounds or (1 if quick else 5)
    sizes = {
        "bulk": 2**22 if quick else 2**28,
        "small": 2**18 if quick else 2**23,
        "rtt": 100 if quick else 5000,
        "slow_reader": 2**25 if quick else 2**30,
        "idle": [50, 100] if quick else [1000, 5000, 10000],
    }
    rows: list[dict[str, Any]] = []

    def add(scenario: str, impl: str, unit: str, value: float, **extra: Any) -> None:
        rows.append({"scenario": scenario, "impl": impl, "unit": unit, "value": value, **extra})
        print(f"  {scenario:>22}  {impl:<20} {value:10.1f} {unit}", file=sys.stderr, flush=True)

    if "bulk" in scenarios:
        total = sizes["bulk"]
        res = interleaved(
            impls,
            "sink",
            rounds,
            lambda i, s: run_client(i, s.port, "bulk", total=total, size=2**16),
        )
        for impl, secs in res.items():
            add("bulk 64 KiB writes", impl, "MB/s", total / statistics.median(secs) / 1e6)
    if "small" in scenarios:
        total = sizes["small"]
        res = interleaved(
            impls, "sink", rounds, lambda i, s: run_client(i, s.port, "bulk", total=total, size=256)
        )
        for impl, secs in res.items():
            add("256 B writes", impl, "MB/s", total / statistics.median(secs) / 1e6)
    if "rtt" in scenarios:
        n = sizes["rtt"]
        res = interleaved(
            impls, "echo", rounds, lambda i, s: run_client(i, s.port, "rtt", rounds=n)
        )
        for impl, runs in res.items():
            p50 = statistics.median(statistics.median(r) for r in runs) * 1e6
            p99 = statistics.median(statistics.quantiles(r, n=100)[98] for r in runs) * 1e6
            add("64 B echo RTT p50", impl, "us", p50, lower_is_better=True)
            add("64 B echo RTT p99", impl, "us", p99, lower_is_better=True)
    if "slow_reader" in scenarios:
        total = sizes["slow_reader"]
        slow_impls = [i for i in impls if not i.startswith("tcp.") and supports(i, "slow")] + [
            i for i in impls if i.startswith("tcp.")
        ]

        def slow(impl: str, server: Server) -> float:
            base = server.rss()
            with PeakSampler(server) as sampler:
                run_client(impl, server.port, "bulk", total=total, size=2**16)
            return (sampler.peak - base) / 2**20

        res = interleaved(slow_impls, "slow", 1, slow)
        for impl, growth in res.items():
            add(
                f"slow reader fed {total // 2**20} MiB: peak RSS growth",
                impl,
                "MiB",
                max(growth),
                lower_is_better=True,
            )
    if "idle" in scenarios:
        idle_impls = [
            i
            for i in impls
            if i
            in (
                "tcp.asyncio",
                "websockets.asyncio",
                "picows",
                "ws_stream.asyncio",
                "ws_stream.uvloop",
                "tcp.trio",
                "websockets.trio",
                "ws_stream.trio",
            )
        ]
        for count in sizes["idle"]:
            per_conn: dict[str, float] = {}

            def idle(
                impl: str,
                server: Server,
                count: int = count,
                per_conn: dict[str, float] = per_conn,
            ) -> float:
                base = server.rss()

                def hold() -> None:
                    deadline = time.monotonic() + 0.5
                    while time.monotonic() < deadline:  # let the server settle
                        time.sleep(0.1)
                    per_conn[impl] = (server.rss() - base) / count / 1024

                return float(run_client(impl, server.port, "idle", count=count, hold=hold))

            res = interleaved(idle_impls, "idle", 1, idle)
            for impl, rates in res.items():
                add(
                    f"{count} idle connections: memory per connection",
                    impl,
                    "KiB",
                    per_conn[impl],
                    lower_is_better=True,
                )
                add(f"{count} idle connections: opened per second", impl, "conn/s", rates[0])
    if "limit" in scenarios:
        total = sizes["bulk"]
        variants = [f"ws_stream.asyncio@{limit}" for limit in LIMITS]
        # raw TCP and picows run in the same interleaving: the limits' other ratios
        references = [i for i in ("tcp.asyncio", "picows") if i in impls]
        res = interleaved(
            variants + references,
            "sink",
            rounds,
            lambda i, s: run_client(i, s.port, "bulk", total=total, size=2**16),
        )
        ref = total / statistics.median(res[f"ws_stream.asyncio@{2**20}"]) / 1e6
        reference_values = {i: total / statistics.median(res[i]) / 1e6 for i in references}
        for variant in variants:
            limit = int(variant.partition("@")[2])
            mbps = total / statistics.median(res[variant]) / 1e6
            rows.append(
                {
                    "scenario": f"reader limit {limit // 1024} KiB: bulk 64 KiB writes",
                    "impl": "ws_stream.asyncio",
                    "unit": "MB/s",
                    "value": mbps,
                    "ratio_to_default_limit": mbps / ref,
                    "reference_values": reference_values,
                }
            )
            print(f"  limit {limit:>8}: {mbps:.0f} MB/s", file=sys.stderr, flush=True)
    report(rows, args.out, quick, rounds)


def _ratio_to(rows: list[dict[str, Any]], row: dict[str, Any], ref: str | None) -> float | None:
    """``row``'s value over ``ref``'s in the same scenario (None if not measured)."""
    if ref is None:
        return None
    if ref in row.get("reference_values", {}):  # measured alongside, not as a row
        value = row["reference_values"][ref]
        return float(row["value"] / value) if value else None
    for other in rows:
        if other["scenario"] == row["scenario"] and other["impl"] == ref and other["value"]:
            return float(row["value"] / other["value"])
    return None


def ratios(rows: list[dict[str, Any]], row: dict[str, Any]) -> dict[str, float | None]:
    """The three ratios of ``row`` (keys of ``RATIOS``): value over the reference's value.

    For times and memory a ratio below 1 is better; for rates, above 1.
    """
    runtime = IMPLS[row["impl"]]
    first: float | None
    if "ratio_to_default_limit" in row:  # the limit scenario compares ws_stream to itself
        first = float(row["ratio_to_default_limit"])
    else:
        first = _ratio_to(rows, row, REFERENCE[runtime])
    return {
        "ratio": first,
        "ratio_raw_tcp": _ratio_to(rows, row, RAW_TCP[runtime]),
        "ratio_picows": _ratio_to(rows, row, WS_REFERENCE.get(runtime)),
    }


def report(rows: list[dict[str, Any]], out: str, quick: bool, rounds: int) -> None:
    machine = (
        f"{os.cpu_count()} CPUs ({platform.machine()}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )
    computed = [ratios(rows, row) for row in rows]
    for row, values in zip(rows, computed, strict=True):
        row.update(values)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine}; "
        f"{'quick sizes, ' if quick else ''}{rounds} interleaved round(s), medians. "
        "Each ratio is the result over a reference's result in the same run "
        "(for times and memory, lower is better): vs websockets, the plain websockets "
        "loop of the same runtime (for reader limits, the default 1 MiB); vs raw TCP, "
        "TCP streams of the same runtime (tcp.asyncio for asyncio and uvloop rows, "
        "tcp.trio, tcp.sync: blocking sockets); vs picows, picows on asyncio's "
        "transports, for asyncio and uvloop rows.",
        "",
        "| scenario | implementation | result | " + " | ".join(RATIOS.values()) + " |",
        "|---|---|---|" + "---|" * len(RATIOS),
    ]
    for row in rows:
        cells = ["" if row[key] is None else f"{row[key]:.2f}x" for key in RATIOS]
        lines.append(
            f"| {row['scenario']} | {row['impl']} | {row['value']:.1f} {row['unit']} | "
            + " | ".join(cells)
            + " |"
        )
    table = "\n".join(lines)
    print(table)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.md").write_text(table + "\n")
    (folder / "results.json").write_text(
        json.dumps(
            {
                "machine": machine,
                "quick": quick,
                "rounds": rounds,
                "ratios": {
                    "ratio": "to the plain websockets loop of the same runtime "
                    "(reader limits: to the default 1 MiB)",
                    "ratio_raw_tcp": "to raw TCP streams of the same runtime: "
                    + ", ".join(f"{k}: {v}" for k, v in RAW_TCP.items()),
                    "ratio_picows": "to picows on asyncio's transports (asyncio, uvloop rows)",
                },
                "rows": rows,
            },
            indent=2,
        )
    )
    chart(rows, folder / "results.png")


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r["scenario"] for r in rows if r["ratio"] is not None))
    impls = list(dict.fromkeys(r["impl"] for r in rows if r["ratio"] is not None))
    if not scenarios:
        return
    fig, ax = plt.subplots(figsize=(12, 0.6 * len(scenarios) * max(1, len(impls) / 3) + 2))
    height = 0.8 / max(1, len(impls))
    colors = plt.get_cmap("tab20").colors  # type: ignore[attr-defined]  # 20: one per impl
    for k, impl in enumerate(impls):
        values = []
        for s in scenarios:
            match = [r["ratio"] for r in rows if r["scenario"] == s and r["impl"] == impl]
            values.append(match[0] if match and match[0] is not None else 0)
        ax.barh(
            [i + k * height for i in range(len(scenarios))],
            values,
            height,
            label=impl,
            color=colors[k % len(colors)],
        )
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(scenarios))])
    ax.set_yticklabels(scenarios)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(
        "ratio to the websockets loop of the same runtime (log scale); "
        "the raw TCP and picows ratios are in results.md"
    )
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
