"""Run every ``async def`` test here on asyncio's default loop and on uvloop.

Tests marked ``default_loop_only`` run on asyncio's default loop only
(uvloop's ``loop.start_tls()`` takes its own transports only).
"""

from __future__ import annotations

import inspect

import pytest

# Runs each ``async def`` test on the loop ``loop_kind`` names: the asyncio tests' hook.
from ..asyncio.conftest import pytest_pyfunc_call  # noqa: F401


@pytest.fixture(autouse=True)
def loop_kind(request: pytest.FixtureRequest) -> str:
    """The event loop an async test runs on (parametrized below)."""
    return getattr(request, "param", "asyncio")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if inspect.iscoroutinefunction(metafunc.function):
        kinds = ["asyncio"]
        if metafunc.definition.get_closest_marker("default_loop_only") is None:
            kinds.append("uvloop")
        metafunc.parametrize("loop_kind", kinds, indirect=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "default_loop_only: run on asyncio's default loop only (e.g. start_tls)"
    )
