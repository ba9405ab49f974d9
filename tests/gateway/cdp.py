"""A minimal Chrome DevTools Protocol client, and headless Chromium to drive with it.

Only what the noVNC tests need: start Chromium with ``--remote-debugging-port=0``,
read the port it picked from ``DevToolsActivePort`` in its profile, connect
(websockets' asyncio client) to the page target, then ``Runtime.evaluate``,
``Page.navigate`` and ``Page.captureScreenshot``. Chromium is the Debian package
``chromium``; without it the tests are skipped and say so.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

CHROMIUM = shutil.which("chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--hide-scrollbars",
    "--mute-audio",
    "--lang=en-US",  # noVNC translates its status texts to the browser's language
]

#: Plain HTTP to 127.0.0.1, never through a proxy of the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class CdpError(Exception):
    """An error answer to a CDP command."""


class Cdp:
    """One CDP session over a target's ``webSocketDebuggerUrl``."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                future = self._pending.pop(message.get("id", -1), None)
                if future is None:
                    self.events.append(message)
                elif not future.done():
                    future.set_result(message)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CdpError("the DevTools connection closed"))

    async def send(self, method: str, timeout: float = 15.0, **params: Any) -> dict[str, Any]:
        """Send a command and return its ``result``; raise CdpError on an ``error``."""
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        async with asyncio.timeout(timeout):
            answer = await future
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serializable values)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def navigate(self, url: str) -> None:
        """Open ``url`` in the page (returns once the navigation started)."""
        result = await self.send("Page.navigate", url=url)
        if "errorText" in result:
            raise CdpError(f"cannot open {url}: {result['errorText']}")

    def responses(self) -> list[tuple[str, int]]:
        """The URL and HTTP status of every response the page received so far."""
        return [
            (event["params"]["response"]["url"], event["params"]["response"]["status"])
            for event in self.events
            if event.get("method") == "Network.responseReceived"
        ]

    def console(self) -> str:
        """The page's console messages and uncaught exceptions so far, one a line."""
        lines = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.consoleAPICalled":
                args = " ".join(
                    str(arg.get("value", arg.get("description", ""))) for arg in params["args"]
                )
                lines.append(f"console.{params['type']}: {args}")
            elif event.get("method") == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description", details.get("text"))
                lines.append(f"exception: {text}")
        return "\n".join(lines)

    async def screenshot(self) -> bytes:
        """A PNG of the page's viewport."""
        result = await self.send("Page.captureScreenshot", format="png")
        return base64.b64decode(result["data"])

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()


def _get_json(url: str) -> Any:
    with _OPENER.open(url, timeout=10) as response:
        return json.load(response)


async def _devtools_port(profile: Path, proc: asyncio.subprocess.Process, timeout: float) -> int:
    """The port Chromium wrote to ``DevToolsActivePort`` (its first line)."""
    path = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int(path.read_text().splitlines()[0])
        if proc.returncode is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"Chromium wrote no {path} in {timeout} s (exit status {proc.returncode})"
            )
        await asyncio.sleep(0.05)


async def _page_target(port: int, timeout: float) -> str:
    """The ``webSocketDebuggerUrl`` of Chromium's first page target."""
    deadline = time.monotonic() + timeout
    while True:
        targets = await asyncio.to_thread(_get_json, f"http://127.0.0.1:{port}/json/list")
        pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
        if pages:
            return str(pages[0]["webSocketDebuggerUrl"])
        if time.monotonic() > deadline:
            raise AssertionError(f"Chromium shows no page target in {timeout} s: {targets}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def chromium(
    log: Path, *, viewport: tuple[int, int] = (1024, 640), timeout: float = 20.0
) -> AsyncIterator[Cdp]:
    """Run headless Chromium on a blank page with a fresh profile; yield a CDP session of it.

    The page's viewport is ``viewport`` (CSS pixels, scale 1); the Page, Runtime and
    Network domains are enabled (their events are in ``Cdp.events``). Chromium's stderr
    goes to ``log``; its whole process group is ended after.
    """
    assert CHROMIUM is not None, "Chromium is not installed (Debian package `chromium`)"
    with (
        tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile,
        log.open("wb") as stderr,
    ):
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM,
            *FLAGS,
            f"--window-size={viewport[0]},{viewport[1]}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group: the renderers go with it
        )
        try:
            port = await _devtools_port(Path(profile), proc, timeout)
            target = await _page_target(port, timeout)
            async with asyncio.timeout(timeout):
                ws = await connect(target, proxy=None, max_size=None, ping_interval=None)
            session = Cdp(ws)
            try:
                for domain in ("Page", "Runtime", "Network"):
                    await session.send(f"{domain}.enable")
                await session.send(
                    "Emulation.setDeviceMetricsOverride",
                    width=viewport[0],
                    height=viewport[1],
                    deviceScaleFactor=1,
                    mobile=False,
                )
                yield session
            finally:
                await session.close()
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    async with asyncio.timeout(5):
                        await proc.wait()
                    break
                except TimeoutError:
                    continue


async def wait_until(
    session: Cdp, expression: str, timeout: float, *, describe: str = "document.title"
) -> Any:
    """Evaluate ``expression`` until it is truthy (within ``timeout`` s); return its value.

    On timeout the assertion shows the value of ``describe`` in the page.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await session.evaluate(expression)
        except CdpError as exc:  # e.g. no execution context yet while the page loads
            value = None
            error: CdpError | None = exc
        else:
            error = None
        if value:
            return value
        if time.monotonic() > deadline:
            try:
                state = await session.evaluate(describe)
            except CdpError as exc:
                state = f"({exc})"
            raise AssertionError(
                f"{expression!r} still false after {timeout} s (last error: {error}); "
                f"page: {state!r}; console:\n{session.console()}"
            )
        await asyncio.sleep(0.1)
