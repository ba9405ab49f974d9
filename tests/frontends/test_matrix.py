"""The same stream over every front end: bytes, TLS inside, text, close codes, pings, sizes.

Each test runs over every front end of :data:`helpers.FRONT_ENDS`, on real
servers in this event loop (see ``helpers.py``). Where a front end cannot do
what ws_stream does over its own connections, the expectation names the
front end and says what its peer sees instead (README: front ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import ssl
import struct

import pytest
import trustme

import ws_stream
from ws_stream.events import CloseReceived, PingReceived

from ..rawpeer import BINARY, CLOSE, PING, PONG, TEXT, RawPeer, build_frame
from .helpers import FRONT_END_NAME, FRONT_ENDS, MESSAGE_FRONT_ENDS, STEP, open_pair

MiB = 2**20

#: What the stream reports when its peer closes with 4002 "later":
#: (close_code, close_reason, what the reader ends with).
PEER_CLOSE: dict[str, tuple[int, str, type[BaseException] | None]] = dict.fromkeys(
    FRONT_ENDS, (4002, "later", None)
)
# hypercorn tells the application "websocket.disconnect" with 1006 after any
# close from the peer (ASGIWebsocketState is still CONNECTED): the code and the
# reason are lost, so the stream cannot tell a clean end from a lost connection.
PEER_CLOSE["hypercorn"] = (1006, "", ws_stream.AbnormalClosureError)

# 1. Bytes both ways, several MiB, through reader codecs; TLS inside the stream


@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_bytes_both_ways_with_codecs(front_end: str) -> None:
    lines = [os.urandom(n % 200 + 1).hex().encode() + b"\n" for n in range(500)]
    up = os.urandom(6 * MiB)
    down = os.urandom(6 * MiB)
    async with asyncio.timeout(60), open_pair(front_end) as pair:
        stream, reader, writer = pair.stream, pair.reader, pair.writer
        assert reader is not None and writer is not None

        # Lines one way, answers (a length-prefixed record each) the other way.
        async def lines_server() -> None:
            for _ in lines:
                line = await stream.reader.readline()
                answer = hashlib.sha256(line).digest()
                stream.writer.write(struct.pack("!I", len(answer)) + answer)
            await stream.writer.drain()

        async def lines_client() -> None:
            for line in lines:
                writer.write(line)
            await writer.drain()
            for line in lines:
                (n,) = struct.unpack("!I", await reader.readexactly(4))
                assert await reader.readexactly(n) == hashlib.sha256(line).digest()

        await asyncio.gather(lines_server(), lines_client())

        # Then several MiB each way at once, read in odd-sized readexactly() calls.
        async def send(w: asyncio.StreamWriter, data: bytes) -> None:
            view = memoryview(data)
            for start in range(0, len(data), 100_000):
                w.write(view[start : start + 100_000])
                await w.drain()

        async def receive(r: asyncio.StreamReader, n: int) -> str:
            digest = hashlib.sha256()
            got = 0
            while got < n:
                chunk = await r.readexactly(min(77_777, n - got))
                digest.update(chunk)
                got += len(chunk)
            return digest.hexdigest()

        _, _, up_sha, down_sha = await asyncio.gather(
            send(writer, up),
            send(stream.writer, down),
            receive(stream.reader, len(up)),
            receive(reader, len(down)),
        )
        assert up_sha == hashlib.sha256(up).hexdigest()
        assert down_sha == hashlib.sha256(down).hexdigest()
        assert stream.bytes_received == sum(map(len, lines)) + len(up)

        # The peer's close is EOF, after every byte (hypercorn: see PEER_CLOSE).
        writer.write(b"last")
        writer.close()
        assert await stream.reader.readexactly(4) == b"last"
        code, _, ending = PEER_CLOSE[front_end]
        if ending is None:
            assert await stream.reader.read() == b""
        else:
            with pytest.raises(ending):
                await stream.reader.read()
        await asyncio.wait_for(stream.wait_closed(), STEP)
        assert stream.close_code == (1000 if ending is None else code)


def _tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("inner.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


@pytest.mark.both_loops
@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_start_tls_inside_the_stream(front_end: str, loop_kind: str) -> None:
    """``writer.start_tls()`` on the stream over the front end: the TLS side is the
    WebSocket's (a server's stream is the TLS server, a client's the TLS client)."""
    server_ctx, client_ctx = _tls_contexts()
    blob = os.urandom(2 * MiB)
    async with asyncio.timeout(30), open_pair(front_end) as pair:
        assert pair.reader is not None and pair.writer is not None
        ours = (pair.stream.reader, pair.stream.writer)
        theirs = (pair.reader, pair.writer)
        tls_server, tls_client = (ours, theirs) if pair.stream_is_server else (theirs, ours)

        async def server_side() -> None:
            reader, writer = tls_server
            assert await reader.readexactly(8) == b"STARTTLS"
            writer.write(b"GO\n")
            await writer.drain()
            await writer.start_tls(server_ctx)
            line = await reader.readline()
            writer.write(b"over TLS: " + line)
            (n,) = struct.unpack("!I", await reader.readexactly(4))
            writer.write(hashlib.sha256(await reader.readexactly(n)).digest())
            await writer.drain()

        async def client_side() -> None:
            reader, writer = tls_client
            writer.write(b"STARTTLS")
            assert await reader.readline() == b"GO\n"
            await writer.start_tls(client_ctx, server_hostname="inner.test")
            assert writer.get_extra_info("ssl_object").version().startswith("TLS")
            writer.write(b"a line\n")
            assert await reader.readline() == b"over TLS: a line\n"
            writer.write(struct.pack("!I", len(blob)) + blob)
            assert await reader.readexactly(32) == hashlib.sha256(blob).digest()

        await asyncio.gather(server_side(), client_side())


