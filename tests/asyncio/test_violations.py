"""A raw-socket peer breaks RFC 6455; we fail with the right code, event and reader error."""

from __future__ import annotations

import asyncio

import pytest

import ws_stream
from ws_stream.events import Closed, Error

from ..rawpeer import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    TEXT,
    RawPeer,
    RawServer,
    build_frame,
    close_payload,
    connect_raw,
)
from .helpers import accepting_server, stream_of

# (name, bytes the peer sends after b"prior" data, expected close code).
# Frames from a client must be masked: the builder masks unless told otherwise.
SERVER_SIDE_CASES = [
    ("rsv1 without extension", dict(opcode=BINARY, payload=b"x", rsv=4), 1002),
    ("rsv2", dict(opcode=BINARY, payload=b"x", rsv=2), 1002),
    ("rsv3", dict(opcode=BINARY, payload=b"x", rsv=1), 1002),
    ("reserved opcode 0x3", dict(opcode=0x3, payload=b"x"), 1002),
    ("reserved opcode 0xB", dict(opcode=0xB, payload=b"x"), 1002),
    ("ping over 125 bytes", dict(opcode=PING, payload=b"p" * 126), 1002),
    ("fragmented ping", dict(opcode=PING, payload=b"p", fin=False), 1002),
    ("unmasked frame to a server", dict(opcode=BINARY, payload=b"x", mask=False), 1002),
    ("continuation with nothing to continue", dict(opcode=CONT, payload=b"x"), 1002),
    ("close payload of 1 byte", dict(opcode=CLOSE, payload=b"\x03"), 1002),
    ("close code 999", dict(opcode=CLOSE, payload=close_payload(999)), 1002),
    ("close code 1005 on the wire", dict(opcode=CLOSE, payload=close_payload(1005)), 1002),
    ("close code 5000", dict(opcode=CLOSE, payload=close_payload(5000)), 1002),
    ("invalid UTF-8 close reason", dict(opcode=CLOSE, payload=b"\x03\xe8\xff\xfe"), 1007),
    ("message over max_size", dict(opcode=BINARY, payload=b"m" * 2000), 1009),
]


@pytest.mark.parametrize(
    ("frame", "code"), [c[1:] for c in SERVER_SIDE_CASES], ids=[c[0] for c in SERVER_SIDE_CASES]
)
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
