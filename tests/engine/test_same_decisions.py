"""Decisions the engine makes once, checked on every shell over real sockets.

Where the shells used to differ (keepalive failure, writes after a close,
unread data at close, the close deadline), each case runs against a raw peer
(tests/rawpeer.py) that misbehaves on purpose, on asyncio and on trio; the
blocking shell's runs are below and in tests/sync/test_timers.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import trio

import ws_stream
import ws_stream.trio
from ws_stream.exceptions import AbnormalClosureError

from ..rawpeer import BINARY, PING, RawServer
from ..trio.helpers import TrioRawPeer, start_raw_server

pytestmark = pytest.mark.timeout(60)


# A peer that never answers pings: the keepalive fails the connection with 1011
# and the reader ends with an AbnormalClosureError that names ping_timeout.


async def _silent_asyncio() -> tuple[bytes, BaseException, int]:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(
            raw.uri, ping_interval=0.2, ping_timeout=0.3, close_timeout=0.5
        )
        peer = await raw.accept()
        peer.send(BINARY, b"before")
        code = None
        while code is None:
            frame = await peer.recv_frame()
            if frame.opcode == 0x8:
                code = int.from_bytes(frame.payload[:2], "big")
        data = await reader.read(100)
        with pytest.raises(ConnectionError) as info:
            await reader.read(100)
        writer.close()
        return data, info.value, code


def test_keepalive_failure_asyncio() -> None:
    data, error, code = asyncio.run(_silent_asyncio())
    assert data == b"before"
    assert isinstance(error, AbnormalClosureError)
    assert "ping_timeout" in str(error)
    assert code == 1011


@pytest.mark.trio
async def test_keepalive_failure_trio(nursery: trio.Nursery) -> None:
    codes: list[int] = []

    async def silent(peer: TrioRawPeer, response: bytes) -> None:
        from ..rawpeer import build_frame

        await peer.send_raw(response + build_frame(BINARY, b"before"))
        codes.append((await peer.recv_close())[0])  # pings are read and ignored
        await peer.aclose()

    uri = await start_raw_server(nursery, silent)
    async with ws_stream.trio.open_websocket_stream(
        uri, ping_interval=0.2, ping_timeout=0.3, close_timeout=0.5
    ) as stream:
        assert await stream.receive_some() == b"before"
        with pytest.raises(trio.BrokenResourceError) as info:
            await stream.receive_some()
    cause = info.value.__cause__
    assert isinstance(cause, AbnormalClosureError)
    assert "ping_timeout" in str(cause)
    assert codes == [1011]


# Writing after the peer's close: refused at the same moment on every shell,
# in the runtime's own convention (asyncio: dropped and counted, drain()
# raises; trio: BrokenResourceError), with the same message.


async def _write_after_close_asyncio() -> tuple[int, BaseException]:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None)
        peer = await raw.accept()
        peer.send(0x8, (1000).to_bytes(2, "big"))
        assert await reader.read() == b""
        writer.write(b"too late")
        stream = writer.get_extra_info("ws_stream")
        with pytest.raises(ConnectionError) as info:
            await writer.drain()
        lost = stream.transport.engine.lost_writes
        writer.close()
        return lost, info.value


def test_write_after_the_peers_close_asyncio() -> None:
    lost, error = asyncio.run(_write_after_close_asyncio())
    assert lost == 1
    assert isinstance(error, ConnectionResetError)


@pytest.mark.trio
async def test_write_after_the_peers_close_trio(nursery: trio.Nursery) -> None:
    async def closes(peer: TrioRawPeer, response: bytes) -> None:
        from ..rawpeer import build_frame, close_payload

        await peer.send_raw(response + build_frame(0x8, close_payload(1000)))
        await peer.recv_close()
        await peer.aclose()

    uri = await start_raw_server(nursery, closes)
    async with ws_stream.trio.open_websocket_stream(uri, ping_interval=None) as stream:
        assert await stream.receive_some() == b""
        with pytest.raises(trio.BrokenResourceError, match="closing or closed"):
            await stream.send_all(b"too late")


# The close deadline: a peer that never answers our close frame is dropped
# after close_timeout, and the events end with Closed(1006, clean=False).


async def _unanswered_close_asyncio() -> tuple[float, list[object]]:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(
            raw.uri, ping_interval=None, close_timeout=0.5
        )
        stream = writer.get_extra_info("ws_stream")
        events = stream.events()
        peer = await raw.accept()
        peer.send(PING, b"still here")  # answered; our close is not
        t0 = time.monotonic()
        await stream.close()
        elapsed = time.monotonic() - t0
        seen = [event async for event in events]
        return elapsed, seen


def test_unanswered_close_is_bounded_asyncio() -> None:
    elapsed, seen = asyncio.run(_unanswered_close_asyncio())
    assert elapsed < 0.5 + 2
    assert seen[-1] == ws_stream.events.Closed(1006, "", clean=False)


@pytest.mark.trio
async def test_unanswered_close_is_bounded_trio(nursery: trio.Nursery) -> None:
    async def mute(peer: TrioRawPeer, response: bytes) -> None:
        await peer.send_raw(response)
        await peer.recv_close()
        await trio.sleep(5)  # never answers
        await peer.aclose()

    uri = await start_raw_server(nursery, mute)
    async with ws_stream.trio.open_websocket_stream(
        uri, ping_interval=None, close_timeout=0.5
    ) as stream:
        events = stream.events()
        t0 = trio.current_time()
        await stream.aclose()
        assert trio.current_time() - t0 < 0.5 + 2
        seen = [event async for event in events]
    assert seen[-1] == ws_stream.events.Closed(1006, "", clean=False)


def test_write_after_the_peers_close_sync() -> None:
    from ..rawpeer import CLOSE, close_payload
    from ..sync.rawpeer import raw_connection

    with raw_connection() as (sock, peer):
        peer.send(CLOSE, close_payload(1000))
        sock.settimeout(5)
        assert sock.recv(10) == b""
        with pytest.raises(BrokenPipeError, match="closing or closed"):
            sock.sendall(b"too late")


# The blocking shell's keepalive failure and close deadline: tests/sync/test_timers.py
# (test_a_pong_overdue_fails_the_connection_with_1011,
# test_shutdown_wr_against_a_silent_peer_ends_after_close_timeout).


def test_a_duplicate_ping_payload_is_a_value_error_sync() -> None:
    """As on asyncio and trio (the engine's ValueError), not a runtime-specific error."""
    import threading

    from ..sync.rawpeer import raw_connection

    with raw_connection() as (sock, peer):
        waiting = threading.Thread(target=lambda: _quietly(sock.ping, b"same", 3.0), daemon=True)
        waiting.start()
        assert peer.recv_frame().payload == b"same"  # the first ping is out, unanswered
        with pytest.raises(ValueError, match="already waiting"):
            sock.ping(b"same", timeout=1.0)
        peer.send(0xA, b"same")  # its pong
        waiting.join(5)


def _quietly(ping: object, data: bytes, timeout: float) -> None:
    ping(data, timeout=timeout)  # type: ignore[operator]
