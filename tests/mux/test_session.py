"""End to end: yamux sessions (``ws_stream.mux``) over real WebSockets on 127.0.0.1.

The server runs :func:`ws_stream.mux.open_session` in a
:func:`ws_stream.start_server` handler, the client over
:func:`ws_stream.connect_stream`; every stream is a real
``StreamReader``/``StreamWriter`` pair, every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import trustme

import ws_stream
from ws_stream import mux
from ws_stream.mux import MuxError, Session
from ws_stream.mux import asyncio as mux_asyncio
from ws_stream.mux._machine import CLOSE_TIMEOUT

from .helpers import digest, digest_to_eof, stream_id

KiB = 2**10
MiB = 2**20
#: Random bytes: every payload is a slice of it (an offset and a size).
BLOCK = os.urandom(24 * MiB)

StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]
OnStream = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def payload(offset: int, size: int) -> memoryview:
    return memoryview(BLOCK)[offset : offset + size]


async def send_all(
    writer: asyncio.StreamWriter, data: memoryview, rng: random.Random, *, eof: bool = True
) -> None:
    """Write ``data`` in random pieces (1 B to 256 KiB), draining; then write_eof()."""
    offset = 0
    while offset < len(data):
        size = rng.randint(1, 256 * KiB)
        writer.write(data[offset : offset + size])
        offset += size
        await writer.drain()
    if eof:
        writer.write_eof()


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@dataclass
class Pair:
    client: Session
    server: Session
    stream: ws_stream.WsStream  # the client's WebSocket, under the client session


@contextlib.asynccontextmanager
async def mux_pair(
    *,
    server_options: dict[str, Any] | None = None,
    client_options: dict[str, Any] | None = None,
    on_stream: OnStream | None = None,
    tls: bool = False,
) -> AsyncIterator[Pair]:
    """A client session and the server session it talks to, over a real WebSocket
    (wss:// with ``tls``)."""
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[Session] = loop.create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = await mux.open_session(
            reader, writer, client=False, on_stream=on_stream, **(server_options or {})
        )
        opened.set_result(session)
        await session.wait_closed()

    server_ctx, client_ctx = tls_contexts() if tls else (None, None)
    server = await ws_stream.start_server(
        handler, "127.0.0.1", 0, ping_interval=None, ssl=server_ctx
    )
    client: Session | None = None
    try:
        port = server.sockets[0].getsockname()[1]
        async with asyncio.timeout(10):
            uri = f"wss://localhost:{port}/" if tls else f"ws://127.0.0.1:{port}/"
            stream = await ws_stream.connect_stream(uri, ping_interval=None, ssl=client_ctx)
            client = await mux.open_session(
                stream.reader, stream.writer, client=True, **(client_options or {})
            )
            server_session = await opened
        yield Pair(client, server_session, stream)
    finally:
        async with asyncio.timeout(20):
            if client is not None:
                await client.close()
            if opened.done():
                await opened.result().close()
            server.close()
            await server.wait_closed()


async def opened_pair(opener: Session, acceptor: Session) -> tuple[StreamPair, StreamPair]:
    """A stream ``opener`` opens and ``acceptor`` accepts (one byte crossed it)."""
    reader, writer = await opener.open_stream()
    writer.write(b"!")
    async with asyncio.timeout(10):
        peer_reader, peer_writer = await acceptor.accept()
        assert await peer_reader.readexactly(1) == b"!"
    assert stream_id(peer_writer) == stream_id(writer)
    return (reader, writer), (peer_reader, peer_writer)


# When frames leave


async def test_the_first_data_of_an_iteration_leaves_at_once_the_rest_at_its_end() -> None:
    """Stream data adds no latency: the first write of a loop iteration is on the
    WebSocket before write() returns; later frames of the same iteration (more
    data, window updates) travel together at its end, in order."""
    async with mux_pair() as pair:
        (reader, writer), (peer_reader, _) = await opened_pair(pair.client, pair.server)
        await asyncio.sleep(0.05)  # let the opening's frames and ACKs settle
        stats = pair.stream.stats
        before = stats.bytes_sent
        writer.write(b"first")
        assert stats.bytes_sent == before + 12 + 5  # yamux header + data, sent already
        writer.write(b"second")
        writer.write(b"third")
        assert stats.bytes_sent == before + 12 + 5  # waiting for the end of the iteration
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert stats.bytes_sent == before + 3 * 12 + 5 + 6 + 5
        async with asyncio.timeout(10):
            assert await peer_reader.readexactly(16) == b"firstsecondthird"
        # A control frame waiting for the end of the iteration does not hold the
        # iteration's first data back: both leave at once, in order.
        before = stats.bytes_sent
        pair.client.go_away()
        assert stats.bytes_sent == before
        writer.write(b"after")
        assert stats.bytes_sent == before + 12 + 12 + 5
        async with asyncio.timeout(10):
            assert await peer_reader.readexactly(5) == b"after"


@pytest.mark.parametrize(
    ("max_frame_size", "max_size"),
    [(2**16, 2**16), (2**20, 2**20)],
    ids=["64 KiB both sides", "1 MiB: the peer's default max_size"],
)
async def test_no_websocket_frame_exceeds_max_frame_size(
    max_frame_size: int, max_size: int
) -> None:
    """A peer whose message limit (max_size) is our max_frame_size takes every frame
    a session sends (review of a whole-frame change: a Data frame and its header in
    one WebSocket frame made frames of max_frame_size + 12 to + 48 bytes: 1009)."""
    window = 4 * MiB
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            received.set_result(await reader.readexactly(2 * MiB))
        except Exception as exc:
            received.set_exception(exc)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = await mux.open_session(
            reader, writer, client=False, window=window, on_stream=on_stream
        )
        await session.wait_closed()
        if not received.done():
            received.set_exception(ConnectionError(f"the session ended: {session.error}"))

    server = await ws_stream.start_server(
        handler, "127.0.0.1", 0, ping_interval=None, max_size=max_size
    )
    try:
        port = server.sockets[0].getsockname()[1]
        stream = await ws_stream.connect_stream(
            f"ws://127.0.0.1:{port}/", ping_interval=None, max_frame_size=max_frame_size
        )
        async with await mux.open_session(
            stream.reader, stream.writer, client=True, window=window
        ) as session:
            _, writer = await session.open_stream()
            data = bytes(i % 251 for i in range(2 * MiB))
            writer.write(data[:1])
            await asyncio.sleep(0.05)  # the ACK: the full window from here on
            writer.write(data[1 : 2**16 + 1])  # one max_frame_size of payload
            writer.write(data[2**16 + 1 :])  # many Data frames in one write
            async with asyncio.timeout(10):
                assert await received == data
        assert stream.close_code != 1009
        await stream.close()
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("ending", ["reset", "go away with an error"])
async def test_bytes_left_unsent_by_a_reset_in_the_same_read_as_a_window_are_an_error(
    ending: str,
) -> None:
    """A closed stream with bytes waiting for window: the peer grants window and, in
    the same read, resets the stream or goes away with an error. The bytes never
    leave, so wait_closed() raises (review of a change that sent on the window
    update at once and reported a clean close)."""
    header = struct.Struct(">BBHII")
    closed = asyncio.Event()

    async def raw_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A yamux peer written here: ACK stream 1, take one window, FIN it; once the
        client closed, a window update and the ending in one write."""
        buffer, taken, acked = b"", 0, False
        while taken < 256 * 1024:
            buffer += await reader.read(2**20)
            while len(buffer) >= 12:
                _, type_, _, _, length = header.unpack_from(buffer)
                size = 12 + (length if type_ == 0 else 0)
                if len(buffer) < size:
                    break
                taken += size - 12
                buffer = buffer[size:]
                if not acked:
                    writer.write(header.pack(0, 1, 2, 1, 0))  # ACK
                    acked = True
        writer.write(header.pack(0, 1, 4, 1, 0))  # FIN
        await closed.wait()
        end = header.pack(0, 3, 0, 0, 2) if ending != "reset" else header.pack(0, 1, 8, 1, 0)
        writer.write(header.pack(0, 1, 0, 1, 1000) + end)
        await asyncio.sleep(1)

    server = await ws_stream.start_server(raw_peer, "127.0.0.1", 0, ping_interval=None)
    try:
        port = server.sockets[0].getsockname()[1]
        stream = await ws_stream.connect_stream(f"ws://127.0.0.1:{port}/", ping_interval=None)
        session = await mux.open_session(stream.reader, stream.writer, client=True)
        reader, writer = await session.open_stream()
        writer.write(b"z" * (256 * 1024 + 1000))  # 1000 bytes beyond the window
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # the peer's FIN
            assert writer.transport.get_write_buffer_size() == 1000
            writer.close()
            closed.set()
            expected = ConnectionResetError if ending == "reset" else ConnectionAbortedError
            with pytest.raises(expected):
                await writer.wait_closed()
            await session.close()
        await stream.close()
    finally:
        server.close()
        await server.wait_closed()


# Many streams, both ways


async def test_64_streams_opened_by_each_side_both_directions_at_once() -> None:
    rng = random.Random(20240501)
    sizes = iter([0, 1, 4 * MiB, 4 * MiB - 1] + [rng.randint(0, 4 * MiB) for _ in range(124)])
    # stream id -> (what its opener sends, what its acceptor sends); ids are unique
    # across the session (the client's odd, the server's even)
    plan: dict[int, tuple[memoryview, memoryview]] = {}

    def pick() -> memoryview:
        return payload(rng.randrange(0, 16 * MiB), next(sizes, rng.randint(0, 4 * MiB)))

    async def exchange(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        send: memoryview,
        expect: memoryview,
    ) -> None:
        sender = asyncio.create_task(send_all(writer, send, random.Random(len(send))))
        got = await digest_to_eof(reader)
        await sender
        assert got == digest(expect), f"stream {stream_id(writer)}"
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()

    async def opener(session: Session) -> None:
        reader, writer = await session.open_stream()
        sid = stream_id(writer)
        assert sid % 2 == (1 if session is pair.client else 0)
        plan[sid] = (pick(), pick())  # before any await: the peer cannot have it yet
        await exchange(reader, writer, *plan[sid])

    async def acceptor(session: Session) -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(64):
                reader, writer = await session.accept()
                sent_by_opener, sent_by_acceptor = plan[stream_id(writer)]
                group.create_task(exchange(reader, writer, sent_by_acceptor, sent_by_opener))

    async with mux_pair() as pair, asyncio.timeout(100):
        async with asyncio.TaskGroup() as group:
            for side in (pair.client, pair.server):
                group.create_task(acceptor(side))
                for _ in range(64):
                    group.create_task(opener(side))
        assert len(plan) == 128
        await until(lambda: pair.client.streams == 0 and pair.server.streams == 0)


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_half_close_the_other_side_reads_eof_after_all_bytes_and_writes_back(
    scheme: str,
) -> None:
    """Over wss:// too: a stream is not a TLS transport (asyncio closes a TLS one at EOF)."""
    async with mux_pair(tls=scheme == "wss") as pair, asyncio.timeout(30):
        for opener, acceptor in ((pair.client, pair.server), (pair.server, pair.client)):
            reader, writer = await opener.open_stream()
            # TLS details are the session writer's, never a stream's; the rest passes through.
            assert writer.get_extra_info("ssl_object") is None
            if opener is pair.client:
                under = pair.stream.writer
                assert (under.get_extra_info("ssl_object") is not None) == (scheme == "wss")
                assert writer.get_extra_info("peername") == under.get_extra_info("peername")
            request, reply = payload(5, 3 * MiB), payload(7 * MiB, 2 * MiB + 3)
            sender = asyncio.create_task(send_all(writer, request, random.Random(1)))
            peer_reader, peer_writer = await acceptor.accept()
            assert await digest_to_eof(peer_reader) == digest(request)
            assert peer_reader.at_eof()
            await sender
            with pytest.raises(RuntimeError):
                writer.write(b"after write_eof")
            assert not peer_writer.is_closing()
            # the half-closed stream still carries bytes the other way
            _, got = await asyncio.gather(
                send_all(peer_writer, reply, random.Random(2)), digest_to_eof(reader)
            )
            assert got == digest(reply)
            # As over TCP, a stream ended both ways stays open until close(); then
            # it is gone at once: both FINs crossed already (the close timeout is 10 s).
            assert not writer.is_closing() and not peer_writer.is_closing()
            await writer.drain()
            writer.close()
            peer_writer.close()
            async with asyncio.timeout(5):
                await writer.wait_closed()
                await peer_writer.wait_closed()
        await until(lambda: pair.client.streams == 0 and pair.server.streams == 0)


async def test_close_then_wait_closed_ends_the_stream_on_both_sides() -> None:
    async with mux_pair() as pair, asyncio.timeout(30):
        reader, writer = await pair.client.open_stream()
        data = payload(3, MiB)
        writer.write(data)
        writer.close()  # FIN after the buffered bytes
        assert writer.is_closing()
        peer_reader, peer_writer = await pair.server.accept()
        assert await digest_to_eof(peer_reader) == digest(data)
        peer_writer.write(b"dropped: the other side closed")
        peer_writer.close()
        await writer.wait_closed()
        await peer_writer.wait_closed()
        assert await reader.read() == b""
        await until(lambda: pair.client.streams == 0 and pair.server.streams == 0)


async def test_a_closed_stream_whose_peer_never_closes_is_reset_after_the_close_timeout() -> None:
    """close() sends FIN; a peer that never answers with its own does not keep the
    stream (and a slot of max_streams) forever: after CLOSE_TIMEOUT it is reset,
    and the peer learns it (as README says, for both shells)."""
    async with mux_pair() as pair:
        (_, writer), (peer_reader, _) = await opened_pair(pair.client, pair.server)
        stream = stream_id(writer)
        writer.close()
        async with asyncio.timeout(5):
            assert await peer_reader.read() == b""  # the FIN; this side never closes
        assert stream in pair.client.machine.streams  # waiting for the peer's FIN
        async with asyncio.timeout(CLOSE_TIMEOUT + 10):
            await writer.wait_closed()
            while stream in pair.client.machine.streams:
                await asyncio.sleep(0.1)
            await until(lambda: stream not in pair.server.machine.streams)


@pytest.mark.parametrize("held", [1000, 200 * KiB], ids=["in the reader", "held back too"])
async def test_close_with_bytes_unread_resets_the_stream(held: int) -> None:
    """As TCP: closing a stream whose reader has bytes it never read is an RST, so
    the peer learns they were not read (not a clean EOF)."""
    async with mux_pair() as pair, asyncio.timeout(30):
        (_, writer), (peer_reader, peer_writer) = await opened_pair(pair.client, pair.server)
        peer_writer.write(payload(0, held))
        await pair.server.ping()  # a barrier: the client has the bytes
        writer.close()
        with pytest.raises(ConnectionResetError):
            await peer_reader.read()
        with pytest.raises(ConnectionResetError):
            peer_writer.write(b"more")
            await peer_writer.drain()


async def test_close_waits_while_a_slow_peer_takes_the_buffered_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """close() sends what is buffered, then FIN: a peer that keeps reading, however
    slowly, gets every byte and a clean EOF, even when that takes longer than the
    close timeout (shortened here to 0.3 s); the writer's wait_closed() is clean."""
    monkeypatch.setattr(mux_asyncio, "CLOSE_TIMEOUT", 0.3)
    data = payload(0, 1 * MiB)  # four windows
    async with mux_pair() as pair, asyncio.timeout(30):
        (_, writer), (peer_reader, peer_writer) = await opened_pair(pair.client, pair.server)
        writer.write(data)
        writer.close()
        received = bytearray()
        while chunk := await peer_reader.read(16 * KiB):
            received += chunk
            await asyncio.sleep(0.01)  # about 1.3 s for all of it
        assert digest(received) == digest(data)
        peer_writer.close()
        await writer.wait_closed()


async def test_close_resets_after_the_timeout_when_the_peer_takes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer that takes none of the bytes buffered at close() for the close timeout
    gets an RST, and the writer learns the bytes were not delivered (not a clean
    end): wait_closed() raises TimeoutError."""
    monkeypatch.setattr(mux_asyncio, "CLOSE_TIMEOUT", 0.3)
    async with mux_pair() as pair, asyncio.timeout(30):
        (_, writer), (peer_reader, _) = await opened_pair(pair.client, pair.server)
        writer.write(payload(0, 1 * MiB))
        writer.close()
        with pytest.raises(TimeoutError, match="close"):
            await writer.wait_closed()
        with pytest.raises(ConnectionResetError):
            while await peer_reader.read(64 * KiB):
                pass


@pytest.mark.parametrize("aborting", ["client", "server"])
async def test_abort_makes_the_peer_reader_raise_connection_reset(aborting: str) -> None:
    async with mux_pair() as pair, asyncio.timeout(30):
        ends = await opened_pair(pair.client, pair.server)
        (_, writer), (peer_reader, peer_writer) = ends if aborting == "client" else ends[::-1]
        sid = stream_id(writer)

        async def flood() -> None:  # the peer is blocked writing when the reset comes
            while True:
                peer_writer.write(BLOCK[:MiB])
                await peer_writer.drain()

        flooder = asyncio.create_task(flood())
        await until(lambda: peer_writer.transport.get_write_buffer_size() > 256 * KiB)
        writer.transport.abort()
        with pytest.raises(ConnectionResetError, match=f"the peer reset mux stream {sid}$"):
            await peer_reader.read(65536)
        with pytest.raises(ConnectionResetError, match=f"mux stream {sid}"):
            await flooder
        with pytest.raises(ConnectionResetError):
            await peer_writer.wait_closed()
        await writer.wait_closed()
        # the session goes on
        (reader2, writer2), (peer_reader2, peer_writer2) = await opened_pair(
            pair.server, pair.client
        )
        writer2.write(b"still here")
        writer2.write_eof()
        assert await peer_reader2.read() == b"still here"
        await until(lambda: pair.client.streams == 1 and pair.server.streams == 1)


@pytest.mark.parametrize("size", [0, 1000, 3 * MiB])
async def test_abort_right_after_writing_is_never_a_clean_eof(size: int) -> None:
    async with mux_pair() as pair, asyncio.timeout(30):
        (_, writer), (peer_reader, peer_writer) = await opened_pair(pair.client, pair.server)
        writer.write(payload(0, size))
        writer.transport.abort()
        received = 0
        with pytest.raises(ConnectionResetError, match=f"mux stream {stream_id(writer)}"):
            while chunk := await peer_reader.read(65536):
                received += len(chunk)
        assert received <= size


@pytest.mark.parametrize("size", [3 * 2**16, MiB, 4 * MiB])
async def test_readexactly_more_than_twice_the_reader_limit(size: int) -> None:
    """The StreamReader pauses the stream past 2 * limit; readexactly() resumes it."""
    async with mux_pair() as pair, asyncio.timeout(30):
        (reader, writer), (peer_reader, peer_writer) = await opened_pair(pair.client, pair.server)
        data = payload(9, size)
        peer_writer.write(data)  # and no EOF: the bytes alone must wake the reader
        async with asyncio.timeout(10):
            got = await reader.readexactly(size)
        assert digest(got) == digest(data)
        writer.write(data)
        writer.write_eof()
        async with asyncio.timeout(10):
            got = await peer_reader.readexactly(size)
        assert digest(got) == digest(data)
        assert await peer_reader.read() == b""


# start_tls inside one stream


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


@pytest.mark.default_loop_only  # uvloop's start_tls() takes uvloop's transports only
async def test_start_tls_inside_one_stream_while_others_carry_data() -> None:
    server_ctx, client_ctx = tls_contexts()
    up, down = payload(11, 3 * MiB), payload(5 * MiB, 2 * MiB + 1)

    async def tls_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        writer.write(b"OK\n")  # no await before start_tls: the ClientHello goes to TLS
        tls_reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(tls_reader)
        transport = await loop.start_tls(writer.transport, protocol, server_ctx, server_side=True)
        assert transport is not None
        protocol.connection_made(transport)
        tls_writer = asyncio.StreamWriter(transport, protocol, tls_reader, loop)
        size = int.from_bytes(await tls_reader.readexactly(8), "big")
        got = hashlib.sha256(await tls_reader.readexactly(size)).digest()
        tls_writer.write(got + len(down).to_bytes(8, "big") + bytes(down))
        await tls_writer.drain()
        assert await tls_reader.read() == b""
        tls_writer.close()
        await tls_writer.wait_closed()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        await (tls_server if line == b"STARTTLS\n" else echo)(reader, writer)

    async def plain(i: int) -> None:
        reader, writer = await pair.client.open_stream()
        writer.write(b"PLAIN\n")
        data = payload(i * MiB, 2 * MiB)
        _, got = await asyncio.gather(
            send_all(writer, data, random.Random(i)), digest_to_eof(reader)
        )
        assert got == digest(data)

    async def tls() -> None:
        reader, writer = await pair.client.open_stream()
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"OK\n"
        await writer.start_tls(client_ctx, server_hostname="localhost")
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object is not None and ssl_object.version().startswith("TLS")
        writer.write(len(up).to_bytes(8, "big") + bytes(up))
        await writer.drain()
        assert (await reader.readexactly(32)).hex() == digest(up)[1]
        size = int.from_bytes(await reader.readexactly(8), "big")
        assert digest(await reader.readexactly(size)) == digest(down)
        writer.close()
        await writer.wait_closed()

    async with mux_pair(on_stream=serve) as pair, asyncio.timeout(30):
        async with asyncio.TaskGroup() as group:
            for i in range(4):
                group.create_task(plain(i))
            group.create_task(tls())
            for i in range(4, 8):
                group.create_task(plain(i))
        await until(lambda: pair.client.streams == 0 and pair.server.streams == 0)


@pytest.mark.default_loop_only  # uvloop's start_tls() takes uvloop's transports only
async def test_a_session_over_tls_inside_the_websocket_runs_over_the_tls() -> None:
    """TLS first (inside the WebSocket), then the session on the TLS reader and writer:
    the session's frames go through TLS both ways, never around it."""
    server_ctx, client_ctx = tls_contexts()
    data = payload(3 * MiB, MiB + 7)
    served: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await writer.start_tls(server_ctx)
        assert writer.get_extra_info("ssl_object") is not None
        async with await mux.open_session(reader, writer, client=False) as session:
            stream_reader, stream_writer = await session.accept()
            served.set_result(await digest_to_eof(stream_reader))
            stream_writer.write(b"thanks")
            stream_writer.write_eof()
            await session.wait_closed()

    server = await ws_stream.start_server(handler, "127.0.0.1", 0, ping_interval=None)
    async with server, asyncio.timeout(30):
        port = server.sockets[0].getsockname()[1]
        stream = await ws_stream.connect_stream(f"ws://127.0.0.1:{port}/", ping_interval=None)
        await stream.writer.start_tls(client_ctx, server_hostname="localhost")
        async with await mux.open_session(stream.reader, stream.writer, client=True) as session:
            # The TLS layer stays the WebSocket transport's protocol: the session is above it.
            assert not isinstance(stream.transport.get_protocol(), mux_asyncio._Feed)
            reader, writer = await session.open_stream()
            await send_all(writer, data, random.Random(1))
            assert await served == digest(data)
            assert await reader.read() == b"thanks"
        await stream.close()


# Head-of-line blocking


async def test_a_stalled_reader_holds_no_other_stream_back() -> None:
    stalled_size, fast_size, fast_count = 8 * MiB, 16 * MiB, 8
    stalled: dict[str, Any] = {"written": 0, "in_drain": False}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        role = await reader.readexactly(1)
        if role == b"S":
            stalled["writer"] = writer
            data = payload(0, stalled_size)
            for offset in range(0, stalled_size, 64 * KiB):
                writer.write(data[offset : offset + 64 * KiB])
                stalled["written"] = offset + 64 * KiB
                stalled["in_drain"] = True
                await writer.drain()
                stalled["in_drain"] = False
            writer.write_eof()
        else:
            i = role[0]
            await send_all(writer, payload(i * MiB, fast_size), random.Random(i))

    async def fast(i: int) -> tuple[int, str]:
        reader, writer = await pair.client.open_stream()
        writer.write(bytes([i]))
        return await digest_to_eof(reader)

    async with mux_pair(on_stream=serve) as pair, asyncio.timeout(90):
        stalled_reader, stalled_writer = await pair.client.open_stream()
        stalled_writer.write(b"S")
        await until(lambda: stalled["in_drain"])
        written = stalled["written"]
        await asyncio.sleep(0.2)
        assert stalled["in_drain"] and stalled["written"] == written, "the feeder is not blocked"
        async with asyncio.timeout(60):  # generous: 128 MiB over loopback
            results = await asyncio.gather(*(fast(i) for i in range(1, fast_count + 1)))
        for i, result in enumerate(results, 1):
            assert result == digest(payload(i * MiB, fast_size)), f"fast stream {i}"
        # the stalled stream's feeder waited in drain() the whole time
        assert stalled["in_drain"] and stalled["written"] == written
        assert written <= 2 * MiB, f"{written} bytes written to a stream nobody reads"
        assert stalled["writer"].transport.get_write_buffer_size() > 0
        assert await digest_to_eof(stalled_reader) == digest(payload(0, stalled_size))
        assert not stalled["in_drain"]


# Limits


async def test_max_streams_resets_the_streams_beyond_it() -> None:
    async with mux_pair(server_options={"max_streams": 4}) as pair, asyncio.timeout(30):
        streams = [await pair.client.open_stream() for _ in range(6)]
        for _, writer in streams:
            writer.write(b"hello")
        for reader, writer in streams[4:]:
            with pytest.raises(ConnectionResetError, match=f"mux stream {stream_id(writer)}$"):
                await reader.read()
        accepted = [await pair.server.accept() for _ in range(4)]
        assert [stream_id(w) for _, w in accepted] == [stream_id(w) for _, w in streams[:4]]
        for (reader, _), (peer_reader, peer_writer) in zip(streams[:4], accepted, strict=True):
            assert await peer_reader.readexactly(5) == b"hello"
            peer_writer.write(b"world")
            assert await reader.readexactly(5) == b"world"
            assert reader.exception() is None
        assert pair.server.streams == 4
        # one ends (both FINs): a new stream fits
        reader, writer = streams[0]
        peer_reader, peer_writer = accepted[0]
        writer.write_eof()
        assert await peer_reader.read() == b""
        peer_writer.write_eof()
        assert await reader.read() == b""
        await until(lambda: pair.server.streams == 3)
        # (kept: a StreamWriter closes its stream when garbage collected)
        kept = await opened_pair(pair.client, pair.server)
        assert pair.server.streams == 4
        reader, writer = await pair.client.open_stream()  # the fifth again: refused
        with pytest.raises(ConnectionResetError):
            await reader.read()
        assert not kept[0][1].is_closing()


async def test_max_streams_on_this_side_refuses_open_stream() -> None:
    async with mux_pair(client_options={"max_streams": 2}) as pair, asyncio.timeout(10):
        kept = [await pair.client.open_stream(), await pair.client.open_stream()]
        with pytest.raises(MuxError, match="max_streams"):
            await pair.client.open_stream()
        assert pair.client.streams == 2
        assert not any(writer.is_closing() for _, writer in kept)


async def test_backlog_resets_streams_the_server_does_not_accept() -> None:
    async with mux_pair(server_options={"backlog": 3}) as pair, asyncio.timeout(30):
        streams = [await pair.client.open_stream() for _ in range(5)]
        for i, (_, writer) in enumerate(streams):
            writer.write(b"%d" % i)
        for reader, _ in streams[3:]:
            with pytest.raises(ConnectionResetError):
                await reader.read()
        await pair.client.ping()  # a barrier: what the server sent came first
        for reader, _ in streams[:3]:
            assert reader.exception() is None
        for i in range(3):
            peer_reader, peer_writer = await pair.server.accept()
            assert stream_id(peer_writer) == stream_id(streams[i][1])
            assert await peer_reader.readexactly(1) == b"%d" % i
        # accepted: the backlog has room again
        (reader, writer), (peer_reader, peer_writer) = await opened_pair(pair.client, pair.server)
        peer_writer.write(b"ok")
        assert await reader.readexactly(2) == b"ok"


async def test_streams_reset_before_they_are_accepted_keep_their_place_in_the_backlog() -> None:
    # A peer that opens and resets streams at once cannot queue more than the
    # backlog for an application that does not accept (each ended stream is
    # still handed out, until then it holds its place).
    async with mux_pair(server_options={"backlog": 3}) as pair, asyncio.timeout(30):
        for _ in range(3):
            _, writer = await pair.client.open_stream()
            writer.transport.abort()
        await pair.client.ping()  # a barrier: the server saw the opens and resets
        refused = [await pair.client.open_stream() for _ in range(2)]
        for reader, writer in refused:
            writer.write(b"x")
            async with asyncio.timeout(5):
                with pytest.raises(ConnectionResetError):
                    await reader.read()
        for _ in range(3):
            peer_reader, _ = await pair.server.accept()
            with pytest.raises(ConnectionResetError):
                await peer_reader.read()
        # taken: the backlog has room again
        (reader, writer), (peer_reader, peer_writer) = await opened_pair(pair.client, pair.server)
        peer_writer.write(b"ok")
        assert await reader.readexactly(2) == b"ok"


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
async def test_an_on_stream_callback_that_raises_resets_that_stream_only(tls: bool) -> None:
    """A plain (not async) callback that raises: its stream is reset and the error
    logged, as for an async one; the session and its other streams go on."""
    calls = 0

    def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("a broken callback")
        writer.write(b"ok")

    async with mux_pair(on_stream=on_stream, tls=tls) as pair, asyncio.timeout(10):  # type: ignore[arg-type]
        first_reader, first_writer = await pair.client.open_stream()
        first_writer.write(b"?")
        with pytest.raises(ConnectionResetError):
            await first_reader.read()
        reader, _ = await pair.client.open_stream()
        assert await reader.readexactly(2) == b"ok"
        assert 0 < await pair.client.ping() < 5
        assert pair.server.error is None and pair.client.error is None


async def test_a_burst_of_opens_beyond_the_backlog_all_reach_on_stream() -> None:
    """With on_stream every stream is taken as it opens: 300 opened at once (in one
    read, past the backlog of 256) all reach the callback; 44 were reset."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read())
        writer.close()

    async with mux_pair(on_stream=echo) as pair, asyncio.timeout(30):
        streams = [await pair.client.open_stream() for _ in range(300)]
        for i, (_, writer) in enumerate(streams):
            writer.write(b"%d" % i)
            writer.write_eof()
        answers = await asyncio.gather(*(reader.read() for reader, _ in streams))
        assert answers == [b"%d" % i for i in range(300)]


async def test_go_away_refuses_new_streams_and_existing_ones_finish() -> None:
    async with mux_pair() as pair, asyncio.timeout(30):
        (reader, writer), (peer_reader, peer_writer) = await opened_pair(pair.client, pair.server)
        iterated: list[StreamPair] = []

        async def iterate(session: Session) -> None:
            async for stream in session:
                iterated.append(stream)

        client_iteration = asyncio.create_task(iterate(pair.client))
        pair.server.go_away()
        await pair.client.ping()  # a barrier: the Go Away came first
        with pytest.raises(MuxError, match="going away"):
            await pair.client.open_stream()
        with pytest.raises(MuxError, match="going away"):
            await pair.server.open_stream()
        await client_iteration  # the peer went away: no more streams come
        assert iterated == []
        with pytest.raises(MuxError, match="went away"):
            await pair.client.accept()
        # the stream opened before goes on, both ways
        up, down = payload(1, 2 * MiB), payload(2, 3 * MiB)
        results = await asyncio.gather(
            send_all(writer, up, random.Random(3)),
            send_all(peer_writer, down, random.Random(4)),
            digest_to_eof(peer_reader),
            digest_to_eof(reader),
        )
        assert list(results[2:]) == [digest(up), digest(down)]
        writer.close()
        peer_writer.close()
        await writer.wait_closed()
        await peer_writer.wait_closed()
        assert 0 < await pair.server.ping() < 10


async def test_over_a_wsstream_the_session_is_the_protocol_of_its_transport() -> None:
    """No reader task and no StreamReader between the WebSocket and the session."""
    async with mux_pair() as pair:
        assert isinstance(pair.stream.transport.get_protocol(), mux_asyncio._Feed)


async def test_ping_returns_the_round_trip() -> None:
    async with mux_pair() as pair, asyncio.timeout(10):
        for session in (pair.client, pair.server, pair.client):
            rtt = await session.ping()
            assert isinstance(rtt, float)
            assert 0 < rtt < 5


@pytest.mark.parametrize("closing", ["client", "server"])
async def test_session_close_ends_every_stream_with_an_error(closing: str) -> None:
    async with mux_pair() as pair, asyncio.timeout(30):
        closer, other = (
            (pair.client, pair.server) if closing == "client" else (pair.server, pair.client)
        )
        ends: list[tuple[str, StreamPair]] = []
        for opener, acceptor in ((closer, other), (other, closer)):
            for _ in range(3):
                opened, accepted = await opened_pair(opener, acceptor)
                ends.append(("closing side" if opener is closer else "other side", opened))
                ends.append(("closing side" if acceptor is closer else "other side", accepted))
        reads = [asyncio.create_task(reader.read()) for _, (reader, _) in ends]
        iterated: list[StreamPair] = []

        async def iterate() -> None:
            async for stream in other:
                iterated.append(stream)

        iteration = asyncio.create_task(iterate())
        await asyncio.sleep(0.05)
        await closer.close()
        results = await asyncio.gather(*reads, return_exceptions=True)
        outcomes = [
            (side, stream_id(writer), result)
            for (side, (_, writer)), result in zip(ends, results, strict=True)
        ]
        clean = [o for o in outcomes if not isinstance(o[2], ConnectionError)]
        assert clean == [], f"{len(clean)} of {len(outcomes)} streams ended cleanly: {clean}"
        for _, _, result in outcomes:
            assert isinstance(result, (ConnectionAbortedError, ConnectionResetError)), result
        await other.wait_closed()
        await closer.wait_closed()
        await iteration
        assert iterated == []
        for session in (closer, other):
            with pytest.raises(MuxError):
                await session.open_stream()
            with pytest.raises(MuxError):
                await session.ping()


@pytest.mark.parametrize("closing", ["this side", "the peer"])
async def test_a_stream_ended_both_ways_keeps_its_bytes_and_eof_when_the_session_ends(
    closing: str,
) -> None:
    # Both FINs crossed before the session ended: the stream was over, and every
    # byte the reader has not read yet (more than its limit: some held back)
    # still comes, then a clean EOF, not the session's end as an error.
    reply = payload(0, 200 * KiB)
    async with mux_pair() as pair, asyncio.timeout(30):
        (reader, writer), (peer_reader, peer_writer) = await opened_pair(pair.client, pair.server)
        writer.write_eof()
        assert await peer_reader.read() == b""
        peer_writer.write(reply)
        peer_writer.write_eof()
        await pair.server.ping()  # a barrier: the client has the reply and the FIN
        await (pair.client if closing == "this side" else pair.server).close()
        assert await digest_to_eof(reader) == digest(reply)
        writer.close()
        await writer.wait_closed()


async def test_the_websocket_dropping_errors_every_stream() -> None:
    async with mux_pair() as pair, asyncio.timeout(30):
        ends: list[StreamPair] = []
        for opener, acceptor in ((pair.client, pair.server), (pair.server, pair.client)):
            for _ in range(3):
                ends += await opened_pair(opener, acceptor)
        # a stream with bytes in flight too (its writer waits in drain())
        (_, writer), peer_ends = await opened_pair(pair.client, pair.server)
        writer.write(BLOCK[: 4 * MiB])
        reads = [asyncio.create_task(reader.read()) for reader, _ in ends]
        iterated: list[StreamPair] = []

        async def iterate(session: Session) -> None:
            async for stream in session:
                iterated.append(stream)

        iterations = [asyncio.create_task(iterate(s)) for s in (pair.client, pair.server)]
        await asyncio.sleep(0.05)
        pair.stream.transport.abort()
        results = await asyncio.gather(*reads, return_exceptions=True)
        for result in results:
            assert isinstance(result, ConnectionError), result
            assert "mux session ended: the connection under the session" in str(result)
        await asyncio.gather(*iterations)
        assert iterated == []
        await pair.client.wait_closed()
        await pair.server.wait_closed()
        for session in (pair.client, pair.server):
            assert session.error is not None
            assert "the connection under the session" in session.error.reason
            with pytest.raises(MuxError, match="the session is over: the connection under"):
                await session.open_stream()
        with pytest.raises(ConnectionError, match="mux session ended"):
            await writer.drain()


# Error messages


async def test_error_messages_name_the_stream_or_the_session_reason() -> None:
    async with mux_pair() as pair, asyncio.timeout(20):
        (reader, writer), (peer_reader, peer_writer) = await opened_pair(pair.client, pair.server)
        sid = stream_id(writer)
        peer_writer.transport.abort()
        with pytest.raises(ConnectionResetError) as reset:
            await reader.read()
        assert str(reset.value) == f"the peer reset mux stream {sid}"

        (reader, writer), peer_ends = await opened_pair(pair.client, pair.server)
        read = asyncio.create_task(reader.read())
        await pair.server.close()
        with pytest.raises(ConnectionError) as ended:
            await read
        assert "mux stream" in str(ended.value) or "mux session ended" in str(ended.value)
        await pair.client.wait_closed()
        assert pair.client.error is not None
        with pytest.raises(MuxError, match="the session is over: " + pair.client.error.reason):
            await pair.client.ping()
        with pytest.raises(MuxError, match="no more streams: " + pair.client.error.reason):
            await pair.client.accept()
