"""Interop: ``ws_stream.mux`` (and ``ws-stream serve --mux``) against yamux-js, a Node peer.

The peer is ``tests/mux/node/peer.js`` (yamux-js over Node's ``ws``; see its
README for its roles, modes, stdin commands and JSON-lines stdout), installed
by ``npm ci --prefix tests/mux/node`` (``.ci/run`` does it); without Node.js
or without that install, these tests are skipped and say so.

Everything is on 127.0.0.1, every wait is bounded, every Node process is
killed on the way out (its stderr, yamux-js's log, is kept under tmp_path and
quoted when a test fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import ws_stream
from tests.cli.conftest import cli
from tests.cli.helpers import Cli
from ws_stream import mux
from ws_stream.mux import Session

from .helpers import digest, digest_to_eof, stream_id

# The `cli` fixture of tests/cli (every ws-stream subprocess killed at the end).
__all__ = ["cli"]

NODE = shutil.which("node")
HERE = Path(__file__).resolve().parent / "node"
PEER = HERE / "peer.js"

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="Node.js is not installed (no `node` on PATH)"),
    pytest.mark.skipif(
        not (HERE / "node_modules" / "yamux-js").exists(),
        reason="the yamux-js peer is not installed: run `npm ci --prefix tests/mux/node`",
    ),
]

KiB = 2**10
MiB = 2**20
#: yamux's initial stream window, yamux-js's fixed receive window.
WINDOW = 256 * KiB
#: The longest wait for one thing the peer says or does.
STEP = 20.0

Json = dict[str, Any]
StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_names = itertools.count()


async def echo_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the stream to the peer's FIN, then send it all back, then FIN: what we send
    on a stream the peer half-closed."""
    data = await reader.read()
    assert reader.at_eof()
    writer.write(data)
    writer.write_eof()


def event(name: str, **fields: Any) -> Callable[[Json], bool]:
    """A predicate on the peer's lines: ``{"event": name, **fields}``."""
    return lambda line: (
        line.get("event") == name and all(line.get(key) == value for key, value in fields.items())
    )


class Peer:
    """A running ``node peer.js ...``: its stdout lines (parsed) and its stdin."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.lines: list[Json] = []
        self.eof = False
        self._changed = asyncio.Event()
        self._reading = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(json.loads(line))
            self._changed.set()
        self.eof = True
        self._changed.set()

    def describe(self) -> str:
        log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        lines = "\n".join(json.dumps(line) for line in self.lines[-40:])
        return f"peer.js stdout (last lines):\n{lines}\npeer.js stderr (end):\n{log}"

    def found(self, predicate: Callable[[Json], bool]) -> list[Json]:
        return [line for line in self.lines if predicate(line)]

    async def expect(
        self, predicate: Callable[[Json], bool], what: str, timeout: float = STEP
    ) -> Json:
        """The first line (so far or to come) matching ``predicate``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for line in self.lines:
                if predicate(line):
                    return line
            if self.eof:
                status = await self.proc.wait()
                raise AssertionError(f"peer.js exited ({status}) before {what}\n{self.describe()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise AssertionError(
                    f"no {what} from peer.js in {timeout} s\n{self.describe()}"
                ) from None

    async def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        await self.expect(event("ack", command=command), f"the ack of {command!r}")

    async def exit_status(self, timeout: float = STEP) -> int:
        """Wait for the peer to exit by itself (and for its last line)."""
        try:
            async with asyncio.timeout(timeout):
                status = await self.proc.wait()
                await self._reading
        except TimeoutError:
            raise AssertionError(
                f"peer.js still running after {timeout} s\n{self.describe()}"
            ) from None
        return status


@contextlib.asynccontextmanager
async def node_peer(tmp_path: Path, *args: str) -> AsyncIterator[Peer]:
    """Run ``node peer.js ARGS``; kill it on the way out if it is still running."""
    assert NODE is not None
    log = tmp_path / f"peer-{next(_names)}.stderr"
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            NODE,
            str(PEER),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            cwd=HERE,
        )
    peer = Peer(proc, log)
    try:
        yield peer
    finally:
        if proc.returncode is None:
            proc.kill()
        async with asyncio.timeout(10):
            await proc.wait()
            with contextlib.suppress(Exception):
                await peer._reading


