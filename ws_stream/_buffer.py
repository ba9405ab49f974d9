"""The receive buffer every shell uses: a queue of received chunks. No I/O, no locks.

Frames from websockets arrive as ``bytes``; the buffer keeps them as they are
and hands a whole chunk to a read that asks for at least that much - no copy
on the bulk path (asyncio's reader copies every byte twice: into its
bytearray, and out of it). Separator searches (``readline``) join the chunks
into one bytearray head, once per byte.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["ChunkBuffer"]

#: take(n, exact=False) joins buffered chunks smaller than this into one result;
#: a larger first chunk goes out alone (read(n) may return fewer than n bytes).
GATHER_BELOW = 16384


class ChunkBuffer:
    """Received bytes as a deque of chunks; ``len()`` is the number of bytes."""

    __slots__ = ("_chunks", "_pos", "_size")

    def __init__(self) -> None:
        # chunks[0] may be a bytearray head (after a search), read from _pos.
        self._chunks: deque[Any] = deque()
        self._pos = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, chunk: bytes) -> int:
        """Queue ``chunk`` (kept as is: pass immutable bytes); return the bytes buffered."""
        if chunk:
            self._chunks.append(chunk)
            self._size += len(chunk)
        return self._size

    def unread(self, parts: list[bytes]) -> None:
        """Put ``parts`` (bytes taken earlier, in order) back at the front.

        How a blocking read that times out half-way loses nothing.
        """
        if not parts:
            return
        chunks = self._chunks
        if self._pos:
            chunks[0] = chunks[0][self._pos :]
            self._pos = 0
        for part in reversed(parts):
            if part:
                chunks.appendleft(part)
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
            view[done : done + k] = first[pos : pos + k]
            done += k
            if pos + k == len(first):
                chunks.popleft()
                self._pos = 0
            else:
                self._pos = pos + k
        self._size -= done
        return done

    def take_line(self, limit: int) -> tuple[bytes, bool]:
        """Remove bytes through the first ``b"\\n"``, at most ``limit`` (-1: any).

        Returns ``(data, found)``: without a newline in reach, every buffered
        byte (up to ``limit``) is returned with ``found`` false.
        """
        chunks = self._chunks
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
        self._chunks.clear()
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
            self._pos = pos + n
            self._size -= n
            return bytes(memoryview(first)[pos : pos + n])
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
            if type(first) is bytearray:
                if self._pos:
                    del first[: self._pos]  # amortized O(1) at a bytearray's front
            else:
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
