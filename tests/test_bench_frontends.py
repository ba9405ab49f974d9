"""bench/bench_frontends.py runs end to end in --quick mode and prints every row.

It asserts nothing about speed: only that each comparison (WsStream against
the plain message loop under uvicorn and aiohttp: bulk with either client, RTT, CPU; TunnelApp
under uvicorn workers against ``ws-stream serve --to``) was measured, printed
with positive numbers, says whether its target is met, and is in the JSON.
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

FRONT_ENDS = {
    "uvicorn": "uvicorn --ws websockets-sansio (Starlette)",
    "aiohttp": "aiohttp web server",
}
SERVERS = (
    "TunnelApp, uvicorn --workers 2",
    "ws-stream serve --to",
    "TunnelApp, uvicorn --workers 1",
)


def row(table: str, *first: str) -> list[str]:
    """The cells after ``first`` of the one row of ``table`` that begins with those cells."""
    prefix = "| " + " | ".join(first) + " |"
    rows = [line for line in table.splitlines() if line.startswith(prefix)]
    assert len(rows) == 1, (first, table)
    return [cell.strip() for cell in rows[0].strip().strip("|").split("|")][len(first) :]


def check_target(cells: list[str], value: str, target: str, met: bool) -> None:
    """A measured row: (a), (b) positive in ``value``'s unit, (a)/(b), the target, met."""
    stream, plain = positive(cells[0], value), positive(cells[1], value)
    assert ratio(cells[2]) == pytest.approx(stream / plain, abs=0.02)
    assert cells[3] == target
    assert cells[4] == ("yes" if met else "**no**")


@pytest.mark.timeout(300)
def test_quick_run_prints_every_row(tmp_path: Path) -> None:
    report_path = tmp_path / "frontends.json"
    result = subprocess.run(
        [sys.executable, "bench/bench_frontends.py", "--quick", "--json", str(report_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    table = result.stdout
    report = json.loads(report_path.read_text())
    settings = report["settings"]
    rounds, tunnels = settings["rounds"], settings["tunnels"]
    assert (rounds, tunnels) == (2, 16)

    # 1. WsStream against the plain message loop, under each server.
    assert row(table, "front end", "measure") == [
        "(a) WsStream",
        "(b) plain loop",
        "(a)/(b)",
        "target",
        "met",
    ]
    mib = settings["bulk_bytes"] // 2**20
    for key, title in FRONT_ENDS.items():
        summary = report["summary"][key]
        bulk = row(table, title, f"bulk echo, {mib} MiB in 64 KiB messages")
        check_target(bulk, r"(\d+) MB/s", ">= 0.9x", summary["bulk_target_met"])
        assert summary["bulk_target_met"] == (summary["bulk_ratio"] >= 0.9)

        rtt = row(table, title, f"64 B echo RTT p50 ({settings['pings']} pings)")
        check_target(rtt, rf"({NUMBER}) us", "<= 1.1x", summary["rtt_target_met"])
        assert summary["rtt_target_met"] == (summary["rtt_ratio"] <= 1.1)

        cpu = row(table, title, "server CPU per GiB moved (in + out), bulk echo")
        for cell in cpu[:2]:
            positive(cell, rf"({NUMBER}) s")
        positive(cpu[2], rf"({NUMBER})x")
        busy = row(table, title, "CPUs busy during bulk echo, server / client")
        for cell in busy[:2]:
            match = re.fullmatch(rf"({NUMBER}) / ({NUMBER})", cell)
            assert match and all(float(g) > 0 for g in match.groups()), cell

        # The same echo with a client that leaves the CPUs to the server.
        light = row(table, title, f"bulk echo, {mib} MiB, light client (the server busier)")
        check_target(light, r"(\d+) MB/s", ">= 0.9x", summary["light_target_met"])
        assert summary["light_target_met"] == (summary["light_ratio"] >= 0.9)
        light_cpu = row(table, title, "the same, server CPU per GiB moved / CPUs busy")
        for cell in light_cpu[:2]:
            match = re.fullmatch(rf"({NUMBER}) s / ({NUMBER})", cell)
            assert match and all(float(g) > 0 for g in match.groups()), cell
        positive(light_cpu[2], rf"({NUMBER})x")

        # The JSON: every round of every variant, with positive numbers.
        runs = report["front_ends"][key]
        for kind in ("bulk", "bulk_server", "rtt"):
            for variant in ("stream", "plain"):
                assert len(runs[kind][variant]) == rounds, (key, kind, variant)
        assert positive_numbers(runs), runs
        assert positive_numbers(summary), summary

    # 2. TunnelApp under uvicorn workers against ws-stream serve --to.
    assert f"{tunnels} tunnels at once (opened one after another)" in table
    assert row(table, "server", "aggregate throughput") == [
        "/ serve --to",
        "server CPU per GiB",
        "load generator CPU per GiB",
        "CPUs busy with other processes",
        "tunnels per process (each round)",
    ]
    speeds = {}
    for name in SERVERS:
        cells = row(table, name)
        speeds[name] = positive(cells[0], r"(\d+) MB/s")
        if name == "ws-stream serve --to":
            assert cells[1] == "1.00x (reference)"
        else:
            ratio(cells[1])
        positive(cells[2], rf"({NUMBER}) s")
        positive(cells[3], rf"({NUMBER}) s")
        assert re.fullmatch(r"\d+\.\d\d", cells[4]), cells
        # Every tunnel of every round was seen in a server process.
        splits = [[int(n) for n in split.split("/")] for split in cells[5].split("; ")]
        assert len(splits) == rounds and all(sum(s) == tunnels for s in splits), cells
        if name != "TunnelApp, uvicorn --workers 2":
            assert all(len(s) == 1 for s in splits), cells
        runs = report["tunnels"][name]
        assert len(runs) == rounds
        for run in runs:
            assert run["seconds"] > 0 and run["cpu"] > 0 and run["load"] > 0, run
            assert run["others"] >= 0 and sum(run["split"]) == tunnels, run
    summary = report["summary"]["tunnels"]
    assert summary["ratio"] == pytest.approx(
        speeds["TunnelApp, uvicorn --workers 2"] / speeds["ws-stream serve --to"], rel=0.01
    )
    verdict = "met" if summary["ratio"] > 1.5 else "not met"
    assert summary["target_met"] == (verdict == "met")
    assert re.search(
        rf"TunnelApp under uvicorn --workers 2 / ws-stream serve --to: {summary['ratio']:.2f}x "
        rf"\(the issue expects > 1\.5x on 2 cores: {verdict}\)",
        table,
    ), table
    assert re.search(r"The best ratio these CPU costs allow .*: \d+\.\d\dx on \d+ idle CPUs", table)
    for value in summary["rows"].values():
        assert value["mb_per_s"] > 0 and value["cpu_s_per_gib"] > 0, value
