"""The receive buffer every shell uses: a queue of received chunks. No I/O, no locks.

Frames from websockets arrive as ``bytes``; the buffer keeps a large one as it
is and hands a whole chunk to a read that asks for at least that much - no copy
on the bulk path (asyncio's reader copies every byte twice: into its
bytearray, and out of it). Separator searches (``readline``) join the chunks
into one bytearray head, once per byte.

Memory: ``len()`` counts payload bytes, and the shells' flow control (``limit``)
bounds it; the buffer keeps real memory within a small factor of it whatever
the frame sizes. A queued ``bytes`` object costs about 45 bytes beyond its
payload (object header, allocator rounding, deque slot): a peer sending 1-byte
frames would make every buffered byte cost 45. So chunks shorter than
:data:`COALESCE_BELOW` are copied into a ``bytearray`` at the tail of the
queue - one copy per small-frame byte, none for large frames - and a queued
chunk's overhead is at most ~5 % of its payload (plus, once, a small chunk
that found the buffer empty: kept as it is, so that a reader keeping up with
small messages copies nothing). A partly read ``bytearray``
head drops what was read rather than keeping a read offset (``del`` at a
bytearray's front is amortized O(1), and CPython reallocates a bytearray to
its size once less than half of its allocation is in use), so it holds at
most about twice what is still buffered, even while small frames keep
joining it.

An empty buffer holds no queue at all (the deque, about 600 bytes, is made by
the first append): a server holds one buffer per idle connection.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["ChunkBuffer"]

#: take(n, exact=False) joins buffered chunks smaller than this into one result;
#: a larger first chunk goes out alone (read(n) may return fewer than n bytes).
GATHER_BELOW = 16384

#: append() copies chunks shorter than this into a bytearray tail instead of
#: queueing them as objects (see the module docstring): per-chunk overhead is
#: then at most ~48 / COALESCE_BELOW of the payload. Copying under 1 KiB costs
#: less than websockets' parsing of the frame that carried it.
COALESCE_BELOW = 1024


class ChunkBuffer:
    """Received bytes as a deque of chunks; ``len()`` is the number of bytes.

    Chunks are immutable ``bytes`` (read from ``_pos`` when first) or
    bytearrays the buffer made and owns: runs of small chunks, or the head a
    search joined. A bytearray first chunk is always read from 0 (what was
    read is deleted), so appending to it cannot grow it without bound.
    """

    __slots__ = ("_chunks", "_pos", "_size")

    def __init__(self) -> None:
        self._chunks: deque[Any] | None = None  # made by the first append (see above)
        self._pos = 0  # read offset into chunks[0]; 0 when it is a bytearray
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, chunk: bytes) -> int:
        """Queue ``chunk``; return the bytes buffered.

        A ``bytes`` chunk of at least :data:`COALESCE_BELOW` bytes, or one
        that arrives when the buffer is empty, is kept as is (no copy); a
        shorter one is copied into the bytearray at the tail. A chunk that is
        not ``bytes`` is always copied: the buffer mutates only bytearrays it
        made.
        """
        n = len(chunk)
        chunks = self._chunks
        if chunks is None:
            chunks = self._chunks = deque()
        if not chunks and n and type(chunk) is bytes:
            # Alone in the buffer, a chunk of any size is kept as it is: one small
            # object's overhead at most, and a read takes it back without a copy.
            chunks.append(chunk)
        elif n >= COALESCE_BELOW:
            chunks.append(chunk if type(chunk) is bytes else bytes(chunk))
        elif not n:
            return self._size
        else:
            tail = chunks[-1] if chunks else None
            if type(tail) is bytearray:
                tail += chunk  # ours (see the class docstring): extended in place
            else:
                chunks.append(bytearray(chunk))
        self._size += n
        return self._size

    def unread(self, parts: list[bytes]) -> None:
        """Put ``parts`` (bytes taken earlier, in order) back at the front.

        How a blocking read that times out half-way loses nothing.
        """
        if not parts:
            return
        chunks = self._chunks
        if chunks is None:
            chunks = self._chunks = deque()
        if self._pos:
            chunks[0] = chunks[0][self._pos :]
            self._pos = 0
        for part in reversed(parts):
            if part:
                chunks.appendleft(part if type(part) is bytes else bytes(part))
                self._size += len(part)

    def take_into(self, view: memoryview) -> int:
        """Copy up to ``len(view)`` bytes into ``view`` and remove them; return the count."""
        n = len(view)
        done = 0
        chunks = self._chunks
        while chunks and done < n:
            first = chunks[0]
            pos = self._pos
            k = min(len(first) - pos, n - done)
            view[done : done + k] = memoryview(first)[pos : pos + k]
            done += k
            if pos + k == len(first):
                chunks.popleft()
                self._pos = 0
            elif type(first) is bytearray:
                del first[:k]  # pos is 0
            else:
                self._pos = pos + k
        self._size -= done
        return done

    def take_line(self, limit: int) -> tuple[bytes, bool]:
        """Remove bytes through the first ``b"\\n"``, at most ``limit`` (-1: any).

        Returns ``(data, found)``: without a newline in reach, every buffered
        byte (up to ``limit``) is returned with ``found`` false.
        """
        chunks = self._chunks or ()
        pos = self._pos
        scanned = 0
        for chunk in chunks:
            i = chunk.find(b"\n", pos)
            if i != -1:
                end = scanned + i - pos + 1
                if limit < 0 or end <= limit:
                    return self.take(end), True
                break
            scanned += len(chunk) - pos
            if 0 <= limit <= scanned:
                break
            pos = 0
        if limit < 0 or limit > self._size:
            limit = self._size
        return (self.take(limit) if limit else b""), False

    def peek(self, n: int) -> bytes:
        """Up to ``n`` (> 0) bytes from the front, not removed."""
        out = self.take(n)
        if out:
            self.unread([out])
        return out

    def clear(self) -> None:
        self._chunks = None
        self._pos = 0
        self._size = 0

    def take(self, n: int, exact: bool = True) -> bytes:
        """Remove and return ``n`` (> 0) bytes, or all if fewer are buffered.

        With ``exact=False`` (a ``read(n)``), a large first chunk is returned
        alone rather than copied into a join with the next ones.
        """
        chunks = self._chunks
        if not chunks:
            return b""
        first = chunks[0]
        pos = self._pos
        avail = len(first) - pos
        if avail > n:
            out = bytes(memoryview(first)[pos : pos + n])
            if type(first) is bytearray:
                del first[:n]  # pos is 0
            else:
                self._pos = pos + n
            self._size -= n
            return out
        chunks.popleft()
        self._pos = 0
        if pos == 0 and type(first) is bytes:
            out = first  # the zero-copy path: a whole frame
        else:
            out = bytes(memoryview(first)[pos:])
        if avail == n or not chunks or (avail >= GATHER_BELOW and not exact):
            self._size -= avail
            return out
        parts = [out]
        total = avail
        while chunks and total < n:
            chunk = chunks[0]
            size = len(chunk)
            if total + size <= n:
                chunks.popleft()
                parts.append(chunk)
                total += size
            elif exact or size < GATHER_BELOW:
                k = n - total
                parts.append(bytes(memoryview(chunk)[:k]))
                if type(chunk) is bytearray:
                    del chunk[:k]
                else:
                    self._pos = k
                total = n
            else:
                break
        self._size -= total
        return b"".join(parts)

    def find(self, seps: tuple[bytes, ...], start: int = 0) -> tuple[int, int]:
        """Find the earliest separator at or after ``start``: (end offset, its length).

        ``(-1, 0)`` when none is buffered.
        """
        chunks = self._chunks
        if not chunks:
            return -1, 0
        if len(chunks) > 1:
            first = chunks[0]
            if type(first) is not bytearray:
                first = bytearray(memoryview(first)[self._pos :])
                chunks[0] = first
                self._pos = 0
            while len(chunks) > 1:
                first += chunks[1]
                del chunks[1]
        buf = chunks[0]
        pos = self._pos
        end = -1
        found = 0
        for sep in seps:
            i = buf.find(sep, pos + start)
            if i != -1 and (end == -1 or i - pos + len(sep) < end):
                end = i - pos + len(sep)
                found = len(sep)
        return end, found
