"""bench/bench_tunnel.py runs end to end in --quick mode and prints every row.

It asserts nothing about speed: only that each comparison (ws-stream against
websockify and websocat, both ways; CPU; idle memory; many tunnels with
``serve --workers 2`` against ``--workers 1``) was measured and printed, and
that the CPU and memory cells say "more"/"less" in words.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: A "how much" cell: the ratio is >= 1 and the word carries the direction.
COMPARED = r"(\d+\.\d\dx (more|less)|the same|n/a \(too short to time\))"
SPEED = r"\d+ MB/s"
RATIO = r"\d+\.\d\dx \(rounds \d+\.\d\d-\d+\.\d\dx\)"


@pytest.fixture
def peers() -> None:
    from bench.bench_tunnel import missing_peers

    missing = missing_peers()
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (PyPI; the bench extra installs them)")


def cells(table: str, title: str) -> list[str]:
    """The cells after the first of the one row of ``table`` whose first cell is ``title``.

    (Or starts with ``title`` and a parenthesis.)
    """
    rows = [
        line for line in table.splitlines() if line.startswith((f"| {title} |", f"| {title} ("))
    ]
    assert len(rows) == 1, (title, table)
    return [cell.strip() for cell in rows[0].strip("|").split("|")][1:]


@pytest.mark.timeout(600)
def test_quick_run_prints_every_row(peers: None, tmp_path: Path) -> None:
    report_path = tmp_path / "tunnel.json"
    result = subprocess.run(
        [sys.executable, "bench/bench_tunnel.py", "--quick", "--json", str(report_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    table = result.stdout

    header = cells(table, "measure | ws-stream serve --to")
    assert header == [
        "ws-stream serve --to",
        "websockify",
        "websocat",
        "ws-stream / websockify",
        "ws-stream / websocat",
    ]
    for way in ("client -> TCP sink", "TCP source -> client"):
        row = cells(table, f"16 MiB {way}")
        assert all(re.fullmatch(SPEED, cell) for cell in row[:3]), row
        assert all(re.fullmatch(RATIO, cell) for cell in row[3:]), row
        row = cells(table, f"bridge CPU per GiB, {way}")
        assert all(re.fullmatch(r"\d+\.\d\d s \(user \d+\.\d\d s\)", cell) for cell in row[:3])
        assert all(re.fullmatch(f"{COMPARED} \\(user: {COMPARED}\\)", cell) for cell in row[3:])
    row = cells(table, "memory per idle tunnel (USS)")
    assert re.fullmatch(r"-?\d+ kB \(100 tunnels, 1 process\)", row[0]), row
    assert re.fullmatch(r"-?\d+ kB \(10 tunnels, \d+ processes\)", row[1]), row
    assert re.fullmatch(r"-?\d+ kB \(100 tunnels, 1 process\)", row[2]), row
    assert all(re.fullmatch(COMPARED, cell) for cell in row[3:]), row

    from bench.bench_tunnel import serve_has_workers

    workers = serve_has_workers()
    assert cells(table, "measure | --workers 1") == [
        "--workers 1",
        "--workers 2",
        "workers 2 / workers 1",
    ]
    report = json.loads(report_path.read_text())
    # --table prints the same table again from the JSON file, measuring nothing.
    again = subprocess.run(
        [sys.executable, "bench/bench_tunnel.py", "--table", str(report_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout == table
    for way, key in (("clients -> TCP sink", "upload"), ("TCP source -> clients", "download")):
        row = cells(table, f"16 x 1 MiB {way}, aggregate")
        if not workers:  # the option is not there yet: the rows say so
            assert row[:2] == ["not measured", "not measured"], row
            cells(table, f"connections per process, {way}")
            continue
        assert all(re.fullmatch(SPEED, cell) for cell in row[:2]), row
        assert re.fullmatch(RATIO, row[2]), row
        row = cells(table, f"bridge CPU per GiB, {way}")
        assert re.fullmatch(f"{COMPARED} \\(user: {COMPARED}\\)", row[2]), row
        # Every connection of every round was seen in a worker process.
        for runs in report["many"][key].values():
            assert all(sum(run["split"]) == 16 for run in runs), runs
        row = cells(table, f"connections per process, {way}")
        assert re.fullmatch(r"16(; 16)*", row[0]), row
        row = cells(table, f"load generator CPU per GiB, {way}")
        assert all(re.fullmatch(r"\d+\.\d\d s", cell) for cell in row[:2]), row
        row = cells(table, f"CPUs busy with other processes, {way}")
        assert all(re.fullmatch(r"\d+\.\d\d", cell) for cell in row[:2]), row
        assert re.fullmatch(
            r"ceiling (\d+\.\d\dx|n/a \(.*\)) on the -?\d+\.\d\d CPUs left \(.+ on \d+ idle CPUs\)",
            row[2],
        )
