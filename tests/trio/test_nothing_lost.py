"""Nothing lost in the trio shell (issue 12, items 1, 4 and 8).

1. Frames that arrive in the same TCP read as the handshake (a server that
   greets first, a client that writes right behind its request) reach the
   stream, in order, and are decided frame by frame like any other.
4. A ``send_all`` cancelled in the middle of a frame breaks the stream, as
   ``trio.SSLStream`` does: nothing more is written into that frame.
8. The close deadline holds while the application does not read.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import threading
import zlib
from typing import Any

import pytest
import trio
import trio.testing

import ws_stream
from ws_stream import Backoff, ReconnectPolicy
from ws_stream.events import Closed, PingReceived
from ws_stream.trio import WsStream, open_websocket_stream, reconnecting

from ..rawpeer import BINARY, CLOSE, PING, PONG, TEXT, build_frame, close_payload
from .helpers import TrioRawPeer, start_raw_server, start_server, upgrade_request

pytestmark = pytest.mark.trio

BANNER = b"RFB 003.008\n"


async def read_to_eof(stream: WsStream) -> bytes:
    got = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some():
            got += chunk
    return got


async def read_exactly(stream: WsStream, n: int) -> bytes:
    got = b""
    with trio.fail_after(5):
        while len(got) < n:
            chunk = await stream.receive_some(n - len(got))
            assert chunk, f"EOF after {got!r}"
            got += chunk
    return got


# 1. Frames in the handshake's read


async def greeting_server(peer: TrioRawPeer, response: bytes) -> None:
    """Like a VNC server: its first frame goes out in the same write as the 101."""
    await peer.send_raw(response + build_frame(BINARY, BANNER))
    await trio.sleep(0.05)
    await peer.send_raw(build_frame(BINARY, b"second") + build_frame(CLOSE, close_payload(1000)))
    await peer.recv_close()
    await peer.aclose()


async def test_client_keeps_frames_that_came_with_the_101(nursery: trio.Nursery) -> None:
    uri = await start_raw_server(nursery, greeting_server)
    async with open_websocket_stream(uri, ping_interval=None) as stream:
        assert await read_to_eof(stream) == BANNER + b"second"
        assert stream.close_code == 1000


async def test_reconnecting_keeps_frames_that_came_with_the_101(nursery: trio.Nursery) -> None:
    uri = await start_raw_server(nursery, greeting_server)
    policy = ReconnectPolicy(Backoff(0.1, jitter=0), max_attempts=1)
    with trio.fail_after(10):
        async with reconnecting(uri, policy=policy, ping_interval=None) as conn:
            async for stream in conn:
                assert await read_to_eof(stream) == BANNER + b"second"
                break


async def test_text_frame_that_came_with_the_101_is_1003(nursery: trio.Nursery) -> None:
    """Decided frame by frame: 1003 before websockets answers the ping behind the text frame."""
    first_frame: list[tuple[int, bytes]] = []

    async def server(peer: TrioRawPeer, response: bytes) -> None:
        await peer.send_raw(
            response
            + build_frame(BINARY, b"bin")
            + build_frame(TEXT, b"txt")
            + build_frame(PING, b"behind")
            + build_frame(BINARY, b"never")
        )
        frame = await peer.recv_frame()
        first_frame.append((frame.opcode, frame.payload))
        await peer.send_raw(build_frame(CLOSE, close_payload(1003)))
        await peer.aclose()

    uri = await start_raw_server(nursery, server)
    async with open_websocket_stream(uri, ping_interval=None) as stream:
        with trio.fail_after(5):
            assert await stream.receive_some() == b"bin"
            with pytest.raises(trio.BrokenResourceError) as info:
                await stream.receive_some()
        assert isinstance(info.value.__cause__, ws_stream.TextFrameError)
        with trio.fail_after(5):
            await stream.wait_closed()
    assert first_frame == [(CLOSE, close_payload(1003, "text frames are not supported"))]


async def test_banner_of_our_trio_server_always_arrives(nursery: trio.Nursery) -> None:
    async def handler(stream: WsStream) -> None:
        await stream.send_all(BANNER)  # greets first, like sshd
        while data := await stream.receive_some():
            await stream.send_all(data)

    uri = await start_server(nursery, handler)
    for _ in range(30):
        async with open_websocket_stream(uri, ping_interval=None) as stream:
            assert await read_exactly(stream, len(BANNER)) == BANNER
            await stream.send_all(b"ping")
            assert await read_exactly(stream, 4) == b"ping"


def _asyncio_greeting_server(ready: list[int], stop: threading.Event) -> None:
    async def main() -> None:
        async def cb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(BANNER)
            await writer.drain()
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        async with await ws_stream.start_server(cb, "127.0.0.1", 0, ping_interval=None) as srv:
            ready.append(srv.sockets[0].getsockname()[1])
            while not stop.is_set():
                await asyncio.sleep(0.05)

    asyncio.run(main())


async def test_banner_of_our_asyncio_server_always_arrives() -> None:
    ready: list[int] = []
    stop = threading.Event()
    thread = threading.Thread(target=_asyncio_greeting_server, args=(ready, stop))
    thread.start()
    try:
        with trio.fail_after(5):
            while not ready:
                await trio.sleep(0.01)
        for _ in range(30):
            uri = f"ws://127.0.0.1:{ready[0]}/"
            async with open_websocket_stream(uri, ping_interval=None) as stream:
                assert await read_exactly(stream, len(BANNER)) == BANNER
    finally:
        stop.set()
        await trio.to_thread.run_sync(thread.join)


async def echo(stream: WsStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def test_server_keeps_frames_written_right_behind_the_request(
    nursery: trio.Nursery,
) -> None:
    uri = await start_server(nursery, echo)
    host, port = uri.split("//")[1].rstrip("/").split(":")
    tcp = await trio.open_tcp_stream(host, int(port))
    peer = TrioRawPeer(tcp)
    await tcp.send_all(
        upgrade_request(uri)
        + build_frame(BINARY, b"early", mask=True)
        + build_frame(PING, b"p", mask=True)
    )
    with trio.fail_after(5):
        assert (await peer._read_until(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    frames = {(f.opcode, f.payload) for f in [await peer.recv_frame(), await peer.recv_frame()]}
    assert frames == {(BINARY, b"early"), (PONG, b"p")}
    await peer.send(CLOSE, close_payload(1000))
    assert await peer.recv_close() == (1000, "")
    await peer.aclose()


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


async def test_server_keeps_a_compressed_frame_written_right_behind_the_request(
    nursery: trio.Nursery,
) -> None:
    """Parsed before the extension was negotiated, the frame would be a 1002 (RSV1 set)."""
    uri = await start_server(nursery, echo, compression="deflate")
    host, port = uri.split("//")[1].rstrip("/").split(":")
    tcp = await trio.open_tcp_stream(host, int(port))
    peer = TrioRawPeer(tcp)
    await tcp.send_all(
        upgrade_request(
            uri,
            "Sec-WebSocket-Extensions: permessage-deflate; "
            "client_no_context_takeover; server_no_context_takeover\r\n",
        )
        + build_frame(BINARY, deflate(b"squeezed"), rsv=4, mask=True)
    )
    with trio.fail_after(5):
        head = await peer._read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101") and b"permessage-deflate" in head
    frame = await peer.recv_frame()
    assert frame.opcode == BINARY, frame
    decompressor = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
    assert decompressor.decompress(frame.payload + b"\x00\x00\xff\xff") == b"squeezed"
    await peer.send(CLOSE, close_payload(1000))
    assert await peer.recv_close() == (1000, "")
    await peer.aclose()


# 4. A send_all cancelled in the middle of a frame


async def test_cancelled_send_all_mid_frame_breaks_the_stream(nursery: trio.Nursery) -> None:
    peers: trio.MemorySendChannel[TrioRawPeer]
    peers, accepted = trio.open_memory_channel[TrioRawPeer](1)

    async def server(peer: TrioRawPeer, response: bytes) -> None:
        await peer.send_raw(response)
        await peers.send(peer)  # the test reads it (not before the end)
        await trio.sleep_forever()

    uri = await start_raw_server(nursery, server)
    size = 32 * 2**20  # far more than the kernel buffers hold: the send blocks mid-frame
    async with open_websocket_stream(
        uri, ping_interval=None, close_timeout=30, max_frame_size=size
    ) as stream:
        peer = await accepted.receive()
        events = stream.events()
        with trio.move_on_after(1) as scope:
            await stream.send_all(b"x" * size)
        assert scope.cancelled_caught
        # A ping now: its pong must not go into the broken frame either.
        await peer.send_raw(build_frame(PING, b"hello?"))
        with trio.fail_after(5):
            async for event in events:
                if isinstance(event, PingReceived):
                    break
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError, match="cancelled"):
            await stream.send_all(b"after")
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            await stream.wait_send_all_might_not_block()
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            await stream.ping()
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            await stream.send_close()
        with trio.fail_after(5):  # close_timeout is 30 s: TCP is dropped at once
            await stream.aclose()

    received = bytearray()
    with trio.fail_after(20):
        while data := await peer.tcp.receive_some(2**20):
            received += data
    # What the peer got: one masked frame header, then part of its payload, then EOF.
    assert received[:2] == bytes([0x82, 0x80 | 127])
    assert struct.unpack("!Q", received[2:10])[0] == size
    key, payload = bytes(received[10:14]), bytes(received[14:])
    assert 0 < len(payload) < size
    for i in range(4):  # every byte after the header is the unmasked b"x": nothing else
        lane = payload[i::4]
        assert lane.count(ord("x") ^ key[i]) == len(lane), "bytes after the partial frame"
    await peer.aclose()


async def test_send_all_cancelled_before_writing_leaves_the_stream_usable(
    nursery: trio.Nursery,
) -> None:
    uri = await start_server(nursery, echo)
    async with open_websocket_stream(uri, ping_interval=None) as stream:
        with trio.CancelScope() as scope:
            scope.cancel()
            await stream.send_all(b"never")
        await stream.send_all(b"still fine")
        assert await read_exactly(stream, 10) == b"still fine"


# 8. The close deadline holds while the application does not read


async def flooding_server(peer: TrioRawPeer, response: bytes, eof: trio.Event) -> None:
    """Fill the client's buffer past its limit, then answer nothing (no pong, no close)."""
    await peer.send_raw(response)
    await trio.sleep(0.1)  # not with the 101 (that is item 1)
    await peer.send_raw(build_frame(BINARY, b"d" * 1000) * 20)
    with trio.fail_after(8):
        while await peer._fill():
            pass
    eof.set()
    await peer.aclose()