# 2. A text message from the peer


async def _answer_close_then_drop(raw: RawPeer, linger: float = 3.0) -> tuple[int, str] | None:
    """A peer's side of a close: read until the close frame, answer it, wait at most
    ``linger`` for the end of TCP, then drop the connection (as ws_stream's client
    does after ``close_timeout``). Returns the close's (code, reason); None when TCP
    ended without one."""
    try:
        while (frame := await raw.recv_frame(STEP)).opcode != CLOSE:
            pass
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    payload = frame.payload
    close = (struct.unpack("!H", payload[:2])[0], payload[2:].decode()) if payload else (1005, "")
    with contextlib.suppress(ConnectionError):
        raw.send(CLOSE, payload[:2])
        await raw.writer.drain()
    with contextlib.suppress(TimeoutError, ConnectionError):
        await raw.wait_eof(linger)
    raw.close_tcp()
    return close


#: The close code the peer sees when the stream refuses a text message.
TEXT_CLOSE = dict.fromkeys(FRONT_ENDS, 1003)


@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_text_message_from_the_peer(front_end: str) -> None:
    before = os.urandom(300_000)
    async with asyncio.timeout(30), open_pair(front_end, "raw") as pair:
        raw, stream = pair.raw, pair.stream
        assert raw is not None
        events = asyncio.ensure_future(_events(stream))
        peer = asyncio.ensure_future(_answer_close_then_drop(raw, 1.0))
        raw.send(BINARY, before)
        raw.send(TEXT, b"hello")
        await raw.writer.drain()
        assert await stream.reader.readexactly(len(before)) == before
        with pytest.raises(ws_stream.TextFrameError) as caught:
            await stream.reader.read()
        assert caught.value.code == 1003
        assert await peer == (TEXT_CLOSE[front_end], "text frames are not supported")
        await asyncio.wait_for(stream.wait_closed(), STEP)
        assert stream.close_code_sent == 1003
        assert isinstance(stream.error, ws_stream.TextFrameError)
        assert any(getattr(e, "error", None) is stream.error for e in await events)


async def _events(stream: ws_stream.WsStream) -> list[object]:
    out = []
    async for event in stream.events():
        out.append(event)
    return out


# 3. Close codes and reasons, both ways


@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_our_close_code_and_reason_reach_the_peer(front_end: str) -> None:
    async with asyncio.timeout(30), open_pair(front_end) as pair:
        assert pair.reader is not None
        pair.stream.writer.write(b"before the close")
        await asyncio.wait_for(pair.stream.close(4001, "bye"), STEP)
        assert await pair.reader.read() == b"before the close"
        assert (pair.peer.close_code, pair.peer.close_reason) == (4001, "bye")
        assert pair.stream.close_code_sent == 4001
        await asyncio.wait_for(pair.peer.wait_closed(), STEP)


