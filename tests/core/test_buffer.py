"""The shells' receive buffer (ChunkBuffer) against a bytearray model (no I/O)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ws_stream._buffer import COALESCE_BELOW, GATHER_BELOW, ChunkBuffer

chunks = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\n"), max_size=8)
ops = st.lists(
    st.tuples(
        st.sampled_from(
            ["append", "big", "take", "exact", "into", "line", "peek", "unread", "find"]
        ),
        st.one_of(st.integers(min_value=-1, max_value=120), st.integers(121, 3 * COALESCE_BELOW)),
        st.binary(max_size=60),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(start=chunks, script=ops)
def test_byte_queue_matches_a_bytearray(
    start: list[bytes], script: list[tuple[str, int, bytes]]
) -> None:
    queue = ChunkBuffer()
    model = bytearray()
    for chunk in start:
        queue.append(chunk)
        model += chunk
    for op, n, data in script:
        if op == "append":  # small: coalesced into the bytearray tail
            queue.append(data)
            model += data
        elif op == "big":  # large: queued as it is
            big = (data or b"z") * (COALESCE_BELOW // max(len(data), 1) + 1)
            queue.append(big)
            model += big
        elif op in ("take", "exact") and n > 0:
            got = queue.take(n, exact=op == "exact")
            assert model.startswith(got)
            if op == "exact" or not model:
                assert len(got) == min(n, len(model))
            else:
                assert 0 < len(got) <= n
            del model[: len(got)]
        elif op == "into" and n > 0:
            view = memoryview(bytearray(n))
            k = queue.take_into(view)
            assert bytes(view[:k]) == model[:k] and k == min(n, len(model))
            del model[:k]
        elif op == "line":
            got, found = queue.take_line(n)
            i = model.find(b"\n")
            if i != -1 and (n < 0 or i + 1 <= n):
                assert found and got == model[: i + 1]
            else:
                assert not found and got == model[: len(model) if n < 0 else n]
            del model[: len(got)]
        elif op == "peek" and n > 0:
            got = queue.peek(n)
            assert got == model[:n]
        elif op == "find":  # joins chunks into a bytearray head: the others must cope
            i = model.find(b"\n", max(n, 0))
            assert queue.find((b"\n",), max(n, 0))[0] == (i + 1 if i != -1 else -1)
        elif op == "unread":
            got = queue.take(max(n, 1), exact=True)
            queue.unread([got[:3], got[3:]])
            assert len(queue) == len(model)
        assert len(queue) == len(model)
        # White-box: a bytearray head is never read from an offset (what was
        # read is deleted), or appending to it would keep what was read.
        assert queue._pos == 0 or type(queue._chunks[0]) is bytes
    assert queue.take(len(model) or 1, exact=True) == model


def test_take_hands_a_large_chunk_over_without_copying() -> None:
    queue = ChunkBuffer()
    big = bytes(GATHER_BELOW)
    queue.append(big)
    queue.append(b"tail")
    assert queue.take(2**20, exact=False) is big
    assert queue.take(10) == b"tail"


def test_small_chunks_are_coalesced_in_order_large_ones_kept() -> None:
    queue = ChunkBuffer()
    edge = bytes(range(256)) * (COALESCE_BELOW // 256)  # exactly COALESCE_BELOW: kept
    bulk = bytes(GATHER_BELOW)  # handed out alone by read(n)
    pieces = [b"a", b"bc", edge, b"d", b"", b"ef", bulk, b"g", b"h"]
    for piece in pieces:
        queue.append(piece)
    assert len(queue) == sum(map(len, pieces))
    assert queue.take(3) == b"abc"  # the small run before the first large chunk
    assert queue.take(COALESCE_BELOW) is edge  # zero-copy
    assert queue.take(1) == b"d"
    assert queue.take(2) == b"ef"
    assert queue.take(2**20, exact=False) is bulk  # zero-copy, whatever came before
    assert queue.take(10) == b"gh"
    assert len(queue) == 0 and queue.take(1) == b""


def test_a_small_chunk_that_finds_the_buffer_empty_is_kept_as_it_is() -> None:
    """A reader that keeps up with small messages copies nothing; the small ones
    that queue behind it are still coalesced."""
    queue = ChunkBuffer()
    first = bytes(range(64))
    queue.append(first)
    assert queue.take(100, exact=False) is first  # zero-copy
    queue.append(first)
    queue.append(b"a")
    queue.append(b"b")
    assert queue.take(2) == first[:2]  # from an offset: the object is kept
    assert queue.take(100) == first[2:] + b"ab"
    assert len(queue) == 0


def test_appended_chunks_are_copied_when_mutable() -> None:
    queue = ChunkBuffer()
    small, large = bytearray(b"small"), bytearray(COALESCE_BELOW)
    queue.append(small)  # a producer that reuses its buffer
    queue.append(large)
    small[:] = b"XXXXX"
    large[:3] = b"XXX"
    assert queue.take(5 + COALESCE_BELOW) == b"small" + bytes(COALESCE_BELOW)


def test_partial_reads_of_the_coalesced_tail_while_it_grows() -> None:
    """take / take_line / take_into / peek / unread / find on a tail that keeps growing."""
    queue = ChunkBuffer()
    model = bytearray()
    for i in range(300):
        piece = bytes([65 + i % 26]) * (i % 7) + (b"\n" if i % 5 == 0 else b"")
        queue.append(piece)
        model += piece
        step = i % 6
        if step == 0:
            got = queue.take(3)
        elif step == 1:
            got, _ = queue.take_line(-1)
        elif step == 2:
            view = memoryview(bytearray(4))
            got = bytes(view[: queue.take_into(view)])
        elif step == 3:
            assert queue.peek(5) == model[:5]
            got = b""
        elif step == 4:
            got = queue.take(2)
            queue.unread([got[:1], got[1:]])
            got = b""
        else:
            i = model.find(b"\n", 1)
            assert queue.find((b"\n",), 1)[0] == (i + 1 if i != -1 else -1)
            got = queue.take(1, exact=False)
        assert model.startswith(got)
        del model[: len(got)]
        assert len(queue) == len(model)
    assert queue.take(len(model) or 1) == model


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def _traced_now() -> int:
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.usefixtures("traced")
def test_one_byte_chunks_cost_about_one_byte_each() -> None:
    """The defect of issue 12 item 7: 1-byte frames cost ~50 bytes per byte buffered."""
    n = 2**18
    before = _traced_now()
    queue = ChunkBuffer()
    one = bytes(bytearray(b"x"))  # a fresh 1-byte object per frame, as websockets makes
    for _ in range(n):
        queue.append(bytes(bytearray(one)))
    cost = _traced_now() - before
    assert len(queue) == n
    assert cost <= 1.5 * n, f"{n} 1-byte chunks cost {cost} bytes"
    assert queue.take(n) == b"x" * n


@pytest.mark.usefixtures("traced")
def test_alternating_tiny_and_large_chunks_stay_near_their_size() -> None:
    """Each small run is a separate bytearray: its fixed cost is paid against a large chunk."""
    queue = ChunkBuffer()
    before = _traced_now()
    total = 0
    for _ in range(1000):
        for chunk in (b"x", bytes(COALESCE_BELOW)):
            queue.append(bytes(bytearray(chunk)))
            total += len(chunk)
    cost = _traced_now() - before
    assert cost <= 1.25 * total, f"{total} bytes in chunks cost {cost} bytes"


@pytest.mark.usefixtures("traced")
def test_a_tail_read_from_the_front_while_growing_does_not_keep_what_was_read() -> None:
    """The reader keeps up, but never empties the buffer: the tail is read and grown at once."""
    queue = ChunkBuffer()
    queue.append(b"head")
    before = _traced_now()
    for _ in range(100_000):
        queue.append(b"abcdefgh")
        assert len(queue.take(8)) == 8
    cost = _traced_now() - before
    assert len(queue) == 4
    assert cost <= 64 * 1024, f"a 4-byte buffer holds {cost} bytes after 800 kB went through"
