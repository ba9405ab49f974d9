"""Smoke test: the trio TLS-over-WebSocket example runs to completion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_trio_tls_over_websocket_demo() -> None:
    result = subprocess.run(
        [sys.executable, "examples/trio_tls_over_websocket.py", "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith("TLS inside the WebSocket: TLSv1.")
    assert lines[2:] == ["server saw: HELLO", "server saw: SECRET DATA", "done"]
