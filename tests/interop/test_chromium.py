"""Chromium headless: a page served from 127.0.0.1 opens a WebSocket to our asyncio server.

The page (browser_peer.html) plays the case and POSTs what it saw to the small
HTTP server this test runs. Chromium is the Debian package ``chromium``
(``.ci/run`` installs it); without it these tests are skipped and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .matrix import HERE, params, spec
from .ours import STEP_TIMEOUT, asyncio_server_case, check

CHROMIUM = shutil.which("chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian package `chromium`; .ci/run installs it)",
)


@contextlib.asynccontextmanager
async def page_server() -> AsyncIterator[tuple[str, asyncio.Future[dict[str, Any]]]]:
    """Serve browser_peer.html on 127.0.0.1 and take its POST /result.

    Yields the page's base URL and a future of the JSON result.
    """
    page = (HERE / "browser_peer.html").read_bytes()
    result: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            method, target, _ = head.split("\r\n", 1)[0].split(" ", 2)
            headers = dict(
                (name.strip().lower(), value.strip())
                for name, value in (line.split(":", 1) for line in head.split("\r\n")[1:] if line)
            )
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if method == "GET" and urllib.parse.urlsplit(target).path == "/":
                status, content = "200 OK", page
            elif method == "POST" and target == "/result":
                if not result.done():
                    result.set_result(json.loads(body))
                status, content = "204 No Content", b""
            else:
                status, content = "404 Not Found", b""
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n"
                f"Content-Length: {len(content)}\r\nConnection: close\r\n\r\n".encode()
                + content
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # a speculative connection the browser opened and dropped
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/", result


@contextlib.asynccontextmanager
async def chromium(url: str, log: Path) -> AsyncIterator[None]:
    """Run headless Chromium on ``url`` with a fresh profile; end its process group after."""
    assert CHROMIUM is not None
    with (
        tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile,
        log.open("wb") as stderr,
    ):
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}",
            url,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group: the renderers go with it
        )
        try:
            yield
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


@pytest.mark.parametrize("case", params("chromium"))
def test_chromium(case: str, tmp_path: Path) -> None:
    log = tmp_path / "chromium.log"

    async def peer(uri: str) -> dict[str, Any]:
        async with page_server() as (base, result):
            query = urllib.parse.urlencode({"ws": uri, "spec": json.dumps(spec(case))})
            async with chromium(f"{base}?{query}", log):
                try:
                    async with asyncio.timeout(STEP_TIMEOUT):
                        return await result
                except TimeoutError:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise AssertionError(
                        f"no result from Chromium; its log ends:\n{tail}"
                    ) from None

    async def main() -> None:
        # Our server echoes in the bulk case: the page checks the echo itself too.
        ours, report = await asyncio_server_case(case, peer, echo=True)
        check(case, ours, report)
        if case == "bulk":
            assert report["recv_sha"] == report["sent_sha"]
            assert report["blobs"] > 0 and report["buffers"] > 0

    asyncio.run(asyncio.wait_for(main(), 2 * STEP_TIMEOUT))