@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_a_peer_that_does_not_read_holds_the_writer_then_gets_it_all_in_order(
    front_end: str,
) -> None:
    """Messages are sent eagerly until the front end's send has to wait; what is
    written meanwhile waits its turn (drain() blocks), and the close comes last."""
    data = os.urandom(32 * MiB)
    async with asyncio.timeout(60), open_pair(front_end) as pair:
        assert pair.reader is not None
        writer = pair.stream.writer

        async def write_all() -> None:
            view = memoryview(data)
            for start in range(0, len(data), 65536):
                writer.write(view[start : start + 65536])
                await writer.drain()

        writing = asyncio.create_task(write_all())
        await asyncio.sleep(1)
        assert not writing.done(), "32 MiB went out to a peer that does not read"
        got = hashlib.sha256()
        received = 0
        while received < len(data):
            chunk = await pair.reader.read(1 << 20)
            assert chunk, f"EOF after {received} bytes"
            got.update(chunk)
            received += len(chunk)
        await asyncio.wait_for(writing, STEP)
        assert got.digest() == hashlib.sha256(data).digest()
        await asyncio.wait_for(pair.stream.close(4001, "all sent"), STEP)
        assert await pair.reader.read() == b""
        assert (pair.peer.close_code, pair.peer.close_reason) == (4001, "all sent")


@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_the_peers_close_code_and_reason(front_end: str) -> None:
    code, reason, ending = PEER_CLOSE[front_end]
    async with asyncio.timeout(30), open_pair(front_end) as pair:
        assert pair.writer is not None
        pair.writer.write(b"last bytes")
        await asyncio.wait_for(pair.peer.close(4002, "later"), STEP)
        assert await pair.stream.reader.readexactly(10) == b"last bytes"
        if ending is None:
            assert await pair.stream.reader.read() == b""
        else:
            with pytest.raises(ending):
                await pair.stream.reader.read()
        await asyncio.wait_for(pair.stream.wait_closed(), STEP)
        assert (pair.stream.close_code, pair.stream.close_reason) == (code, reason)


@pytest.mark.parametrize("how", ["reset", "fin"])
@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_the_peer_vanishes_without_a_close_frame(front_end: str, how: str) -> None:
    """The peer's TCP ends in the middle of a frame, without a close frame: the
    reader gets every byte before, then AbnormalClosureError - never a clean EOF
    (README: "a truncated stream never looks complete")."""
    async with asyncio.timeout(30), open_pair(front_end, "raw") as pair:
        raw, stream = pair.raw, pair.stream
        assert raw is not None
        raw.send(BINARY, b"x" * 1000)
        await raw.writer.drain()
        assert await stream.reader.readexactly(1000) == b"x" * 1000
        raw.send_raw(build_frame(BINARY, b"y" * 5000, mask=True)[:3000])  # half a frame
        await raw.writer.drain()
        await asyncio.sleep(0.1)
        if how == "reset":
            raw.reset_tcp()
        else:
            raw.close_tcp()
        try:
            data = await asyncio.wait_for(stream.reader.read(), STEP)
        except ConnectionError as exc:
            outcome: object = exc
        else:
            outcome = (
                f"read() returned {data!r}: a clean EOF (close code {stream.close_code}, "
                f"reason {stream.close_reason!r})"
            )
        assert isinstance(outcome, ws_stream.AbnormalClosureError), (
            f"{front_end}: after a TCP {how} without a close frame the reader got {outcome!r}"
        )
        assert stream.close_code == 1006


@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_the_peer_vanishes_while_the_stream_writes(front_end: str) -> None:
    """A writer that never stops (small writes, no wait) when the peer's TCP is reset:
    the front end's send fails (at once, or in the sender task) and the writer's
    drain() raises within seconds; the reader says the connection was lost."""
    async with asyncio.timeout(30), open_pair(front_end, "raw") as pair:
        raw, stream = pair.raw, pair.stream
        assert raw is not None
        writes = 0

        async def write_forever() -> None:
            nonlocal writes
            while True:
                stream.writer.write(b"w" * 1024)
                writes += 1
                await stream.writer.drain()
                await asyncio.sleep(0)

        writing = asyncio.create_task(write_forever())
        while writes < 100:
            await asyncio.sleep(0.01)
        raw.reset_tcp()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(writing, STEP)
        with pytest.raises(ws_stream.AbnormalClosureError):
            await asyncio.wait_for(stream.reader.read(), STEP)
        assert stream.close_code == 1006


