"""Codecs, backpressure and TLS inside the stream, over real loopback connections."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import ssl
import struct

import pytest
import trustme

import ws_stream

from ..rawpeer import RawServer
from .helpers import accepting_server, echo, stream_of, stream_server

SIZES = [0, 1, 2, 100, 4095, 65535, 65536, 65537, 300_000, 1_000_003, 4 * 2**20]


def _records(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    sizes = SIZES + [rng.randrange(0, 200_000) for _ in range(20)]
    rng.shuffle(sizes)
    return [rng.randbytes(n) for n in sizes]


async def test_length_prefixed_codec_both_ways_at_once() -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Echo each record back with its sha256, while the client is still sending.
        while True:
            try:
                (n,) = struct.unpack("!I", await reader.readexactly(4))
            except asyncio.IncompleteReadError:
                break
            record = await reader.readexactly(n)
            writer.write(struct.pack("!I", n) + record + hashlib.sha256(record).digest())
            await writer.drain()
        writer.close()

    records = _records(1)
    async with stream_server(server, max_size=2**21) as uri:
        reader, writer = await ws_stream.open_connection(uri, ping_interval=None)

        async def send() -> None:
            for record in records:
                writer.write(struct.pack("!I", len(record)))
                writer.write(record)
                await writer.drain()

        sender = asyncio.create_task(send())
        for record in records:
            (n,) = struct.unpack("!I", await reader.readexactly(4))
            echoed = await reader.readexactly(n)
            digest = await reader.readexactly(32)
            assert echoed == record
            assert digest == hashlib.sha256(record).digest()
        await sender
        await stream_of(writer).close()


async def test_line_codec_both_ways_at_once() -> None:
    rng = random.Random(2)
    lines = [rng.randbytes(n).replace(b"\n", b" ") + b"\n" for n in SIZES[:-1] + [500_000] * 8]

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for line in reader:  # StreamReader's own iteration: readline()
            writer.write(hashlib.sha256(line).hexdigest().encode() + b"\n" + line)
            await writer.drain()
        writer.close()

    async with stream_server(server, limit=2**20) as uri:
        reader, writer = await ws_stream.open_connection(uri, ping_interval=None, limit=2**20)

        async def send() -> None:
            for line in lines:
                writer.write(line)
                await writer.drain()

        sender = asyncio.create_task(send())
        for line in lines:
            digest = await reader.readline()
            echoed = await reader.readline()
            assert echoed == line
            assert digest == hashlib.sha256(line).hexdigest().encode() + b"\n"
        await sender
        await stream_of(writer).close()


async def test_many_random_chunks_arrive_in_order() -> None:
    data = os.urandom(8 * 2**20)
    rng = random.Random(3)
    async with stream_server(echo) as uri:
        reader, writer = await ws_stream.open_connection(uri, ping_interval=None)

        async def send() -> None:
            pos = 0
            while pos < len(data):
                n = rng.choice([1, 7, 256, 4096, 65536, 200_000])
                writer.write(data[pos : pos + n])
                pos += n
                if rng.random() < 0.3:
                    await writer.drain()
            await writer.drain()

        sender = asyncio.create_task(send())
        got = bytearray()
        while len(got) < len(data):
            got += await reader.read(rng.choice([1, 100, 65536, 2**20]))
        await sender
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        await stream_of(writer).close()


async def test_readline_limit_overrun_is_a_value_error() -> None:
    async with stream_server(echo) as uri:
        reader, writer = await ws_stream.open_connection(uri, ping_interval=None, limit=1000)
        writer.write(b"x" * 5000 + b"\nshort\n")
        with pytest.raises(ValueError):
            await asyncio.wait_for(reader.readline(), 5)
        assert await asyncio.wait_for(reader.readline(), 5) == b"short\n"
        await stream_of(writer).close()


async def test_push_into_a_reader_that_does_not_read_stays_bounded() -> None:
    """256 MiB pushed at a reader nobody reads: memory stays at limit + a bounded overshoot."""
    limit = 2**20
    total = 256 * 2**20
    async with accepting_server(limit=limit, max_size=2**20, close_timeout=1) as (
        port,
        accepted,
    ):
        reader, writer = await ws_stream.open_connection(
            f"ws://127.0.0.1:{port}/", ping_interval=None, close_timeout=1
        )
        server_reader, _ = await asyncio.wait_for(accepted.get(), 5)
        chunk = os.urandom(2**16)
        sent = 0
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3):
                while sent < total:
                    writer.write(chunk)
                    sent += len(chunk)
                    await writer.drain()  # blocks once every buffer on the way is full
        buffered = server_reader.buffered  # type: ignore[attr-defined]
        # Overshoot: frames parsed from the TCP read that crossed the mark, plus
        # one partial frame in websockets' parser; never the 256 MiB.
        assert limit < buffered <= limit + 2**20, buffered
        assert sent < 64 * 2**20, sent  # the writer was held back too
        # And nothing was lost: the reader gets every byte once it reads.
        got = 0
        while got < 4 * limit:
            got += len(await asyncio.wait_for(server_reader.read(2**20), 5))
        await stream_of(writer).close()


async def test_writer_backpressure_against_a_peer_that_does_not_read() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None)
        await raw.accept()  # reads nothing
        chunk = b"x" * 2**16
        written = 0
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2):
                while True:
                    writer.write(chunk)
                    written += len(chunk)
                    await writer.drain()
        assert written < 64 * 2**20  # the socket buffers, not our memory
        assert writer.transport.get_write_buffer_size() < 2**21
        writer.transport.abort()


async def test_start_tls_inside_the_websocket() -> None:
    """TLS end to end *inside* the WebSocket: a relay sees only ciphertext."""
    ca = trustme.CA()
    cert = ca.issue_cert("inner.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    seen_by_relay: list[bytes] = []

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen_by_relay.append(await reader.readexactly(8))  # plaintext preamble
        writer.write(b"GO\n")  # as in STARTTLS protocols: the client waits for this
        await writer.drain()
        await writer.start_tls(server_ctx)
        line = await reader.readline()
        writer.write(b"secret reply to " + line)
        await writer.drain()
        writer.close()

    async with stream_server(server) as uri:
        reader, writer = await ws_stream.open_connection(uri, ping_interval=None)
        writer.write(b"STARTTLS")
        assert await asyncio.wait_for(reader.readline(), 5) == b"GO\n"
        await writer.start_tls(client_ctx, server_hostname="inner.test")
        assert writer.get_extra_info("ssl_object").version().startswith("TLS")
        writer.write(b"the password\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"secret reply to the password\n"
        assert seen_by_relay == [b"STARTTLS"]
        writer.close()


async def test_start_tls_rejects_an_untrusted_certificate() -> None:
    cert = trustme.CA().issue_cert("inner.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()  # does not trust that CA

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)
        writer.write(b"GO\n")
        with contextlib.suppress(ssl.SSLError, ConnectionError):  # the client rejects us
            await writer.start_tls(server_ctx)
        writer.close()

    async with stream_server(server) as uri:
        reader, writer = await ws_stream.open_connection(uri, ping_interval=None)
        writer.write(b"STARTTLS")
        assert await asyncio.wait_for(reader.readline(), 5) == b"GO\n"
        with pytest.raises(ssl.SSLCertVerificationError):
            await writer.start_tls(client_ctx, server_hostname="inner.test")


async def test_wss_outer_tls_with_trustme() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with accepting_server(ssl=server_ctx) as (port, accepted):
        reader, writer = await ws_stream.open_connection(
            f"wss://127.0.0.1:{port}/", ssl=client_ctx, ping_interval=None
        )
        server_reader, server_writer = await asyncio.wait_for(accepted.get(), 5)
        assert writer.get_extra_info("ssl_object") is not None
        data = os.urandom(2**20)
        writer.write(data)
        assert await asyncio.wait_for(server_reader.readexactly(len(data)), 5) == data
        server_writer.write(b"back")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"back"
        await stream_of(writer).close()
