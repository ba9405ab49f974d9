"""The shells' receive buffer (ChunkBuffer) against a bytearray model (no I/O)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ws_stream._buffer import GATHER_BELOW, ChunkBuffer

chunks = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\n"), max_size=8)
ops = st.lists(
    st.tuples(
        st.sampled_from(["append", "take", "exact", "into", "line", "peek", "unread", "find"]),
        st.integers(min_value=-1, max_value=120),
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
        if op == "append":
            queue.append(data)
            model += data
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
    assert queue.take(len(model) or 1, exact=True) == model


def test_take_hands_a_large_chunk_over_without_copying() -> None:
    queue = ChunkBuffer()
    big = bytes(GATHER_BELOW)
    queue.append(big)
    queue.append(b"tail")
    assert queue.take(2**20, exact=False) is big
    assert queue.take(10) == b"tail"