@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_the_peers_close_without_a_code(front_end: str) -> None:
    """An empty close frame: EOF, and close code 1005 (hypercorn: see PEER_CLOSE).

    uvicorn reports a lost connection and a close frame without a code both as
    ``websocket.disconnect`` 1005: ws_stream reads ASGI's 1005 as a lost
    connection, never as a clean end (README, front ends).
    """
    code, _, ending = PEER_CLOSE[front_end]
    if front_end.startswith("uvicorn"):
        code, ending = 1006, ws_stream.AbnormalClosureError
    async with asyncio.timeout(30), open_pair(front_end, "raw") as pair:
        raw, stream = pair.raw, pair.stream
        assert raw is not None
        raw.send(BINARY, b"the end")
        raw.send(CLOSE)
        await raw.writer.drain()
        assert await stream.reader.readexactly(7) == b"the end"
        if ending is None:
            assert await stream.reader.read() == b""
        else:
            with pytest.raises(ending):
                await stream.reader.read()
        with contextlib.suppress(TimeoutError, ConnectionError):
            await raw.wait_eof(1.0)
        raw.close_tcp()
        await asyncio.wait_for(stream.wait_closed(), STEP)
        assert stream.close_code == (1005 if ending is None else code)


# 4. Pings


@pytest.mark.parametrize("front_end", MESSAGE_FRONT_ENDS)
async def test_ping_raises_not_implemented_naming_the_front_end(front_end: str) -> None:
    async with asyncio.timeout(30), open_pair(front_end) as pair:
        with pytest.raises(NotImplementedError, match=FRONT_END_NAME[front_end]):
            await pair.stream.ping()
        # The stream is unharmed.
        pair.stream.writer.write(b"still open")
        assert pair.reader is not None
        assert await pair.reader.readexactly(10) == b"still open"


async def test_ping_works_over_websockets() -> None:
    async with asyncio.timeout(30), open_pair("websockets") as pair:
        latency = await pair.stream.ping(timeout=STEP)
        assert 0 < latency < STEP


@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_the_peers_pings_are_answered(front_end: str) -> None:
    """The front end answers the peer's pings itself: the stream sees no
    ``PingReceived`` (the reference does)."""
    async with asyncio.timeout(30), open_pair(front_end) as pair:
        events = asyncio.ensure_future(_events(pair.stream))
        await asyncio.sleep(0)
        latency = await pair.peer.ping(b"are you there", timeout=STEP)
        assert 0 < latency < STEP
        await asyncio.wait_for(pair.peer.close(), STEP)
        await asyncio.wait_for(pair.stream.wait_closed(), STEP)
        seen = await asyncio.wait_for(events, STEP)
        pings = [e for e in seen if isinstance(e, PingReceived)]
        if front_end == "websockets":
            assert pings == [PingReceived(b"are you there")]
        else:
            assert pings == []
        if PEER_CLOSE[front_end][2] is None:
            assert CloseReceived(1000, "") in seen


@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_a_raw_peers_ping_is_answered_in_order(front_end: str) -> None:
    """A raw peer's ping gets its pong (from the front end), and data flows on."""
    async with asyncio.timeout(30), open_pair(front_end, "raw") as pair:
        raw = pair.raw
        assert raw is not None
        raw.send(PING, b"raw ping")
        raw.send(BINARY, b"data after the ping")
        await raw.writer.drain()
        assert await pair.stream.reader.readexactly(19) == b"data after the ping"
        async with asyncio.timeout(STEP):
            while (frame := await raw.recv_frame()).opcode != PONG:
                pass
        assert frame.payload == b"raw ping"


# 6. A message over the server's size limit


LIMIT = MiB
#: front end -> (what the reader raises, its ProtocolError code, the close code the peer sees).
#: Never a clean EOF: the peer's message was dropped, so the stream is truncated.
TOO_BIG: dict[str, tuple[type[BaseException], int | None, int]] = {
    "websockets": (ws_stream.ProtocolError, 1009, 1009),
    # uvicorn tells the application "websocket.disconnect" with 1009 (and its
    # reason): the stream should fail with ProtocolError(1009), as over TCP.
    "uvicorn-sansio": (ws_stream.ProtocolError, 1009, 1009),
    "uvicorn-wsproto": (ws_stream.ProtocolError, 1009, 1009),
    # The legacy implementation reports 1006 to the application.
    "uvicorn-websockets": (ws_stream.AbnormalClosureError, None, 1009),
    # hypercorn sends 1009 but tells the application nothing, and keeps TCP
    # open after the peer's answer: the reader waits until the peer drops TCP.
    "hypercorn": (ws_stream.AbnormalClosureError, None, 1009),
    # aiohttp fails the connection with 1009 and says why (its receive()'s ERROR
    # message): ProtocolError(1009), as over TCP.
    "aiohttp-server": (ws_stream.ProtocolError, 1009, 1009),
    "aiohttp-client": (ws_stream.ProtocolError, 1009, 1009),
}


