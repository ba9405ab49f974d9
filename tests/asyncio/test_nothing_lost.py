"""Nothing lost, nothing hanging (issue 12, items 3, 5 and 15), on asyncio and uvloop.

- A task blocked in ``reader.read()`` (to EOF) when the connection fails gets
  every byte that arrived before the failure; the *next* read raises.
  ``readexactly``/``readuntil``/``readline`` raise the error and leave the
  bytes buffered; a read cancelled half-way consumes nothing.
- ``close()`` with unread data (reading paused past ``limit``) discards what
  the application will never read, so the closing handshake completes at once
  with a clean 1000 instead of waiting ``close_timeout`` and ending as 1006;
  what was in flight still reaches a reader that has room.
- ``start_tls`` inside the stream works on every loop, uvloop included.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import struct
import time
from collections.abc import Callable

import pytest
import trustme

import ws_stream
from ws_stream.events import Closed

from ..rawpeer import BINARY, CLOSE, PING, TEXT, RawPeer, RawServer, close_payload, connect_raw
from .helpers import accepting_server, collect_events, stream_of, stream_server


# Random bytes with a known shape: no "\r", newlines only at three known places,
# and a last byte that is not a newline (so what follows the last line is known).
def _shaped_data() -> bytes:
    data = bytearray(os.urandom(1000).translate(bytes.maketrans(b"\n\r", b"ab")))
    for at in (99, 399, 749):
        data[at] = ord("\n")
    return bytes(data)


DATA = _shaped_data()


def _lost(peer: RawPeer) -> None:
    peer.reset_tcp()


def _text(peer: RawPeer) -> None:
    peer.send(TEXT, b"not bytes")


def _violation(peer: RawPeer) -> None:
    peer.send(0x3, b"")  # a reserved opcode


ENDINGS: dict[str, tuple[Callable[[RawPeer], None], type[Exception]]] = {
    "lost": (_lost, ws_stream.AbnormalClosureError),
    "text": (_text, ws_stream.TextFrameError),
    "violation": (_violation, ws_stream.ProtocolError),
}


async def _connect_to(
    raw: RawServer,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, RawPeer]:
    """A ws_stream client connected to a raw peer: (reader, writer, peer)."""
    reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None)
    peer = await raw.accept()
    return reader, writer, peer


async def _send_data(peer: RawPeer, writer: asyncio.StreamWriter, data: bytes = DATA) -> None:
    """``data`` in binary frames of 100 bytes; returns when our side has received it all."""
    for i in range(0, len(data), 100):
        peer.send(BINARY, data[i : i + 100])
    await peer.writer.drain()
    stream = stream_of(writer)
    async with asyncio.timeout(5):
        while stream.bytes_received < len(data):
            await asyncio.sleep(0.005)


# Item 3: read() to EOF


@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_read_to_eof_returns_the_bytes_then_the_next_read_raises(ending: str) -> None:
    end, error = ENDINGS[ending]
    async with RawServer() as raw:
        reader, writer, peer = await _connect_to(raw)
        blocked = asyncio.create_task(reader.read())
        await _send_data(peer, writer)
        assert not blocked.done()  # still waiting for EOF
        end(peer)
        got = await asyncio.wait_for(blocked, 5)
        assert len(got) == len(DATA) and got == DATA
        with pytest.raises(error):
            await asyncio.wait_for(reader.read(), 5)
        with pytest.raises(error):  # and it stays raised
            await asyncio.wait_for(reader.read(10), 5)
        peer.close_tcp()
        await asyncio.wait_for(stream_of(writer).wait_closed(), 5)


@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_readexactly_raises_the_error_and_keeps_the_bytes(ending: str) -> None:
    """As asyncio's own reader: the error itself (not IncompleteReadError); the bytes stay."""
    end, error = ENDINGS[ending]
    async with RawServer() as raw:
        reader, writer, peer = await _connect_to(raw)
        blocked = asyncio.create_task(reader.readexactly(2000))
        await _send_data(peer, writer)
        end(peer)
        with pytest.raises(error):
            await asyncio.wait_for(blocked, 5)
        assert await asyncio.wait_for(reader.read(), 5) == DATA
        with pytest.raises(error):
            await asyncio.wait_for(reader.read(), 5)
        peer.close_tcp()


