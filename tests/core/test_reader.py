"""ChunkedStreamReader against asyncio's own StreamReader: same answers, fewer copies.

A hypothesis test feeds both readers the same chunks and performs the same
random operations; every result and exception must match (the one documented
difference, errors after buffered data, has its own test).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ws_stream.asyncio._reader import ChunkedStreamReader


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _outcome(coro: Any) -> tuple[str, Any]:
    try:
        return "ok", await asyncio.wait_for(coro, 1)
    except asyncio.IncompleteReadError as e:
        return "incomplete", (e.partial, e.expected)
    except asyncio.LimitOverrunError as e:
        return "overrun", e.consumed
    except ValueError as e:
        return "valueerror", type(e).__name__


operations = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.integers(-1, 300)),
        st.tuples(st.just("readexactly"), st.integers(0, 300)),
        st.tuples(st.just("readline"), st.just(0)),
        st.tuples(st.just("readuntil"), st.sampled_from([b"\n", b"ab", b"xyz"])),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=120).map(lambda b: b.replace(b"\0", b"\n")), max_size=10),
    ops=operations,
    limit=st.integers(8, 400),
)
def test_same_results_as_asyncio_stream_reader(
    chunks: list[bytes], ops: list[tuple[str, Any]], limit: int
) -> None:
    async def run(reader: asyncio.StreamReader) -> list[Any]:
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        results = []
        for name, arg in ops:
            if name == "read":
                results.append(await _outcome(reader.read(arg)))
            elif name == "readexactly":
                results.append(await _outcome(reader.readexactly(arg)))
            elif name == "readline":
                results.append(await _outcome(reader.readline()))
            else:
                results.append(await _outcome(reader.readuntil(arg)))
            results.append(reader.at_eof())
        return results

    async def both() -> tuple[list[Any], list[Any]]:
        theirs = await run(asyncio.StreamReader(limit=limit))
        ours = await run(ChunkedStreamReader(limit))
        return theirs, ours

    theirs, ours = _run(both())
    # read(n) may legitimately return fewer bytes than asyncio's (a large chunk
    # alone); the chunks here are small, so every answer must be identical.
    assert ours == theirs


def test_large_chunk_is_handed_over_without_copy() -> None:
    async def main() -> None:
        reader = ChunkedStreamReader(2**20)
        chunk = bytes(65536)
        reader.feed_data(chunk)
        reader.feed_data(b"tail")
        got = await reader.read(2**20)
        assert got is chunk
        assert await reader.read(10) == b"tail"

    _run(main())


def test_readexactly_spans_large_chunks() -> None:
    async def main() -> None:
        reader = ChunkedStreamReader(2**20)
        parts = [bytes([i]) * 65536 for i in range(5)]
        for part in parts:
            reader.feed_data(part)
        assert await reader.readexactly(3 * 65536 + 10) == b"".join(parts)[: 3 * 65536 + 10]
        assert reader.buffered == 2 * 65536 - 10  # type: ignore[attr-defined]

    _run(main())


def test_error_comes_after_buffered_bytes_and_nothing_is_lost() -> None:
    async def main() -> None:
        reader = ChunkedStreamReader(1000)
        reader.feed_data(b"abc")
        reader.feed_data(b"def")
        reader.set_exception(ConnectionResetError("gone"))
        with pytest.raises(ConnectionResetError):
            await reader.readexactly(10)  # cannot be satisfied: raises, keeps the bytes
        assert await reader.readexactly(2) == b"ab"
        with pytest.raises(ConnectionResetError):
            await reader.readuntil(b"\n")
        assert await reader.read() == b"cdef"
        with pytest.raises(ConnectionResetError):
            await reader.read()

    _run(main())


def test_reading_is_paused_past_limit_and_resumed_at_half() -> None:
    class Transport(asyncio.ReadTransport):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[str] = []

        def pause_reading(self) -> None:
            self.calls.append("pause")

        def resume_reading(self) -> None:
            self.calls.append("resume")

    async def main() -> None:
        reader = ChunkedStreamReader(100)
        transport = Transport()
        reader.set_transport(transport)
        reader.feed_data(b"x" * 100)
        assert transport.calls == []
        reader.feed_data(b"x")
        assert transport.calls == ["pause"]
        await reader.readexactly(40)
        assert transport.calls == ["pause"]  # 61 bytes left: above limit // 2
        await reader.readexactly(11)
        assert transport.calls == ["pause", "resume"]

    _run(main())


def test_concurrent_reads_are_refused() -> None:
    async def main() -> None:
        reader = ChunkedStreamReader(100)
        first = asyncio.create_task(reader.read(1))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already waiting"):
            await reader.read(1)
        reader.feed_data(b"z")
        assert await first == b"z"

    _run(main())
