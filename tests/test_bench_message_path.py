"""bench/bench_message_path.py runs end to end with tiny sizes and prints every row.

It asserts nothing about speed: only that each loop and message size was measured
(both applications echoed every byte, or the script fails), printed with positive
times, an added cost that matches them, and is in the JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .benchtables import NUMBER, positive

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_tiny_run_prints_every_row(tmp_path: Path) -> None:
    report_path = tmp_path / "path.json"
    result = subprocess.run(
        [sys.executable, "bench/bench_message_path.py", "--quick", "--json", str(report_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")][1:]
    assert [row.split("|")[1:3] for row in rows] == [
        [f" {loop} ", f" {size} "]
        for loop in ("asyncio", "uvloop")
        for size in ("64 KiB (4)", "64 B (1)")
    ]
    report = json.loads(report_path.read_text())
    assert report["settings"]["count"] == 500 and report["settings"]["rounds"] == 2
    for row, (loop, measured) in zip(
        rows, [(loop, m) for loop, ms in report["loops"].items() for m in ms], strict=True
    ):
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        stream = positive(cells[2], rf"({NUMBER}) us")
        plain = positive(cells[3], rf"({NUMBER}) us")
        added = float(cells[4].split(" us")[0])
        assert added == pytest.approx(stream - plain, abs=0.011), row
        assert len(measured["stream_us"]) == len(measured["plain_us"]) == 2
        assert min(measured["stream_us"]) == pytest.approx(stream, abs=0.006)
        assert min(measured["plain_us"]) == pytest.approx(plain, abs=0.006)
        assert all(value > 0 for value in measured["stream_us"] + measured["plain_us"])
        assert cells[5].endswith("x") and float(cells[5][:-1]) > 0, (loop, row)


def test_bad_options_are_refused() -> None:
    result = subprocess.run(
        [sys.executable, "bench/bench_message_path.py", "--loops", "tokio"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--loops takes asyncio and uvloop" in result.stderr
