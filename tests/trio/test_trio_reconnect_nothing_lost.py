"""ws_stream.trio.reconnecting: idle means silence, closes with an error code are errors, the
state follows the stream (issue 12, item 13). Real servers on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os

import pytest
import trio

import ws_stream
from ws_stream import Backoff, ReconnectPolicy, Status
from ws_stream.reconnect import CloseError
from ws_stream.trio import WsStream, reconnecting

from ..rawpeer import BINARY, CLOSE, close_payload
from .helpers import TrioRawPeer, start_raw_server, start_server

pytestmark = pytest.mark.trio

IDLE = 1.5  # generous: a loaded machine may stall a busy link for a moment


async def read_all(stream: WsStream) -> bytes:
    parts = []
    while data := await stream.receive_some(65536):
        parts.append(data)
    return b"".join(parts)


def chunks() -> list[bytes]:
    """48 MiB in numbered 64 KiB chunks: more than loopback TCP buffers hold (rmem_max 32 MiB
    plus wmem 4 MiB), so the server is still streaming while the consumer pauses."""
    block = os.urandom(65536)
    return [i.to_bytes(8, "big") + block[8:] for i in range(768)]


async def test_a_busy_link_with_a_slow_consumer_is_not_idle(nursery: trio.Nursery) -> None:
    payload = chunks()
    sent = hashlib.sha256(b"".join(payload)).hexdigest()

    async def produce(stream: WsStream) -> None:
        for chunk in payload:
            await stream.send_all(chunk)
        # returning closes with 1000 after the last byte

    uri = await start_server(nursery, produce)
    policy = ReconnectPolicy(Backoff(0.1, jitter=0), idle_timeout=IDLE, max_attempts=1)
    received = hashlib.sha256()
    size = 0
    with trio.fail_after(60):
        async with reconnecting(uri, policy=policy, limit=65536) as conn:
            async for stream in conn:
                await trio.sleep(2 * IDLE)  # the buffer fills, reading pauses: not idle
                while data := await stream.receive_some(2**20):
                    received.update(data)
                    size += len(data)
                break
    assert size == 768 * 65536
    assert received.hexdigest() == sent
    assert conn.state.error_count == 0 and conn.state.last_error is None


@pytest.mark.parametrize("answers", [True, False], ids=["peer-answers", "peer-silent"])
async def test_an_idle_timeout_is_an_error_to_the_reader_not_eof(
    nursery: trio.Nursery, answers: bool
) -> None:
    # The peer sends 6 bytes, then ignores our pings; it answers our close
    # frame and closes TCP, or never answers (TCP dropped after close_timeout).
    closes: list[tuple[int, str]] = []

    async def silent(peer: TrioRawPeer, response: bytes) -> None:
        await peer.send_raw(response)
        await trio.sleep(0.1)  # a separate TCP read (frames that come with the 101: item 1)
        await peer.send(BINARY, b"before", mask=False)
        closes.append(await peer.recv_close())  # our pings go unanswered
        if answers:
            await peer.send(CLOSE, close_payload(*closes[-1]), mask=False)
            await peer.aclose()
        else:
            await trio.sleep(5)

    uri = await start_raw_server(nursery, silent)
    policy = ReconnectPolicy(Backoff(0.1, jitter=0), idle_timeout=IDLE, max_attempts=1)
    with trio.fail_after(10):
        async with reconnecting(uri, policy=policy, close_timeout=0.5) as conn:
            async for stream in conn:
                assert await stream.receive_some(6) == b"before"
                with pytest.raises(trio.BrokenResourceError) as info:
                    await stream.receive_some()
                assert isinstance(info.value.__cause__, ws_stream.IdleTimeoutError)
                assert conn.state.status is not Status.CONNECTED
                with trio.fail_after(3):
                    await stream.wait_closed()  # the connection is over: still the error
                with pytest.raises(trio.BrokenResourceError) as info:
                    await stream.receive_some()
                assert isinstance(info.value.__cause__, ws_stream.IdleTimeoutError)
                break
    assert closes == [(1001, "idle timeout")]
    assert isinstance(conn.state.last_error, ws_stream.IdleTimeoutError)
    assert conn.state.error_count == 1


async def test_a_server_that_closes_with_1011_counts_errors(nursery: trio.Nursery) -> None:
    async def handler(stream: WsStream) -> None:
        await stream.aclose(1011, "internal trouble")

    uri = await start_server(nursery, handler)
    policy = ReconnectPolicy(Backoff(0.05, 1.0, jitter=0))
    connections = 0
    with trio.fail_after(10):
        async with reconnecting(uri, policy=policy, ping_interval=None) as conn:
            async for stream in conn:
                connections += 1
                assert await read_all(stream) == b""  # the stream ends at the close frame
                assert conn.state.error_count == connections
                if connections == 2:
                    break
    error = conn.state.last_error
    assert isinstance(error, CloseError), error
    assert (error.code, error.reason) == (1011, "internal trouble")
    assert conn.state.error_count == 2


async def test_the_state_leaves_connected_when_the_reader_sees_eof(nursery: trio.Nursery) -> None:
    async def bye(stream: WsStream) -> None:
        await stream.receive_some(1)  # the client's go
        await stream.send_all(b"bye")

    uri = await start_server(nursery, bye)
    with trio.fail_after(10):
        async with reconnecting(uri, policy=ReconnectPolicy(Backoff(0.05, jitter=0))) as conn:
            states = conn.states()
            async for stream in conn:
                assert conn.state.status is Status.CONNECTED
                await stream.send_all(b"!")
                assert await read_all(stream) == b"bye"
                assert conn.state.status is Status.BACKING_OFF
                assert conn.state.connected_since is None
                assert not conn.is_healthy()
                break
        seen = [s.status async for s in states]
    assert seen == [Status.CONNECTING, Status.CONNECTED, Status.BACKING_OFF, Status.CLOSED]
    assert conn.state.error_count == 0


async def test_the_state_leaves_connected_when_the_reader_sees_an_error(
    nursery: trio.Nursery,
) -> None:
    async def vanish(peer: TrioRawPeer, response: bytes) -> None:
        await peer.send_raw(response)
        await trio.sleep(0.1)  # a separate TCP read (frames that come with the 101: item 1)
        await peer.send(BINARY, b"partial", mask=False)
        await peer.aclose()  # no close frame

    uri = await start_raw_server(nursery, vanish)
    with trio.fail_after(10):
        async with reconnecting(uri, policy=ReconnectPolicy(Backoff(0.05, jitter=0))) as conn:
            async for stream in conn:
                assert await stream.receive_some(7) == b"partial"
                with pytest.raises(trio.BrokenResourceError):
                    await stream.receive_some()
                assert conn.state.status is Status.BACKING_OFF
                assert isinstance(conn.state.last_error, ws_stream.AbnormalClosureError)
                break
