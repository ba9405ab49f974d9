"""Run every ``async def`` test here on asyncio's loop and on uvloop, leak-checked.

The loop hooks are those of tests/asyncio/conftest.py. Around each async test,
open file descriptors are counted before the event loop starts and after it is
closed, and the test's coroutine ends only when every task it started is done.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from ..asyncio.conftest import loop_kind, pytest_configure, pytest_generate_tests
from .leaks import open_fds, wait_fds_released, wait_tasks_finished

__all__ = ["loop_kind", "pytest_configure", "pytest_generate_tests"]  # reused hooks

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None


@pytest.fixture(scope="session", autouse=True)
def warm_loops() -> None:
    """Let each loop create its process-wide descriptors once (uvloop keeps a signal
    pipe for the life of the process), so the leak counts compare like with like."""

    async def nothing() -> None:
        await asyncio.sleep(0)

    asyncio.run(nothing())
    if uvloop is not None:
        uvloop.run(nothing())


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    kind = pyfuncitem.funcargs.get("loop_kind", "asyncio")
    kwargs: dict[str, Any] = {
        name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames
    }

    async def leak_checked() -> None:
        tasks = asyncio.all_tasks()
        await func(**kwargs)
        await wait_tasks_finished(tasks)

    fds = open_fds()
    if kind == "uvloop":
        if uvloop is None:
            pytest.fail("uvloop is not installed: pip install -e '.[test]'")
        uvloop.run(leak_checked())
    else:
        asyncio.run(leak_checked())
    wait_fds_released(fds)
    return True
