"""reconnecting(): idle means silence, closes with an error code are errors, the state follows the
stream (issue 12, item 13). Real servers on 127.0.0.1, asyncio default loop and uvloop."""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import pytest
from websockets.asyncio.server import serve

import ws_stream
from ws_stream import Backoff, ReconnectPolicy, Status
from ws_stream.reconnect import CloseError

from ..rawpeer import BINARY, CLOSE, RawPeer, RawServer, close_payload
from .helpers import stream_server

IDLE = 1.5  # generous: a loaded machine may stall a busy link for a moment


def chunks() -> list[bytes]:
    """48 MiB in numbered 64 KiB chunks: more than loopback TCP buffers hold (rmem_max 32 MiB
    plus wmem 4 MiB), so the server is still streaming while the consumer pauses."""
    block = os.urandom(65536)
    return [i.to_bytes(8, "big") + block[8:] for i in range(768)]


async def test_a_busy_link_with_a_slow_consumer_is_not_idle() -> None:
    # The consumer does not read for 2 x idle_timeout. The stream's buffer
    # fills, TCP reading pauses, no frame can arrive: that is the consumer
    # being slow, not the server being silent.
    payload = chunks()
    sent = hashlib.sha256(b"".join(payload)).hexdigest()

    async def produce(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for chunk in payload:
            writer.write(chunk)
            await writer.drain()
        writer.close()  # 1000 after the last byte

    policy = ReconnectPolicy(Backoff(0.1, jitter=0), idle_timeout=IDLE, max_attempts=1)
    async with stream_server(produce) as uri:
        conn = ws_stream.reconnecting(uri, policy=policy, limit=65536)
        received = hashlib.sha256()
        size = 0
        async with asyncio.timeout(60):
            async for reader, _ in conn:
                await asyncio.sleep(2 * IDLE)
                while data := await reader.read(2**20):  # everything, to EOF
                    received.update(data)
                    size += len(data)
                break
        state = conn.state
        await conn.aclose()
    assert size == 768 * 65536
    assert received.hexdigest() == sent
    assert state.error_count == 0 and state.last_error is None


@pytest.mark.parametrize("answers", [True, False], ids=["peer-answers", "peer-silent"])
async def test_an_idle_timeout_is_an_error_to_the_reader_not_eof(answers: bool) -> None:
    # The peer sends 6 bytes, then ignores our pings; it answers our close
    # frame and closes TCP, or never answers (TCP dropped after close_timeout).
    async with RawServer() as raw:
        policy = ReconnectPolicy(Backoff(0.1, jitter=0), idle_timeout=IDLE, max_attempts=1)
        conn = ws_stream.reconnecting(raw.uri, policy=policy, close_timeout=0.5)
        async with asyncio.timeout(10):
            async for reader, _ in conn:
                peer = await raw.accept()
                peer.send(BINARY, b"before")
                assert await reader.readexactly(6) == b"before"

                async def close_handshake(peer: RawPeer = peer) -> tuple[int, str]:
                    code, reason = await peer.recv_close()  # our pings go unanswered
                    if answers:
                        peer.send(CLOSE, close_payload(code, reason))
                        peer.close_tcp()
                    return code, reason

                closing = asyncio.create_task(close_handshake())
                with pytest.raises(ws_stream.IdleTimeoutError):
                    await reader.read(100)
                assert conn.state.status is not Status.CONNECTED
                assert await closing == (1001, "idle timeout")
                stream = conn.stream
                assert stream is not None
                async with asyncio.timeout(3):
                    await stream.wait_closed()  # the connection is over: still the error
                with pytest.raises(ws_stream.IdleTimeoutError):
                    await reader.read(100)
                break
        await conn.aclose()
    assert isinstance(conn.state.last_error, ws_stream.IdleTimeoutError)
    assert conn.state.error_count == 1


async def test_a_server_that_closes_with_1011_counts_errors() -> None:
    async def handler(websocket: Any) -> None:
        await websocket.close(1011, "internal trouble")

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        policy = ReconnectPolicy(Backoff(0.05, 1.0, jitter=0))
        conn = ws_stream.reconnecting(f"ws://127.0.0.1:{port}/", policy=policy)
        connections = 0
        async with asyncio.timeout(10):
            async for reader, _ in conn:
                connections += 1
                assert await reader.read() == b""  # the stream ends at the close frame
                assert conn.state.error_count == connections
                if connections == 2:
                    break
        await conn.aclose()
    error = conn.state.last_error
    assert isinstance(error, CloseError), error
    assert (error.code, error.reason) == (1011, "internal trouble")
    assert "1011" in str(error)
    assert conn.state.error_count == 2


async def test_a_close_code_we_chose_is_not_an_error() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    async with stream_server(echo) as uri:
        conn = ws_stream.reconnecting(uri, policy=ReconnectPolicy(Backoff(0.05, jitter=0)))
        async with asyncio.timeout(10):
            async for _, writer in conn:
                await writer.get_extra_info("ws_stream").close(4000, "done here")
                break
        await conn.aclose()
    assert conn.state.error_count == 0 and conn.state.last_error is None


async def test_the_state_leaves_connected_when_the_reader_sees_eof() -> None:
    async def bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)  # the client's go
        writer.write(b"bye")
        writer.close()

    async with stream_server(bye) as uri:
        conn = ws_stream.reconnecting(uri, policy=ReconnectPolicy(Backoff(0.05, jitter=0)))
        states = conn.states()
        async with asyncio.timeout(10):
            async for reader, writer in conn:
                assert conn.state.status is Status.CONNECTED
                writer.write(b"!")
                assert await reader.read() == b"bye"  # to EOF
                assert conn.state.status is Status.BACKING_OFF
                assert conn.state.connected_since is None
                assert not conn.is_healthy()
                break
        await conn.aclose()
    seen = [s.status async for s in states]
    assert seen == [Status.CONNECTING, Status.CONNECTED, Status.BACKING_OFF, Status.CLOSED]
    assert conn.state.error_count == 0


