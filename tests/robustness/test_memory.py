"""``limit`` bounds real memory, whatever the frame sizes (issue 12, item 7).

A child process opens ``CONNECTIONS`` client streams with ``limit=LIMIT`` -
on asyncio's default loop, uvloop, trio and the blocking shell - to a raw
peer in this process that floods 1-byte frames (or a fragmented message of
0- and 1-byte continuation frames) from the handshake response on, and never
stops. The child never reads: once every stream holds ``LIMIT`` bytes and
stopped reading TCP, it reports its peak RSS (VmHWM) growth over its RSS
before connecting. The bound is ``CONNECTIONS * (2 * LIMIT + OVERHEAD)``
(plus ``ASYNCIO_HANDSHAKE_READ`` on asyncio).

Before the fix every buffered 1-byte frame cost a ``bytes`` object and a
deque slot (~45 bytes), and every TCP read of tiny frames held websockets'
Frame objects until the whole read was parsed: 3 connections with a 256 KiB
``limit`` grew the process by 65 to 90 MiB.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..rawpeer import BINARY, CONT, GUID, build_frame

CONNECTIONS = 3
#: 256 KiB: about 87 000 frames per connection, enough to show the defect many
#: times over, few enough for websockets to parse in about a second.
LIMIT = 2**18
MiB = 2**20
#: The fixed cost of a connection, whatever ``limit``: its objects
#: (websockets' protocol, our stream and buffer), the TCP read being parsed
#: (the blocking shell reads 256 KiB, which websockets copies into its parser
#: buffer), the receive buffer's bytearray reallocating (old and new copy at
#: once) and allocator slack. Measured 0.5 to 1.3 MiB; the bound allows 2.
OVERHEAD = 2 * MiB
#: asyncio only, once per connection being opened: websockets' asyncio client
#: parses the TCP read that carried the handshake response (up to 256 KiB:
#: 87 000 Frame objects here) before our stream takes it over and frees them.
#: Measured 8 to 10 MiB; connections are opened one after another, so once.
ASYNCIO_HANDSHAKE_READ = 12 * MiB
#: The child gives up waiting for every stream to fill after this many seconds.
FILL_TIMEOUT = 60.0
ROOT = Path(__file__).resolve().parents[2]
SHELLS = ["asyncio", "uvloop", "trio", "sync"]


def _flood_block(fragmented: bool) -> bytes:
    """About 64 KiB of whole server frames carrying 1-byte (and 0-byte) payloads."""
    if not fragmented:
        return build_frame(BINARY, b"x") * 20000
    # One message of continuation frames alternating 0 and 1 byte; it ends in
    # the block, so no message comes near max_size.
    middle = (build_frame(CONT, b"", fin=False) + build_frame(CONT, b"x", fin=False)) * 5000
    return build_frame(BINARY, b"x", fin=False) + middle + build_frame(CONT, b"x")


class FloodServer:
    """Accepts WebSocket clients and floods each with ``block``, repeated, until closed.

    The first block goes in the same write as the handshake response, so the
    client parses it with the response, before its stream exists.
    """

    def __init__(self, block: bytes) -> None:
        self.block = block
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()

    def __enter__(self) -> FloodServer:
        self._start(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.listener.close()
        for thread in self._threads:
            thread.join(5)
        for sock in self._socks:
            sock.close()

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # closed
            self._socks.append(sock)
            self._start(self._flood, sock)

    def _flood(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(5)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = sock.recv(4096)
                if not chunk:
                    raise EOFError("EOF during the handshake")
                request += chunk
            key = next(
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
            response = (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
            sock.sendall(response + self.block)
            # Then as fast as the client reads, until the test ends.
            sock.setblocking(False)
            view = memoryview(self.block)
            while not self._stop.is_set():
                if select.select([], [sock], [], 0.1)[1]:
                    view = view[sock.send(view) :] or memoryview(self.block)
        except OSError:
            return  # the child exited (a child that never connected sends no report)
        except Exception as exc:  # the test reports it
            self.errors.append(exc)


def _status(field: str) -> int:
    """A size from this process's /proc/self/status, in bytes.

    VmHWM is the peak RSS since this program was exec'd; ``ru_maxrss`` would
    also count the RSS of the parent it was forked from.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


