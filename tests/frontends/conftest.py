"""Run every ``async def`` test here with ``asyncio.run`` (asyncio's default loop).

Tests marked ``both_loops`` also run on uvloop (``loop_kind`` says which).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None


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


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    kind = pyfuncitem.funcargs.get("loop_kind", "asyncio")
    kwargs: dict[str, Any] = {
        name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames
    }
    if kind == "uvloop":
        if uvloop is None:
            pytest.fail("uvloop is not installed: pip install -e '.[test]'")
        uvloop.run(func(**kwargs))
    else:
        asyncio.run(func(**kwargs))
    return True


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_loops: also run on uvloop")
