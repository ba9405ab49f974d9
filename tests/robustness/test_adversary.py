"""A raw-socket adversary completes a valid handshake, then sends hand-built frames.

The server-side single-frame cases of tests/cases.py run in
tests/asyncio/test_violations.py; here the same cases hit our *client* (sent
by a raw server, masking flipped), multi-frame violations hit both sides, and
the TCP faults hit the side the older tests do not. Each test checks the close
code on the wire, the events published and what the reader sees, and (through
conftest.py) that no file descriptor or task outlives it.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

import ws_stream
from ws_stream.events import Closed, Error, PingReceived

from ..asyncio.helpers import accepting_server, stream_of
from ..cases import CLIENT_VIOLATION_PARAMS, SEQUENCE_PARAMS
from ..rawpeer import (
    BINARY,
    CLOSE,
    PING,
    TEXT,
    RawPeer,
    RawServer,
    build_frame,
    close_payload,
    connect_raw,
)

MAX_SIZE = 1000  # the cases' "over max_size" payloads are built for this limit


def expected_closed(frames: list[dict[str, Any]]) -> Closed:
    """The Closed event after a violation: the peer's close frame if a valid one arrived."""
    for frame in frames:
        payload = frame.get("payload", b"")
        if frame["opcode"] == CLOSE and len(payload) >= 2 and frame.get("fin", True):
            code = struct.unpack("!H", payload[:2])[0]
            return Closed(code, payload[2:].decode(), clean=True)
    return Closed(1006, "", clean=False)


def split_events(got: list[object]) -> tuple[list[object], list[object]]:
    """(ping events, the rest)."""
    pings = [e for e in got if isinstance(e, PingReceived)]
    return pings, [e for e in got if not isinstance(e, PingReceived)]


async def all_events(events: ws_stream.EventStream[Any], timeout: float = 5.0) -> list[object]:
    """Every event of a subscription, until Closed."""
    out = []
    async with asyncio.timeout(timeout):
        async for event in events:
            out.append(event)
    return out


@pytest.mark.parametrize(("frame", "code"), CLIENT_VIOLATION_PARAMS)
async def test_client_fails_the_violating_server(frame: dict[str, Any], code: int) -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(
            raw.uri, ping_interval=None, max_size=MAX_SIZE
        )
        stream = stream_of(writer)
        events = stream.events()
        peer = await raw.accept()
        peer.send(BINARY, b"prior")
        peer.send(**frame)
        assert (await peer.recv_close())[0] == code
        assert await reader.readexactly(5) == b"prior"
        with pytest.raises(ws_stream.ProtocolError) as info:
            await reader.read(10)
        assert type(info.value) is ws_stream.ProtocolError
        assert info.value.code == code
        # A client waits for the server to drop TCP after failing the connection.
        peer.close_tcp()
        assert await all_events(events) == [Error(info.value), Closed(1006, "", clean=False)]
        assert stream.error is info.value
        assert stream.close_code == 1006


async def _sequence_outcome(
    peer: RawPeer,
    reader: asyncio.StreamReader,
    stream: ws_stream.WsStream,
    events: ws_stream.EventStream[Any],
    frames: list[dict[str, Any]],
    data: bytes,
    code: int,
) -> None:
    peer.send(BINARY, b"prior")
    for frame in frames:
        peer.send(**frame)
    assert (await peer.recv_close())[0] == code
    assert await reader.readexactly(5 + len(data)) == b"prior" + data
    with pytest.raises(ws_stream.ProtocolError) as info:
        await reader.read(10)
    assert type(info.value) is ws_stream.ProtocolError
    assert info.value.code == code
    peer.close_tcp()
    pings, rest = split_events(await all_events(events))
    sent_pings = [f["payload"] for f in frames if f["opcode"] == PING and f.get("fin", True)]
    assert [p.data for p in pings] == sent_pings
    assert rest == [Error(info.value), expected_closed(frames)]
    assert stream.error is info.value


