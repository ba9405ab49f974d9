"""Memory: streams nobody reads hold at most a window each, however much the peer sends.

100 streams, each fed 64 MiB by the peer while this side's readers do not
read: the feeders end up blocked in ``drain()``, each stream holds at most
its receive window plus what its ``StreamReader`` holds before pausing, and
this process's RSS grows by a few dozen MiB, not by gigabytes. The peer runs
in a subprocess (so that RSS measures this side only) and, in a second test,
in this process (where the machine-level buffering is checked on both sides).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import os
import socket
import struct
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import ws_stream
from ws_stream import mux
from ws_stream.mux import DEFAULT_WINDOW, Session
from ws_stream.mux import _machine as mux_machine

KiB = 2**10
MiB = 2**20
STREAMS = 100
FEED = 64 * MiB  # what the peer writes into each stream
CHUNK = 64 * KiB  # one write() of a feeder
LIMIT = 2**16  # each stream's StreamReader limit (open_session's default)
#: What one unread stream may hold on the reading side: the bytes its
#: StreamReader took before pausing (window is granted back by half windows,
#: 128 KiB = 2 * limit here, so at most 2 * limit of them were granted) and one
#: window more.
HELD_BOUND = DEFAULT_WINDOW + 2 * LIMIT
#: RSS growth allowed on the reading side: three times the bound, plus slack.
RSS_BOUND = STREAMS * (DEFAULT_WINDOW + 2 * LIMIT) * 3 + 64 * MiB
ROOT = Path(__file__).resolve().parents[2]
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Bytes a stream holds on the reading side: its transport's, and its StreamReader's."""
    transport: Any = writer.transport
    buffered: bytearray = reader._buffer  # type: ignore[attr-defined]
    return sum(len(chunk) for chunk in transport._received) + len(buffered)


async def settle(
    measure: Callable[[], int], check: Callable[[], None], *, quiet: float = 0.5
) -> None:
    """Until ``measure()`` is positive and still for ``quiet`` s (calling ``check`` all along)."""
    loop = asyncio.get_running_loop()
    last, since = -1, loop.time()
    while True:
        check()
        now, value = loop.time(), measure()
        if value != last:
            last, since = value, now
        elif value > 0 and now - since >= quiet:
            return
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[str, asyncio.Future[Session]]]:
    """A ws_stream server whose connections run a server mux session; yields its URI."""
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[Session] = loop.create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = await mux.open_session(reader, writer, client=False, backlog=STREAMS)
        opened.set_result(session)
        await session.wait_closed()

    server = await ws_stream.start_server(handler, "127.0.0.1", 0, ping_interval=None)
    try:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", opened
    finally:
        async with asyncio.timeout(20):
            if opened.done():
                await opened.result().close()
            server.close()
            await server.wait_closed()


# The peer, in a subprocess: opens the streams (3 bytes of index each), says
# so with its data's sha256, waits for "go", feeds every stream in a task
# (write, then drain), and answers "status" until "quit".
FEEDER = r"""
import asyncio, hashlib, json, random, sys
import ws_stream
from ws_stream import mux

URI, STREAMS, FEED, CHUNK = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


def say(**what):
    sys.stdout.write(json.dumps(what) + "\n")
    sys.stdout.flush()


async def main():
    loop = asyncio.get_running_loop()
    data = memoryview(random.Random(7).randbytes(FEED))
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    stream = await ws_stream.connect_stream(URI, ping_interval=None)
    session = await mux.open_session(stream.reader, stream.writer, client=True)
    writers = []
    for i in range(STREAMS):
        _, writer = await session.open_stream()
        writer.write(b"%03d" % i)
        writers.append(writer)
    written, in_drain, errors = [0] * STREAMS, [False] * STREAMS, []

    async def feed(i, writer):
        try:
            for offset in range(0, FEED, CHUNK):
                writer.write(data[offset : offset + CHUNK])
                written[i] = offset + CHUNK
                in_drain[i] = True
                await writer.drain()
                in_drain[i] = False
            writer.write_eof()
        except ConnectionError as exc:
            errors.append(repr(exc))

    say(opened=STREAMS, sha256=hashlib.sha256(data).hexdigest())
    assert (await stdin.readline()).strip() == b"go"
    tasks = [asyncio.create_task(feed(i, w)) for i, w in enumerate(writers)]
    while line := (await stdin.readline()).strip():
        if line == b"status":
            done = sum(task.done() for task in tasks)
            say(written=written, in_drain=sum(in_drain), done=done, errors=errors)
        elif line == b"quit":
            break
    await session.close()


asyncio.run(asyncio.wait_for(main(), 120))
"""


