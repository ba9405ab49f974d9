"""The link under a stream over a message front end (ASGI, aiohttp), with a front end
written here to hold a send at will: what the real front ends rarely do on cue.

The real front ends (uvicorn, hypercorn, aiohttp) run in tests/frontends/.
"""

from __future__ import annotations

import asyncio
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

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[Message] = asyncio.Queue()
        self.release = asyncio.Event()
        self.sent: list[bytes] = []
        self.cleaned_up = 0

    async def receive(self) -> Message:
        return await self.incoming.get()

    async def send_bytes(self, data: bytes) -> None:
        try:
            await self.release.wait()
            self.sent.append(data)
        finally:
            self.cleaned_up += 1

    async def close(self, code: int, reason: str) -> None:
        pass

    def extra(self) -> dict[str, Any]:
        return {}


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
