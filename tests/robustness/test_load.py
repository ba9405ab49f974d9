"""Load: 1 000 concurrent connections each echo 1 MiB of random data, every byte checked.

``WS_STREAM_LONG_RUNS=1`` adds a 1 GiB run in both directions at once over one
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import resource
from collections.abc import Iterator

import pytest

import ws_stream

from ..asyncio.helpers import echo, stream_of, stream_server

CONNECTIONS = 1000
PER_CONNECTION = 2**20
CHUNK = 2**16
CONNECTING_AT_ONCE = 100  # the listen backlog; all of them stay open together anyway
LONG_RUNS = os.environ.get("WS_STREAM_LONG_RUNS", "") not in ("", "0")


@contextlib.contextmanager
def open_files_limit(needed: int) -> Iterator[None]:
    """Raise the soft open-files limit to ``needed`` (up to the hard limit) for a while."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(
                f"this test needs {needed} open files; the hard limit is {hard} (ulimit -Hn)"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def random_chunks(seed: int, total: int) -> Iterator[bytes]:
    """``total`` reproducible random bytes, in CHUNK pieces (never all in memory)."""
    rng = random.Random(seed)
    for start in range(0, total, CHUNK):
        yield rng.randbytes(min(CHUNK, total - start))


async def send_and_hash(writer: asyncio.StreamWriter, seed: int, total: int) -> bytes:
    digest = hashlib.sha256()
    for chunk in random_chunks(seed, total):
        digest.update(chunk)
        writer.write(chunk)
        await writer.drain()
    return digest.digest()


async def receive_and_hash(reader: asyncio.StreamReader, total: int) -> bytes:
    digest = hashlib.sha256()
    received = 0
    while received < total:
        chunk = await reader.read(4 * CHUNK)
        assert chunk, f"EOF after {received} of {total} bytes"
        digest.update(chunk)
        received += len(chunk)
    assert received == total
    return digest.digest()


@pytest.mark.timeout(300)
async def test_1000_concurrent_connections_echo_1_mib_each() -> None:
    # Two sockets per connection in this process (client and server), and spare.
    with open_files_limit(2 * CONNECTIONS + 256):
        async with stream_server(echo, backlog=CONNECTING_AT_ONCE) as uri:
            connecting = asyncio.Semaphore(CONNECTING_AT_ONCE)

            async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
                async with connecting:
                    return await ws_stream.open_connection(uri, ping_interval=None)

            async def transfer(
                seed: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
            ) -> tuple[bytes, bytes]:
                sent, echoed = await asyncio.gather(
                    send_and_hash(writer, seed, PER_CONNECTION),
                    receive_and_hash(reader, PER_CONNECTION),
                )
                await stream_of(writer).close()
                assert await reader.read() == b""  # the echo server's close: EOF
                return sent, echoed

            async with asyncio.timeout(240):
                opened = await asyncio.gather(
                    *(connect() for _ in range(CONNECTIONS)), return_exceptions=True
                )
                pairs = [p for p in opened if not isinstance(p, BaseException)]
                try:
                    assert len(pairs) == CONNECTIONS, [p for p in opened if p not in pairs][:3]
                    # All 1 000 are open together; now every one of them transfers at once.
                    results = await asyncio.gather(
                        *(transfer(seed, *pair) for seed, pair in enumerate(pairs)),
                        return_exceptions=True,
                    )
                finally:
                    await asyncio.gather(*(stream_of(w).close() for _, w in pairs))
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} connections failed, the first: {errors[0]!r}"
    mismatched = [i for i, (sent, echoed) in enumerate(results) if sent != echoed]  # type: ignore[misc]
    assert not mismatched, f"{len(mismatched)} echoes differ, e.g. connection {mismatched[0]}"
    assert len(results) == CONNECTIONS


SERVER_SEED, CLIENT_SEED = 1, 2


@pytest.mark.skipif(not LONG_RUNS, reason="1 GiB each way: set WS_STREAM_LONG_RUNS=1")
@pytest.mark.timeout(1800)
async def test_1_gib_both_ways_at_once() -> None:
    total = 2**30
    server_side: asyncio.Future[tuple[bytes, bytes]] = asyncio.get_running_loop().create_future()

    async def talk_back(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The server sends its own gigabyte while it receives the client's.
        try:
            result = await asyncio.gather(
                send_and_hash(writer, SERVER_SEED, total), receive_and_hash(reader, total)
            )
            server_side.set_result((result[0], result[1]))
        except Exception as exc:
            server_side.set_exception(exc)
        finally:
            await stream_of(writer).close()

    async with stream_server(talk_back) as uri:
        reader, writer = await ws_stream.open_connection(uri, ping_interval=None)
        async with asyncio.timeout(1500):
            client_sent, client_received = await asyncio.gather(
                send_and_hash(writer, CLIENT_SEED, total), receive_and_hash(reader, total)
            )
            server_sent, server_received = await server_side
        assert await reader.read() == b""  # then the server's close: EOF
        await stream_of(writer).close()
    assert client_received == server_sent
    assert server_received == client_sent
    assert client_sent != server_sent  # two distinct streams, not an echo
