"""Our close over every front end: what the peer still sends reaches the reader, a close
that cannot go out in time never looks clean, and the peer's own close codes are its own.

README: "Closing with unread data" (bytes the peer sent before it saw our close still
reach the reader; with ``write_eof()`` everything until the peer's close) and the
front-end table. Each test runs on real servers (see ``helpers.py``) with a raw peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

import pytest

import ws_stream

from ..rawpeer import BINARY, CLOSE, RawPeer, close_payload
from .helpers import FRONT_ENDS, STEP, open_pair

MiB = 2**20


async def _read_to_end(stream: ws_stream.WsStream) -> tuple[bytes, str]:
    """Everything the reader gets, and how it ends ("EOF" or the error's name)."""
    got = bytearray()
    try:
        async with asyncio.timeout(STEP):
            while data := await stream.reader.read(MiB):
                got += data
    except ConnectionError as exc:
        return bytes(got), type(exc).__name__
    return bytes(got), "EOF"


#: What the reader gets of what the peer sent after our close went out, and how it ends.
AFTER_OUR_CLOSE = dict.fromkeys(FRONT_ENDS, ("all", "EOF"))
# uvicorn (websockets-sansio, wsproto) discards every message that arrives after the
# application's websocket.close and reports websocket.disconnect with our own code at
# once (README's front-end table): only what it had queued before still arrives.
AFTER_OUR_CLOSE["uvicorn-sansio"] = AFTER_OUR_CLOSE["uvicorn-wsproto"] = ("none", "EOF")
# The legacy implementation delivers everything, then reports the end as 1005 (its
# close code is not known yet): read as a lost connection, as every ASGI 1005.
AFTER_OUR_CLOSE["uvicorn-websockets"] = ("all", "AbnormalClosureError")


@pytest.mark.parametrize("how", ["close", "write_eof"])
@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_what_the_peer_sent_before_our_close_reaches_the_reader(
    front_end: str, how: str
) -> None:
    """The peer sends more before it reads our close, then answers it: the reader
    gets every byte, then EOF (over TCP and over every front end)."""
    async with asyncio.timeout(30), open_pair(front_end, "raw") as pair:
        raw, stream = pair.raw, pair.stream
        assert raw is not None
        raw.send(BINARY, b"hello")
        await raw.writer.drain()
        assert await stream.reader.readexactly(5) == b"hello"
        if how == "close":
            closing: asyncio.Future[None] = asyncio.ensure_future(stream.close(4001, "bye"))
        else:
            stream.writer.write_eof()
            closing = asyncio.ensure_future(stream.wait_closed())
        await asyncio.sleep(0.3)  # our close is on its way: the peer has not read it yet
        raw.send(BINARY, b" world")
        raw.send(BINARY, b"!" * 100_000)
        await raw.writer.drain()
        code = await raw.recv_close(STEP)
        assert code[0] == (4001 if how == "close" else 1000)
        with contextlib.suppress(ConnectionError):
            raw.send(CLOSE, close_payload(code[0]))
            await raw.writer.drain()
        got, end = await _read_to_end(stream)
        which, ending = AFTER_OUR_CLOSE[front_end]
        sent = b" world" + b"!" * 100_000
        assert (got, end) == (sent if which == "all" else b"", ending), (
            f"{front_end}: after our close the reader got {len(got)} bytes, then {end}"
        )
        await asyncio.wait_for(closing, STEP)
        assert stream.close_code_sent == code[0]
        raw.close_tcp()


async def _drain_peer(raw: RawPeer) -> tuple[int, int | None]:
    """Read everything: (payload bytes, the close frame's code or None when TCP ended
    without one)."""
    total = 0
    try:
        while True:
            frame = await raw.recv_frame(STEP)
            if frame.opcode == CLOSE:
                payload = frame.payload
                return total, struct.unpack("!H", payload[:2])[0] if payload else 1005
            total += len(frame.payload)
    except (asyncio.IncompleteReadError, ConnectionError):
        return total, None


@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_a_close_stuck_behind_unsent_data_never_ends_cleanly(front_end: str) -> None:
    """The peer reads nothing: our close waits behind unsent data until
    ``close_timeout`` and the connection is dropped. When the peer reads at last, it
    finds the data cut short and then no clean close: a close frame 1011, or TCP's
    end without one (README: a truncated stream never looks complete)."""
    size = 32 * MiB
    options = {"close_timeout": 1.0}
    async with asyncio.timeout(40), open_pair(front_end, "raw", stream_options=options) as pair:
        raw, stream = pair.raw, pair.stream
        assert raw is not None
        stream.writer.write(b"q" * size)
        await asyncio.wait_for(stream.close(), STEP)
        total, code = await _drain_peer(raw)
        assert total < size, "the peer read everything: the close did not wait"
        assert code in (None, 1011), (
            f"{front_end}: {total} of {size} bytes then a close frame {code}: looks complete"
        )
        raw.close_tcp()


#: What the stream over the front end sends back when the peer closes (aiohttp answers
#: 1000 itself, whatever the peer's code).
ANSWER = {"websockets": None, "aiohttp-server": 1000, "aiohttp-client": 1000}


@pytest.mark.parametrize("code", [1002, 1007, 1009])
@pytest.mark.parametrize("front_end", list(ANSWER))
async def test_the_peers_own_close_with_a_violation_code(front_end: str, code: int) -> None:
    """The peer closes with 1002/1007/1009 and a reason: that is its close, not our
    verdict - the reader gets the data then EOF, with the peer's code and reason."""
    async with asyncio.timeout(30), open_pair(front_end, "raw") as pair:
        raw, stream = pair.raw, pair.stream
        assert raw is not None
        raw.send(BINARY, b"data")
        raw.send(CLOSE, close_payload(code, "peer's reason"))
        await raw.writer.drain()
        assert await _read_to_end(stream) == (b"data", "EOF")
        back = await raw.recv_close(STEP)
        raw.close_tcp()
        await asyncio.wait_for(stream.wait_closed(), STEP)
        assert (stream.close_code, stream.close_reason) == (code, "peer's reason")
        assert stream.error is None
        answer = ANSWER[front_end] or code
        assert back[0] == answer
        assert stream.close_code_sent == answer