@pytest.mark.parametrize("tail", ["a partial line", "no partial line"])
@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_readuntil_and_readline_raise_the_error_and_keep_the_bytes(
    ending: str, tail: str
) -> None:
    """readline() returns each whole line, then raises; read() returns the partial line.

    With no partial line left, that read() raises the error too: nothing is buffered.
    """
    end, error = ENDINGS[ending]
    data = DATA if tail == "a partial line" else DATA[: DATA.rfind(b"\n") + 1]
    lines = data.splitlines(keepends=True)
    whole = [line for line in lines if line.endswith(b"\n")]
    partial = b"".join(lines[len(whole) :])
    assert len(whole) == 3 and bool(partial) == (tail == "a partial line")
    async with RawServer() as raw:
        reader, writer, peer = await _connect_to(raw)
        blocked = asyncio.create_task(reader.readuntil(b"\r\n\r\n\r\n"))
        await _send_data(peer, writer, data)
        end(peer)
        with pytest.raises(error):
            await asyncio.wait_for(blocked, 5)
        for line in whole:
            assert await asyncio.wait_for(reader.readline(), 5) == line
        with pytest.raises(error):
            await asyncio.wait_for(reader.readline(), 5)
        if partial:
            assert await asyncio.wait_for(reader.read(), 5) == partial
        with pytest.raises(error):
            await asyncio.wait_for(reader.read(), 5)
        peer.close_tcp()


async def test_after_a_clean_close_readexactly_carries_the_partial_bytes() -> None:
    async with RawServer() as raw:
        reader, writer, peer = await _connect_to(raw)
        blocked = asyncio.create_task(reader.readexactly(2000))
        await _send_data(peer, writer)
        peer.send(CLOSE, close_payload(1000))
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await asyncio.wait_for(blocked, 5)
        assert info.value.partial == DATA and info.value.expected == 2000
        assert await reader.read() == b""
        peer.close_tcp()


async def test_a_read_to_eof_cancelled_by_a_timeout_consumes_nothing() -> None:
    async with RawServer() as raw:
        reader, writer, peer = await _connect_to(raw)
        blocked = asyncio.create_task(asyncio.wait_for(reader.read(), 5))
        await _send_data(peer, writer)
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        peer.send(BINARY, b"more")
        peer.send(CLOSE, close_payload(1000))
        assert await asyncio.wait_for(reader.read(), 5) == DATA + b"more"
        peer.close_tcp()


# Item 5: close() with unread data


async def _flood_until_paused(peer: RawPeer, writer: asyncio.StreamWriter) -> asyncio.Task[None]:
    """The peer sends until our reading is paused and its own send buffer backs up."""
    chunk = os.urandom(16384)

    async def flood() -> None:
        try:
            while True:
                peer.send(BINARY, chunk)
                await peer.writer.drain()
        except ConnectionError:
            pass

    task = asyncio.create_task(flood())
    async with asyncio.timeout(5):
        # Paused on our side, and the socket buffers in between are full.
        while writer.transport.is_reading() or not peer.writer.transport.get_write_buffer_size():
            await asyncio.sleep(0.01)
    return task


async def _answer_close(peer: RawPeer, flood: asyncio.Task[None]) -> int:
    """As any peer does: on our close frame, stop sending and answer it at once."""
    code, _ = await peer.recv_close(timeout=5)
    flood.cancel()
    peer.send(CLOSE, close_payload(code))
    with contextlib.suppress(ConnectionError):
        await peer.wait_eof(timeout=15)  # a server drops TCP first
    peer.close_tcp()
    return code


