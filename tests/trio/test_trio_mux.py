"""ws_stream.mux.trio: yamux streams as trio HalfCloseableStreams, over real WebSockets."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import socket
import struct
import subprocess
import weakref
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import ws_stream.trio
from ws_stream.mux import MuxError
from ws_stream.mux._machine import CLOSE_TIMEOUT
from ws_stream.mux.trio import MuxStream, Session, open_session
from ws_stream.trio import WsStream

from ..cli.helpers import LISTENING, cli_env, command
from .helpers import accepting_server

pytestmark = pytest.mark.trio


async def sessions(nursery: trio.Nursery) -> tuple[WsStream, WsStream]:
    uri, accepted = await accepting_server(nursery)
    client = await ws_stream.trio.connect_stream(nursery, uri)
    server = await accepted.receive()
    return client, server


@contextlib.asynccontextmanager
async def one_stream(
    nursery: trio.Nursery, first: bytes
) -> AsyncIterator[tuple[Session, MuxStream, MuxStream]]:
    """A client session, a stream it opened and the server's end of it, ``first``
    crossed already."""
    client_ws, server_ws = await sessions(nursery)
    async with (
        open_session(client_ws, client=True) as client,
        open_session(server_ws, client=False) as server,
    ):
        stream = await client.open_stream()
        await stream.send_all(first)
        peer = await server.accept()
        assert await peer.receive_some() == first
        yield client, stream, peer


async def test_the_stream_checker_passes(nursery: trio.Nursery) -> None:
    client_ws, server_ws = await sessions(nursery)
    async with (
        open_session(client_ws, client=True) as client,
        open_session(server_ws, client=False) as server,
    ):

        async def stream_maker() -> tuple[MuxStream, MuxStream]:
            left = await client.open_stream()
            right = await server.accept()
            return left, right

        await trio.testing.check_half_closeable_stream(stream_maker, None)


async def test_concurrent_streams_both_ways_with_checksums(nursery: trio.Nursery) -> None:
    client_ws, server_ws = await sessions(nursery)
    async with (
        open_session(client_ws, client=True) as client,
        open_session(server_ws, client=False) as server,
    ):

        async def echo_all(session: Session) -> None:
            async with trio.open_nursery() as echoes:
                async for stream in session:

                    async def echo(stream: MuxStream = stream) -> None:
                        while data := await stream.receive_some():
                            await stream.send_all(data)
                        await stream.send_eof()

                    echoes.start_soon(echo)

        results: list[bool] = []

        async def one(session: Session, size: int) -> None:
            stream = await session.open_stream()
            data = os.urandom(size)
            got = bytearray()
            async with trio.open_nursery() as inner:

                async def send() -> None:
                    await stream.send_all(data)
                    await stream.send_eof()

                inner.start_soon(send)
                while chunk := await stream.receive_some():
                    got += chunk
            await stream.aclose()
            results.append(hashlib.sha256(got).digest() == hashlib.sha256(data).digest())

        with trio.fail_after(60):
            async with trio.open_nursery() as inner:
                inner.start_soon(echo_all, server)
                inner.start_soon(echo_all, client)
                async with trio.open_nursery() as senders:
                    for i in range(16):
                        senders.start_soon(one, client, (i * 97_531) % (1 << 20))
                        senders.start_soon(one, server, (i * 13_579) % (1 << 20))
                inner.cancel_scope.cancel()
        assert results == [True] * 32
        assert await client.ping() > 0


async def test_a_closed_stream_whose_peer_never_closes_is_reset_after_the_close_timeout(
    nursery: trio.Nursery,
) -> None:
    """aclose() sends FIN; a peer that never answers with its own does not keep the
    stream (and a slot of max_streams) forever: after the close timeout it is
    reset, as the asyncio shell does."""
    async with one_stream(nursery, b"x") as (client, left, right):
        await left.aclose()
        assert await right.receive_some() == b""  # the FIN; this side never closes
        assert left.stream in client.machine.streams  # waiting for the peer's FIN
        with trio.fail_after(CLOSE_TIMEOUT + 10):
            while left.stream in client.machine.streams:
                await trio.sleep(0.1)
        with pytest.raises(trio.BrokenResourceError, match="reset"):
            await right.send_all(b"y")


async def test_a_reset_is_never_a_clean_eof(nursery: trio.Nursery) -> None:
    async with one_stream(nursery, b"partial") as (_, stream, peer):
        await stream.reset()
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError, match="reset"):
            while await peer.receive_some():
                pass


async def test_the_session_lost_breaks_every_stream(nursery: trio.Nursery) -> None:
    client_ws, server_ws = await sessions(nursery)
    async with open_session(client_ws, client=True) as client:
        async with open_session(server_ws, client=False) as server:
            streams = [await client.open_stream() for _ in range(3)]
            for stream in streams:
                await stream.send_all(b"x")
                await server.accept()
            await trio.aclose_forcefully(server_ws)  # the WebSocket under the server drops
        for stream in streams:
            with trio.fail_after(5), pytest.raises(trio.BrokenResourceError, match="session"):
                while await stream.receive_some():
                    pass
        with pytest.raises(MuxError):
            await client.accept()


async def test_a_stream_ended_both_ways_keeps_its_unread_bytes_when_the_session_ends(
    nursery: trio.Nursery,
) -> None:
    """Both FINs crossed before the session ended: the stream was over, so its
    reader gets every byte, then EOF, not the session's failure."""
    client_ws, server_ws = await sessions(nursery)
    async with open_session(client_ws, client=True) as client:
        async with open_session(server_ws, client=False) as server:
            stream = await client.open_stream()
            await stream.send_eof()
            peer = await server.accept()
            with trio.fail_after(5):
                assert await peer.receive_some() == b""
                await peer.send_all(b"reply")
                await peer.send_eof()
                while stream.stream in client.machine.streams:  # the peer's FIN arrived
                    await trio.sleep(0.01)
            await trio.aclose_forcefully(server_ws)  # then the session ends
        with trio.fail_after(5):
            while client.error is None:
                await trio.sleep(0.01)
            assert await stream.receive_some() == b"reply"
            assert await stream.receive_some() == b""


