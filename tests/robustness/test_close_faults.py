"""Faults on the closing path: silent peers, crossing closes, a close during backpressure.

(Our *client* against a silent peer is in tests/asyncio/test_semantics.py;
here it is our server.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

import ws_stream
from ws_stream.events import Closed, CloseReceived

from ..asyncio.helpers import accepting_server, stream_of
from ..rawpeer import BINARY, CLOSE, PING, PONG, Frame, RawPeer, close_payload, connect_raw
from .test_adversary import all_events, block_on_drain

CLOSE_TIMEOUT = 0.5


async def flood(peer: RawPeer, stop: asyncio.Event) -> None:
    """Keep sending frames, never a close, until told to stop or TCP breaks."""
    try:
        while not stop.is_set():
            peer.send(BINARY, b"f" * 1000)
            peer.send(PING, b"p")
            await peer.writer.drain()
            await asyncio.sleep(0)  # drain() does not yield while the buffer is low
    except (ConnectionError, OSError):
        pass


async def read_frames(peer: RawPeer, frames: list[Frame]) -> None:
    """Read every frame as it arrives, until TCP ends (a reset would discard unread ones)."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            frames.append(await peer.recv_frame(timeout=10))


@pytest.mark.parametrize("peer_behaviour", ["silent", "keeps sending", "never reads"])
async def test_server_close_against_a_peer_that_never_answers(peer_behaviour: str) -> None:
    async with accepting_server(close_timeout=CLOSE_TIMEOUT) as (port, accepted):
        peer = await connect_raw(port)
        reader, writer = await asyncio.wait_for(accepted.get(), 5)
        stream = stream_of(writer)
        events = stream.events()
        stop = asyncio.Event()
        frames: list[Frame] = []
        flooding = asyncio.create_task(flood(peer, stop))
        if peer_behaviour == "never reads":
            stop.set()
            await block_on_drain(writer)  # our close frame is stuck behind these bytes
        else:
            reading = asyncio.create_task(read_frames(peer, frames))
        if peer_behaviour == "silent":
            stop.set()
        t0 = time.monotonic()
        await stream.close(4000, "bye")
        elapsed = time.monotonic() - t0
        stop.set()
        await flooding
        assert elapsed < CLOSE_TIMEOUT + 1
        if peer_behaviour == "never reads":
            # We dropped TCP: the peer sees the end of the stream (or a reset).
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                async with asyncio.timeout(5):
                    while True:
                        await peer.recv_frame()
        else:
            async with asyncio.timeout(5):
                await reading  # ends when we drop TCP
            closes = [f for f in frames if f.opcode == CLOSE]
            assert [f.payload for f in closes] == [close_payload(4000, "bye")]
            # After our close frame: no data (pongs may still answer pings).
            after = frames[frames.index(closes[0]) + 1 :]
            assert all(f.opcode == PONG for f in after)
        peer.close_tcp()
        got = await all_events(events)
        assert got[-1] == Closed(1006, "", clean=False)
        assert stream.close_code == 1006
        with pytest.raises(ConnectionResetError):
            await writer.drain()
        await stream.wait_closed()  # at once now


async def test_both_sides_close_at_the_same_instant() -> None:
    async with accepting_server(close_timeout=5) as (port, accepted):
        creader, cwriter = await ws_stream.open_connection(
            f"ws://127.0.0.1:{port}/", ping_interval=None, close_timeout=5
        )
        sreader, swriter = await asyncio.wait_for(accepted.get(), 5)
        client, server = stream_of(cwriter), stream_of(swriter)
        cevents, sevents = client.events(), server.events()
        # Data in flight both ways, then both close frames cross on the wire.
        cwriter.write(b"from the client")
        swriter.write(b"from the server")
        t0 = time.monotonic()
        await asyncio.gather(client.close(4001, "client"), server.close(4002, "server"))
        # Both close frames arrived: neither side waited for its close_timeout.
        assert time.monotonic() - t0 < 5
        async with asyncio.timeout(5):
            assert await creader.read() == b"from the server"
            assert await sreader.read() == b"from the client"
        assert await all_events(cevents) == [
            CloseReceived(4002, "server"),
            Closed(4002, "server", clean=True),
        ]
        assert await all_events(sevents) == [
            CloseReceived(4001, "client"),
            Closed(4001, "client", clean=True),
        ]
        assert (client.close_code, server.close_code) == (4002, 4001)
        assert client.error is None and server.error is None


async def test_close_frame_arrives_while_blocked_on_drain() -> None:
    async with accepting_server(close_timeout=5) as (port, accepted):
        peer = await connect_raw(port)  # does not read until it has sent its close
        reader, writer = await asyncio.wait_for(accepted.get(), 5)
        stream = stream_of(writer)
        events = stream.events()
        peer.send(BINARY, b"last data")
        drain = await block_on_drain(writer)
        written = stream.bytes_sent
        peer.send(CLOSE, close_payload(1001, "going away"))
        # The drain in progress wakes up: its bytes are queued ahead of our answer
        # to the close, so it may succeed; from now on drain() raises.
        async with asyncio.timeout(5):
            with contextlib.suppress(ConnectionResetError):
                await drain
        writer.write(b"after the close: never sent")
        with pytest.raises(ConnectionResetError):
            await writer.drain()
        async with asyncio.timeout(5):
            assert await reader.read() == b"last data"
        # Every byte written before the close arrived reaches the peer, then our answer.
        frames = await peer.recv_data(timeout=10)
        payload = b"".join(f.payload for f in frames)
        assert len(payload) == written and set(payload) == {ord("w")}
        assert peer.last_close.payload == close_payload(1001, "going away")
        assert await peer.wait_eof() == b""
        peer.close_tcp()
        got: list[Any] = await all_events(events)
        assert got == [
            CloseReceived(1001, "going away"),
            Closed(1001, "going away", clean=True),
        ]
        assert stream.error is None
