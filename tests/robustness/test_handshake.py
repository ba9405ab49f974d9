"""Handshake abuse against our server: bad requests get an HTTP error, the handler never runs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

import ws_stream

from ..asyncio.helpers import echo, stream_of

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample: 16 bytes, base64
GOOD_ORIGIN = "https://good.example"
OPEN_TIMEOUT = 0.5

GOOD_HEADERS = {
    "Host": "127.0.0.1",
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
    "Origin": GOOD_ORIGIN,
}


def request(method: str = "GET", path: str = "/", extra: str = "", **headers: str | None) -> bytes:
    """A handshake request; a header set to None is left out, ``extra`` is appended raw."""
    fields = {**GOOD_HEADERS, **{k.replace("_", "-"): v for k, v in headers.items()}}
    lines = [f"{method} {path} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in fields.items() if value is not None]
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


class Guarded:
    """A ws_stream echo server that records every connection its callback sees."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.handled = 0

    @property
    def uri(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def exchange(self, data: bytes, timeout: float = 5.0) -> bytes:
        """Send raw bytes, read until the server closes; the bytes it answered."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(data)
            async with asyncio.timeout(timeout):
                return await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()

    async def still_serves(self) -> None:
        """A valid client still gets a working stream afterwards."""
        before = self.handled
        reader, writer = await ws_stream.open_connection(
            self.uri, ping_interval=None, origin=GOOD_ORIGIN
        )
        writer.write(b"still here\n")
        async with asyncio.timeout(5):
            assert await reader.readline() == b"still here\n"
        await stream_of(writer).close()
        assert self.handled == before + 1


@contextlib.asynccontextmanager
async def guarded_server() -> AsyncIterator[Guarded]:
    guard: Guarded

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        guard.handled += 1
        await echo(reader, writer)

    async with await ws_stream.start_server(
        handler,
        "127.0.0.1",
        0,
        ping_interval=None,
        open_timeout=OPEN_TIMEOUT,
        origins=[GOOD_ORIGIN],
    ) as server:
        guard = Guarded(server.sockets[0].getsockname()[1])
        yield guard


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response
    return int(response.split(b" ", 2)[1])


BAD_REQUESTS = [
    pytest.param(request(Sec_WebSocket_Key=None), 400, id="missing Sec-WebSocket-Key"),
    pytest.param(request(Sec_WebSocket_Key="not base64!"), 400, id="malformed key"),
    pytest.param(request(Sec_WebSocket_Key="AAAAAAAAAAAAAAAAAAAA"), 400, id="key of 15 bytes"),
    pytest.param(request(extra=f"Sec-WebSocket-Key: {KEY}\r\n"), 400, id="two keys"),
    pytest.param(request(Sec_WebSocket_Version="8"), 400, id="version 8"),
    pytest.param(request(Sec_WebSocket_Version=None), 400, id="missing version"),
    pytest.param(request("POST"), 405, id="POST"),
    pytest.param(request("PUT"), 405, id="PUT"),
    pytest.param(request(Upgrade="h2c"), 426, id="Upgrade h2c"),
    pytest.param(request(Upgrade=None), 426, id="missing Upgrade"),
    pytest.param(request(Connection="keep-alive"), 426, id="Connection without upgrade"),
    pytest.param(request(Origin="https://evil.example"), 403, id="disallowed Origin"),
    pytest.param(request(Origin=None), 403, id="missing Origin"),
    pytest.param(request(path="/" + "a" * 9000), 414, id="request line too long"),
    pytest.param(request(X_Big="b" * 9000), 431, id="header line too long"),
    pytest.param(
        request(extra="".join(f"X-{i}: {i}\r\n" for i in range(300))), 431, id="too many headers"
    ),
]


@pytest.mark.parametrize(("data", "status"), BAD_REQUESTS)
async def test_bad_handshake_gets_an_http_error(data: bytes, status: int) -> None:
    async with guarded_server() as guard:
        response = await guard.exchange(data)
        assert status_of(response) == status
        assert b"101" not in response.split(b"\r\n", 1)[0]
        assert guard.handled == 0
        await guard.still_serves()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(40), id="TLS hello"),
        pytest.param(b"\r\n\r\n", id="empty request"),
        pytest.param(b"GET /\r\n\r\n", id="HTTP/0.9"),
        pytest.param(b"\xff\xfe garbage \x00\r\n\r\n", id="binary garbage"),
    ],
)
async def test_not_http_at_all_is_closed_without_an_answer(data: bytes) -> None:
    async with guarded_server() as guard:
        assert await guard.exchange(data) == b""
        assert guard.handled == 0
        await guard.still_serves()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="nothing"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n", id="half a request"),
        pytest.param(request()[:-2], id="all but the blank line"),
    ],
)
async def test_stalled_handshake_is_closed_after_open_timeout(data: bytes) -> None:
    async with guarded_server() as guard:
        t0 = time.monotonic()
        assert await guard.exchange(data, timeout=OPEN_TIMEOUT + 1) == b""
        # Closed by the timeout, not for another reason (timers never fire early
        # by more than the clock's resolution).
        assert time.monotonic() - t0 >= OPEN_TIMEOUT - 0.05
        assert guard.handled == 0
        await guard.still_serves()