async def test_server_close_with_unread_data_is_clean_and_prompt() -> None:
    async with accepting_server(limit=4096, close_timeout=10) as (port, accepted):
        peer = await connect_raw(port)
        reader, writer = await asyncio.wait_for(accepted.get(), 5)
        flood = await _flood_until_paused(peer, writer)
        answer = asyncio.create_task(_answer_close(peer, flood))
        events = asyncio.create_task(collect_events(stream_of(writer), timeout=15))
        await asyncio.sleep(0)  # subscribed
        start = time.monotonic()
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 15)
        got = await events
        elapsed = time.monotonic() - start
        assert got[-1] == Closed(1000, "", clean=True), got
        assert elapsed < 5, f"close took {elapsed:.1f} s (close_timeout=10)"
        assert await asyncio.wait_for(answer, 20) == 1000


async def test_client_close_with_unread_data_is_clean_and_prompt() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(
            raw.uri, ping_interval=None, limit=4096, close_timeout=10
        )
        peer = await raw.accept()
        flood = await _flood_until_paused(peer, writer)

        async def answer() -> int:
            code, _ = await peer.recv_close(timeout=5)
            flood.cancel()
            peer.send(CLOSE, close_payload(code))
            with contextlib.suppress(ConnectionError):
                await peer.writer.drain()
            peer.close_tcp()  # the server side drops TCP after the handshake
            return code

        answered = asyncio.create_task(answer())
        stream = stream_of(writer)
        events = asyncio.create_task(collect_events(stream, timeout=15))
        await asyncio.sleep(0)
        start = time.monotonic()
        await stream.close(4000, "bye")
        got = await events
        elapsed = time.monotonic() - start
        assert got[-1] == Closed(4000, "", clean=True), got
        assert elapsed < 5, f"close took {elapsed:.1f} s (close_timeout=10)"
        assert await asyncio.wait_for(answered, 20) == 4000


async def test_close_keeps_what_was_buffered_and_then_ends() -> None:
    """Bytes already buffered stay readable; with the reader full, later frames are discarded."""
    async with accepting_server(limit=4096, close_timeout=10) as (port, accepted):
        peer = await connect_raw(port)
        reader, writer = await asyncio.wait_for(accepted.get(), 5)
        peer.send(BINARY, b"head")
        await peer.writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"head"
        flood = await _flood_until_paused(peer, writer)
        buffered = stream_of(writer).bytes_received - 4
        answer = asyncio.create_task(_answer_close(peer, flood))
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 5)
        await asyncio.wait_for(answer, 5)
        rest = await asyncio.wait_for(reader.read(), 5)
        assert len(rest) == buffered  # nothing of what arrived after close()
        assert stream_of(writer).bytes_received == buffered + 4


async def test_close_still_delivers_what_was_in_flight_while_the_reader_has_room() -> None:
    """Below ``limit`` nothing is discarded: the peer's last bytes, then EOF."""
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None)
        peer = await raw.accept()
        stream = stream_of(writer)
        events = asyncio.create_task(collect_events(stream))
        await asyncio.sleep(0)
        closing = asyncio.create_task(stream.close(4001, "done"))
        assert await peer.recv_close() == (4001, "done")
        peer.send(BINARY, DATA)  # sent before the peer answers our close
        peer.send(CLOSE, close_payload(4001))
        await peer.writer.drain()
        peer.close_tcp()
        await asyncio.wait_for(closing, 5)
        assert await asyncio.wait_for(reader.read(), 5) == DATA
        assert (await events)[-1] == Closed(4001, "", clean=True)


# Item 15: start_tls inside the stream, on every loop