class _Filling:
    """Decides when every stream is full: ``limit`` bytes received, then no more for a while.

    The peer never stops sending, so a stream whose count stays still has
    stopped reading TCP (its flow control paused it).
    """

    STILL = 0.5  # seconds

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.deadline = time.monotonic() + FILL_TIMEOUT
        self.last: list[int] = []
        self.since = time.monotonic()

    def done(self, received: list[int]) -> bool:
        now = time.monotonic()
        if received != self.last or min(received) < self.limit:
            self.last, self.since = received, now
        return now - self.since >= self.STILL or now > self.deadline


def _report(baseline: int, received: list[int]) -> None:
    growth = _status("VmHWM") - baseline
    print(json.dumps({"growth": growth, "received": received}), flush=True)
    os._exit(0)  # the peer will never complete a closing handshake


def child(shell: str, port: int, n: int, limit: int) -> None:
    """The measured process: ``n`` clients that never read; prints a JSON report and exits."""
    uri = f"ws://127.0.0.1:{port}/"
    options = {"limit": limit, "ping_interval": None, "close_timeout": 1}
    filling = _Filling(limit)
    if shell in ("asyncio", "uvloop"):
        import asyncio

        import ws_stream.asyncio

        async def run_asyncio() -> None:
            baseline = _status("VmRSS")
            streams = [await ws_stream.asyncio.connect_stream(uri, **options) for _ in range(n)]
            while not filling.done([s.stats.bytes_received for s in streams]):
                await asyncio.sleep(0.05)
            _report(baseline, filling.last)

        if shell == "uvloop":
            import uvloop

            uvloop.run(run_asyncio())
        else:
            asyncio.run(run_asyncio())
    elif shell == "trio":
        import trio

        import ws_stream.trio

        async def run_trio() -> None:
            baseline = _status("VmRSS")
            async with trio.open_nursery() as nursery:
                streams = [
                    await ws_stream.trio.connect_stream(nursery, uri, **options) for _ in range(n)
                ]
                while not filling.done([s.stats.bytes_received for s in streams]):
                    await trio.sleep(0.05)
                _report(baseline, filling.last)

        trio.run(run_trio)
    else:
        import ws_stream.sync

        baseline = _status("VmRSS")
        socks = [ws_stream.sync.connect(uri, **options) for _ in range(n)]
        while not filling.done([s.stats.bytes_received for s in socks]):
            time.sleep(0.05)
        _report(baseline, filling.last)


@contextlib.contextmanager
def _child_process(shell: str, port: int) -> Iterator[subprocess.Popen[str]]:
    code = (
        "from tests.robustness.test_memory import child; "
        f"child({shell!r}, {port}, {CONNECTIONS}, {LIMIT})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("fragmented", [False, True], ids=["frames", "fragments"])
@pytest.mark.parametrize("shell", SHELLS)
def test_limit_bounds_memory_with_tiny_frames(shell: str, fragmented: bool) -> None:
    with (
        FloodServer(_flood_block(fragmented)) as server,
        _child_process(shell, server.port) as proc,
    ):
        assert proc.stdout is not None
        line = proc.stdout.readline()
    assert not server.errors, server.errors
    assert line, f"the {shell} child exited with {proc.returncode} without a report"
    result = json.loads(line)
    received, growth = result["received"], result["growth"]
    # Every stream did fill up to its limit (and stopped reading there).
    assert min(received) >= LIMIT, received
    bound = CONNECTIONS * (2 * LIMIT + OVERHEAD)
    if shell in ("asyncio", "uvloop"):
        bound += ASYNCIO_HANDSHAKE_READ
    assert growth <= bound, (
        f"{shell}: {CONNECTIONS} connections with limit={LIMIT // 1024} KiB holding "
        f"{sum(received) / MiB:.1f} MiB grew the process by {growth / MiB:.1f} MiB "
        f"(bound {bound / MiB:.1f} MiB)"
    )
