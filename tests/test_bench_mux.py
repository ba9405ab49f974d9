"""bench/bench_mux.py runs end to end with tiny sizes and prints every row.

It asserts nothing about speed: only that each comparison (16 uploads over one
mux session against 16 WebSockets, with the CPU rows; opening a stream against
opening a WebSocket on ws:// and wss://, with its floor, an echo on an open
WebSocket; the 64-byte round trip on a mux stream against a plain WsStream) was
measured, printed with positive numbers and a ratio that matches them, says
whether its target is met, and is in the JSON.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .benchtables import NUMBER, positive, positive_numbers, ratio

ROOT = Path(__file__).resolve().parent.parent


def row(table: str, first: str) -> list[str]:
    """The cells after the first of the one row of ``table`` whose first cell starts so."""
    rows = [line for line in table.splitlines() if line.startswith(f"| {first}")]
    assert len(rows) == 1, (first, table)
    return [cell.strip() for cell in rows[0].strip().strip("|").split("|")][1:]


@pytest.mark.timeout(300)
def test_tiny_run_prints_every_row(tmp_path: Path) -> None:
    report_path = tmp_path / "mux.json"
    result = subprocess.run(
        [
            *(sys.executable, "bench/bench_mux.py", "--quick", "--rounds", "2"),
            *("--streams", "4", "--mib", "1", "--opens", "5", "--pings", "20"),
            *("--json", str(report_path)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    table = result.stdout
    report = json.loads(report_path.read_text())
    settings, summary = report["settings"], report["summary"]
    assert (settings["rounds"], settings["streams"], settings["each_bytes"]) == (2, 4, 2**20)
    assert (settings["opens"], settings["pings"]) == (5, 20)

    assert row(table, "measure") == [
        "(a) mux",
        "(b) without mux",
        "ratio",
        "target",
        "met",
    ]

    # 1. 4 uploads over one session against 4 WebSockets.
    cells = row(table, "4 x 1 MiB uploads at once, aggregate")
    mux = positive(cells[0], r"(\d+) MB/s")
    separate = positive(cells[1], r"(\d+) MB/s")
    assert ratio(cells[2]) == pytest.approx(mux / separate, rel=0.05, abs=0.02)
    assert cells[3] == "(a)/(b) >= 0.9x"
    met = summary["throughput"]["target_met"]
    assert met == (summary["throughput"]["ratio"] >= 0.9)
    assert cells[4] == ("yes" if met else "**no**")
    # CPU time comes in clock ticks: uploads this small may take none.
    for label in (
        "server CPU per GiB uploaded",
        "server user CPU per GiB (Python; the rest is the kernel's)",
        "client CPU per GiB uploaded",
        "client user CPU per GiB",
    ):
        cells = row(table, label)
        assert all(re.fullmatch(rf"{NUMBER} s", cell) for cell in cells[:2]), cells
        if cells[2] != "n/a (too short to time)":
            positive(cells[2], rf"({NUMBER})x")
        assert cells[3:] == ["-", "-"], cells
    cells = row(table, "CPUs busy during the uploads, server / client")
    assert all(re.fullmatch(rf"{NUMBER} / {NUMBER}", cell) for cell in cells[:2]), cells

    # 2. Opening a stream against opening a WebSocket, ws:// and wss://.
    for scheme in ("ws", "wss"):
        cells = row(table, f"open + 1-byte echo, {scheme}://, p50 of 5")
        stream = positive(cells[0], rf"({NUMBER}) us")
        websocket = positive(cells[1], rf"({NUMBER}) us")
        assert ratio(cells[2]) == pytest.approx(websocket / stream, rel=0.05, abs=0.02)
        assert cells[3] == "(b)/(a) >= 10x"
        s = summary[f"open_{scheme}"]
        assert s["target_met"] == (s["ratio"] >= 10)
        assert cells[4] == ("yes" if s["target_met"] else "**no**")
        # Its floor: a 1-byte echo on an open plain WebSocket, and the best ratio it allows.
        cells = row(table, f"floor of (a), {scheme}://: (c) a 1-byte echo on an open plain")
        echo = positive(cells[0], rf"({NUMBER}) us")
        assert cells[1] == "-" and cells[3:] == ["-", "-"], cells
        best = positive(cells[2], rf"best \(b\)/\(a\) possible: \(b\)/\(c\) = ({NUMBER})x")
        assert best == pytest.approx(websocket / echo, rel=0.05, abs=0.02)
        assert s["ceiling"] == pytest.approx(websocket / echo, rel=0.05, abs=0.02)

    # 3. The round trip on a mux stream against a plain WsStream.
    cells = row(table, "64 B echo RTT p50 (20 pings)")
    mux = positive(cells[0], rf"({NUMBER}) us")
    plain = positive(cells[1], rf"({NUMBER}) us")
    assert ratio(cells[2]) == pytest.approx(mux / plain, rel=0.05, abs=0.02)
    assert cells[3] == "(a)/(b) <= 1.2x"
    assert summary["rtt"]["target_met"] == (summary["rtt"]["ratio"] <= 1.2)
    assert cells[4] == ("yes" if summary["rtt"]["target_met"] else "**no**")

    # The JSON: every round of every variant, with positive numbers.
    assert [len(runs) for runs in report["throughput"].values()] == [2, 2]
    assert [len(runs) for s in ("ws", "wss") for runs in report["opens"][s].values()] == [2] * 6
    assert [len(runs) for runs in report["rtt"].values()] == [2, 2]
    for runs in report["throughput"].values():
        for run in runs:
            assert run["seconds"] > 0, run
            for who in ("server", "client"):  # the user time is a part of the total
                # (both are differences of float sums: equal parts may differ by rounding)
                assert 0 <= run[f"{who}_user"] <= run[f"{who}_cpu"] + 1e-9, run
    for key in ("opens", "rtt"):
        assert positive_numbers(report[key]), report[key]
    for key in ("open_ws", "open_wss", "rtt"):
        assert positive_numbers(summary[key]), summary[key]
    assert positive_numbers(summary["throughput"]["mb_per_s"]), summary["throughput"]
    assert re.search(r"Measured in \d+ s\.", table)
