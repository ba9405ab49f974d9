"""The library's clients through real proxies, on every runtime (asyncio, trio).

HTTP CONNECT (tinyproxy, with and without a password) and SOCKS5 (dante) with
the same shared code (ws_stream/_handshake.py); the CLI's runs are in
tests/cli/test_proxies.py, whose proxy fixtures these reuse. The blocking
shell's runs are in tests/sync.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from typing import Any

import pytest
import trio

import ws_stream
import ws_stream.trio

from .cli.test_proxies import PASSWORD, Proxy, proxies  # noqa: F401 - the fixture
from .trio.helpers import start_server

BLOB = os.urandom(1 << 20)
pytestmark = pytest.mark.timeout(60)


async def _trio_echo(stream: ws_stream.trio.WsStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


def _asyncio_round_trip(uri: str, proxy: str) -> bytes:
    async def main() -> bytes:
        reader, writer = await ws_stream.open_connection(uri, proxy=proxy, ping_interval=None)
        writer.write(BLOB)
        data = await reader.readexactly(len(BLOB))
        writer.close()
        return data

    return asyncio.run(main())


async def _trio_round_trip(uri: str, proxy: str) -> bytes:
    async with ws_stream.trio.open_websocket_stream(uri, proxy=proxy, ping_interval=None) as s:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.send_all, BLOB)
            data = b""
            while len(data) < len(BLOB):
                data += await s.receive_some(1 << 16)
        return data


def _serve_trio_echo() -> tuple[str, Callable[[], None]]:
    """A trio echo server in a thread; returns its URI and a stopper."""
    import threading

    ready: list[str] = []
    started = threading.Event()
    cancel: list[Any] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            cancel.append((trio.lowlevel.current_trio_token(), nursery.cancel_scope))
            ready.append(await start_server(nursery, _trio_echo))
            started.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert started.wait(10)

    def stopper() -> None:
        token, scope = cancel[0]
        token.run_sync_soon(scope.cancel)
        thread.join(10)

    return ready[0], stopper


@pytest.mark.parametrize("runtime", ["asyncio", "trio"])
def test_through_an_http_proxy(
    proxies: dict[str, Callable[..., Proxy]],  # noqa: F811 - the fixture
    runtime: str,
) -> None:
    uri, stop = _serve_trio_echo()
    try:
        proxy = proxies["tinyproxy"](int(uri.rsplit(":", 1)[1].strip("/")))
        if runtime == "asyncio":
            data = _asyncio_round_trip(uri, proxy.url())
        else:
            data = trio.run(_trio_round_trip, uri, proxy.url())
        assert hashlib.sha256(data).digest() == hashlib.sha256(BLOB).digest()
        assert "CONNECT" in proxy.wait_log("CONNECT")
    finally:
        stop()


@pytest.mark.parametrize("runtime", ["asyncio", "trio"])
def test_through_a_socks_proxy(
    proxies: dict[str, Callable[..., Proxy]],  # noqa: F811 - the fixture
    runtime: str,
) -> None:
    uri, stop = _serve_trio_echo()
    try:
        proxy = proxies["danted"]()
        url = proxy.url("socks5h")
        if runtime == "asyncio":
            data = _asyncio_round_trip(uri, url)
        else:
            data = trio.run(_trio_round_trip, uri, url)
        assert hashlib.sha256(data).digest() == hashlib.sha256(BLOB).digest()
        port = uri.rsplit(":", 1)[1].strip("/")
        assert f"127.0.0.1.{port}" in proxy.wait_log(f"127.0.0.1.{port}")  # dante relayed it
    finally:
        stop()


@pytest.mark.parametrize("runtime", ["asyncio", "trio"])
def test_a_wrong_proxy_password_is_a_clear_error_without_the_password(
    proxies: dict[str, Callable[..., Proxy]],  # noqa: F811 - the fixture
    runtime: str,
) -> None:
    uri, stop = _serve_trio_echo()
    try:
        proxy = proxies["tinyproxy"](int(uri.rsplit(":", 1)[1].strip("/")), auth=True)
        url = proxy.url(user="user", password="wrong-" + PASSWORD)
        with pytest.raises(ws_stream.HandshakeError) as info:
            if runtime == "asyncio":
                _asyncio_round_trip(uri, url)
            else:
                trio.run(_trio_round_trip, uri, url)
        assert info.value.status in (401, 407)
        assert "rejected the credentials" in str(info.value)
        assert "wrong-" not in str(info.value)
    finally:
        stop()