@pytest.mark.parametrize(("frames", "data", "code"), SEQUENCE_PARAMS)
async def test_server_fails_a_violating_sequence(
    frames: list[dict[str, Any]], data: bytes, code: int
) -> None:
    async with accepting_server(max_size=MAX_SIZE) as (port, accepted):
        peer = await connect_raw(port)
        reader, writer = await asyncio.wait_for(accepted.get(), 5)
        stream = stream_of(writer)
        events = stream.events()
        await _sequence_outcome(peer, reader, stream, events, frames, data, code)


@pytest.mark.parametrize(("frames", "data", "code"), SEQUENCE_PARAMS)
async def test_client_fails_a_violating_sequence(
    frames: list[dict[str, Any]], data: bytes, code: int
) -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(
            raw.uri, ping_interval=None, max_size=MAX_SIZE
        )
        stream = stream_of(writer)
        events = stream.events()
        peer = await raw.accept()
        await _sequence_outcome(peer, reader, stream, events, frames, data, code)


@pytest.mark.parametrize(
    "follower",
    [
        pytest.param(dict(opcode=BINARY, payload=b"late"), id="binary"),
        pytest.param(dict(opcode=PING, payload=b"p"), id="ping"),
        pytest.param(dict(opcode=CLOSE, payload=close_payload(1000)), id="close"),
        pytest.param(dict(opcode=0x3, payload=b"x"), id="reserved opcode"),
    ],
)
async def test_text_frame_and_more_in_one_tcp_segment_is_still_1003(
    follower: dict[str, Any],
) -> None:
    """What the wire says must not depend on how TCP cut the bytes.

    The README: a text frame makes us close with 1003. Sent alone it does
    (tests/asyncio/test_violations.py); here the frames after it arrive in the
    same TCP read, so websockets parses them before ws_stream sees the text frame.
    """
    async with accepting_server() as (port, accepted):
        peer = await connect_raw(port)
        reader, writer = await asyncio.wait_for(accepted.get(), 5)
        events = stream_of(writer).events()
        segment = build_frame(BINARY, b"bin", mask=True) + build_frame(TEXT, b"txt", mask=True)
        peer.send_raw(segment + build_frame(**follower, mask=True))
        try:
            assert await peer.recv_close() == (1003, "text frames are not supported")
            assert await reader.readexactly(3) == b"bin"
            with pytest.raises(ws_stream.TextFrameError) as info:
                await reader.read(10)
        finally:
            peer.close_tcp()
        # After our close frame, RFC 6455 says to discard what the peer sends.
        assert await all_events(events) == [Error(info.value), Closed(1006, "", clean=False)]


async def test_client_fails_a_text_frame_with_1003() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None)
        stream = stream_of(writer)
        events = stream.events()
        peer = await raw.accept()
        peer.send(BINARY, b"bin")
        peer.send(TEXT, b"txt")
        peer.send(BINARY, b"after the text frame: discarded")
        assert await peer.recv_close() == (1003, "text frames are not supported")
        assert await reader.readexactly(3) == b"bin"
        with pytest.raises(ws_stream.TextFrameError) as info:
            await reader.read(10)
        assert info.value.code == 1003
        peer.close_tcp()
        assert await all_events(events) == [Error(info.value), Closed(1006, "", clean=False)]


@pytest.mark.parametrize(
    ("side", "max_size"),
    [("client", 2**20), ("client", None), ("server", None)],  # server, 1 MiB: test_violations
)
async def test_64_bit_length_with_the_top_bit_set(side: str, max_size: int | None) -> None:
    """RFC 6455 5.2: the most significant bit of a 64-bit length MUST be 0.

    Such a length is malformed and also over any max_size: either code is
    right, but the connection must fail at once, whatever max_size is.
    """
    if side == "server":
        async with accepting_server(max_size=max_size) as (port, accepted):
            peer = await connect_raw(port)
            reader, writer = await asyncio.wait_for(accepted.get(), 5)
            events = stream_of(writer).events()
            await _top_bit_outcome(peer, reader, events, bytes([0x82, 0x80 | 127]))
    else:
        async with RawServer() as raw:
            reader, writer = await ws_stream.open_connection(
                raw.uri, ping_interval=None, max_size=max_size
            )
            events = stream_of(writer).events()
            peer = await raw.accept()
            await _top_bit_outcome(peer, reader, events, bytes([0x82, 127]))


