"""The receive buffer of the blocking shell: a queue of received chunks. No I/O, no locks.

Payloads from websockets arrive as ``bytes`` and are kept as they are; a read
that asks for at least a whole chunk gets that very object (no copy on the bulk
path). Small chunks are joined so a ``recv(65536)`` after many small frames
returns them in one call. Bytes can be put back at the front (:meth:`unread`),
which is how a read that times out half-way loses nothing.
"""

from __future__ import annotations

from collections import deque

__all__ = ["ByteQueue"]

#: A first chunk at least this large goes out alone from take(); smaller ones
#: are joined with the following chunks up to the size asked for.
GATHER_BELOW = 16384


class ByteQueue:
    """Received bytes as a deque of chunks; ``len()`` is the number of bytes.

    Not thread-safe: the connection guards it with its receive lock.
    """

    __slots__ = ("_chunks", "_pos", "size")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._pos = 0  # offset of the first unread byte in _chunks[0]
        self.size = 0  # bytes buffered (read-only outside this class)

    def __len__(self) -> int:
        return self.size

    def append(self, chunk: bytes) -> int:
        """Queue ``chunk`` (immutable bytes, kept as is); return the bytes buffered."""
        if chunk:
            self._chunks.append(chunk)
            self.size += len(chunk)
        return self.size

    def clear(self) -> None:
        self._chunks.clear()
        self._pos = 0
        self.size = 0

    def unread(self, parts: list[bytes]) -> None:
        """Put ``parts`` (bytes taken earlier, in order) back at the front."""
        if not parts:
            return
        chunks = self._chunks
        if self._pos:
            chunks[0] = chunks[0][self._pos :]
            self._pos = 0
        for part in reversed(parts):
            if part:
                chunks.appendleft(part)
                self.size += len(part)

    def take(self, n: int, exact: bool = False) -> bytes:
        """Remove and return up to ``n`` (> 0) bytes; ``b""`` only when empty.

        With ``exact`` false (a ``recv(n)``), a large first chunk is returned
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
            self.size -= n
            return first[pos : pos + n]
        chunks.popleft()
        self._pos = 0
        out = first if pos == 0 else first[pos:]
        if avail == n or not chunks or (avail >= GATHER_BELOW and not exact):
            self.size -= avail
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
            else:
                k = n - total
                parts.append(chunk[:k])
                self._pos = k
                total = n
        self.size -= total
        return b"".join(parts)

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
        self.size -= done
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
                    return self.take(end, exact=True), True
                break
            scanned += len(chunk) - pos
            if 0 <= limit <= scanned:
                break
            pos = 0
        if limit < 0 or limit > self.size:
            limit = self.size
        return (self.take(limit, exact=True) if limit else b""), False

    def peek(self, n: int) -> bytes:
        """Up to ``n`` (> 0) bytes from the front, not removed."""
        out = self.take(n, exact=True)
        if out:
            self.unread([out])
        return out
