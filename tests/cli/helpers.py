"""Run ``ws-stream`` as a real subprocess; read its stderr without ever blocking it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import IO, Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

#: The first stderr line of `serve` and `forward` (documented): where they listen.
LISTENING = re.compile(r"listening on (?:wss?://)?(?:\[[^\]]+\]|[^\s:/\[]+):(\d+)")


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess: no proxy settings, no bearer token."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.pop("WS_STREAM_BEARER", None)
    env.update(extra)
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ws_stream", *args]


def run_cli(
    *args: str, input: bytes = b"", timeout: float = 30.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``ws-stream ARGS`` to completion with ``input`` on stdin."""
    return subprocess.run(
        command(*args),
        input=input,
        capture_output=True,
        timeout=timeout,
        env=env or cli_env(),
        cwd=ROOT,
    )


class Cli:
    """A running ``ws-stream`` subprocess; a thread collects its stderr lines."""

    def __init__(
        self,
        *args: str,
        stdin: int | IO[Any] = subprocess.DEVNULL,
        stdout: int | IO[Any] = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            command(*args),
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env or cli_env(),
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self._eof = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 10.0, count: int = 1) -> re.Match[str]:
        """The ``count``-th stderr line matching ``pattern`` (waits for it)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                matches = [m for m in map(regex.search, self.lines) if m]
                if len(matches) >= count:
                    return matches[count - 1]
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    state = "exited" if self._eof else "still running"
                    raise AssertionError(
                        f"ws-stream {' '.join(self.args)} ({state}): {len(matches)} of {count} "
                        f"stderr lines match {pattern!r}; stderr:\n{chr(10).join(self.lines)}"
                    )
                self._cond.wait(remaining)

    def port(self, timeout: float = 10.0) -> int:
        """The port from the first stderr line (``listening on ...``)."""
        self.wait_for(".", timeout)
        with self._cond:
            first = self.lines[0]
        match = LISTENING.search(first)
        assert match, f"the first stderr line is not `listening on ...`: {first!r}"
        return int(match.group(1))

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        """The exit status; fails the test if it takes longer than ``timeout``."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"ws-stream {' '.join(self.args)} still running after {timeout} s; "
                f"stderr:\n{self.stderr}"
            ) from None
        self._thread.join(5)
        return status

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._thread.join(5)


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run an async test body on a fresh event loop, bounded by ``timeout``."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def counting_echo(prefix: bytes, accepted: list[int]) -> Callable[..., Awaitable[None]]:
    """An asyncio server callback: counts the connection in ``accepted``, writes
    ``prefix``, then echoes every byte; it ends its side at EOF."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            if prefix:
                writer.write(prefix)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return echo


async def start_tcp_echo(
    prefix: bytes = b"",
) -> tuple[asyncio.Server, int, list[int]]:
    """A TCP echo server on 127.0.0.1 (``prefix`` first); ends its side at EOF.

    Returns the server, its port and a list that counts accepted connections.
    """
    accepted: list[int] = []
    server = await asyncio.start_server(counting_echo(prefix, accepted), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], accepted


async def start_tcp_source(
    data: bytes, *, then: str = "close"
) -> tuple[asyncio.Server, int, list[str]]:
    """A TCP server on 127.0.0.1 that sends ``data`` to each client as fast as it can.

    ``then``: "close" ends its side after the data (a clean FIN); "silent" keeps
    the connection open without sending anything more, even after the client's
    EOF, for 5 s. Returns the server, its port and a list of how each connection ended
    from the server's side ("eof", "reset").
    """
    endings: list[str] = []

    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            view = memoryview(data)
            for start in range(0, len(view), 2**16):
                writer.write(view[start : start + 2**16])
                await writer.drain()
            if then == "close":
                writer.write_eof()
            while await reader.read(65536):
                pass
            endings.append("eof")
            if then == "silent":
                # Silent even after the client's EOF (which ws-stream serve passes
                # on): the tunnel can only end by a timer of the client's.
                await asyncio.sleep(5)
        except ConnectionError:
            endings.append("reset")
        finally:
            writer.close()

    server = await asyncio.start_server(send, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], endings


def shell_command(*args: str, redirect: str) -> list[str]:
    """``sh -c "exec ws-stream ARGS REDIRECT"``: for ``<&-``, ``>/dev/full`` and the like."""
    import shlex

    return ["sh", "-c", f"exec {shlex.join(command(*args))} {redirect}"]