async def test_start_tls_inside_the_stream_on_every_loop(loop_kind: str) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("inner.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(8) == b"STARTTLS"
        writer.write(b"GO\n")
        await writer.drain()
        await writer.start_tls(server_ctx)
        assert writer.get_extra_info("ssl_object") is not None
        line = await reader.readline()
        writer.write(b"over TLS: " + line)
        await writer.drain()
        (n,) = struct.unpack("!I", await reader.readexactly(4))
        writer.write(await reader.readexactly(n))
        await writer.drain()
        writer.close()

    async with stream_server(server) as uri:
        reader, writer = await ws_stream.open_connection(uri, ping_interval=None)
        writer.write(b"STARTTLS")
        assert await asyncio.wait_for(reader.readline(), 5) == b"GO\n"
        await asyncio.wait_for(writer.start_tls(client_ctx, server_hostname="inner.test"), 5)
        assert writer.get_extra_info("ssl_object").version().startswith("TLS")
        assert writer.get_extra_info("ws_stream") is not None  # still our stream below
        writer.write(b"a line\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"over TLS: a line\n"
        blob = os.urandom(300_000)
        writer.write(struct.pack("!I", len(blob)) + blob)
        assert await asyncio.wait_for(reader.readexactly(len(blob)), 5) == blob
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 5)


async def test_start_tls_rejects_an_untrusted_certificate_on_every_loop(loop_kind: str) -> None:
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
            await asyncio.wait_for(writer.start_tls(client_ctx, server_hostname="inner.test"), 5)
        await asyncio.wait_for(stream_of(writer).wait_closed(), 5)


# The decision, in the core


def test_policy_discards_data_once_the_reader_is_full_after_a_local_close() -> None:
    from websockets.frames import Close, Opcode

    from ws_stream._policy import State, Step, StreamPolicy

    policy = StreamPolicy()
    assert policy.may_pause()  # open: flow control
    assert policy.receive_frame(Opcode.BINARY, b"kept", True) == Step(b"kept")
    policy.local_close()
    assert policy.delivering  # in-flight data still joins while there is room
    assert policy.receive_frame(Opcode.BINARY, b"in flight", True) == Step(b"in flight")
    assert not policy.may_pause()  # the reader is full: never wait for it now
    assert not policy.delivering
    assert policy.receive_frame(Opcode.BINARY, b"dropped", True) == Step()
    assert policy.receive_frame(Opcode.TEXT, b"no 1003 now", True) == Step()
    assert policy.receive_frame(Opcode.CONT, b"dropped", True) == Step()
    step = policy.receive_frame(Opcode.CLOSE, Close(1000, "").serialize(), True)
    assert step.eof and policy.state is State.ENDED
    assert policy.error is None

    ended = StreamPolicy()
    ended.close_received(Close(1000, ""))
    assert not ended.may_pause()  # EOF: nothing more is buffered, read on


async def test_a_ping_never_overtakes_bytes_written_before_it() -> None:
    """Writes coalesced in one loop iteration go out before a ping sent after them.

    ws-stream's EOF marker is a ping: had it overtaken the last bytes, the
    server would half-close its target before writing them. A raw peer reads
    the frames in wire order.
    """
    async with RawServer() as raw:
        client = await ws_stream.connect_stream(raw.uri, ping_interval=None)
        peer = await raw.accept()
        chunks = [os.urandom(1000) for _ in range(5)]
        for chunk in chunks:  # one loop iteration: the 2nd to 5th are coalesced
            client.writer.write(chunk)

        async def frames_until_the_ping() -> tuple[bytes, bytes]:
            received = b""
            while True:
                frame = await peer.recv_frame()
                if frame.opcode == PING:
                    return received, frame.payload
                assert frame.opcode == BINARY
                received += frame.payload

        reading = asyncio.create_task(frames_until_the_ping())
        # Awaited at once, as the CLI does: the ping is sent in this iteration.
        # (The raw peer answers no ping: only its place on the wire matters.)
        with pytest.raises(TimeoutError):
            await client.ping(b"after the data", timeout=0.5)
        received, payload = await reading
        assert payload == b"after the data"
        assert received == b"".join(chunks)  # every byte before the ping
        client.transport.abort()


async def test_close_code_sent_is_the_code_of_our_close_frame() -> None:
    async with accepting_server() as (port, accepted):
        client = await ws_stream.connect_stream(f"ws://127.0.0.1:{port}/", ping_interval=None)
        await asyncio.wait_for(accepted.get(), 10)
        assert client.close_code_sent is None
        await client.close(4000, "bye")
        assert client.close_code_sent == 4000