async def test_unread_streams_fed_by_a_peer_process_hold_a_window_each() -> None:
    async with serving() as (uri, opened), asyncio.timeout(60):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            FEEDER,
            uri,
            str(STREAMS),
            str(FEED),
            str(CHUNK),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert process.stdin is not None and process.stdout is not None
        stdin, stdout = process.stdin, process.stdout

        async def ask(command: bytes) -> dict[str, Any]:
            stdin.write(command + b"\n")
            await stdin.drain()
            answer: dict[str, Any] = json.loads(await stdout.readline())
            return answer

        try:
            hello = json.loads(await stdout.readline())
            assert hello["opened"] == STREAMS
            session = await opened
            streams: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
            for _ in range(STREAMS):
                reader, writer = await session.accept()
                streams[int(await reader.readexactly(3))] = (reader, writer)
            assert sorted(streams) == list(range(STREAMS))

            gc.collect()
            baseline = rss()

            def check_rss() -> None:
                growth = rss() - baseline
                assert growth <= RSS_BOUND, f"RSS grew by {growth / MiB:.0f} MiB"

            stdin.write(b"go\n")
            await stdin.drain()
            await settle(lambda: sum(held(*pair) for pair in streams.values()), check_rss)
            status = await ask(b"status")
            assert status["errors"] == []
            assert status["done"] == 0
            assert status["in_drain"] == STREAMS, "feeders that are not blocked in drain()"
            assert max(status["written"]) <= 2 * MiB, f"written: {status['written']}"
            for i, pair in streams.items():
                assert held(*pair) <= HELD_BOUND, f"stream {i} holds {held(*pair)} bytes"
            check_rss()

            # what waited is intact: one stream read to its end
            reader, _ = streams[17]
            hasher = hashlib.sha256()
            count = 0
            while chunk := await reader.read(256 * KiB):
                hasher.update(chunk)
                count += len(chunk)
            assert (count, hasher.hexdigest()) == (FEED, hello["sha256"])
            status = await ask(b"status")
            assert (status["done"], status["in_drain"], status["errors"]) == (1, STREAMS - 1, [])
            check_rss()

            stdin.write(b"quit\n")
            await stdin.drain()
            assert await process.wait() == 0
            await session.wait_closed()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_unread_streams_fed_in_this_process_block_their_feeders() -> None:
    data = memoryview(os.urandom(FEED))
    in_drain = [False] * STREAMS
    written = [0] * STREAMS

    async def feed(i: int, writer: asyncio.StreamWriter) -> None:
        for offset in range(0, FEED, CHUNK):
            writer.write(data[offset : offset + CHUNK])
            written[i] = offset + CHUNK
            in_drain[i] = True
            await writer.drain()
            in_drain[i] = False
        writer.write_eof()

    async with serving() as (uri, opened), asyncio.timeout(60):
        stream = await ws_stream.connect_stream(uri, ping_interval=None)
        client = await mux.open_session(stream.reader, stream.writer, client=True)
        async with client:
            feeders = [await client.open_stream() for _ in range(STREAMS)]
            session = await opened
            readers = [await session.accept() for _ in range(STREAMS)]
            gc.collect()
            baseline = rss()
            # both sides are in this process: the feeders' buffers count too
            bound = RSS_BOUND + STREAMS * (256 * KiB + CHUNK) * 3

            def check_rss() -> None:
                growth = rss() - baseline
                assert growth <= bound, f"RSS grew by {growth / MiB:.0f} MiB"

            tasks = [asyncio.create_task(feed(i, w)) for i, (_, w) in enumerate(feeders)]
            await settle(lambda: sum(held(*pair) for pair in readers), check_rss)
            assert not any(task.done() for task in tasks)
            assert all(in_drain), f"{in_drain.count(False)} feeders not blocked in drain()"
            assert max(written) <= 2 * MiB
            for (_, writer), (reader, peer_writer) in zip(feeders, readers, strict=True):
                sid = writer.get_extra_info("mux_stream")
                assert peer_writer.get_extra_info("mux_stream") == sid
                assert held(reader, peer_writer) <= HELD_BOUND, f"stream {sid}"
                low, high = writer.transport.get_write_buffer_limits()
                assert 0 < writer.transport.get_write_buffer_size() <= high + CHUNK, sid
            check_rss()

            # reading resumes the feeder, and every byte is there
            reader, _ = readers[42]
            hasher = hashlib.sha256()
            while chunk := await reader.read(256 * KiB):
                hasher.update(chunk)
            assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
            await tasks[42]
            assert sum(task.done() for task in tasks) == 1
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            check_rss()


