"""The benchmark suite runs end to end in --quick mode (it asserts nothing about speed)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_produces_table_json_and_chart(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    rows = data["rows"]
    impls = {row["impl"] for row in rows}
    assert {"ws_stream.asyncio", "ws_stream.uvloop", "ws_stream.trio"} <= impls
    assert {"websockets.asyncio", "websockets.trio", "trio-websocket", "naive_pump"} <= impls
    assert {"websockets.sync", "ws_stream.sync"} <= impls
    scenarios = {row["scenario"] for row in rows}
    assert {"bulk 64 KiB writes", "256 B writes", "64 B echo RTT p50"} <= scenarios
    assert any(s.startswith("slow reader") for s in scenarios)
    assert any("idle connections" in s for s in scenarios)
    assert all(row["value"] > 0 for row in rows if row["unit"] in ("MB/s", "us", "conn/s"))
    # the physical limit of every runtime is measured, and every row has both ratios:
    # to the websockets loop and to raw TCP of its runtime (timings are not checked)
    assert {"tcp.asyncio", "tcp.trio", "tcp.sync"} <= impls
    for row in rows:
        assert isinstance(row["ratio"], float), row
        assert isinstance(row["ratio_raw_tcp"], float), row
    if importlib.util.find_spec("picows") is not None:  # the cheapest WebSocket, for asyncio
        with_picows = {row["scenario"] for row in rows if row["impl"] == "picows"}
        assert {"bulk 64 KiB writes", "256 B writes", "64 B echo RTT p50"} <= with_picows
        for row in rows:
            if row["impl"].startswith("ws_stream.") and row["scenario"] in with_picows:
                asyncio_row = row["impl"] in ("ws_stream.asyncio", "ws_stream.uvloop")
                assert isinstance(row["ratio_picows"], float) == asyncio_row, row
    else:
        assert "skipping picows" in result.stderr
    assert (tmp_path / "results.png").stat().st_size > 1000
    table = (tmp_path / "results.md").read_text()
    header = "| scenario | implementation | result | vs websockets | vs raw TCP | vs picows |"
    assert header in table
    assert "| bulk 64 KiB writes | ws_stream.asyncio |" in table
