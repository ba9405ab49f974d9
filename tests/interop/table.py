"""Write TABLE.md from a run of tests/interop: ``python tests/interop/table.py [pytest args]``.

Runs pytest on tests/interop, collects each cell's outcome (conftest.py) and
renders the peer x case table (matrix.py). ``--from FILE`` renders the
results of an earlier run made with ``WS_STREAM_INTEROP_RESULTS=FILE``
instead. Exits with pytest's status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.interop.matrix import HERE, render_table  # noqa: E402


def load(path: Path) -> dict[tuple[str, str], str]:
    raw: dict[str, str] = json.loads(path.read_text())
    out: dict[tuple[str, str], str] = {}
    for cell, outcome in raw.items():
        peer, case = cell.split("/", 1)
        out[peer, case] = outcome
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--from"]:
        results, status = load(Path(argv[1])), 0
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "results.json"
            env = {**os.environ, "WS_STREAM_INTEROP_RESULTS": str(path)}
            command = [sys.executable, "-m", "pytest", "-q", "tests/interop", *argv]
            # test_table.py checks the table this run is about to write.
            command.append("--deselect=tests/interop/test_table.py")
            status = subprocess.call(command, cwd=ROOT, env=env)
            results = load(path) if path.exists() else {}
    (HERE / "TABLE.md").write_text(render_table(results))
    print(f"wrote {HERE / 'TABLE.md'}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
