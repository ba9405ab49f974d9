"""A mux stream joined to a TCP (or Unix) connection: ``serve --mux``, ``forward --mux``.

Both sides are byte streams with a half-close, so the rules are TCP's own,
decided here once:

* bytes are copied both ways, each direction with backpressure (a side that
  does not read stops the other's reading);
* the end of one side's input (EOF, a mux FIN) half-closes the other
  (``write_eof()``: a TCP FIN, a mux FIN); the splice ends once both
  directions have ended, and closes both;
* an error on either side (a TCP reset, a mux RST, the session lost) resets
  the other (TCP RST, mux RST): a truncated stream never looks complete.
"""

from __future__ import annotations

import asyncio
from typing import Final

from .endpoints import TcpEndpoint
from .report import describe

__all__ = ["splice"]

#: Bytes copied per read.
_CHUNK: Final = 256 * 1024


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    count = 0
    while data := await reader.read(_CHUNK):
        writer.write(data)
        count += len(data)
        await writer.drain()
    if not writer.is_closing() and writer.can_write_eof():
        writer.write_eof()
    return count


async def splice(
    stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], local: TcpEndpoint
) -> tuple[int, int, str | None]:
    """Join a mux ``stream`` and a ``local`` connection until both directions end.

    Returns the bytes copied (stream -> local, local -> stream) and an error
    description (None: both directions ended with EOF).
    """
    stream_reader, stream_writer = stream
    local_reader, local_writer = local.streams
    down = asyncio.ensure_future(_copy(stream_reader, local_writer))
    up = asyncio.ensure_future(_copy(local_reader, stream_writer))
    error: str | None = None
    try:
        done, _ = await asyncio.wait((down, up), return_when=asyncio.FIRST_EXCEPTION)
        for task, what in ((down, "the mux stream"), (up, local.role)):
            if task.done() and task.exception() is not None:
                error = f"{what} failed: {describe(task.exception())}"  # type: ignore[arg-type]
                break
    finally:
        if error is not None or not (down.done() and up.done()):
            # An error, or cancelled: reset both sides.
            stream_writer.transport.abort()
            local.abort()
        for task in (down, up):
            task.cancel()
        await asyncio.gather(down, up, return_exceptions=True)
        stream_writer.close()
        local_writer.close()
    return _count(down), _count(up), error


def _count(task: asyncio.Future[int]) -> int:
    if task.cancelled() or task.exception() is not None:
        return 0
    return task.result()
