"""reconnecting() against a real server that the test stops and restarts on the same port."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from websockets.asyncio.server import serve

import ws_stream
from ws_stream import Backoff, ReconnectPolicy, Status

from ..ports import free_port, refused_port
from ..rawpeer import RawServer


class Restartable:
    """A ws_stream server on a fixed port that greets each connection with its number."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        self.server: Any = None
        self.received: list[bytes] = []

    async def _cb(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.count += 1
        writer.write(f"hello {self.count}\n".encode())
        while data := await reader.read(65536):
            self.received.append(data)
            writer.write(data)
            await writer.drain()
        writer.close()

    async def start(self) -> None:
        self.server = await ws_stream.start_server(
            self._cb, "127.0.0.1", self.port, ping_interval=None, reuse_address=True
        )

    async def stop(self) -> None:
        self.server.close()  # closes the live connections with 1001 too
        await self.server.wait_closed()


async def test_reconnects_with_predicted_delays_and_fresh_streams() -> None:
    server = Restartable(free_port())
    await server.start()
    connects: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connects.append(len(connects) + 1)
        writer.write(b"subscribe\n")  # re-sent on every connection

    policy = ReconnectPolicy(Backoff(0.2, 2.0, jitter=0.1, seed=1), on_connect=on_connect)
    predicted = Backoff(0.2, 2.0, jitter=0.1, seed=1)
    conn = ws_stream.reconnecting(f"ws://127.0.0.1:{server.port}/", policy=policy)
    greetings = []
    gaps = []
    ended_at = None
    async with asyncio.timeout(20):
        async for reader, _ in conn:
            if ended_at is not None:
                gaps.append(time.monotonic() - ended_at)
            greetings.append(await reader.readline())
            assert await reader.readline() == b"subscribe\n"  # the echo of on_connect's bytes
            if len(greetings) == 3:
                break
            await server.stop()
            assert await reader.read() == b""  # this connection ended; nothing leaks over
            ended_at = time.monotonic()
            await server.start()
    await conn.aclose()
    # Each pair belonged to a new connection, greeted afresh.
    assert greetings == [b"hello 1\n", b"hello 2\n", b"hello 3\n"]
    assert connects == [1, 2, 3]
    assert server.received.count(b"subscribe\n") == 3
    expected = [predicted.next_delay() for _ in range(2)]
    for gap, delay in zip(gaps, expected, strict=True):
        assert delay * 0.9 <= gap <= delay + 2.0, (gaps, expected)
    state = conn.state
    assert state.status is Status.CLOSED
    assert state.reconnect_count == 2 and state.connection_id == 3
    await server.stop()


async def test_transient_failures_are_retried_until_max_attempts() -> None:
    port = refused_port()
    policy = ReconnectPolicy(Backoff(0.05, 1.0, jitter=0), max_attempts=3)
    conn = ws_stream.reconnecting(f"ws://127.0.0.1:{port}/", policy=policy)
    states = conn.states()
    with pytest.raises(ConnectionRefusedError):
        async with asyncio.timeout(10):
            async for _ in conn:
                raise AssertionError("nothing to connect to")
    assert conn.state.error_count == 3
    assert isinstance(conn.state.last_error, ConnectionRefusedError)
    seen = [s.status async for s in states]
    assert seen.count(Status.CONNECTING) == 3
    assert seen.count(Status.BACKING_OFF) == 2
    assert seen[-1] is Status.CLOSED


async def test_a_server_that_comes_up_late_is_reached() -> None:
    server = Restartable(free_port())
    conn = ws_stream.reconnecting(
        f"ws://127.0.0.1:{server.port}/", policy=ReconnectPolicy(Backoff(0.1, 1.0, jitter=0))
    )

    async def start_later() -> None:
        await asyncio.sleep(0.5)
        await server.start()

    starter = asyncio.create_task(start_later())
    async with asyncio.timeout(10):
        async for reader, _ in conn:
            assert await reader.readline() == b"hello 1\n"
            break
    assert conn.state.error_count >= 2  # refused until the server came up
    await conn.aclose()
    await starter
    await server.stop()


async def test_fatal_first_failures_raise_at_once() -> None:
    async def reject(connection: Any, request: Any) -> Any:
        return connection.respond(401, "who are you?\n")

    async def handler(websocket: Any) -> None:
        raise AssertionError("never reached")

    async with serve(handler, "127.0.0.1", 0, process_request=reject) as server:
        port = server.sockets[0].getsockname()[1]
        conn = ws_stream.reconnecting(f"ws://127.0.0.1:{port}/")  # 1 s backoff: must not wait
        t0 = time.monotonic()
        with pytest.raises(ws_stream.HandshakeError) as info:
            async for _ in conn:
                pass
        assert info.value.status == 401
        assert time.monotonic() - t0 < 1.0
    with pytest.raises(ValueError):
        async for _ in ws_stream.reconnecting("http://not-a-websocket/"):
            pass


async def test_idle_peer_is_dropped_with_1001_and_counts_as_an_error() -> None:
    async with RawServer() as raw:  # completes the handshake, then never answers anything
        policy = ReconnectPolicy(Backoff(0.1, jitter=0), idle_timeout=0.5, max_attempts=1)
        conn = ws_stream.reconnecting(raw.uri, policy=policy, close_timeout=0.5)
        async with asyncio.timeout(10):
            async for _pair in conn:
                peer = await raw.accept()
                t0 = time.monotonic()
                # Our keepalive pings (every 0.25 s) go unanswered: after 0.5 s
                # without any frame, the stream is closed with 1001.
                assert await peer.recv_close(timeout=5) == (1001, "idle timeout")
                assert 0.4 <= time.monotonic() - t0 < 3
                break
        await conn.aclose()
    assert isinstance(conn.state.last_error, ws_stream.IdleTimeoutError)
    assert conn.state.error_count == 1


async def test_keepalive_keeps_a_healthy_idle_link_up() -> None:
    server = Restartable(free_port())
    await server.start()
    policy = ReconnectPolicy(Backoff(0.1, jitter=0), idle_timeout=0.6)
    conn = ws_stream.reconnecting(f"ws://127.0.0.1:{server.port}/", policy=policy)
    async with asyncio.timeout(10):
        async for reader, writer in conn:
            await reader.readline()
            await asyncio.sleep(1.5)  # idle, but pings every 0.3 s get their pongs
            assert conn.is_healthy()
            writer.write(b"still here\n")
            assert await reader.readline() == b"still here\n"
            break
    assert conn.state.error_count == 0
    await conn.aclose()
    await server.stop()


async def test_counters_match_bytes_and_frames() -> None:
    server = Restartable(free_port())
    await server.start()
    conn = ws_stream.reconnecting(
        f"ws://127.0.0.1:{server.port}/", ping_interval=None, max_frame_size=1000
    )
    async with asyncio.timeout(10):
        async for reader, writer in conn:
            greeting = await reader.readline()
            writer.write(b"x" * 2500)  # one write of 2500 B: three frames of <= 1000 B
            assert await reader.readexactly(2500) == b"x" * 2500
            stream = writer.get_extra_info("ws_stream")
            stats = stream.stats
            assert stats.bytes_sent == 2500 and stats.frames_sent == 3
            assert stats.bytes_received == len(greeting) + 2500
            assert stats.frames_received >= 2
            latency = await stream.ping()
            assert stream.stats.last_latency == latency and stream.stats.pings_sent == 1
            state = conn.state
            assert (state.bytes_sent, state.frames_sent) == (2500, 3)
            assert state.bytes_received == len(greeting) + 2500
            break
    await conn.aclose()
    await server.stop()
