"""Our side of each case, with the asyncio shell and with the trio shell.

Each ``play_*`` function runs one case on an open stream and returns what our
side saw (an :class:`Ours`); :func:`check` compares it with what the peer
reported. Where the peer acts on its own (ping, text, its close), our side
first sends ``b"ready"`` once it has subscribed to events, so the peer's
frame cannot arrive before the subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio
from websockets.frames import Frame, Opcode

import ws_stream
import ws_stream.trio
from ws_stream.events import Closed, CloseReceived, Error, Event, PingReceived

from ..asyncio.helpers import stream_of, stream_server
from .matrix import CHUNK, FRAGMENTS, OUR_CLOSE, PEER_CLOSE, PING, SIZE

READY = b"ready"
#: Bound on each wait of a case (the whole case is bounded by the test's timeout).
STEP_TIMEOUT = 30.0


@dataclass
class Ours:
    """What our side saw during one case."""

    sent_sha: str = ""
    recv_sha: str = ""
    recv_len: int = 0
    error: BaseException | None = None
    events: list[Event] = field(default_factory=list)
    frames: list[tuple[str, bool, int]] = field(default_factory=list)  # data frames received


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def received_frames() -> Iterator[list[tuple[str, bool, int]]]:
    """Record the data frames websockets parses on our side: (opcode, fin, length).

    websockets logs each received frame as ``("< %s", frame)`` at DEBUG; a
    protocol decides whether to log when it is created, so enter this before
    the connection opens.
    """
    frames: list[tuple[str, bool, int]] = []
    data_opcodes = {Opcode.TEXT, Opcode.BINARY, Opcode.CONT}

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.msg == "< %s" and isinstance(record.args, tuple):
                frame = record.args[0]
                if isinstance(frame, Frame) and frame.opcode in data_opcodes:
                    frames.append((frame.opcode.name, frame.fin, len(frame.data)))

    logger = logging.getLogger("websockets")
    handler = Recorder(logging.DEBUG)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield frames
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# asyncio


async def _collect(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]


async def play_asyncio(stream: ws_stream.WsStream, case: str, *, echo: bool = False) -> Ours:
    """Play ``case`` on an asyncio WsStream; bounded by the caller's timeout.

    ``echo``: in the bulk case, send back what arrives instead of our own bytes
    (the browser peer checks the echo).
    """
    events_task = asyncio.create_task(_collect(stream.events()))  # subscribed here
    reader, writer = stream.reader, stream.writer
    ours = Ours()
    try:
        if case in ("bulk", "fragmented"):
            received = hashlib.sha256()
            sent = hashlib.sha256()

            async def receive() -> None:
                while chunk := await reader.read(CHUNK):
                    received.update(chunk)
                    ours.recv_len += len(chunk)
                    if echo:
                        sent.update(chunk)
                        writer.write(chunk)
                        await writer.drain()

            async def send() -> None:
                data = os.urandom(SIZE)
                sent.update(data)
                for start in range(0, SIZE, CHUNK):
                    writer.write(data[start : start + CHUNK])
                    await writer.drain()

            if case == "bulk" and not echo:
                await asyncio.gather(receive(), send())
            else:
                await receive()
            ours.recv_sha, ours.sent_sha = received.hexdigest(), sent.hexdigest()
        elif case in ("ping", "text", "peer_close"):
            writer.write(READY)
            await writer.drain()
            try:
                data = await reader.read()  # until EOF: nothing but the peer's close
                ours.recv_len, ours.recv_sha = len(data), sha(data)
            except ws_stream.WsStreamError as exc:
                ours.error = exc
        elif case == "our_close":
            await stream.close(*OUR_CLOSE)
        else:
            raise AssertionError(f"unknown case {case}")
    finally:
        await stream.close()
        ours.events = await events_task
    return ours


# trio


async def play_trio(stream: ws_stream.trio.WsStream, case: str) -> Ours:
    """Play ``case`` on a ws_stream.trio.WsStream; bounded by the caller's timeout."""
    events = stream.events()  # subscribed here
    ours = Ours()

    async def collect() -> None:
        async for event in events:
            ours.events.append(event)

    async def receive_all() -> None:
        received = hashlib.sha256()
        while chunk := await stream.receive_some(CHUNK):
            received.update(chunk)
            ours.recv_len += len(chunk)
        ours.recv_sha = received.hexdigest()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        try:
            if case == "bulk":

                async def send() -> None:
                    data = os.urandom(SIZE)
                    ours.sent_sha = sha(data)
                    for start in range(0, SIZE, CHUNK):
                        await stream.send_all(data[start : start + CHUNK])

                async with trio.open_nursery() as inner:
                    inner.start_soon(send)
                    inner.start_soon(receive_all)
            elif case == "fragmented":
                await receive_all()
            elif case in ("ping", "text", "peer_close"):
                await stream.send_all(READY)
                try:
                    await receive_all()
                except trio.BrokenResourceError as exc:
                    ours.error = exc.__cause__
            elif case == "our_close":
                await stream.aclose(*OUR_CLOSE)
            else:
                raise AssertionError(f"unknown case {case}")
        finally:
            await stream.aclose()
    return ours