async def test_a_session_keeps_no_stream_that_ended(nursery: trio.Nursery) -> None:
    """Streams closed both ways (either FIN first) or reset (by either side) are
    not kept by their session: nothing grows over a long-lived session."""
    client_ws, server_ws = await sessions(nursery)
    gone: list[weakref.ref[MuxStream]] = []
    async with (
        open_session(client_ws, client=True) as client,
        open_session(server_ws, client=False) as server,
    ):
        with trio.fail_after(5):
            for how in ("our FIN first", "their FIN first", "we reset", "they reset"):
                stream = await client.open_stream()
                await stream.send_all(b"x")
                peer = await server.accept()
                assert await peer.receive_some() == b"x"
                if how == "our FIN first":
                    await stream.send_eof()
                    assert await peer.receive_some() == b""
                    await peer.aclose()
                    assert await stream.receive_some() == b""
                elif how == "their FIN first":
                    await peer.send_eof()
                    assert await stream.receive_some() == b""
                    await stream.send_eof()
                    assert await peer.receive_some() == b""
                    await peer.aclose()
                elif how == "we reset":
                    await stream.reset()
                    with pytest.raises(trio.BrokenResourceError):
                        await peer.receive_some()
                else:
                    await peer.reset()
                    with pytest.raises(trio.BrokenResourceError):
                        await stream.receive_some()
                await stream.aclose()
                gone += [weakref.ref(stream), weakref.ref(peer)]
                del stream, peer
            await client.ping()  # every frame of the streams crossed both ways
            await server.ping()
        gc.collect()
        assert [ref() for ref in gone] == [None] * len(gone)


async def test_a_local_reset_wakes_the_tasks_waiting_on_the_stream(nursery: trio.Nursery) -> None:
    async with one_stream(nursery, b"x") as (_, stream, _peer):
        # The peer reads no more: one window, then the sender waits.

        async def receive() -> None:
            with trio.fail_after(2), pytest.raises(trio.BrokenResourceError, match="reset"):
                await stream.receive_some()

        async def send() -> None:
            with trio.fail_after(2), pytest.raises(trio.BrokenResourceError, match="reset"):
                await stream.send_all(b"y" * (1024 * 1024))

        async with trio.open_nursery() as waiters:
            waiters.start_soon(receive)
            waiters.start_soon(send)
            await trio.testing.wait_all_tasks_blocked(0.05)
            await stream.reset()
        with pytest.raises(trio.BrokenResourceError, match="reset"):
            await stream.receive_some()