@contextlib.asynccontextmanager
async def node_server(tmp_path: Path, *mode: str) -> AsyncIterator[tuple[Peer, str]]:
    """``node peer.js server PORT_FILE MODE...``: the peer and its ws:// URL."""
    port_file = tmp_path / f"port-{next(_names)}"
    async with node_peer(tmp_path, "server", str(port_file), *mode) as peer:
        async with asyncio.timeout(STEP):
            while not port_file.exists():
                assert not peer.eof, f"peer.js exited before listening\n{peer.describe()}"
                await asyncio.sleep(0.02)
        yield peer, f"ws://127.0.0.1:{int(port_file.read_text())}/"


@contextlib.asynccontextmanager
async def client_session(url: str) -> AsyncIterator[Session]:
    """Our yamux client session over a WebSocket to ``url`` (no subprotocol: peer.js needs
    none)."""
    async with asyncio.timeout(STEP):
        stream = await ws_stream.connect_stream(url, ping_interval=None)
    session = await mux.open_session(stream.reader, stream.writer, client=True)
    try:
        yield session
    finally:
        async with asyncio.timeout(STEP):
            await session.close()
            await stream.close()


@contextlib.asynccontextmanager
async def session_to_node(tmp_path: Path, *mode: str) -> AsyncIterator[tuple[Peer, Session]]:
    """``node peer.js server PORT_FILE MODE...`` and our client session to it."""
    async with node_server(tmp_path, *mode) as (peer, url), client_session(url) as session:
        yield peer, session


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[tuple[str, list[Session]]]:
    """A ``ws_stream.start_server`` whose every WebSocket is our yamux server session,
    echoing every stream once the peer has half-closed it: its URL and the sessions it
    ran."""
    sessions: list[Session] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = await mux.open_session(reader, writer, client=False, on_stream=echo_after_eof)
        sessions.append(session)
        await session.wait_closed()

    server = await ws_stream.start_server(handler, "127.0.0.1", 0, ping_interval=None)
    try:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", sessions
    finally:
        async with asyncio.timeout(STEP):
            for session in sessions:
                await session.close()
            server.close()
            await server.wait_closed()


async def until(predicate: Callable[[], bool], what: str, timeout: float = STEP) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


async def node_opens_64_streams(tmp_path: Path, url: str) -> None:
    """``node peer.js client URL open 64 4 MiB SEED``: all 64 echoed intact, exit 0."""
    async with node_peer(tmp_path, "client", url, "open", "64", str(4 * MiB), "ws_stream") as peer:
        status = await peer.exit_status(45)
        results = peer.found(lambda line: "stream" in line and "ok" in line)
        failed = [line for line in results if not line["ok"]]
        assert not failed, f"streams that failed: {failed}\n{peer.describe()}"
        assert sorted(line["stream"] for line in results) == list(range(64)), peer.describe()
        assert all(line["received"] == line["sent"] for line in results)
        assert sorted(line["id"] for line in results) == list(range(1, 129, 2))  # a client's
        assert any(line["sent"] > 2 * MiB for line in results)  # the windows were used up
        [done] = peer.found(lambda line: line.get("done") is True)
        assert (done["ok"], done["failed"]) == (64, 0), peer.describe()
        assert status == 0, peer.describe()


# 1. Node opens streams to us


async def test_node_opens_64_streams_to_our_server_session(tmp_path: Path) -> None:
    async with asyncio.timeout(60), echo_server() as (url, sessions):
        await node_opens_64_streams(tmp_path, url)
        [session] = sessions
        await until(lambda: session.streams == 0, "every stream of our session closed")


async def relay_to(uri: str) -> tuple[ws_stream.Server, list[str | None]]:
    """A WebSocket server passing every byte of each connection to a WebSocket to ``uri``
    offering the ``yamux`` subprotocol (peer.js's client offers no subprotocol, and
    ``serve --mux`` runs yamux only when it is offered): the server and the subprotocols
    ``uri`` selected."""
    selected: list[str | None] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(256 * KiB):
                writer.write(data)
                await writer.drain()
            writer.write_eof()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await ws_stream.connect_stream(uri, subprotocols=["yamux"], ping_interval=None)
        selected.append(upstream.subprotocol)
        try:
            await asyncio.gather(pipe(reader, upstream.writer), pipe(upstream.reader, writer))
        finally:
            await upstream.close()

    server = await ws_stream.start_server(handler, "127.0.0.1", 0, ping_interval=None)
    return server, selected


