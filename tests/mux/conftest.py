"""Run every ``async def`` test here on asyncio's default loop and on uvloop.

Exactly the asyncio tests' hooks (tests marked ``default_loop_only`` run on
asyncio's default loop only: uvloop's ``loop.start_tls()`` takes its own
transports only).
"""

from __future__ import annotations

from ..asyncio.conftest import (
    loop_kind,
    pytest_configure,
    pytest_generate_tests,
    pytest_pyfunc_call,
)

__all__ = ["loop_kind", "pytest_configure", "pytest_generate_tests", "pytest_pyfunc_call"]
