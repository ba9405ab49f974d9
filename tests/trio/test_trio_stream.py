"""ws_stream.trio: the trio Stream contract, the shared semantics, TLS inside, interop."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing
import trustme

import ws_stream
from ws_stream._options import StreamOptions
from ws_stream.events import Closed, CloseReceived, Error, PingReceived, PongReceived
from ws_stream.trio import WsStream, open_websocket_stream
from ws_stream.trio.handshake import client_handshake, connect_transport, parse

from ..cases import VIOLATION_PARAMS
from ..rawpeer import BINARY, CLOSE, CONT, PING, PONG, TEXT, close_payload
from .helpers import TrioRawPeer, accepting_server, start_server

pytestmark = pytest.mark.trio


async def echo(stream: WsStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def client_in(nursery: trio.Nursery, uri: str, **options: Any) -> WsStream:
    """A client WsStream whose tasks live in ``nursery`` (for the stream checkers)."""
    opts = StreamOptions(**options)
    wsuri = parse(uri)
    tcp = await connect_transport(wsuri, None)
    protocol, request, response, received = await client_handshake(tcp, wsuri, opts)
    return WsStream(
        tcp, protocol, nursery, request=request, response=response, received=received, _options=opts
    )


def cause_of(info: pytest.ExceptionInfo[BaseException]) -> BaseException | None:
    return info.value.__cause__


# The trio Stream contract


async def test_check_two_way_stream(nursery: trio.Nursery) -> None:
    uri, accepted = await accepting_server(nursery, close_timeout=2)

    async def stream_maker() -> tuple[WsStream, WsStream]:
        client = await client_in(nursery, uri, close_timeout=2)
        server = await accepted.receive()
        return client, server

    clogged_uri, clogged_accepted = await accepting_server(nursery, close_timeout=2, limit=1)

    async def clogged_stream_maker() -> tuple[WsStream, WsStream]:
        # limit=1: each side's reader stops reading the socket as soon as it
        # holds more than a byte, so valid frames written below fill the kernel
        # buffers both ways; then any send blocks until the other side reads.
        client = await client_in(nursery, clogged_uri, close_timeout=2, limit=1)
        server = await clogged_accepted.receive()
        for _ in range(3):  # refill after each reader took its last chunk
            fill_socket(client)
            fill_socket(server)
            await trio.testing.wait_all_tasks_blocked()
        return client, server

    await trio.testing.check_two_way_stream(stream_maker, clogged_stream_maker)


def fill_socket(stream: WsStream) -> None:
    """Write whole binary frames straight to the socket until the kernel refuses more.

    A frame the kernel took only in part keeps its rest at the head of the
    stream's outgoing queue, so the stream sends it first: the framing stays
    valid.
    """
    protocol = stream.websocket
    transport = stream.transport_stream
    assert isinstance(transport, trio.SocketStream)
    with socket.socket(fileno=os.dup(transport.socket.fileno())) as sock:
        sock.setblocking(False)
        while True:
            protocol.send_binary(b"\0" * 4096)
            frame = b"".join(protocol.data_to_send())
            try:
                sent = sock.send(frame)
            except BlockingIOError:
                sent = 0
            if sent < len(frame):
                stream._outbox.insert(0, frame[sent:])
                stream._flush_lot.unpark_all()  # the flusher sends the rest (blocks)
                return


async def test_bidirectional_bulk_echo_never_hangs(nursery: trio.Nursery) -> None:
    """The websockets.trio trap: both sides writing bulk while reading. 20 runs in a row."""
    uri = await start_server(nursery, echo)
    rng = random.Random(4)
    payload = os.urandom(3 * 2**20)
    for run in range(20):
        size = [65536, 65537, 1000, 4097, 300_001][run % 5]
        with trio.fail_after(30):
            async with open_websocket_stream(uri, ping_interval=None) as stream:
                got = bytearray()

                async def send(s: WsStream = stream, n: int = size) -> None:
                    for i in range(0, len(payload), n):
                        await s.send_all(payload[i : i + n])

                async with trio.open_nursery() as inner:
                    inner.start_soon(send)
                    while len(got) < len(payload):
                        got += await stream.receive_some(rng.choice([None, 100, 2**20]))
                assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


async def test_busy_and_closed_errors(nursery: trio.Nursery) -> None:
    uri, accepted = await accepting_server(nursery)
    client = await client_in(nursery, uri)
    await accepted.receive()
    with pytest.RaisesGroup(trio.BusyResourceError):
        async with trio.open_nursery() as inner:
            inner.start_soon(client.receive_some)
            inner.start_soon(client.receive_some)
    await client.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await client.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        await client.send_all(b"x")
    await client.aclose()  # idempotent


# TLS inside the WebSocket


@pytest.fixture
def tls() -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext]]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("inner.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    yield server_ctx, client_ctx


async def test_ssl_stream_inside_the_websocket(
    nursery: trio.Nursery, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, client_ctx = tls

    async def handler(stream: WsStream) -> None:
        inner = trio.SSLStream(stream, server_ctx, server_side=True)
        buf = b""
        while b"\n" not in buf:
            buf += await inner.receive_some()
        for line in buf.splitlines(keepends=True):
            await inner.send_all(b"got " + line)
        await inner.aclose()

    uri = await start_server(nursery, handler)
    async with open_websocket_stream(uri, ping_interval=None) as stream:
        inner = trio.SSLStream(stream, client_ctx, server_hostname="inner.test")
        await inner.send_all(b"hello\nworld\n")
        got = b""
        with trio.fail_after(5):
            while got.count(b"\n") < 2:
                got += await inner.receive_some()
        assert got == b"got hello\ngot world\n"


async def test_wss_outer_tls(
    nursery: trio.Nursery, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    uri = await start_server(nursery, echo, ssl=server_ctx)
    async with open_websocket_stream(
        uri.replace("ws://", "wss://"), ssl=client_ctx, ping_interval=None
    ) as stream:
        await stream.send_all(b"secure")
        assert await stream.receive_some() == b"secure"


# The shared semantics


async def test_frames_become_one_byte_stream(nursery: trio.Nursery) -> None:
    uri, accepted = await accepting_server(nursery)
    peer = await TrioRawPeer.connect(uri)
    server = await accepted.receive()
    await peer.send(BINARY, b"ab", fin=False)
    await peer.send(CONT, b"", fin=False)
    await peer.send(CONT, b"cd")
    await peer.send(BINARY, b"ef\n")
    await peer.send(CLOSE, close_payload(1000))
    got = b""
    with trio.fail_after(5):
        while chunk := await server.receive_some():
            got += chunk
    assert got == b"abcdef\n"
    assert await peer.recv_close() == (1000, "")
    await peer.aclose()


@pytest.mark.parametrize(("frame", "code"), VIOLATION_PARAMS)
async def test_server_fails_the_violating_client(
    nursery: trio.Nursery, frame: dict[str, Any], code: int
) -> None:
    uri, accepted = await accepting_server(nursery, max_size=1000)
    peer = await TrioRawPeer.connect(uri)
    server = await accepted.receive()
    events = server.events()
    await peer.send(BINARY, b"prior")
    await peer.send(**frame)
    assert (await peer.recv_close())[0] == code
    with trio.fail_after(5):
        assert await server.receive_some() == b"prior"
        with pytest.raises(trio.BrokenResourceError) as info:
            await server.receive_some()
    error = cause_of(info)
    assert isinstance(error, ws_stream.ProtocolError) and error.code == code
    await peer.wait_eof()
    await peer.aclose()
    got = []
    with trio.fail_after(5):
        async for event in events:
            got.append(event)
    assert isinstance(got[0], Error) and got[0].error is error
    assert isinstance(got[-1], Closed) and not got[-1].clean


async def test_text_frame_is_1003_and_on_text_bytes(nursery: trio.Nursery) -> None:
    uri, accepted = await accepting_server(nursery)
    peer = await TrioRawPeer.connect(uri)
    server = await accepted.receive()
    await peer.send(BINARY, b"bin")
    await peer.send(TEXT, b"txt")
    assert await peer.recv_close() == (1003, "text frames are not supported")
    assert await server.receive_some() == b"bin"
    with pytest.raises(trio.BrokenResourceError) as info:
        await server.receive_some()
    assert isinstance(cause_of(info), ws_stream.TextFrameError)
    await peer.aclose()

    uri, accepted = await accepting_server(nursery, on_text="bytes")
    peer = await TrioRawPeer.connect(uri)
    server = await accepted.receive()
    await peer.send(TEXT, "é".encode()[:1], fin=False)
    await peer.send(CONT, "é".encode()[1:])
    await peer.send(CLOSE, close_payload(1000))
    got = b""
    with trio.fail_after(5):
        while chunk := await server.receive_some():
            got += chunk
    assert got == "é".encode()
    await peer.aclose()


async def test_control_frames_are_events(nursery: trio.Nursery) -> None:
    uri, accepted = await accepting_server(nursery)
    peer = await TrioRawPeer.connect(uri)
    server = await accepted.receive()
    events = server.events()
    await peer.send(PING, b"hi")
    await peer.send(PONG, b"unsolicited")
    await peer.send(BINARY, b"data")
    pong = await peer.recv_frame()
    assert (pong.opcode, pong.payload) == (PONG, b"hi")
    assert await server.receive_some() == b"data"
    await peer.send(CLOSE, close_payload(4001, "bye"))
    with trio.fail_after(5):
        assert await server.receive_some() == b""
    assert await peer.recv_close() == (4001, "bye")
    await peer.wait_eof()
    await peer.aclose()
    got = []
    with trio.fail_after(5):
        async for event in events:
            got.append(event)
    assert got == [
        PingReceived(b"hi"),
        PongReceived(b"unsolicited"),
        CloseReceived(4001, "bye"),
        Closed(4001, "bye", clean=True),
    ]
    assert (server.close_code, server.close_reason) == (4001, "bye")


async def test_lost_connection_is_broken_after_data(nursery: trio.Nursery) -> None:
    uri, accepted = await accepting_server(nursery)
    peer = await TrioRawPeer.connect(uri)
    server = await accepted.receive()
    await peer.send(BINARY, b"last")
    await peer.aclose()
    with trio.fail_after(5):
        assert await server.receive_some() == b"last"
        with pytest.raises(trio.BrokenResourceError) as info:
            await server.receive_some()
    assert isinstance(cause_of(info), ConnectionResetError)
    assert server.close_code == 1006


async def test_send_close_keeps_receiving_until_the_peer_closes(nursery: trio.Nursery) -> None:
    uri, accepted = await accepting_server(nursery)
    peer = await TrioRawPeer.connect(uri)
    server = await accepted.receive()
    await server.send_close(4002, "bye")
    assert await peer.recv_close() == (4002, "bye")
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"too late")
    await peer.send(BINARY, b"in flight")
    await peer.send(CLOSE, close_payload(4002, "bye"))
    with trio.fail_after(5):
        assert await server.receive_some() == b"in flight"
        assert await server.receive_some() == b""
    await peer.aclose()


async def test_aclose_against_a_silent_peer_is_bounded(nursery: trio.Nursery) -> None:
    uri, accepted = await accepting_server(nursery, close_timeout=0.5)
    peer = await TrioRawPeer.connect(uri)
    server = await accepted.receive()
    t0 = trio.current_time()
    await server.aclose()
    assert trio.current_time() - t0 < 0.5 + 1
    with trio.fail_after(2):
        await server.wait_closed()
    await peer.aclose()


async def test_cancelled_aclose_still_closes_tcp(nursery: trio.Nursery) -> None:
    uri, accepted = await accepting_server(nursery, close_timeout=10)
    peer = await TrioRawPeer.connect(uri)
    server = await accepted.receive()
    with trio.move_on_after(0.2):
        await server.aclose()  # the silent peer would keep it 10 s
    await peer.wait_eof()  # TCP was closed anyway
    with trio.fail_after(2):
        await server.wait_closed()
    await peer.aclose()


async def test_ping_round_trip(nursery: trio.Nursery) -> None:
    uri = await start_server(nursery, echo)
    async with open_websocket_stream(uri, ping_interval=None) as stream:
        assert 0 <= await stream.ping() < 5
        assert 0 <= await stream.ping(b"mine") < 5


async def test_refused_handshake_and_silent_server(nursery: trio.Nursery) -> None:
    uri = await start_server(nursery, echo, origins=["https://good.example"])
    with pytest.raises(ws_stream.HandshakeError) as info:
        async with open_websocket_stream(uri, origin="https://evil.example"):
            pass
    assert info.value.status == 403

    async def silent(tcp: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(trio.serve_tcp, silent, 0)
    port = listeners[0].socket.getsockname()[1]
    with pytest.raises(trio.TooSlowError):
        async with open_websocket_stream(f"ws://127.0.0.1:{port}/", open_timeout=0.5):
            pass


# Across runtimes: asyncio ws_stream <-> trio ws_stream


def _asyncio_server_in_thread(ready: list[int], stop: threading.Event) -> None:
    async def main() -> None:
        async def cb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data[::-1])
                await writer.drain()
            writer.close()

        async with await ws_stream.start_server(cb, "127.0.0.1", 0, ping_interval=None) as srv:
            ready.append(srv.sockets[0].getsockname()[1])
            while not stop.is_set():
                await asyncio.sleep(0.05)

    asyncio.run(main())


async def test_trio_client_against_asyncio_server() -> None:
    ready: list[int] = []
    stop = threading.Event()
    thread = threading.Thread(target=_asyncio_server_in_thread, args=(ready, stop))
    thread.start()
    try:
        with trio.fail_after(5):
            while not ready:
                await trio.sleep(0.01)
        async with open_websocket_stream(f"ws://127.0.0.1:{ready[0]}/", ping_interval=None) as s:
            await s.send_all(b"stressed")
            with trio.fail_after(5):
                assert await s.receive_some() == b"desserts"
    finally:
        stop.set()
        await trio.to_thread.run_sync(thread.join)


async def test_asyncio_client_against_trio_server(nursery: trio.Nursery) -> None:
    uri = await start_server(nursery, echo)
    payload = os.urandom(2**20)

    def client() -> bytes:
        async def main() -> bytes:
            reader, writer = await ws_stream.open_connection(uri, ping_interval=None)
            writer.write(payload)
            got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
            await writer.get_extra_info("ws_stream").close()
            return got

        return asyncio.run(main())

    assert await trio.to_thread.run_sync(client) == payload
