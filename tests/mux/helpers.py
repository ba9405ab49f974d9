"""What the mux tests share: checksums of what crossed a stream, a stream's id."""

from __future__ import annotations

import asyncio
import hashlib

__all__ = ["digest", "digest_to_eof", "stream_id"]

KiB = 1024


def digest(data: bytes | memoryview) -> tuple[int, str]:
    """How many bytes, and their sha256."""
    return len(data), hashlib.sha256(data).hexdigest()


async def digest_to_eof(reader: asyncio.StreamReader) -> tuple[int, str]:
    """Read to EOF: how many bytes, and their sha256."""
    hasher = hashlib.sha256()
    count = 0
    while chunk := await reader.read(256 * KiB):
        hasher.update(chunk)
        count += len(chunk)
    return count, hasher.hexdigest()


def stream_id(writer: asyncio.StreamWriter) -> int:
    """The yamux stream id under ``writer``."""
    sid = writer.get_extra_info("mux_stream")
    assert isinstance(sid, int)
    return sid
