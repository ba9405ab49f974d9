"""Run every ``async def`` test here with ``asyncio.run`` (asyncio's default loop).

Tests marked ``both_loops`` also run on uvloop (``loop_kind`` says which).
"""

from __future__ import annotations

import inspect

import pytest

# Runs each ``async def`` test on the loop ``loop_kind`` names: the asyncio tests' hook.
from ..asyncio.conftest import pytest_pyfunc_call  # noqa: F401


@pytest.fixture(autouse=True)
def loop_kind(request: pytest.FixtureRequest) -> str:
    """The event loop an async test runs on."""
    return getattr(request, "param", "asyncio")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if inspect.iscoroutinefunction(metafunc.function):
        kinds = ["asyncio"]
        if metafunc.definition.get_closest_marker("both_loops") is not None:
            kinds.append("uvloop")
        metafunc.parametrize("loop_kind", kinds, indirect=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_loops: also run on uvloop")
