"""Small trio helpers shared by the trio shell."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio

__all__ = ["open_collapsing_nursery"]


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    while len(group.exceptions) == 1:
        exc = group.exceptions[0]
        if not isinstance(exc, BaseExceptionGroup):
            return exc
        group = exc
    return None


@contextlib.asynccontextmanager
async def open_collapsing_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for our context managers whose lone error comes out unwrapped.

    The stream's own tasks never fail, so an error is the body's: callers of
    ``async with open_websocket_stream(...)`` get it as they raised it, not in
    an ExceptionGroup. Several errors still come as a group.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        exc = _single(group)
        if exc is None:
            raise
        raise exc from None
