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


async def _copy(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, moved: list[int], way: int
) -> None:
    """Copy to EOF, then half-close; ``moved[way]`` counts the bytes as they go (a
    copy that fails or is cancelled still tells how much it carried)."""
    while data := await reader.read(_CHUNK):
        writer.write(data)
        moved[way] += len(data)
        await writer.drain()
    if not writer.is_closing() and writer.can_write_eof():
        writer.write_eof()


async def splice(
    stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], local: TcpEndpoint
) -> tuple[int, int, str | None]:
    """Join a mux ``stream`` and a ``local`` connection until both directions end.

    Returns the bytes copied (stream -> local, local -> stream) and an error
    description (None: both directions ended with EOF).
    """
    stream_reader, stream_writer = stream
    local_reader, local_writer = local.streams
    moved = [0, 0]
    down = asyncio.ensure_future(_copy(stream_reader, local_writer, moved, 0))
    up = asyncio.ensure_future(_copy(local_reader, stream_writer, moved, 1))
    # The stream's end (a reset, the session lost) while one direction still
    # waits on the local side, which may never read or write again: it ends the
    # splice too (the local connection was left open for good).
    lost = asyncio.ensure_future(stream_writer.wait_closed())
    error: str | None = None
    try:
        waiting = {down, up, lost}
        while error is None and not (down.done() and up.done()):
            _, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task, what in (
                (down, "the mux stream"),
                (up, local.role),
                (lost, "the mux stream"),
            ):
                if task.done() and task.exception() is not None:
                    error = f"{what} failed: {describe(task.exception())}"  # type: ignore[arg-type]
                    break
            else:
                if lost.done() and not (down.done() and up.done()):
                    error = "the mux stream ended before the local side"
    finally:
        if error is not None or not (down.done() and up.done()):
            # An error, or cancelled: reset both sides.
            stream_writer.transport.abort()
            local.abort()
        for task in (down, up, lost):
            task.cancel()
        await asyncio.gather(down, up, lost, return_exceptions=True)
        stream_writer.close()
        local_writer.close()
    return moved[0], moved[1], error
