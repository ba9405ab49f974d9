"""Each semantic of the asyncio stream, against real peers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.asyncio.server import serve

import ws_stream
from ws_stream.events import Closed, CloseReceived, Error, PingReceived, PongReceived

from ..ports import refused_port
from ..rawpeer import BINARY, CLOSE, CONT, PING, PONG, TEXT, RawServer, close_payload
from .helpers import echo, stream_of, stream_server


async def drain_events(events: ws_stream.EventStream, timeout: float = 5.0) -> list[object]:
    out = []
    async with asyncio.timeout(timeout):
        async for event in events:
            out.append(event)
    return out


# Read side


async def test_readline_across_three_frames_and_large_frame_remainder() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None)
        peer = await raw.accept()
        peer.send(BINARY, b"hel")
        peer.send(BINARY, b"lo wo")
        peer.send(BINARY, b"rld\nnext")
        assert await reader.readline() == b"hello world\n"
        big = bytes(range(256)) * 1000
        peer.send(BINARY, big)
        assert await reader.readexactly(4) == b"next"
        assert await reader.read(100) == big[:100]
        assert await reader.readexactly(len(big) - 100) == big[100:]
        peer.send(CLOSE, close_payload(1000))
        assert await reader.read() == b""
        writer.close()


async def test_fragmented_message_and_empty_frames_are_one_byte_run() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None)
        peer = await raw.accept()
        peer.send(BINARY, b"ab", fin=False)
        peer.send(CONT, b"", fin=False)
        peer.send(CONT, b"cd", fin=True)
        peer.send(BINARY, b"")
        peer.send(BINARY, b"ef")
        peer.send(CLOSE, close_payload(1000))
        assert await reader.read() == b"abcdef"
        assert reader.at_eof()


# Write side


async def test_small_writes_coalesce_and_large_writes_split() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(
            raw.uri, ping_interval=None, max_frame_size=1000
        )
        peer = await raw.accept()
        for i in range(10):
            # In one loop iteration: the first write leaves at once, the
            # following ones are coalesced into one frame.
            writer.write(bytes([i]) * 10)
        await writer.drain()
        first = await peer.recv_frame()
        assert (first.opcode, first.fin, first.payload) == (BINARY, True, bytes(10))
        frame = await peer.recv_frame()
        assert frame.opcode == BINARY and frame.fin
        assert frame.payload == b"".join(bytes([i]) * 10 for i in range(1, 10))
        writer.write(b"x" * 2500)
        sizes = [len((await peer.recv_frame()).payload) for _ in range(3)]
        assert sizes == [1000, 1000, 500]
        writer.write(bytearray(b"reused"))  # a mutable buffer is copied at write()
        assert (await peer.recv_frame()).payload == b"reused"
        with pytest.raises(TypeError):
            writer.write("text")  # type: ignore[arg-type]
        writer.close()
        assert await peer.recv_close() == (1000, "")


async def test_write_is_never_held_past_the_loop_iteration() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None)
        peer = await raw.accept()
        writer.write(b"ping?")  # no drain(): the frame still leaves
        frame = await peer.recv_frame(timeout=2)
        assert frame.payload == b"ping?"
        writer.close()


# Text frames


async def test_text_frame_fails_with_1003_after_prior_bytes() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None)
        stream = stream_of(writer)
        events = stream.events()
        peer = await raw.accept()
        peer.send(BINARY, b"before")
        peer.send(TEXT, b"hello")
        peer.send(BINARY, b"after")  # discarded: the connection is failed
        assert await peer.recv_close() == (1003, "text frames are not supported")
        peer.send(CLOSE, close_payload(1003))
        assert await reader.read(100) == b"before"
        with pytest.raises(ws_stream.TextFrameError) as info:
            await reader.read(100)
        assert info.value.code == 1003
        peer.close_tcp()
        got = await drain_events(events)
        assert isinstance(got[0], Error) and isinstance(got[0].error, ws_stream.TextFrameError)
        assert isinstance(got[-1], Closed)
        with pytest.raises(ws_stream.TextFrameError):
            await writer.drain()


async def test_on_text_bytes_joins_utf8_payloads() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(
            raw.uri, ping_interval=None, on_text="bytes"
        )
        peer = await raw.accept()
        text = "héllo wörld €".encode()
        peer.send(TEXT, text[:2], fin=False)  # splits a multi-byte character
        peer.send(CONT, text[2:])
        peer.send(BINARY, b"|bin")
        peer.send(CLOSE, close_payload(1000))
        assert await reader.read() == text + b"|bin"


async def test_on_text_bytes_rejects_invalid_utf8_with_1007() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(
            raw.uri, ping_interval=None, on_text="bytes"
        )
        peer = await raw.accept()
        peer.send(BINARY, b"ok")
        peer.send(TEXT, b"\xff\xfe")
        code, _ = await peer.recv_close()
        assert code == 1007
        assert await reader.read(10) == b"ok"
        with pytest.raises(ws_stream.ProtocolError) as info:
            await reader.read(10)
        assert info.value.code == 1007


# Control frames and the closing handshake


async def test_ping_and_pong_are_events_never_data() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None)
        stream = stream_of(writer)
        events = stream.events()
        peer = await raw.accept()
        peer.send(BINARY, b"a")
        peer.send(PING, b"are you there")
        peer.send(PONG, b"unsolicited")
        peer.send(BINARY, b"b")
        pong = await peer.recv_frame()
        assert (pong.opcode, pong.payload) == (PONG, b"are you there")
        peer.send(CLOSE, close_payload(4001, "bye"))
        assert await reader.read() == b"ab"
        assert await peer.recv_close() == (4001, "bye")  # we answered by ourselves
        peer.close_tcp()
        got = await drain_events(events)
        assert got == [
            PingReceived(b"are you there"),
            PongReceived(b"unsolicited"),
            CloseReceived(4001, "bye"),
            Closed(4001, "bye", clean=True),
        ]
        assert (stream.close_code, stream.close_reason) == (4001, "bye")


async def test_ping_returns_round_trip_seconds() -> None:
    async with stream_server(echo) as uri:
        reader, writer = await ws_stream.open_connection(uri, ping_interval=None)
        stream = stream_of(writer)
        rtt = await stream.ping()
        assert 0 <= rtt < 5
        rtt = await stream.ping(b"payload")
        assert 0 <= rtt < 5
        await stream.close()
        with pytest.raises(ConnectionResetError):
            await stream.ping()


async def test_lost_connection_raises_connection_reset_after_data() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None)
        stream = stream_of(writer)
        events = stream.events()
        peer = await raw.accept()
        peer.send(BINARY, b"last words")
        await peer.writer.drain()
        peer.close_tcp()
        assert await reader.readexactly(10) == b"last words"
        with pytest.raises(ConnectionResetError):
            await reader.read(10)
        got = await drain_events(events)
        assert got[-1] == Closed(1006, "", clean=False)
        assert isinstance(got[0], Error)
        assert stream.close_code == 1006


async def test_frame_cut_by_tcp_close_is_connection_reset() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None)
        peer = await raw.accept()
        peer.send(BINARY, b"whole")
        peer.send_raw(bytes([0x82, 100]) + b"only part")
        await peer.writer.drain()
        peer.close_tcp()
        assert await reader.readexactly(5) == b"whole"
        with pytest.raises(ConnectionResetError):
            await reader.read()


async def test_write_eof_sends_close_and_keeps_reading() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None)
        peer = await raw.accept()
        assert writer.can_write_eof()
        writer.write(b"request")
        writer.write_eof()
        frames = await peer.recv_data()
        assert b"".join(f.payload for f in frames) == b"request"
        assert peer.last_close.payload[:2] == close_payload(1000)
        with pytest.raises(RuntimeError):
            writer.write(b"more")
        peer.send(BINARY, b"in-flight reply")
        peer.send(CLOSE, close_payload(1000))
        assert await reader.read() == b"in-flight reply"
        peer.close_tcp()
        await stream_of(writer).wait_closed()


async def test_close_with_code_reaches_the_peer() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None)
        peer = await raw.accept()
        stream = stream_of(writer)
        writer.write(b"flushed first")
        closing = asyncio.create_task(stream.close(4002, "bye"))
        frames = await peer.recv_data()
        assert b"".join(f.payload for f in frames) == b"flushed first"
        assert peer.last_close.payload == close_payload(4002, "bye")
        peer.send(CLOSE, close_payload(4002, "bye"))
        peer.close_tcp()
        await asyncio.wait_for(closing, 5)
        with pytest.raises(ConnectionResetError):
            await writer.drain()
        with pytest.raises(ValueError):
            await stream.close(1006)


async def test_close_against_a_silent_peer_is_bounded() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(
            raw.uri, ping_interval=None, close_timeout=0.5
        )
        stream = stream_of(writer)
        events = stream.events()
        await raw.accept()  # never answers anything
        t0 = time.monotonic()
        await stream.close()
        assert time.monotonic() - t0 < 0.5 + 1
        got = await drain_events(events)
        assert got[-1] == Closed(1006, "", clean=False)
        await stream.wait_closed()  # returns at once now


async def test_writer_close_against_a_silent_peer_is_bounded() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(
            raw.uri, ping_interval=None, close_timeout=0.5
        )
        await raw.accept()
        t0 = time.monotonic()
        writer.close()
        with pytest.raises(ConnectionResetError):
            await writer.wait_closed()  # asyncio re-raises the connection's error
        assert time.monotonic() - t0 < 0.5 + 1


async def test_peer_close_while_writing_makes_drain_raise() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None)
        peer = await raw.accept()
        peer.send(CLOSE, close_payload(1001, "going away"))
        peer_done = asyncio.create_task(peer.recv_close())
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(5):
                while True:
                    writer.write(b"x" * 1000)
                    await writer.drain()
        assert await peer_done == (1001, "going away")
        assert await reader.read() == b""


async def test_events_after_close_do_not_hang() -> None:
    async with stream_server(echo) as uri:
        reader, writer = await ws_stream.open_connection(uri, ping_interval=None)
        stream = stream_of(writer)
        await stream.close()
        got = await drain_events(stream.events(), timeout=2)
        assert got == [Closed(1000, "", clean=True)]


async def test_slow_subscriber_drops_oldest_and_never_blocks_data() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(raw.uri, ping_interval=None, max_events=3)
        stream = stream_of(writer)
        events = stream.events()
        peer = await raw.accept()
        for i in range(10):
            peer.send(PING, bytes([i]))
        peer.send(BINARY, b"data")
        assert await reader.readexactly(4) == b"data"
        peer.send(CLOSE, close_payload(1000))
        assert await reader.read() == b""
        peer.close_tcp()
        got = await drain_events(events)
        assert got[-1] == Closed(1000, "", clean=True)
        # 12 events in all (10 pings, CloseReceived, Closed): the oldest were dropped.
        assert len(got) + events.dropped == 12
        assert events.dropped >= 7
        assert got[-2:] == [CloseReceived(1000, ""), Closed(1000, "", clean=True)]


async def test_wait_closed_never_hangs_and_does_not_raise() -> None:
    async with RawServer() as raw:
        reader, writer = await ws_stream.open_connection(
            raw.uri, ping_interval=None, close_timeout=0.3
        )
        stream = stream_of(writer)
        peer = await raw.accept()
        peer.send(TEXT, b"boom")
        await peer.recv_close()  # we failed with 1003; the peer stays silent
        t0 = time.monotonic()
        await stream.wait_closed()
        assert time.monotonic() - t0 < 0.3 + 1
        with pytest.raises(ws_stream.TextFrameError):
            await writer.wait_closed()


# Wrapping an open connection


async def test_wrapping_keeps_frames_websockets_already_queued() -> None:
    done = asyncio.get_running_loop().create_future()

    async def handler(websocket: object) -> None:
        await asyncio.sleep(0.3)  # frames arrive and queue in websockets meanwhile
        stream = ws_stream.WsStream(websocket)  # type: ignore[arg-type]
        data = await stream.reader.read()
        done.set_result(data)

    async with serve(handler, "127.0.0.1", 0, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with RawServer():
            pass
        from websockets.asyncio.client import connect

        async with connect(f"ws://127.0.0.1:{port}", ping_interval=None) as ws:
            for part in (b"one ", b"two ", b"three"):
                await ws.send(part)
            await asyncio.sleep(0.1)
        assert await asyncio.wait_for(done, 5) == b"one two three"


async def test_wrap_rejects_what_it_cannot_wrap() -> None:
    with pytest.raises(TypeError):
        ws_stream.WsStream(object())  # type: ignore[arg-type]
    async with stream_server(echo) as uri:
        from websockets.asyncio.client import connect

        async with connect(uri, ping_interval=None) as ws:
            with pytest.raises(TypeError, match="max_size"):
                ws_stream.WsStream(ws, max_size=10)
            with pytest.raises(ValueError):
                ws_stream.WsStream(ws, on_text="latin-1")


# Opening


async def test_refused_handshake_has_the_http_status() -> None:
    async def reject(connection: object, request: object) -> object:
        return connection.respond(403, "no\n")  # type: ignore[attr-defined]

    async def never(websocket: object) -> None:
        raise AssertionError("the handler must not run")

    async with serve(never, "127.0.0.1", 0, process_request=reject) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ws_stream.HandshakeError) as info:
            await ws_stream.open_connection(f"ws://127.0.0.1:{port}/")
        assert info.value.status == 403
        assert isinstance(info.value, ConnectionError)


async def test_silent_server_times_out_after_open_timeout() -> None:
    async with RawServer() as raw:
        raw.respond = False
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await ws_stream.open_connection(raw.uri, open_timeout=0.5)
        assert time.monotonic() - t0 < 3


async def test_bad_uri_and_refused_port() -> None:
    with pytest.raises(ValueError):
        await ws_stream.open_connection("http://127.0.0.1:1/")
    port = refused_port()
    with pytest.raises(OSError):
        await ws_stream.open_connection(f"ws://127.0.0.1:{port}/", open_timeout=5)


async def test_extra_info() -> None:
    async with stream_server(echo, subprotocols=["binary"]) as uri:
        reader, writer = await ws_stream.open_connection(
            uri, ping_interval=None, subprotocols=["binary"]
        )
        stream = stream_of(writer)
        assert writer.get_extra_info("websocket") is stream.websocket
        assert writer.get_extra_info("peername")[0] == "127.0.0.1"
        assert writer.get_extra_info("sockname")[0] == "127.0.0.1"
        assert writer.get_extra_info("subprotocol") == "binary"
        assert writer.get_extra_info("request").path == "/"
        assert writer.get_extra_info("response").status_code == 101
        assert writer.get_extra_info("ssl_object") is None
        assert writer.get_extra_info("nonsense", 42) == 42
        assert isinstance(writer.transport, asyncio.Transport)
        await stream.close()


async def test_callback_error_closes_with_1011() -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise RuntimeError("bug in the application")

    async with stream_server(broken) as uri:
        reader, writer = await ws_stream.open_connection(uri, ping_interval=None)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert stream_of(writer).close_code == 1011


async def test_sync_callback_keeps_the_connection_open() -> None:
    started: list[asyncio.Task[None]] = []

    def cb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started.append(asyncio.create_task(echo(reader, writer)))

    async with stream_server(cb) as uri:
        reader, writer = await ws_stream.open_connection(uri, ping_interval=None)
        await asyncio.sleep(0.1)
        writer.write(b"still here\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"still here\n"
        await stream_of(writer).close()


async def test_errors_hide_credentials_and_bad_proxies_are_value_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(OSError) as refused:
        await ws_stream.open_connection("ws://user:s3cret@127.0.0.1:1/", open_timeout=5)
    assert "s3cret" not in str(refused.value)
    monkeypatch.setenv("ws_proxy", "ftp://proxy.invalid:21")
    monkeypatch.setenv("all_proxy", "ftp://proxy.invalid:21")
    with pytest.raises(ValueError) as info:
        await ws_stream.open_connection("ws://user:s3cret@127.0.0.1:1/")
    assert "s3cret" not in str(info.value)
