"""A real :class:`asyncio.StreamReader` that keeps received frames as chunks.

asyncio's reader appends every chunk to one ``bytearray`` and slices reads off
its front: two copies of every byte. Frames from websockets are already
``bytes``, so this reader queues them as they are and hands a whole frame to a
``read(n)`` that asks for at least that much - no copy at all on the bulk path.
Searches (``readline``, ``readuntil``) join chunks into one ``bytearray``
head, once per byte, as asyncio does.

Differences from asyncio's reader, all toward "nothing lost": an error set
with :meth:`set_exception` is raised only after every buffered byte was read
(a ``read()`` to EOF waiting when the error comes returns the bytes it
gathered; the next read raises); a ``readexactly``/``readuntil``/``readline``
interrupted by an error raises it and leaves the bytes it had not returned in
the buffer; a ``read()`` to EOF that is cancelled (a timeout) puts back what it
had gathered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any, Protocol, SupportsIndex

from .._buffer import ChunkBuffer

__all__ = ["ChunkedStreamReader"]


class _Source(Protocol):
    """Where a reader with nothing to read may fetch data itself (a message front end)."""

    def pull(self) -> Awaitable[None] | bool:
        """Fetch the next message in the reader's call: True when it was fetched at
        once (the reader looks again), something to await that finishes fetching it
        in the reader's task, or False when it may not fetch now (it is fetching
        already, or reading is paused: the reader then waits as usual)."""

    def idle(self) -> None:
        """The reader stopped waiting: the source watches the connection again."""


class ChunkedStreamReader(asyncio.StreamReader):
    """An :class:`asyncio.StreamReader` whose buffer is a queue of chunks.

    A drop-in replacement for asyncio's reader wherever one is taken, for
    instance under a TCP connection::

        reader = ChunkedStreamReader(2**18)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.create_connection(lambda: protocol, host, port)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)

    It is the reader of every :class:`~ws_stream.asyncio.WsStream`. The same
    methods as asyncio's reader, the same bytes in the same order, and these
    guarantees:

    * **Fewer copies.** A large ``bytes`` chunk given to :meth:`feed_data` is
      queued as it is (anything else is copied once; small chunks are joined
      at the tail), and a ``read(n)`` that asks for at least a whole queued
      chunk gets that very object: no copy on the bulk path. Searches
      (``readline``, ``readuntil``) join chunks once per byte, as asyncio does.
    * **Bounded memory.** ``limit`` is both asyncio's line-length limit and
      the read high-water mark: past ``limit`` buffered bytes the transport
      stops reading until the buffer drains to half of it; the buffer's real
      memory stays within a small factor of the bytes it holds, whatever the
      chunk sizes.
    * **Nothing lost.** An error set with :meth:`set_exception` is raised
      only after every buffered byte was read (a ``read()`` to EOF waiting
      when it comes returns the bytes it gathered; the next read raises); a
      ``readexactly``/``readuntil``/``readline`` interrupted by an error
      raises it and leaves the bytes it had not returned in the buffer; a
      ``read()`` to EOF that is cancelled (a timeout) puts back what it had
      gathered.

    Like asyncio's reader, it is not thread-safe: use it from its event loop.
    """

    # asyncio.StreamReader's private state, which typeshed does not declare.
    _eof: bool
    _limit: int
    _exception: BaseException | None
    _waiter: asyncio.Future[None] | None
    _loop: asyncio.AbstractEventLoop
    _transport: asyncio.ReadTransport | None
    _paused: bool

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(limit=limit, loop=loop)
        self._chunks = ChunkBuffer()
        self._source: _Source | None = None
        self._pulling = False

    def __repr__(self) -> str:
        info = [f"{len(self._chunks)} bytes"] if len(self._chunks) else []
        if self._eof:
            info.append("eof")
        if self._exception is not None:
            info.append(f"exception={self._exception!r}")
        if self._paused:
            info.append("paused")
        return f"<{type(self).__name__} {' '.join(info)}>"

    # Producer side

    @property
    def buffered(self) -> int:
        """Bytes received and not read yet."""
        return len(self._chunks)

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        assert not self._eof, "feed_data after feed_eof"
        # Keep immutable chunks as they are; copy what the producer may reuse.
        chunk = data if type(data) is bytes else bytes(data)
        if not len(chunk):
            return
        buffered = self._chunks.append(chunk)
        self._wake()
        if buffered > self._limit:
            self._maybe_pause_transport()

    def set_exception(self, exc: BaseException) -> None:
        """End the stream with ``exc``, raised after every buffered byte was read.

        Unlike asyncio's reader, a waiting read is woken rather than failed: it
        returns what it gathered first (a ``read()`` to EOF would lose it).
        """
        self._exception = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _maybe_pause_transport(self) -> None:
        if len(self._chunks) > self._limit and not self._paused and self._transport is not None:
            try:
                self._transport.pause_reading()
            except NotImplementedError:
                self._transport = None
            else:
                self._paused = True

    def at_eof(self) -> bool:
        return self._eof and not len(self._chunks)

    def _maybe_resume_transport(self) -> None:
        if self._paused and len(self._chunks) <= self._limit // 2:
            self._paused = False
            assert self._transport is not None
            self._transport.resume_reading()

    async def _wait(self, func_name: str) -> None:
        if self._waiter is not None or self._pulling:
            raise RuntimeError(
                f"{func_name}() called while another coroutine is already waiting for data"
            )
        if self._paused:
            self._paused = False
            assert self._transport is not None
            self._transport.resume_reading()
        source = self._source
        if source is not None:
            pull = source.pull()
            if pull is True:  # a message was there: no wait at all
                source.idle()
                return
            if pull is not False:
                # The next message is fetched in this task: no hop through another.
                self._pulling = True
                try:
                    await pull
                finally:
                    self._pulling = False
                    source.idle()
                return
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
            if source is not None:
                source.idle()

    def _take(self, n: int, exact: bool = True) -> bytes:
        data = self._chunks.take(n, exact)
        if self._paused:
            self._maybe_resume_transport()
        return data

    def _find(self, seps: tuple[bytes, ...], start: int) -> tuple[int, int]:
        return self._chunks.find(seps, start)

    # Consumer side: the StreamReader API

    async def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        while not len(self._chunks):
            if self._exception is not None:
                raise self._exception
            if self._eof:
                return b""
            await self._wait("read")
        if n < 0:
            # Read until EOF, as asyncio does (bounded by the caller's patience).
            parts = [self._take(len(self._chunks))]
            try:
                while True:
                    while not len(self._chunks):
                        if self._eof or self._exception is not None:
                            # After an error, the bytes before it come first;
                            # the next read raises.
                            return b"".join(parts)
                        await self._wait("read")
                    parts.append(self._take(len(self._chunks)))
            except BaseException:
                # Cancelled (a timeout): what was gathered goes back, in order.
                self._chunks.unread(parts)
                self._maybe_pause_transport()
                raise
        return self._take(n, exact=False)

    async def readexactly(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        if n == 0:
            return b""
        while len(self._chunks) < n:
            if self._exception is not None:
                # The bytes stay buffered: read() returns them, then raises.
                raise self._exception
            if self._eof:
                incomplete = self._take(len(self._chunks)) if len(self._chunks) else b""
                raise asyncio.IncompleteReadError(incomplete, n)
            await self._wait("readexactly")
        return self._take(n)

    async def readline(self) -> bytes:
        sep = b"\n"
        try:
            return await self.readuntil(sep)
        except asyncio.IncompleteReadError as e:
            return e.partial
        except asyncio.LimitOverrunError as e:
            # As asyncio: drop the over-long line (or what is buffered of it).
            end, _ = self._find((sep,), e.consumed) if len(self._chunks) else (-1, 0)
            self._take(end if end != -1 else len(self._chunks)) if len(self._chunks) else None
            raise ValueError(e.args[0]) from None

    async def readuntil(self, separator: Any = b"\n") -> bytes:
        seps: tuple[bytes, ...]
        if isinstance(separator, tuple):
            seps = tuple(sorted(separator, key=len))
        else:
            seps = (separator,)
        if not seps or not all(seps):
            raise ValueError("Separator should contain at least one element")
        longest = len(seps[-1])
        start = 0
        while True:
            if len(self._chunks):
                end, found = self._find(seps, start)
                if end != -1:
                    if end - found > self._limit:
                        raise asyncio.LimitOverrunError(
                            "Separator is found, but chunk is longer than limit", end - found
                        )
                    return self._take(end)
                start = max(0, len(self._chunks) + 1 - longest)
                if start > self._limit:
                    raise asyncio.LimitOverrunError(
                        "Separator is not found, and chunk exceed the limit", start
                    )
            if self._exception is not None:
                raise self._exception
            if self._eof:
                partial = self._take(len(self._chunks)) if len(self._chunks) else b""
                raise asyncio.IncompleteReadError(partial, None)
            await self._wait("readuntil")
