"""A raw-socket peer breaks RFC 6455; we fail with the right code, event and reader error."""

from __future__ import annotations

import asyncio

import pytest

import ws_stream
from ws_stream.events import Closed, Error

from ..cases import VIOLATION_PARAMS
from ..rawpeer import (
    BINARY,
    TEXT,
    RawPeer,
    RawServer,
    build_frame,
    connect_raw,
)
from .helpers import accepting_server, stream_of


@pytest.mark.parametrize(("frame", "code"), VIOLATION_PARAMS)
async def test_server_fails_the_violating_client(frame: dict[str, object], code: int) -> None:
    async with accepting_server(max_size=1000) as (port, accepted):
        peer = await connect_raw(port)
        reader, writer = await asyncio.wait_for(accepted.get(), 5)
        events = stream_of(writer).events()
        peer.send(BINARY, b"prior")
        peer.send(**frame)  # type: ignore[arg-type]
        got_code, _ = await peer.recv_close()
        assert got_code == code
        assert await reader.readexactly(5) == b"prior"
        with pytest.raises(ws_stream.ProtocolError) as info:
            await reader.read(10)
        assert info.value.code == code
        await asyncio.wait_for(peer.wait_eof(), 5)  # the server drops TCP
        peer.close_tcp()
        got = []
        async with asyncio.timeout(5):
            async for event in events:
                got.append(event)
        assert isinstance(got[0], Error) and isinstance(got[0].error, ws_stream.ProtocolError)
        assert got[0].error.code == code
        assert isinstance(got[-1], Closed) and not got[-1].clean


async def test_new_data_frame_inside_a_fragmented_message() -> None:
    async with accepting_server() as (port, accepted):
        peer = await connect_raw(port)
        reader, writer = await asyncio.wait_for(accepted.get(), 5)
        peer.send(BINARY, b"start", fin=False)
        peer.send(BINARY, b"again")
        assert (await peer.recv_close())[0] == 1002
        # The first fragment was data of the stream already: it is delivered.
        assert await reader.readexactly(5) == b"start"
        with pytest.raises(ws_stream.ProtocolError):
            await reader.read()
        peer.close_tcp()


async def test_64_bit_length_with_top_bit_set() -> None:
    async with accepting_server() as (port, accepted):
        peer = await connect_raw(port)
        reader, _ = await asyncio.wait_for(accepted.get(), 5)
        peer.send_raw(bytes([0x82, 0x80 | 127]) + (2**63).to_bytes(8, "big") + b"\0" * 4)
        assert (await peer.recv_close())[0] in (1002, 1009)
        with pytest.raises(ws_stream.ProtocolError):
            await reader.read()
        peer.close_tcp()


async def test_text_frame_to_the_server_is_1003() -> None:
    async with accepting_server() as (port, accepted):
        peer = await connect_raw(port)
        reader, _ = await asyncio.wait_for(accepted.get(), 5)
        peer.send(BINARY, b"bin")
        peer.send(TEXT, b"txt")
        assert await peer.recv_close() == (1003, "text frames are not supported")
        assert await reader.read(10) == b"bin"
        with pytest.raises(ws_stream.TextFrameError):
            await reader.read(10)
        peer.close_tcp()


async def test_masked_frame_to_a_client_is_1002() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None)
        peer: RawPeer = await raw.accept()
        peer.send(BINARY, b"prior")
        peer.send(BINARY, b"masked", mask=True)
        assert (await peer.recv_close())[0] == 1002
        assert await reader.readexactly(5) == b"prior"
        with pytest.raises(ws_stream.ProtocolError) as info:
            await reader.read()
        assert info.value.code == 1002
        peer.close_tcp()
        await stream_of(writer).wait_closed()


async def test_tcp_reset_mid_stream() -> None:
    async with accepting_server() as (port, accepted):
        peer = await connect_raw(port)
        reader, _ = await asyncio.wait_for(accepted.get(), 5)
        peer.send(BINARY, b"some")
        await peer.writer.drain()
        await asyncio.sleep(0.05)
        peer.reset_tcp()
        assert await reader.readexactly(4) == b"some"
        with pytest.raises(ConnectionResetError):
            await reader.read()


def test_builder_masks_like_a_client() -> None:
    frame = build_frame(BINARY, b"abc", mask=True)
    assert frame[1] & 0x80 and len(frame) == 2 + 4 + 3