async def _top_bit_outcome(
    peer: RawPeer,
    reader: asyncio.StreamReader,
    events: ws_stream.EventStream[Any],
    head: bytes,
) -> None:
    peer.send(BINARY, b"prior")
    mask_key = b"\0\0\0\0" if peer.client else b""
    peer.send_raw(head + (2**63 + 5).to_bytes(8, "big") + mask_key + b"payload")
    try:
        code, _ = await peer.recv_close(timeout=3)
        assert code in (1002, 1009)
        assert await reader.readexactly(5) == b"prior"
        with pytest.raises(ws_stream.ProtocolError) as info:
            await reader.read(10)
        assert info.value.code == code
    finally:
        peer.close_tcp()
    assert await all_events(events) == [Error(info.value), Closed(1006, "", clean=False)]


async def test_server_frame_cut_off_by_a_tcp_close() -> None:
    async with accepting_server() as (port, accepted):
        peer = await connect_raw(port)
        reader, writer = await asyncio.wait_for(accepted.get(), 5)
        stream = stream_of(writer)
        events = stream.events()
        peer.send(BINARY, b"whole")
        peer.send_raw(bytes([0x82, 0x80 | 100]) + b"\0\0\0\0" + b"only part")
        peer.writer.write_eof()  # TCP FIN in the middle of the frame
        # On the wire: no close frame (there is nothing to answer), just the end of TCP.
        assert await peer.wait_eof() == b""
        peer.close_tcp()
        assert await reader.readexactly(5) == b"whole"
        with pytest.raises(ConnectionResetError) as info:
            await reader.read()
        assert isinstance(info.value, ws_stream.AbnormalClosureError)
        assert await all_events(events) == [Error(info.value), Closed(1006, "", clean=False)]
        assert stream.close_code == 1006


async def test_client_tcp_reset_mid_stream() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None)
        stream = stream_of(writer)
        events = stream.events()
        peer = await raw.accept()
        peer.send(BINARY, b"some")
        peer.send_raw(bytes([0x82, 100]) + b"half a frame")
        assert await reader.readexactly(4) == b"some"
        peer.reset_tcp()
        with pytest.raises(ConnectionResetError) as info:
            async with asyncio.timeout(5):
                await reader.read()
        assert isinstance(info.value, ws_stream.AbnormalClosureError)
        assert await all_events(events) == [Error(info.value), Closed(1006, "", clean=False)]
        with pytest.raises(ConnectionResetError):
            await writer.drain()


async def test_server_tcp_reset_while_blocked_on_drain() -> None:
    async with accepting_server() as (port, accepted):
        peer = await connect_raw(port)  # never reads: our writes pile up
        reader, writer = await asyncio.wait_for(accepted.get(), 5)
        stream = stream_of(writer)
        events = stream.events()
        drain = await block_on_drain(writer)
        peer.reset_tcp()
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(5):
                await drain
        with pytest.raises(ConnectionResetError):
            await reader.read()
        got = await all_events(events)
        assert isinstance(got[0], Error) and isinstance(got[0].error, ConnectionResetError)
        assert got[-1] == Closed(1006, "", clean=False)


async def block_on_drain(writer: asyncio.StreamWriter) -> asyncio.Task[None]:
    """Write until drain() blocks (the peer does not read); return the blocked drain."""
    chunk = b"w" * 65536
    async with asyncio.timeout(10):
        while True:
            writer.write(chunk)
            drain = asyncio.ensure_future(writer.drain())
            # Let the transport try to send; a drain that is still pending is blocked.
            for _ in range(3):
                await asyncio.sleep(0)
            if not drain.done():
                return drain
            await drain