async def test_after_the_session_block_every_call_fails_at_once(nursery: trio.Nursery) -> None:
    """open_session's block exited: the session is over; tasks that wait wake,
    later calls fail with the documented errors instead of waiting forever."""
    client_ws, server_ws = await sessions(nursery)
    async with (
        trio.open_nursery() as waiters,
        open_session(server_ws, client=False) as server,
    ):
        async with open_session(client_ws, client=True) as client:
            stream = await client.open_stream()
            await stream.send_all(b"x")
            peer = await server.accept()
            assert await peer.receive_some() == b"x"

            async def receive() -> None:
                with trio.fail_after(2), pytest.raises(trio.BrokenResourceError):
                    await stream.receive_some()

            async def accept() -> None:
                with trio.fail_after(2), pytest.raises(MuxError):
                    await client.accept()

            waiters.start_soon(receive)
            waiters.start_soon(accept)
            await trio.testing.wait_all_tasks_blocked(0.05)
        assert client.error is not None
        with trio.fail_after(2):
            with pytest.raises(trio.BrokenResourceError):
                await stream.receive_some()
            with pytest.raises(trio.BrokenResourceError):
                await stream.send_all(b"z")
            with pytest.raises(MuxError):
                await client.accept()
            async for _ in client:
                pytest.fail("a stream after the session ended")
            with pytest.raises(MuxError):
                await client.ping(timeout=1)
            with pytest.raises(trio.BrokenResourceError, match="reset"):
                await peer.receive_some()  # the peer learns it too


async def test_accept_ends_when_the_peer_goes_away_after_the_streams_queued(
    nursery: trio.Nursery,
) -> None:
    """As the asyncio shell: the streams the peer opened before its Go Away are
    handed out, then accept() raises MuxError and ``async for`` ends."""
    client_ws, server_ws = await sessions(nursery)
    async with (
        open_session(client_ws, client=True) as client,
        open_session(server_ws, client=False) as server,
    ):
        accepted: list[int] = []

        async def accept_all() -> None:
            async for stream in server:
                accepted.append(stream.stream)

        with trio.fail_after(2):
            async with trio.open_nursery() as acceptors:
                acceptors.start_soon(accept_all)
                await trio.testing.wait_all_tasks_blocked(0.05)
                opened = [(await client.open_stream()).stream for _ in range(2)]
                client.go_away()
            with pytest.raises(MuxError, match="went away"):
                await server.accept()
        assert accepted == opened


async def test_a_trio_client_through_ws_stream_serve_mux(nursery: trio.Nursery) -> None:
    """The trio shell against the asyncio shell: `ws-stream serve --mux` echoes each stream."""
    serve = subprocess.Popen(
        command("serve", "--port", "0", "--mux"),
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert serve.stderr is not None
        line = await trio.to_thread.run_sync(serve.stderr.readline)
        match = LISTENING.search(line)
        assert match, line
        with trio.fail_after(30):
            ws = await ws_stream.trio.connect_stream(
                nursery, f"ws://127.0.0.1:{match.group(1)}/", subprotocols=["yamux"]
            )
            assert ws.subprotocol == "yamux"
            async with open_session(ws, client=True) as session:
                for size in (0, 1, 300_000, 2_000_000):
                    stream = await session.open_stream()
                    data = os.urandom(size)
                    got = bytearray()
                    async with trio.open_nursery() as inner:

                        async def send(stream: MuxStream = stream, data: bytes = data) -> None:
                            await stream.send_all(data)
                            await stream.send_eof()

                        inner.start_soon(send)
                        while chunk := await stream.receive_some():
                            got += chunk
                    assert bytes(got) == data
                    await stream.aclose()
            await ws.aclose()
    finally:
        serve.terminate()
        serve.wait(10)


async def test_a_peer_that_pings_without_reading_ends_the_session() -> None:
    """A peer that floods pings over TCP and never reads the pongs: once the send
    under the session waits, at most MAX_BLOCKED_ANSWERS pongs more are queued,
    then the session fails (it buffered them without bound before)."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    peer = await trio.open_tcp_stream("127.0.0.1", port)
    under = await listener.accept()
    under.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # it blocks sooner
    pings = b"".join(struct.pack(">BBHII", 0, 2, 1, 0, i) for i in range(1000))

    async def flood() -> None:
        for _ in range(2000):
            await peer.send_all(pings)

    async with trio.open_nursery() as nursery:
        async with open_session(under, client=False) as session:
            nursery.start_soon(flood)
            with trio.fail_after(20):
                while session.error is None:
                    await trio.sleep(0.01)
            assert "without reading the answers" in session.error.reason
        nursery.cancel_scope.cancel()
    await peer.aclose()
    await under.aclose()
    await listener.aclose()


async def test_a_ping_that_times_out_leaves_nothing_behind() -> None:
    """A peer that never answers pings: each ping raises TooSlowError, and keeps no
    entry in the session (a long-lived session pinging a dead peer grew)."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    peer = await trio.open_tcp_stream("127.0.0.1", port)  # reads nothing, answers nothing
    under = await listener.accept()
    async with open_session(under, client=True) as session:
        for _ in range(20):
            with pytest.raises(trio.TooSlowError):
                await session.ping(timeout=0.01)
        assert session._pings == {}
    await peer.aclose()
    await under.aclose()
    await listener.aclose()