@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_a_message_over_the_servers_limit(front_end: str) -> None:
    before = os.urandom(100_000)
    expected_error, expected_code, peer_sees = TOO_BIG[front_end]
    async with asyncio.timeout(60), open_pair(front_end, "raw", max_size=LIMIT) as pair:
        raw, stream = pair.raw, pair.stream
        assert raw is not None
        raw.send(BINARY, before)
        await raw.writer.drain()
        # Read first: the big message must not share a TCP read with these
        # bytes (uvicorn's websockets-sansio drops those with the big one).
        assert await stream.reader.readexactly(len(before)) == before
        peer = asyncio.ensure_future(_answer_close_then_drop(raw))
        raw.send(BINARY, os.urandom(2 * LIMIT))
        await raw.writer.drain()
        try:
            # Bounded generously: uvicorn's legacy implementation reports the end after
            # its own close_timeout (10 s).
            data = await asyncio.wait_for(stream.reader.read(), 2 * STEP)
        except ConnectionError as exc:
            outcome: object = exc
        else:
            outcome = (
                f"read() returned {data!r}: a clean EOF (close code {stream.close_code}, "
                f"reason {stream.close_reason!r})"
            )
        close = await peer
        code = None if close is None else close[0]
        assert isinstance(outcome, expected_error), (
            f"{front_end}: after a message over the limit the reader got {outcome!r}, "
            f"not {expected_error.__name__}; the peer saw close code {code}"
        )
        if expected_code is not None:
            assert isinstance(outcome, ws_stream.ProtocolError)
            assert outcome.code == expected_code
        assert code == peer_sees


# 9. A read that waits: it fetches the next message itself; cancelled, or ended by us


async def _ends(reading: asyncio.Task[bytes]) -> None:
    """The read ends within a step: EOF, or the connection's error."""
    try:
        data = await asyncio.wait_for(reading, STEP)
    except ConnectionError:
        return
    assert data == b""


@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_reads_cancelled_by_timeouts_lose_nothing(front_end: str) -> None:
    """A read waiting for the peer fetches the front end's next message in the
    reader's own task; cancelling it (a timeout) while the peer keeps sending
    loses no byte and repeats none."""
    count = 400
    expected = b"".join(struct.pack("!I", i) for i in range(count))
    async with asyncio.timeout(60), open_pair(front_end) as pair:
        assert pair.writer is not None
        peer = pair.writer

        async def send() -> None:
            for i in range(count):
                peer.write(struct.pack("!I", i))
                await peer.drain()
                await asyncio.sleep(0.0005 * (i % 4))

        sending = asyncio.create_task(send())
        got = bytearray()
        timeouts = 0
        while len(got) < len(expected):
            try:
                async with asyncio.timeout(0.0003 * (timeouts % 7)):
                    got += await pair.stream.reader.read(len(expected) - len(got))
            except TimeoutError:
                timeouts += 1
        await sending
        assert bytes(got) == expected
        assert timeouts > count // 4, f"only {timeouts} reads were cancelled"
        pair.stream.writer.write(b"still both ways")
        assert await pair.reader.readexactly(15) == b"still both ways"


@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_a_waiting_read_ends_when_the_stream_is_aborted(front_end: str) -> None:
    """``abort()`` while another task's read waits for the peer: that read ends
    (EOF or the error) within seconds, never left waiting on the front end."""
    async with asyncio.timeout(30), open_pair(front_end) as pair:
        reading = asyncio.create_task(pair.stream.reader.read(100))
        await asyncio.sleep(0.1)
        assert not reading.done()
        pair.stream.writer.transport.abort()
        await _ends(reading)


@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_a_waiting_read_ends_when_our_close_gets_no_answer(front_end: str) -> None:
    """Our close to a peer that never answers it, while a read waits: ``close()``
    returns (at once where the front end answers for the peer, else after
    ``close_timeout``, 3 s here) and the read ends too."""
    async with asyncio.timeout(30), open_pair(front_end, "raw") as pair:
        reading = asyncio.create_task(pair.stream.reader.read(100))
        await asyncio.sleep(0.1)
        assert not reading.done()
        await asyncio.wait_for(pair.stream.close(4001, "bye"), STEP)
        await _ends(reading)
