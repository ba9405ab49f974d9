"""The link under a stream over a message front end (ASGI, aiohttp), with a front end
written here to hold a send at will: what the real front ends rarely do on cue.

The real front ends (uvicorn, hypercorn, aiohttp) run in tests/frontends/.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

import pytest

import ws_stream
from ws_stream.asgi import _stream_options
from ws_stream.asyncio._messages import BYTES, CLOSE, Message
from ws_stream.asyncio.stream import WsStream


class HeldFrontEnd:
    """Whole messages in from a queue; each send waits until ``release`` is set, and
    records that its cleanup ran (a front end's lock, say, is released there)."""

    name = "held"
    client = False
    own_verdicts = True
    answered: int | None = None
    unanswered = False

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[Message] = asyncio.Queue()
        self.release = asyncio.Event()
        self.sent: list[bytes] = []
        self.cleaned_up = 0
        self.receivers: list[asyncio.Task[Any] | None] = []  # the task of each receive()
        self.receives_cancelled = 0
        self.failed: int | None = None  # the code of fail()
        self.dropped = False  # drop() was called

    async def receive(self) -> Message:
        self.receivers.append(asyncio.current_task())
        try:
            return await self.incoming.get()
        except asyncio.CancelledError:
            self.receives_cancelled += 1
            raise

    async def send_bytes(self, data: bytes) -> None:
        try:
            await self.release.wait()
            self.sent.append(data)
        finally:
            self.cleaned_up += 1

    async def close(self, code: int, reason: str) -> None:
        self.incoming.put_nowait((CLOSE, (code, reason)))  # the peer answers at once

    async def fail(self, code: int, reason: str) -> None:
        self.failed = code

    async def drop(self) -> None:
        self.dropped = True

    def extra(self) -> dict[str, Any]:
        return {}


async def fetching(
    front: HeldFrontEnd, stream: WsStream, first: bytes, *, cancelled_before: bool = False
) -> asyncio.Task[bytes]:
    """A task that reads ``first`` (sent once it waits, so the link's task receives
    it), then waits in a read that fetches the next message in its own task; returned
    once that fetch runs. ``cancelled_before``: the task first catches a cancellation
    of its own, without ``uncancel()`` (``cancelling()`` stays 1)."""

    async def read_on() -> bytes:
        if cancelled_before:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
            assert task.cancelling() == 1
        assert await stream.reader.readexactly(len(first)) == first
        return await stream.reader.read(10)

    reading = asyncio.create_task(read_on())
    for _ in range(5):
        await asyncio.sleep(0)
    front.incoming.put_nowait((BYTES, first))
    for _ in range(5):
        await asyncio.sleep(0)
    assert front.receivers[-1] is reading
    return reading


async def ends(reading: Awaitable[bytes]) -> None:
    """The read ends within seconds: EOF, or the connection's error."""
    try:
        data = await asyncio.wait_for(reading, 5)
    except ConnectionError:
        return
    assert data == b""


async def test_a_waiting_send_is_finished_when_the_connection_is_lost_at_once() -> None:
    """The loss arrives before the task that would finish a waiting send ever ran:
    the front end's send is still ended (its cleanup runs), never left half-run."""
    front = HeldFrontEnd()
    stream = WsStream._over_messages(front, _stream_options({}))
    front.incoming.put_nowait((CLOSE, (1006, "")))  # the receiver runs first, next turn
    stream.writer.write(b"waits")  # the send starts here and waits: a task will finish it
    with pytest.raises(ws_stream.AbnormalClosureError):
        await asyncio.wait_for(stream.reader.read(), 5)
    for _ in range(3):
        await asyncio.sleep(0)
    assert front.cleaned_up == 1
    assert front.sent == []


async def test_sends_that_wait_keep_their_order_with_later_writes() -> None:
    front = HeldFrontEnd()
    stream = WsStream._over_messages(front, _stream_options({}))
    for i in range(5):
        stream.writer.write(b"%d" % i)
        await asyncio.sleep(0)  # each write its own message
    assert front.sent == []
    front.release.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert front.sent == [b"0", b"1", b"2", b"3", b"4"]
    assert front.cleaned_up == 5
    front.incoming.put_nowait((BYTES, b"bye"))
    assert await asyncio.wait_for(stream.reader.readexactly(3), 5) == b"bye"
    stream.transport.abort()


async def test_a_send_that_need_not_wait_is_done_inside_write() -> None:
    """README: a message written over ASGI or aiohttp is sent eagerly - the front end's
    send has run when write() returns, with no task switch."""
    front = HeldFrontEnd()
    front.release.set()
    stream = WsStream._over_messages(front, _stream_options({}))
    stream.writer.write(b"now")
    assert front.sent == [b"now"] and front.cleaned_up == 1
    stream.writer.write(b"coalesced")  # the second write of this iteration waits for its end
    assert front.sent == [b"now"]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert front.sent == [b"now", b"coalesced"]
    stream.transport.abort()


async def test_a_read_that_waits_fetches_the_next_message_in_its_own_task() -> None:
    """Once a read waits, the front end's receive() runs in the reader's task: the
    message reaches the reader with no hop through the link's task."""
    front = HeldFrontEnd()
    stream = WsStream._over_messages(front, _stream_options({}))
    reader_task = asyncio.current_task()
    for i in range(5):
        front.incoming.put_nowait((BYTES, b"%d" % i))
        async with asyncio.timeout(5):
            assert await stream.reader.readexactly(1) == b"%d" % i
    later = asyncio.get_running_loop().call_later(0.05, front.incoming.put_nowait, (BYTES, b"5"))
    async with asyncio.timeout(5):
        assert await stream.reader.readexactly(1) == b"5"
    later.cancel()
    # The test's task never waits elsewhere: every receive() but the link's first is its.
    assert front.receivers[-1] is reader_task
    assert front.receivers.count(reader_task) >= 5
    assert front.receives_cancelled == 0
    stream.transport.abort()


async def test_a_waiting_read_ends_when_the_stream_is_aborted_on_a_silent_front_end() -> None:
    """A front end whose receive() says nothing after our close (it reports the end
    only later, or never): a read waiting in it still ends at ``abort()``, and the
    front end's receive is cancelled, not left running."""
    front = HeldFrontEnd()
    stream = WsStream._over_messages(front, _stream_options({}))
    reading = await fetching(front, stream, b"a")
    stream.transport.abort()
    front.release.set()
    await ends(reading)
    assert front.receives_cancelled >= 1


async def test_a_read_cancelled_while_it_fetches_loses_nothing() -> None:
    """A timeout around a read cancels the front end's receive() it was running
    (the message stays in the front end's queue); the next read gets it."""
    front = HeldFrontEnd()
    stream = WsStream._over_messages(front, _stream_options({}))
    front.incoming.put_nowait((BYTES, b"a"))
    async with asyncio.timeout(5):
        assert await stream.reader.readexactly(1) == b"a"
    for _ in range(3):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await stream.reader.read(10)
    assert front.receives_cancelled >= 3
    front.incoming.put_nowait((BYTES, b"b"))
    assert await asyncio.wait_for(stream.reader.read(10), 5) == b"b"

    # The message arrives in the very iteration the read is cancelled in: the
    # receive's future is already done when the cancellation reaches it.
    for i in range(5):
        reading = await fetching(front, stream, b"c")
        front.incoming.put_nowait((BYTES, b"%d" % i))
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        async with asyncio.timeout(5):
            assert await stream.reader.readexactly(1) == b"%d" % i
    stream.transport.abort()


async def test_a_read_cancelled_long_ago_is_not_cancelled_again_by_an_abort() -> None:
    """A reader whose task caught a cancellation earlier (without ``uncancel()``)
    and then waits in the front end's receive when the stream is aborted: its read
    ends with the stream's end, not with a CancelledError nobody asked for."""
    front = HeldFrontEnd()
    stream = WsStream._over_messages(front, _stream_options({}))
    reading = await fetching(front, stream, b"a", cancelled_before=True)
    stream.transport.abort()
    await ends(reading)


async def test_a_message_the_stream_cannot_take_fails_the_connection_in_the_reader_too() -> None:
    """A front end reports a close code no peer may send (1015): whichever task
    received it, the connection fails (AbnormalClosureError), and nothing read after
    it reaches the reader."""
    front = HeldFrontEnd()
    stream = WsStream._over_messages(front, _stream_options({}))
    async with asyncio.timeout(5):
        reading = await fetching(front, stream, b"a")
        front.incoming.put_nowait((CLOSE, (1015, "bad")))
        front.incoming.put_nowait((BYTES, b"more"))
        with pytest.raises(ws_stream.AbnormalClosureError):
            await reading
        with pytest.raises(ws_stream.AbnormalClosureError):
            await stream.reader.read(10)


async def reader_fetches(front: HeldFrontEnd, stream: WsStream) -> None:
    """Until the reader's own reads run the front end's receive() (as in an echo)."""
    reader_task = asyncio.current_task()
    for i in range(3):
        front.incoming.put_nowait((BYTES, b"%d" % i))
        async with asyncio.timeout(5):
            assert await stream.reader.readexactly(1) == b"%d" % i
    assert front.receivers[-1] is reader_task


async def test_messages_the_front_end_holds_already_are_read_in_order_without_a_wait() -> None:
    """A receive() that returns at once (the front end had the messages queued, as a
    busy server does): each read gets its bytes in its own call, in order, and the
    message after them is still fetched when it comes."""
    front = HeldFrontEnd()
    stream = WsStream._over_messages(front, _stream_options({}))
    await reader_fetches(front, stream)
    for i in range(10):
        front.incoming.put_nowait((BYTES, b"<%d>" % i))
    ran = []
    asyncio.get_running_loop().call_soon(ran.append, True)
    for i in range(10):
        assert await stream.reader.readexactly(len(b"<%d>" % i)) == b"<%d>" % i
    assert not ran  # no read waited: the loop never ran
    asyncio.get_running_loop().call_later(0.02, front.incoming.put_nowait, (BYTES, b"late"))
    async with asyncio.timeout(5):
        assert await stream.reader.readexactly(4) == b"late"
    assert front.receives_cancelled == 0
    stream.transport.abort()


async def test_a_close_the_front_end_holds_already_ends_the_read_after_the_data() -> None:
    """The peer's close queued behind data, received at once by the reader: the data,
    then EOF; an invalid report (1015) there fails the connection as anywhere."""
    for close, outcome in (((1000, ""), None), ((1015, "bad"), ws_stream.AbnormalClosureError)):
        front = HeldFrontEnd()
        stream = WsStream._over_messages(front, _stream_options({}))
        await reader_fetches(front, stream)
        front.incoming.put_nowait((BYTES, b"last"))
        front.incoming.put_nowait((CLOSE, close))
        front.incoming.put_nowait((BYTES, b"never"))
        async with asyncio.timeout(5):
            assert await stream.reader.readexactly(4) == b"last"
            if outcome is None:
                assert await stream.reader.read(10) == b""
                assert stream.close_code == 1000
            else:
                with pytest.raises(outcome):
                    await stream.reader.read(10)
        stream.transport.abort()


class FailingFrontEnd(HeldFrontEnd):
    """A front end whose receive() fails at once once ``broken`` is set (aiohttp's
    receive raises for a connection it already knows is broken)."""

    broken = False

    async def receive(self) -> Message:
        if self.broken:
            raise ConnectionResetError("the front end's connection broke")
        return await super().receive()


async def test_a_receive_that_fails_at_once_ends_the_stream_with_its_error() -> None:
    front = FailingFrontEnd()
    stream = WsStream._over_messages(front, _stream_options({}))
    await reader_fetches(front, stream)
    front.incoming.put_nowait((BYTES, b"kept"))
    async with asyncio.timeout(5):
        assert await stream.reader.readexactly(4) == b"kept"
        front.broken = True
        with pytest.raises(ConnectionError) as caught:
            await stream.reader.read(10)
    assert "broke" in repr(caught.value) + repr(caught.value.__cause__)
    async with asyncio.timeout(5):
        while front.failed is None:  # the front end's connection ends too (in a task)
            await asyncio.sleep(0)
    assert front.failed == 1011


class PoisonedFrontEnd(HeldFrontEnd):
    """A receive() that raises CancelledError at its first step, once: it awaits a
    future that was cancelled already (a front end's shutdown future, say)."""

    poisoned = False

    async def receive(self) -> Message:
        if self.poisoned:
            self.poisoned = False
            cancelled = asyncio.get_running_loop().create_future()
            cancelled.cancel()
            await cancelled
        return await super().receive()


async def test_a_receive_cancelled_at_its_first_step_leaves_the_link_receiving_again() -> None:
    """The cancellation reaches the read, as if it had awaited the receive itself, and
    the next read still gets the next message (no receive left marked in flight)."""
    front = PoisonedFrontEnd()
    stream = WsStream._over_messages(front, _stream_options({}))
    await reader_fetches(front, stream)
    front.poisoned = True
    with pytest.raises(asyncio.CancelledError):
        await stream.reader.read(10)
    front.incoming.put_nowait((BYTES, b"next"))
    async with asyncio.timeout(5):
        assert await stream.reader.read(10) == b"next"
    stream.transport.abort()


async def test_a_malformed_message_returned_at_once_fails_the_connection() -> None:
    """A front end's receive() that returns something that is no message, at once or
    after a wait: the stream ends with the error, the front end's connection with
    1011, as when the link's own task receives it."""
    for at_once in (True, False):
        front = HeldFrontEnd()
        stream = WsStream._over_messages(front, _stream_options({}))
        await reader_fetches(front, stream)
        if at_once:
            front.incoming.put_nowait((BYTES, b"x", "extra"))  # type: ignore[arg-type]
        else:
            asyncio.get_running_loop().call_later(
                0.02, front.incoming.put_nowait, (BYTES, b"x", "extra")
            )
        async with asyncio.timeout(5):
            with pytest.raises(ws_stream.WsStreamError):
                await stream.reader.read(10)
            while front.failed is None:
                await asyncio.sleep(0)
        assert front.failed == 1011