async def test_the_state_leaves_connected_when_the_reader_sees_an_error() -> None:
    async with RawServer() as raw:
        conn = ws_stream.reconnecting(raw.uri, policy=ReconnectPolicy(Backoff(0.05, jitter=0)))
        async with asyncio.timeout(10):
            async for reader, _ in conn:
                peer = await raw.accept()
                peer.send(BINARY, b"partial")
                peer.reset_tcp()
                assert await reader.readexactly(7) == b"partial"
                with pytest.raises(ws_stream.AbnormalClosureError):
                    await reader.read(100)
                assert conn.state.status is Status.BACKING_OFF
                assert isinstance(conn.state.last_error, ws_stream.AbnormalClosureError)
                break
        await conn.aclose()


async def test_a_pause_no_watchdog_look_saw_is_not_silence() -> None:
    """Reading paused and resumed between two looks of the idle watchdog.

    The idle clock restarts when reading resumes (the stream records it), so the
    idle close comes a whole idle_timeout after the application caught up, never
    earlier. (A lower bound: a busy machine only makes it later.)
    """
    async with RawServer() as raw:
        policy = ReconnectPolicy(Backoff(0.1, jitter=0), idle_timeout=1.0, max_attempts=1)
        conn = ws_stream.reconnecting(raw.uri, policy=policy, limit=4096, close_timeout=0.5)
        async for reader, _writer in conn:
            loop = asyncio.get_running_loop()
            peer = await raw.accept()
            await asyncio.sleep(0.1)
            for _ in range(20):
                peer.send(BINARY, b"d" * 1000)  # 20 kB > limit: reading pauses
            await peer.writer.drain()
            await asyncio.sleep(0.75)  # the application is busy, not reading
            got = 0
            while got < 20000:
                got += len(await reader.read(65536))
            resumed = loop.time()
            with pytest.raises(ws_stream.IdleTimeoutError):
                await asyncio.wait_for(reader.read(100), 10)
            assert loop.time() - resumed >= 0.95
            break
        await conn.aclose()