async def test_send_close_deadline_while_the_app_does_not_read(nursery: trio.Nursery) -> None:
    eof = trio.Event()
    uri = await start_raw_server(nursery, functools.partial(flooding_server, eof=eof))
    async with open_websocket_stream(
        uri, ping_interval=None, close_timeout=1, limit=1000
    ) as stream:
        events = stream.events()
        with trio.fail_after(5):
            while stream.stats.bytes_received < 20_000:
                await trio.sleep(0.01)
        await stream.send_close()
        with trio.fail_after(5):  # close_timeout is 1 s
            await eof.wait()  # the peer saw TCP closed
            await stream.wait_closed()
        got = [event async for event in events]
        assert got[-1] == Closed(1006, "", clean=False)
        assert await read_exactly(stream, 20_000) == b"d" * 20_000
        with pytest.raises(trio.BrokenResourceError):
            await stream.receive_some()


async def test_keepalive_failure_while_the_app_does_not_read(nursery: trio.Nursery) -> None:
    eof = trio.Event()
    uri = await start_raw_server(nursery, functools.partial(flooding_server, eof=eof))
    options: dict[str, Any] = {"ping_interval": 0.3, "ping_timeout": 0.3}
    async with open_websocket_stream(uri, close_timeout=1, limit=1000, **options) as stream:
        with trio.fail_after(6):  # 0.3 s + 0.3 s, then close_timeout (1 s)
            await eof.wait()
            await stream.wait_closed()
        assert stream.close_code == 1006


async def flood_after_close(peer: TrioRawPeer, response: bytes, eof: trio.Event) -> None:
    """Wait for the client's close frame, then send data past its limit and never answer."""
    await peer.send_raw(response)
    await peer.recv_close()
    await peer.send_raw(build_frame(BINARY, b"d" * 1000) * 20)
    with trio.fail_after(8):
        while await peer._fill():
            pass
    eof.set()
    await peer.aclose()


async def test_reconnect_idle_watchdog_while_the_app_does_not_read(
    nursery: trio.Nursery,
) -> None:
    """The watchdog's 1001 close is bounded even when data behind it fills the buffer."""
    eof = trio.Event()
    uri = await start_raw_server(nursery, functools.partial(flood_after_close, eof=eof))
    policy = ReconnectPolicy(Backoff(0.1, jitter=0), idle_timeout=0.5, max_attempts=1)
    async with reconnecting(uri, policy=policy, close_timeout=1, limit=1000) as conn:
        async for stream in conn:
            with trio.fail_after(6):  # idle after 0.5 s, then close_timeout (1 s)
                await eof.wait()
                await stream.wait_closed()
            break