@pytest.mark.parametrize("under", ["tcp", "websocket"])
async def test_a_peer_that_pings_without_reading_ends_the_session(under: str) -> None:
    """A peer that floods pings and never reads the pongs: once the byte stream under
    the session is backed up, at most MAX_BLOCKED_ANSWERS pongs more are queued,
    then the session fails (it buffered the pongs without bound before)."""
    opened: asyncio.Future[Session] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = await mux.open_session(reader, writer, client=False)
        opened.set_result(session)
        await session.wait_closed()

    if under == "tcp":
        server: Any = await asyncio.start_server(serve, "127.0.0.1", 0)
    else:
        server = await ws_stream.start_server(serve, "127.0.0.1", 0, ping_interval=None)
    port = server.sockets[0].getsockname()[1]
    pings = b"".join(struct.pack(">BBHII", 0, 2, 1, 0, i) for i in range(1000))
    try:
        async with asyncio.timeout(60):
            if under == "tcp":
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            else:  # its reader is never read: the pongs stop at its limit
                stream = await ws_stream.connect_stream(
                    f"ws://127.0.0.1:{port}/", ping_interval=None, close_timeout=1
                )
                writer = stream.writer
            session = await opened
            sent = 0
            while session.error is None:
                assert sent < 2_000_000, "the session never failed"
                writer.write(pings)
                sent += 1000
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                await asyncio.sleep(0)
            assert "without reading the answers" in session.error.reason
            await session.wait_closed()
            writer.transport.abort()
    finally:
        server.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float) -> None:
    """Copy to EOF, at most ``rate`` bytes per second (0: as fast as it goes)."""
    try:
        while data := await reader.read(32 * 2**10):
            writer.write(data)
            await writer.drain()
            if rate:
                await asyncio.sleep(len(data) / rate)
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def test_a_peer_on_a_slow_link_may_ping_while_the_output_is_backed_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The answer limit counts answers since the output last drained: a peer that
    downloads in bulk through a slow link (the sender's output backed up at nearly
    every ping), reading every byte and every pong, is never failed. The limit is
    lowered to 4 here; 30 pings would cross it many times if it counted them all."""
    monkeypatch.setattr(mux_machine, "MAX_BLOCKED_ANSWERS", 4)
    block = b"x" * (256 * 2**10)

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                writer.write(block)
                await writer.drain()

    sessions: list[Session] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2**15)
        session = await mux.open_session(reader, writer, client=False, on_stream=flood)
        sessions.append(session)
        await session.wait_closed()

    server = await ws_stream.start_server(serve, "127.0.0.1", 0, ping_interval=None)
    server_port = server.sockets[0].getsockname()[1]

    async def slow_link(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", server_port)
        up_writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2**15)
        await asyncio.gather(_pipe(reader, up_writer, 0), _pipe(up_reader, writer, 40e6))

    link = await asyncio.start_server(slow_link, "127.0.0.1", 0)
    port = link.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(60):
            stream = await ws_stream.connect_stream(
                f"ws://127.0.0.1:{port}/", ping_interval=None, close_timeout=1
            )
            session = await mux.open_session(
                stream.reader, stream.writer, client=True, window=16 * 2**20
            )
            reader, writer = await session.open_stream()
            writer.write(b"go")

            async def download() -> None:
                with contextlib.suppress(ConnectionError):
                    while await reader.read(2**20):
                        pass

            downloading = asyncio.create_task(download())
            for _ in range(30):
                await session.ping(timeout=10)
            assert sessions[0].error is None
            downloading.cancel()
            await session.close(timeout=2)
            await stream.close()
    finally:
        link.close()
        server.close()
