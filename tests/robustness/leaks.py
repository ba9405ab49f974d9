"""Leak checks: open file descriptors and asyncio tasks before and after a scenario.

Closing is asynchronous (a transport closes its socket a loop iteration or a
close handshake later), so the checks poll with a bounded timeout; they never
sleep a fixed time and call it done.
"""

from __future__ import annotations

import asyncio
import os
import time

__all__ = ["open_fds", "wait_fds_released", "wait_tasks_finished"]

SETTLE_TIMEOUT = 5.0


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what each points to."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own directory fd, closed by now
            continue
    return fds


def wait_fds_released(before: dict[int, str], timeout: float = SETTLE_TIMEOUT) -> None:
    """Wait until no more descriptors are open than in ``before``; fail with the extra ones."""
    deadline = time.monotonic() + timeout
    while True:
        now = open_fds()
        if len(now) <= len(before):
            return
        if time.monotonic() > deadline:
            extra = {fd: target for fd, target in now.items() if before.get(fd) != target}
            raise AssertionError(
                f"{len(now) - len(before)} file descriptors leaked "
                f"({len(before)} open before, {len(now)} after): {extra}"
            )
        time.sleep(0.01)


async def wait_tasks_finished(
    before: set[asyncio.Task[object]], timeout: float = SETTLE_TIMEOUT
) -> None:
    """Wait until every task started since ``before`` was taken has finished."""
    me = asyncio.current_task()
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        extra = asyncio.all_tasks() - before - {me}
        if not extra:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{len(extra)} asyncio tasks leaked: {sorted(map(repr, extra))}")
        await asyncio.sleep(0.01)
