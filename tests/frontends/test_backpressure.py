"""Read backpressure over every front end: what a peer's flood costs while nobody reads.

A peer in its own process (``flood.py``) sends 256 MiB while the application
does not read. The stream's reader stops at its ``limit`` (plus the message
that was on its way); what the front end holds meanwhile is measured four
ways: the growth of the Python heap (tracemalloc) and of the RSS of this
process (the server, or the aiohttp client; RSS reuses memory freed by earlier
tests, so it can read low), the bytes in the front end's own queue (when
reachable), and how much the peer could hand to its kernel (which includes
the kernel's socket buffers). Then the application reads
everything, and every byte arrives in order (sha256).

Each run prints one ``BACKPRESSURE`` line with the numbers (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import sys
import tracemalloc
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

import ws_stream

from . import flood
from .helpers import FRONT_ENDS, STREAM_OPTIONS, aiohttp_probe, rss, serving

KiB, MiB = 2**10, 2**20
TOTAL = 256 * MiB  # the flood: far more than any buffer on the way
LIMIT = MiB  # the stream's reader limit (the default)
SETTLE = 1.0  # seconds to wait after the peer stalls before measuring


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, flood.__file__, *args, stdout=asyncio.subprocess.PIPE
    )


async def _line(proc: asyncio.subprocess.Process, timeout: float = 60.0) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    assert line, f"the flood process ended (status {proc.returncode})"
    return line.decode().strip()


@contextlib.asynccontextmanager
async def flooded(
    front_end: str, size: int
) -> AsyncIterator[tuple[ws_stream.WsStream, asyncio.subprocess.Process, Callable[[], int] | None]]:
    """A stream over ``front_end`` whose peer is a flood process (not started sending)."""
    proc: asyncio.subprocess.Process | None = None
    try:
        if front_end == "aiohttp-client":
            proc = await _spawn("server", str(TOTAL), str(size))
            port = int((await _line(proc, 10)).split()[1])
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(f"ws://127.0.0.1:{port}/")
                try:
                    stream = ws_stream.WsStream(ws, **STREAM_OPTIONS)
                except BaseException:
                    await ws.close()
                    raise
                yield stream, proc, aiohttp_probe(ws)
                await asyncio.wait_for(stream.close(), 10)
        else:
            async with serving(front_end) as served:
                proc = await _spawn("client", str(served.port), served.path, str(TOTAL), str(size))
                stream = await served.next_stream()
                yield stream, proc, served.probes[id(stream)]
                await asyncio.wait_for(stream.close(), 10)
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("size", [64 * KiB, MiB], ids=["64KiB", "1MiB"])
@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_read_backpressure(front_end: str, size: int) -> None:
    expected = flood.expected_sha256(TOTAL, size)
    async with asyncio.timeout(110), flooded(front_end, size) as (stream, proc, probe):
        gc.collect()
        baseline = rss()
        tracemalloc.start()
        try:
            # The peer sends as fast as the front end takes; the application reads nothing.
            status, sent = (await _line(proc)).split()
            await asyncio.sleep(SETTLE)
            gc.collect()
            heap, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        grown = rss() - baseline
        buffered = stream.reader.buffered
        queued = probe() if probe is not None else None
        print(
            f"\nBACKPRESSURE {front_end} messages={size // KiB}KiB peer={status} "
            f"peer_sent={int(sent) / MiB:.1f}MiB reader={buffered / MiB:.2f}MiB "
            f"front_end_queue={'n/a' if queued is None else f'{queued / MiB:.2f}MiB'} "
            f"python_heap_growth={heap / MiB:.1f}MiB rss_growth={grown / MiB:.1f}MiB"
        )
        # The reader stops at its limit, plus at most the message on its way (over
        # TCP, what one read of the transport carried: asyncio reads up to 256 KiB).
        on_its_way = max(size, 256 * KiB) if front_end == "websockets" else size
        assert buffered <= LIMIT + on_its_way
        # The pause reached the peer: it could not send everything.
        assert status == "stalled"
        assert int(sent) < TOTAL
        # Generous: the process holds well under the flood (uvicorn's legacy
        # implementation queues up to 32 messages, hypercorn 10).
        assert heap < 48 * MiB
        # Nothing is lost or reordered once the application reads.
        digest = hashlib.sha256()
        got = 0
        while got < TOTAL:
            chunk = await stream.reader.read(256 * KiB)
            assert chunk, f"EOF after {got} bytes"
            digest.update(chunk)
            got += len(chunk)
        assert digest.hexdigest() == expected
        assert (await _line(proc)).startswith("done")
