"""Record each interop cell's outcome, for ``table.py`` to render TABLE.md.

A test marked ``interop(peer=..., case=...)`` (see ``matrix.params``) is one
cell of the table. When ``WS_STREAM_INTEROP_RESULTS`` names a file, the
outcomes are written there as JSON at the end of the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

_RESULTS_ENV = "WS_STREAM_INTEROP_RESULTS"
_outcomes: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "interop(peer, case): one cell of the interop table (tests/interop/matrix.py)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("interop")
        if marker is not None:
            item.user_properties.append(
                ("interop", f"{marker.kwargs['peer']}/{marker.kwargs['case']}")
            )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    cells = [value for name, value in report.user_properties if name == "interop"]
    if not cells:
        return
    cell = str(cells[0])
    if report.failed:
        _outcomes[cell] = "failed"
    elif report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else "skipped"
        _outcomes[cell] = "skipped: " + reason.removeprefix("Skipped: ")
    elif report.when == "call" and cell not in _outcomes:
        _outcomes[cell] = "passed"


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get(_RESULTS_ENV)
    if path:
        Path(path).write_text(json.dumps(_outcomes, indent=1, sort_keys=True) + "\n")
