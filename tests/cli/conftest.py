"""Fixtures of the ws-stream command tests: every subprocess is killed at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .helpers import Cli


@pytest.fixture
def cli() -> Iterator[Callable[..., Cli]]:
    """Start ``ws-stream ARGS`` as a subprocess: ``cli("serve", "--port", "0")``."""
    started: list[Cli] = []

    def start(*args: str, **kwargs: Any) -> Cli:
        proc = Cli(*args, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()