# The checks, the same for every peer and both runtimes


def check(case: str, ours: Ours, peer: dict[str, Any]) -> None:
    """Assert that ``case`` went right, from our side's and the peer's reports."""
    assert "error" not in peer, f"the peer failed: {peer['error']}"
    closed = [event for event in ours.events if isinstance(event, Closed)]
    assert closed and ours.events[-1] is closed[0], f"Closed is not the last event: {ours.events}"
    if case == "bulk":
        assert ours.recv_len == SIZE, f"we received {ours.recv_len} bytes, not {SIZE}"
        assert peer["recv_len"] == SIZE, f"the peer received {peer['recv_len']} bytes, not {SIZE}"
        assert ours.recv_sha == peer["sent_sha"], "what we received is not what the peer sent"
        assert peer["recv_sha"] == ours.sent_sha, "what the peer received is not what we sent"
        assert closed[0].clean
    elif case == "fragmented":
        assert ours.frames == [
            ("BINARY" if i == 0 else "CONT", i == len(FRAGMENTS) - 1, size)
            for i, size in enumerate(FRAGMENTS)
        ], f"the peer did not send the fragments we asked for: {ours.frames}"
        assert ours.recv_len == sum(FRAGMENTS) == peer["sent_len"]
        assert ours.recv_sha == peer["sent_sha"], "the message did not arrive as one byte run"
        assert ours.error is None
    elif case == "ping":
        assert PingReceived(PING) in ours.events, f"no PingReceived({PING!r}) in {ours.events}"
        assert bytes.fromhex(peer["pong"]) == PING, f"the peer's pong: {peer['pong']}"
        assert ours.recv_len == 0 and ours.error is None
    elif case == "text":
        assert isinstance(ours.error, ws_stream.TextFrameError), f"the reader saw {ours.error!r}"
        assert any(
            isinstance(event, Error) and isinstance(event.error, ws_stream.TextFrameError)
            for event in ours.events
        ), f"no Error(TextFrameError) in {ours.events}"
        assert peer["close_code"] == 1003, f"the peer saw close code {peer['close_code']}"
    elif case == "peer_close":
        code, reason = PEER_CLOSE
        assert CloseReceived(code, reason) in ours.events, f"events: {ours.events}"
        assert closed[0] == Closed(code, reason, clean=True)
        assert ours.recv_len == 0 and ours.error is None, "the reader did not see a plain EOF"
    elif case == "our_close":
        code, reason = OUR_CLOSE
        assert (peer["close_code"], peer["close_reason"]) == (code, reason), f"the peer saw {peer}"
        assert closed[0].clean
    else:
        raise AssertionError(f"unknown case {case}")


# Our asyncio side as a server or a client, with the frames it receives recorded

PeerAsClient = Callable[[str], Awaitable[dict[str, Any]]]


async def asyncio_server_case(
    case: str, peer: PeerAsClient, *, echo: bool = False
) -> tuple[Ours, dict[str, Any]]:
    """Serve one connection with ws_stream.start_server; ``peer(uri)`` plays the client."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Ours] = loop.create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            done.set_result(await play_asyncio(stream_of(writer), case, echo=echo))
        except BaseException as exc:
            done.set_exception(exc)
            raise

    with received_frames() as frames:
        async with stream_server(handle) as uri:
            report = await peer(uri)
            assert "error" not in report, f"the peer failed: {report['error']}"
            async with asyncio.timeout(STEP_TIMEOUT):
                ours = await done
    ours.frames = frames
    return ours, report


async def asyncio_client_case(case: str, uri: str) -> Ours:
    """Connect to ``uri`` with ws_stream.open_connection and play ``case``."""
    with received_frames() as frames:
        reader, writer = await ws_stream.open_connection(uri, ping_interval=None)
        ours = await play_asyncio(stream_of(writer), case)
    ours.frames = frames
    return ours
