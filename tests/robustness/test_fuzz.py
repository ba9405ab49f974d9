"""Hypothesis throws random frame sequences at our server, cut at random TCP boundaries.

Each example is a new raw connection to one ws_stream server (per event loop)
running in a background thread. The frames are valid and invalid, fragmented
or not, with control frames interleaved; the bytes are written in random
chunks. An independent model of RFC 6455 (as websockets 17.4 enforces it, in
its order of checks) plus ws_stream's policy predicts, for each sequence:

* the bytes the reader returns: every binary payload before the first frame
  that must fail the connection, intact and in order;
* how the reader ends: EOF after a valid close frame, TextFrameError after a
  text frame, ProtocolError(code) after a violation;
* our close frame on the wire: the violation's code (1002, 1007, 1009), 1003
  for a text frame, or the peer's valid close frame echoed;
* our pongs: one per accepted ping, in order.

Invariants on top: the server never crashes (no error logged, it serves the
next example) and never hangs (every wait is bounded), every close code it
sends is one RFC 6455 lets an endpoint send, and no descriptor or task leaks.

``WS_STREAM_FUZZ_EXAMPLES`` sets the number of examples per event loop (2 000
by default); the run is derandomized, so CI is reproducible.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import struct
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import ws_stream
from ws_stream.events import Closed

from ..rawpeer import BINARY, CLOSE, CONT, PING, PONG, TEXT, build_frame, connect_raw
from .leaks import open_fds, wait_fds_released

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None

T = TypeVar("T")

EXAMPLES = int(os.environ.get("WS_STREAM_FUZZ_EXAMPLES", "2000"))
MAX_SIZE = 1024  # small, so that fragmented messages cross it
EXAMPLE_TIMEOUT = 10.0

RESERVED_OPCODES = [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF]
CONTROL_OPCODES = {CLOSE, PING, PONG}
KNOWN_OPCODES = {CONT, TEXT, BINARY, CLOSE, PING, PONG}
# Close codes a peer may put in a close frame (websockets accepts 1012-1014 too)...
VALID_CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014]
VALID_CLOSE_CODES += [3000, 3999, 4000, 4999]
# ... and codes it may not: reserved, report-only, out of range.
INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535]


def sendable(code: int) -> bool:
    """A close code RFC 6455 (and IANA's registry) lets an endpoint send."""
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


# The frames


@dataclass(frozen=True)
class Spec:
    """One frame the peer sends (``length`` overrides the declared payload length)."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0
    mask: bool = True
    length: int | None = None

    def serialize(self) -> bytes:
        return build_frame(
            self.opcode,
            self.payload,
            fin=self.fin,
            rsv=self.rsv,
            mask=self.mask,
            length=self.length,
        )


@st.composite
def close_payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["code"] * 4 + ["empty", "one byte", "bad code", "bad UTF-8"]))
    if kind == "empty":
        return b""
    if kind == "one byte":
        return draw(st.binary(min_size=1, max_size=1))
    codes = INVALID_CLOSE_CODES if kind == "bad code" else VALID_CLOSE_CODES
    code = draw(st.sampled_from(codes))
    if kind == "bad UTF-8":
        reason = draw(st.sampled_from([b"\xff", b"\xc3", b"ok\xed\xa0\x80", b"\xf4\x90\x80\x80"]))
    else:
        reason = draw(st.text(max_size=20)).encode()[:123]
    return struct.pack("!H", code) + reason


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    opcode = draw(st.sampled_from([BINARY] * 6 + [CONT] * 5 + [PING] * 2 + [PONG, TEXT, CLOSE, -1]))
    if opcode == -1:
        opcode = draw(st.sampled_from(RESERVED_OPCODES))
    flaw = draw(st.sampled_from([None] * 30 + ["rsv", "unmasked", "top bit length"]))
    if opcode == CLOSE:
        payload = draw(close_payloads())
    elif opcode in CONTROL_OPCODES:
        payload = draw(st.binary(max_size=125))
    else:
        payload = draw(st.binary(max_size=300) | st.binary(min_size=600, max_size=1100))
    if opcode in CONTROL_OPCODES:
        fin = draw(st.sampled_from([True] * 8 + [False]))
        if draw(st.sampled_from([False] * 12 + [True])):  # too long for a control frame
            payload = (payload * 130)[:126] if payload else b"\x03\xe8" * 63
    else:
        fin = draw(st.booleans())
    return Spec(
        opcode,
        payload,
        fin=fin,
        rsv=draw(st.sampled_from([1, 2, 3, 4, 7])) if flaw == "rsv" else 0,
        mask=flaw != "unmasked",
        length=2**63 + len(payload) if flaw == "top bit length" else None,
    )


@st.composite
def fragmented_messages(draw: st.DrawFn) -> list[Spec]:
    """A valid fragmented binary message, control frames interleaved."""
    fragments = draw(st.lists(st.binary(max_size=200), min_size=2, max_size=6))
    out = [Spec(BINARY, fragments[0], fin=False)]
    for i, fragment in enumerate(fragments[1:], start=2):
        if draw(st.booleans()):
            out.append(Spec(draw(st.sampled_from([PING, PONG])), draw(st.binary(max_size=20))))
        out.append(Spec(CONT, fragment, fin=i == len(fragments)))
    return out


# Random frames (mostly valid one by one, often invalid in sequence) mixed with
# whole valid fragmented messages, so that long valid prefixes are common too.
frame_sequences = st.lists(
    st.one_of(specs().map(lambda spec: [spec]), fragmented_messages()), max_size=8
).map(lambda units: [spec for unit in units for spec in unit])

FINAL_CLOSE = Spec(CLOSE, struct.pack("!H", 1000))


# The model


@dataclass
class Expected:
    data: bytes  # what the reader returns before its ending
    ending: str | int  # "eof", "text", or the ProtocolError's close code
    wire: list[bytes]  # acceptable payloads of our close frame
    pongs: list[bytes]  # the pongs websockets answers, in order...
    min_pongs: int  # ... at least this many of them (a text frame may cut them short)
    closed: Closed | None = None  # the Closed event, when the model knows it exactly
    notes: list[str] = field(default_factory=list)


def websockets_verdict(spec: Spec, current: int | None) -> tuple[str, Any]:
    """What websockets 17.4 does with one frame, in the order it checks.

    Returns ("fail", code), ("close", payload), or ("frame", new current size);
    ``current`` is the size of the fragmented message in progress, or None.
    """
    length = len(spec.payload) if spec.length is None else spec.length
    if spec.opcode not in KNOWN_OPCODES:
        return "fail", 1002  # invalid opcode
    if not spec.mask:
        return "fail", 1002  # incorrect masking
    if length > MAX_SIZE - (current or 0):
        return "fail", 1009  # checked on the declared length, control frames included
    if spec.rsv:
        return "fail", 1002  # reserved bits
    if spec.opcode in CONTROL_OPCODES and (length > 125 or not spec.fin):
        return "fail", 1002  # control frame too long / fragmented
    if spec.opcode in (TEXT, BINARY):
        if current is not None:
            return "fail", 1002  # expected a continuation frame
        return "frame", (None if spec.fin else length)
    if spec.opcode == CONT:
        if current is None:
            return "fail", 1002  # unexpected continuation frame
        return "frame", (None if spec.fin else current + length)
    if spec.opcode == CLOSE:
        payload = spec.payload
        if len(payload) == 1:
            return "fail", 1002  # close frame too short
        if len(payload) >= 2:
            try:
                payload[2:].decode()  # the reason is decoded before the code is checked
            except UnicodeDecodeError:
                return "fail", 1007
            if not sendable(struct.unpack("!H", payload[:2])[0]):
                return "fail", 1002  # invalid status code
        if current is not None:
            return "fail", 1002  # incomplete fragmented message
        return "close", payload
    return "frame", current  # ping, pong


def close_frame_payload(code: int, reason: str) -> bytes:
    return struct.pack("!H", code) + reason.encode()


def peer_close(payload: bytes) -> Closed:
    """The Closed event once websockets has parsed the peer's valid close frame."""
    if not payload:
        return Closed(1005, "", clean=True)
    return Closed(struct.unpack("!H", payload[:2])[0], payload[2:].decode(), clean=True)


def expected_outcome(frames: list[Spec]) -> Expected:
    data = bytearray()
    pongs: list[bytes] = []
    current: int | None = None
    text_at: tuple[bytes, int] | None = None  # (data, pongs) when a text frame arrived
    for spec in frames:
        verdict, value = websockets_verdict(spec, current)
        if verdict == "fail":
            ending: str | int = value
            wire = [close_frame_payload(value, "")]  # reasons vary: codes are compared
            closed = Closed(1006, "", clean=False)
            if (
                spec.opcode == CLOSE
                and current is not None
                and websockets_verdict(spec, None)[0] == "close"
            ):
                # A valid close frame inside a fragmented message: websockets
                # recorded it before failing, so Closed reports the peer's code.
                closed = peer_close(spec.payload)
            break
        if verdict == "close":
            ending, wire, closed = "eof", [value], peer_close(value)
            break
        current = value
        if spec.opcode == PING:
            pongs.append(spec.payload)
        elif text_at is None:
            if spec.opcode == TEXT:
                text_at = (bytes(data), len(pongs))
            elif spec.opcode in (BINARY, CONT):
                data += spec.payload
    else:  # pragma: no cover - the sequence always ends with a close frame
        raise AssertionError("no ending")
    if text_at is None:
        return Expected(bytes(data), ending, wire, pongs, len(pongs), closed)
    # The policy fails a text frame after websockets parsed the whole TCP read it
    # came in: frames after it in that read may already have been answered.
    text_data, text_pongs = text_at
    return Expected(text_data, "text", [TEXT_CLOSE, *wire], pongs, text_pongs, None)


TEXT_CLOSE = close_frame_payload(1003, "text frames are not supported")


# What actually happened


@dataclass
class Observed:
    data: bytes
    ending: str | int
    closed: Closed | None
    error_matches: bool
    wire: list[tuple[int, bytes]] = field(default_factory=list)  # (opcode, payload)


class Fuzzer:
    """One ws_stream server in a background event loop; one raw client per example."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        if kind == "uvloop":
            if uvloop is None:
                pytest.fail("uvloop is not installed: pip install -e '.[test]'")
            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"fuzz-{kind}")
        self.outcomes: dict[str, asyncio.Future[Observed]] = {}
        self.ids = itertools.count()
        self.server: Any = None
        self.port = 0

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = EXAMPLE_TIMEOUT + 5) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> Fuzzer:
        self.thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()

    async def _start(self) -> None:
        self.server = await ws_stream.start_server(
            self._handle, "127.0.0.1", 0, ping_interval=None, max_size=MAX_SIZE, close_timeout=2
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def tasks(self) -> int:
        return len(asyncio.all_tasks())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = writer.get_extra_info("ws_stream")
        outcome = self.outcomes[writer.get_extra_info("request").path]
        data = bytearray()
        error: Exception | None = None
        ending: str | int
        try:
            async with asyncio.timeout(EXAMPLE_TIMEOUT):
                while chunk := await reader.read(65536):
                    data += chunk
            ending = "eof"
        except ws_stream.TextFrameError as exc:
            ending, error = "text", exc
        except ws_stream.ProtocolError as exc:
            ending, error = exc.code, exc
        except Exception as exc:  # reported as a mismatch, with its repr
            ending, error = repr(exc), exc
        await stream.wait_closed()
        closed = None
        async with asyncio.timeout(5):
            async for event in stream.events():  # after the end: only Closed
                closed = event
        outcome.set_result(Observed(bytes(data), ending, closed, stream.error is error))

    async def example(self, frames: list[Spec], cuts: list[int]) -> Observed:
        path = f"/{next(self.ids)}"
        outcome = self.outcomes[path] = self.loop.create_future()
        wire = b"".join(spec.serialize() for spec in [*frames, FINAL_CLOSE])
        peer = None
        try:
            async with asyncio.timeout(EXAMPLE_TIMEOUT):
                peer = await connect_raw(self.port, path)
                reading = asyncio.create_task(read_server_frames(peer.reader))
                with contextlib.suppress(ConnectionError):
                    for chunk in split(wire, cuts):
                        peer.writer.write(chunk)
                        await peer.writer.drain()
                        await asyncio.sleep(0)  # let the server read this chunk alone
                frames_back = await reading
                peer.close_tcp()
                observed = await outcome
        finally:
            del self.outcomes[path]
            if peer is not None:
                peer.writer.transport.abort()  # after a failure: never leave it open
        observed.wire = frames_back
        return observed


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """Cut ``data`` at the given positions (fractions of 2**16 of its length)."""
    points = sorted({cut * len(data) >> 16 for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


async def read_server_frames(reader: asyncio.StreamReader) -> list[tuple[int, bytes]]:
    """Every frame our server sends, until it closes TCP; checks their framing."""
    frames = []
    while True:
        try:
            b0, b1 = await reader.readexactly(2)
        except asyncio.IncompleteReadError as exc:
            assert exc.partial == b"", "the server cut a frame short"
            return frames
        assert b0 & 0x70 == 0 and not b1 & 0x80, "a server sets no rsv bit and never masks"
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await reader.readexactly(8))
        frames.append((b0 & 0x0F, await reader.readexactly(n)))


def check(frames: list[Spec], observed: Observed) -> None:
    expected = expected_outcome([*frames, FINAL_CLOSE])
    # The reader: every valid byte before the ending, in order, then the ending.
    assert observed.data == expected.data
    assert observed.ending == expected.ending
    assert observed.error_matches, "stream.error is not what the reader raised"
    assert isinstance(observed.closed, Closed)
    if expected.closed is not None:
        assert observed.closed == expected.closed
    # The wire: pongs, then exactly one close frame with a code an endpoint may send.
    opcodes = [opcode for opcode, _ in observed.wire]
    assert set(opcodes) <= {CLOSE, PONG}, f"the server sent {opcodes}"
    assert opcodes.count(CLOSE) == 1 and opcodes[-1] == CLOSE, opcodes
    ours = observed.wire[-1][1]
    if ours:
        assert sendable(struct.unpack("!H", ours[:2])[0]), ours
    pongs = [payload for opcode, payload in observed.wire if opcode == PONG]
    if expected.ending == "eof":
        assert ours == expected.wire[0]  # the peer's close frame, echoed byte for byte
        assert pongs == expected.pongs
    elif expected.ending != "text":
        assert ours[:2] == expected.wire[0][:2]  # the violation's code
        assert pongs == expected.pongs
    else:
        # 1003 at once, even with more frames behind the text frame in the same
        # TCP read (test_adversary.test_text_frame_and_more_in_one_tcp_segment_is_still_1003).
        assert ours == TEXT_CLOSE, (ours, expected.wire)
        assert pongs == expected.pongs[: len(pongs)]
        assert len(pongs) >= expected.min_pongs


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def fuzzer(request: pytest.FixtureRequest) -> Iterator[Fuzzer]:
    errors = ErrorLog()
    loggers = [logging.getLogger("websockets"), logging.getLogger("ws_stream")]
    for logger in loggers:
        logger.addHandler(errors)
    fds = open_fds()
    try:
        with Fuzzer(request.param) as fuzzer:
            tasks = fuzzer.run(fuzzer.tasks())
            yield fuzzer
            # Every example's connection is gone: only the server's own tasks remain.
            fuzzer.run(settled(fuzzer, tasks))
        wait_fds_released(fds)
        assert not errors.records, [r.getMessage() for r in errors.records]
    finally:
        for logger in loggers:
            logger.removeHandler(errors)


async def settled(fuzzer: Fuzzer, tasks: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while len(asyncio.all_tasks()) > tasks:
            await asyncio.sleep(0.01)


@pytest.mark.timeout(max(120, EXAMPLES // 10))
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
@given(
    frames=frame_sequences,
    cuts=st.lists(st.integers(0, 2**16), max_size=16),
)
def test_random_frames_at_our_server(fuzzer: Fuzzer, frames: list[Spec], cuts: list[int]) -> None:
    observed = fuzzer.run(fuzzer.example(frames, cuts))
    # Statistics (pytest --hypothesis-show-statistics): what the examples exercised.
    event(f"reader ending: {observed.ending}")
    ours = observed.wire[-1][1] if observed.wire else b""
    event(f"close frame sent: {struct.unpack('!H', ours[:2])[0] if ours else None}")
    event(f"stream bytes: {'some' if observed.data else 'none'}")
    check(frames, observed)


# The model is code too: a few sequences whose outcome is known by hand.


@pytest.mark.parametrize(
    ("frames", "data", "ending"),
    [
        ([Spec(BINARY, b"ab", fin=False), Spec(PING, b"p"), Spec(CONT, b"cd")], b"abcd", "eof"),
        ([Spec(BINARY, b"ab"), Spec(TEXT, b"t"), Spec(BINARY, b"x")], b"ab", "text"),
        ([Spec(BINARY, b"ab"), Spec(0x3, b"x"), Spec(BINARY, b"x")], b"ab", 1002),
        ([Spec(BINARY, b"a" * 600, fin=False), Spec(CONT, b"b" * 600)], b"a" * 600, 1009),
        ([Spec(BINARY, b"a" * 1000, fin=False), Spec(PING, b"p" * 30)], b"a" * 1000, 1009),
        ([Spec(CLOSE, b"\x03\xe8\xff")], b"", 1007),
        ([Spec(CLOSE, b"\x03\xec\xff")], b"", 1007),  # 1004 and bad UTF-8: UTF-8 first
        ([Spec(BINARY, b"x", fin=False), Spec(CLOSE, b"\x03\xe8")], b"x", 1002),
        ([Spec(BINARY, b"x", mask=False)], b"", 1002),
        ([Spec(BINARY, b"x", length=2**63 + 1)], b"", 1009),
        ([Spec(CONT, b"x")], b"", 1002),
        ([Spec(CLOSE, b"")], b"", "eof"),
    ],
)
def test_the_model_on_known_sequences(frames: list[Spec], data: bytes, ending: str | int) -> None:
    expected = expected_outcome([*frames, FINAL_CLOSE])
    assert (expected.data, expected.ending) == (data, ending)