@pytest.mark.default_loop_only  # our yamux runs in the ws-stream subprocess
async def test_node_opens_64_streams_to_serve_mux(tmp_path: Path, cli: Callable[..., Cli]) -> None:
    serve = cli("serve", "--port", "0", "--mux", "-v")
    uri = f"ws://127.0.0.1:{serve.port()}/"
    server, selected = await relay_to(uri)
    try:
        async with asyncio.timeout(60):
            port = server.sockets[0].getsockname()[1]
            await node_opens_64_streams(tmp_path, f"ws://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()
    assert selected == ["yamux"]
    serve.wait_for(r"connected \(subprotocol yamux\)")


# 2, 3. We open streams to Node; half-closes both ways


async def test_we_open_64_streams_to_node_and_read_the_echo_after_our_fin(
    tmp_path: Path,
) -> None:
    rng = random.Random(20250131)
    sizes = [0, 1, 4 * MiB, WINDOW, WINDOW + 1] + [rng.randint(0, 4 * MiB) for _ in range(59)]

    async def round_trip(session: Session, size: int) -> None:
        data = rng.randbytes(size)
        reader, writer = await session.open_stream()
        sid = stream_id(writer)
        assert sid % 2 == 1  # a client's
        writer.write(data)
        writer.write_eof()  # before a single byte is read: the echo comes after our FIN
        assert await digest_to_eof(reader) == digest(data), f"stream {sid} of {size} bytes"
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()

    async with asyncio.timeout(60), session_to_node(tmp_path, "echo") as (peer, session):
        async with asyncio.TaskGroup() as group:
            for size in sizes:
                group.create_task(round_trip(session, size))
        await until(lambda: session.streams == 0, "every stream of our session closed")
        assert session.error is None
        assert not peer.found(event("error")), peer.describe()
        assert not peer.found(event("session_error")), peer.describe()


async def test_a_stream_ended_cleanly_both_ways_still_drains_as_over_tcp(
    tmp_path: Path,
) -> None:
    # Over TCP (asyncio's and uvloop's transports), write(); write_eof(); read() to
    # EOF; drain() returns: nothing was lost. A mux stream should do the same.
    async with asyncio.timeout(30), session_to_node(tmp_path, "echo") as (peer, session):
        reader, writer = await session.open_stream()
        writer.write(b"z" * 100_000)
        writer.write_eof()
        async with asyncio.timeout(STEP):
            assert await reader.read() == b"z" * 100_000
        await writer.drain()  # ConnectionResetError('Connection lost') here: a defect
        writer.close()
        await writer.wait_closed()


# 4. Resets


async def test_a_reset_by_node_fails_our_reader(tmp_path: Path) -> None:
    async with asyncio.timeout(30), session_to_node(tmp_path, "reset", "4096") as (peer, session):
        sent = await peer.expect(event("reset_sent", sent=4096), "reset_sent")
        async with asyncio.timeout(STEP):
            reader, writer = await session.accept()
        assert stream_id(writer) == sent["stream"]
        assert stream_id(writer) % 2 == 0  # a server's
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(STEP):
                while await reader.read(64 * KiB):
                    pass  # a clean EOF would end this loop without raising
        # The session goes on: the peer still echoes new streams.
        reader, writer = await session.open_stream()
        writer.write(b"still here")
        writer.write_eof()
        async with asyncio.timeout(STEP):
            assert await reader.read() == b"still here"


async def test_a_reset_by_node_fails_our_on_stream_reader(tmp_path: Path) -> None:
    outcome: asyncio.Future[BaseException | bytes] = asyncio.get_running_loop().create_future()

    async def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Read to the end: the bytes before the reset come first (nothing
        # lost), then the reset, never a clean EOF.
        result: BaseException | bytes = b""
        try:
            while await reader.read(65536):
                pass
        except Exception as exc:
            result = exc
        if not outcome.done():
            outcome.set_result(result)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = await mux.open_session(reader, writer, client=False, on_stream=on_stream)
        try:
            await session.wait_closed()
        finally:
            await session.close()

    server = await ws_stream.start_server(handler, "127.0.0.1", 0, ping_interval=None)
    try:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        async with asyncio.timeout(30), node_peer(tmp_path, "client", url, "reset") as peer:
            await peer.expect(event("reset_sent", sent=1024), "reset_sent")
            async with asyncio.timeout(STEP):
                result = await outcome
            assert isinstance(result, ConnectionResetError), f"our reader got {result!r}"
    finally:
        server.close()
        await server.wait_closed()


async def test_our_abort_resets_the_stream_at_node(tmp_path: Path) -> None:
    async with asyncio.timeout(30), session_to_node(tmp_path, "echo") as (peer, session):
        # One stream once the echo flows, one at once after its first bytes.
        reader, writer = await session.open_stream()
        writer.write(b"x" * 1000)
        async with asyncio.timeout(STEP):
            assert await reader.readexactly(1000) == b"x" * 1000
        writer.transport.abort()
        await peer.expect(event("rst", stream=stream_id(writer)), "the rst of a live stream")
        reader, writer = await session.open_stream()
        writer.write(b"y" * 100_000)
        writer.transport.abort()
        await peer.expect(event("rst", stream=stream_id(writer)), "the rst of a new stream")
        with pytest.raises(ConnectionError):
            await writer.drain()
        # Other streams go on.
        reader, writer = await session.open_stream()
        writer.write(b"after the resets")
        writer.write_eof()
        async with asyncio.timeout(STEP):
            assert await reader.read() == b"after the resets"
        assert session.error is None
        assert not peer.found(event("session_error")), peer.describe()


# 5. A stream the peer does not read: we stop at its window, the others go on


async def test_we_stop_at_the_window_of_a_stream_node_does_not_read(tmp_path: Path) -> None:
    rng = random.Random(7)
    big = rng.randbytes(4 * MiB)
    async with asyncio.timeout(45), session_to_node(tmp_path, "stall") as (peer, session):
        stalled_reader, stalled = await session.open_stream()
        stalled.write(big)
        stalled.write_eof()
        stall = await peer.expect(event("stall"), "the stall")
        assert stall["stream"] == stream_id(stalled)
        assert stall["received"] == WINDOW

        async def round_trip(size: int) -> None:
            data = rng.randbytes(size)
            reader, writer = await session.open_stream()
            writer.write(data)
            writer.write_eof()
            assert await digest_to_eof(reader) == digest(data), f"stream {stream_id(writer)}"

        # No head-of-line blocking: the other streams are echoed meanwhile.
        async with asyncio.TaskGroup() as group:
            for size in (0, 1, 100 * KiB, WINDOW, MiB, 3 * MiB):
                group.create_task(round_trip(size))
        await asyncio.sleep(0.3)  # time for an overflow to show, if we sent one
        assert not peer.found(event("overflow")), peer.describe()
        # Exactly one window went out: the rest waits in the stream's buffer.
        assert stalled.transport.get_write_buffer_size() == len(big) - WINDOW
        assert not stalled_reader.at_eof()

        await peer.send("resume")
        resumed = await peer.expect(event("resumed"), "resumed")
        assert (resumed["stream"], resumed["received"]) == (stream_id(stalled), WINDOW)
        async with asyncio.timeout(STEP):
            assert await digest_to_eof(stalled_reader) == digest(big)
        assert stalled.transport.get_write_buffer_size() == 0
        assert session.error is None
        assert not peer.found(event("overflow")), peer.describe()


# 6. Pings both ways


async def test_our_ping_is_answered_by_node(tmp_path: Path) -> None:
    async with asyncio.timeout(30), session_to_node(tmp_path, "echo") as (peer, session):
        for _ in range(3):
            rtt = await session.ping(timeout=STEP)
            assert isinstance(rtt, float)
            assert 0 < rtt < STEP


async def test_we_answer_a_ping_from_node(tmp_path: Path) -> None:
    async with asyncio.timeout(30), session_to_node(tmp_path, "echo") as (peer, session):
        await peer.expect(event("session"), "the session")
        await peer.send("ping")
        pong = await peer.expect(event("pong"), "a pong")
        assert pong["ms"] >= 0
        assert session.error is None
