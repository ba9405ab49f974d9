"""What a failed opening handshake says, on every shell (one mapping: ws_stream._failures).

Real servers on 127.0.0.1: a plain HTTP server answering a fixed status (also
standing in for an HTTP proxy that refuses), a plain ``ws://`` server reached
with ``wss://``, and ``wss://`` servers that require a client certificate. Each
shell must say what the status means and what to do, never show the URI's (or
the proxy's) credentials, and call a TLS handshake that breaks off what it most
often is: a server that does not speak TLS, or, after a TLS alert, one that
wants a client certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
import trustme
from websockets.exceptions import ProxyError

import ws_stream
import ws_stream.sync
import ws_stream.trio
from ws_stream._failures import (
    handshake_failure,
    proxy_status_advice,
    redact,
    status_advice,
)
from ws_stream._handshake import parse, proxy_for
from ws_stream.exceptions import HandshakeError

from .ports import refused_port

SECRET = "hunter2"


@contextlib.contextmanager
def http_server(status_line: str) -> Iterator[int]:
    """A TCP server that reads a request head and answers ``status_line``; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                head = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in head:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        head += chunk
                    conn.sendall(
                        f"HTTP/1.1 {status_line}\r\nContent-Length: 0\r\n"
                        "Connection: close\r\n\r\n".encode()
                    )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@contextlib.contextmanager
def plain_ws_server() -> Iterator[int]:
    """A plain ws:// ws_stream server (blocking shell) that echoes; yields its port."""

    def handler(sock: ws_stream.sync.WsSocket) -> None:
        with contextlib.suppress(OSError):
            sock.recv(1)

    server = ws_stream.sync.serve(handler, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.socket.getsockname()[1]
    finally:
        server.shutdown()
        thread.join(5)


def open_asyncio(uri: str, **kw: object) -> None:
    async def main() -> None:
        reader, writer = await ws_stream.open_connection(uri, open_timeout=5, **kw)  # type: ignore[arg-type]
        writer.close()

    asyncio.run(main())


def open_trio(uri: str, **kw: object) -> None:
    async def main() -> None:
        async with ws_stream.trio.open_websocket_stream(uri, open_timeout=5, **kw):  # type: ignore[arg-type]
            pass

    trio.run(main)


def open_sync(uri: str, **kw: object) -> None:
    ws_stream.sync.connect(uri, open_timeout=5, **kw).close()


SHELLS: dict[str, Callable[..., None]] = {
    "asyncio": open_asyncio,
    "trio": open_trio,
    "blocking": open_sync,
}


@pytest.mark.parametrize("shell", SHELLS)
def test_503_says_the_server_is_full(shell: str) -> None:
    with http_server("503 Service Unavailable") as port, pytest.raises(HandshakeError) as info:
        SHELLS[shell](f"ws://user:{SECRET}@127.0.0.1:{port}/tunnel")
    message = str(info.value)
    assert info.value.status == 503
    assert "full" in message and "try again later" in message, message
    assert "credentials" not in message, message
    assert SECRET not in message, message


@pytest.mark.parametrize("shell", SHELLS)
def test_404_says_check_the_path_and_hides_credentials(shell: str) -> None:
    with http_server("404 Not Found") as port, pytest.raises(HandshakeError) as info:
        SHELLS[shell](f"ws://user:{SECRET}@127.0.0.1:{port}/nowhere")
    assert info.value.status == 404
    assert "path" in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("shell", SHELLS)
def test_invalid_uri_hides_credentials(shell: str) -> None:
    with pytest.raises(ValueError) as info:
        SHELLS[shell](f"http://user:{SECRET}@127.0.0.1:1/")
    assert SECRET not in str(info.value)
    assert "not a valid WebSocket URI" in str(info.value)


@pytest.fixture(scope="module")
def client_ssl() -> ssl.SSLContext:
    ca = trustme.CA()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.mark.parametrize("shell", SHELLS)
def test_wss_to_a_plain_server_says_it_may_not_speak_tls(
    shell: str, client_ssl: ssl.SSLContext
) -> None:
    with plain_ws_server() as port, pytest.raises(HandshakeError) as info:
        SHELLS[shell](f"wss://127.0.0.1:{port}/", ssl=client_ssl)
    message = str(info.value)
    assert "may not speak TLS" in message and "ws://" in message, message
    assert f"127.0.0.1:{port}" in message


def test_a_rejected_certificate_stays_a_certificate_error() -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    assert handshake_failure(exc, "wss://example.test/") is None


@pytest.mark.parametrize(
    ("status", "remedy"),
    [
        (400, "headers"),
        (401, "credentials"),
        (403, "Origin"),
        (404, "path"),
        (429, "try again later"),
        (500, "logs"),
        (503, "full"),
        (599, "logs"),  # any other 5xx
        (301, "redirect"),  # any 3xx
        (418, "check the URI path and credentials"),  # anything else
    ],
)
def test_status_advice_names_the_remedy(status: int, remedy: str) -> None:
    assert remedy in status_advice(status)


def test_redact_hides_user_info_only() -> None:
    assert redact(f"wss://u:{SECRET}@h:1/p?q=1") == "wss://***@h:1/p?q=1"
    assert redact("ws://h/p") == "ws://h/p"


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"listening on 10.0.0.1:22 is not allowed\n", '"listening on 10.0.0.1:22 is not allowed"'),
        (b"first line\r\nsecond line\n", '"first line"'),
        (b"\x1b[31mred\x07\n", '"[31mred"'),
        ("x" * 500, '"' + "x" * 200 + '..."'),
        (b"\xff\xfe binary", None),
        (b"", None),
    ],
)
def test_a_refusal_shows_what_the_server_said(body: bytes | str, said: str | None) -> None:
    async def main() -> str:
        def refuse(connection: Any, request: Any) -> Any:
            response = connection.respond(403, "")
            response.body = body.encode() if isinstance(body, str) else body
            del response.headers["Content-Length"]  # Headers is a multidict: replace it
            response.headers["Content-Length"] = str(len(response.body))
            return response

        async with await ws_stream.start_server(
            lambda r, w: None, "127.0.0.1", 0, process_request=refuse
        ) as server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(HandshakeError) as info:
                await ws_stream.open_connection(f"ws://127.0.0.1:{port}/")
        return str(info.value)

    message = asyncio.run(main())
    assert "HTTP 403" in message
    if said is None:
        assert "the server said" not in message, message
    else:
        assert f"the server said: {said}" in message, message


def test_redact_hides_tokens_in_the_query() -> None:
    # Browsers' WebSockets cannot set headers: a gateway's token rides in the
    # query (serve --bearer-file), and must not show in messages and logs.
    assert redact(f"ws://h/p?token={SECRET}&x=1") == "ws://h/p?token=***&x=1"
    assert redact(f"ws://h/p?a=1&access_token={SECRET}") == "ws://h/p?a=1&access_token=***"
    assert redact("ws://h/p?tokens=1&mytoken=2") == "ws://h/p?tokens=1&mytoken=2"


def test_a_refused_handshake_does_not_show_the_query_token() -> None:
    async def main() -> str:
        def refuse(connection: Any, request: Any) -> Any:
            return connection.respond(401, "no\n")

        async with await ws_stream.start_server(
            lambda r, w: None, "127.0.0.1", 0, process_request=refuse
        ) as server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(HandshakeError) as info:
                await ws_stream.open_connection(f"ws://127.0.0.1:{port}/vnc?token={SECRET}")
        return str(info.value)

    message = asyncio.run(main())
    assert SECRET not in message, message
    assert "token=***" in message


# Proxies: a failure of the proxy names it (credentials hidden) and says how.
# The real proxies (tinyproxy, dante, pproxy) are in tests/cli/test_proxies.py;
# here a fixed-answer HTTP server stands in for a proxy that refuses, and refused
# ports for proxies that do not run, on the shells that support proxies.

PROXY_SHELLS = {name: SHELLS[name] for name in ("asyncio", "blocking")}


@pytest.mark.parametrize("shell", PROXY_SHELLS)
def test_a_proxy_that_wants_credentials_says_so_with_its_status(shell: str) -> None:
    with http_server("407 Proxy Authentication Required") as port:
        proxy = f"http://127.0.0.1:{port}"
        with pytest.raises(HandshakeError) as info:
            SHELLS[shell](f"ws://user:{SECRET}@127.0.0.1:1/", proxy=proxy)
    message = str(info.value)
    assert info.value.status == 407
    assert f"the HTTP proxy {proxy} refused the tunnel to 127.0.0.1:1 with HTTP 407" in message
    assert "wants credentials" in message and "USER:PASSWORD@" in message, message
    assert SECRET not in message


@pytest.mark.parametrize("shell", PROXY_SHELLS)
def test_a_proxy_that_rejects_the_credentials_hides_them(shell: str) -> None:
    with (
        http_server("407 Proxy Authentication Required") as port,
        pytest.raises(HandshakeError) as info,
    ):
        SHELLS[shell]("ws://127.0.0.1:1/", proxy=f"http://user:{SECRET}@127.0.0.1:{port}")
    message = str(info.value)
    assert f"the HTTP proxy http://***@127.0.0.1:{port} refused" in message, message
    assert "rejected the credentials" in message, message
    assert SECRET not in message


@pytest.mark.parametrize("shell", PROXY_SHELLS)
@pytest.mark.parametrize("scheme", ["http", "socks5", "socks5h"])
def test_a_proxy_that_does_not_run_is_a_refused_connection_to_it(shell: str, scheme: str) -> None:
    if scheme.startswith("socks"):
        pytest.importorskip("python_socks", reason="python-socks (the test extra) is missing")
    proxy = f"{scheme}://user:{SECRET}@127.0.0.1:{refused_port()}"
    with pytest.raises(ConnectionRefusedError) as info:
        SHELLS[shell]("ws://127.0.0.1:1/", proxy=proxy)
    message = str(info.value)
    kind = "HTTP" if scheme == "http" else "SOCKS"
    assert f"cannot connect to the {kind} proxy {scheme}://***@127.0.0.1:" in message, message
    assert "Connection refused" in message
    assert SECRET not in message


def test_the_proxy_of_the_environment_is_the_one_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    proxy = f"http://user:{SECRET}@127.0.0.1:{refused_port()}"
    monkeypatch.setenv("ws_proxy", proxy)
    with pytest.raises(ConnectionRefusedError) as info:
        open_asyncio("ws://127.0.0.1:1/")
    assert "cannot connect to the HTTP proxy http://***@127.0.0.1:" in str(info.value)
    with pytest.raises(ConnectionRefusedError) as info:
        open_asyncio("ws://127.0.0.1:1/", proxy=None)  # no proxy: the server refuses
    assert "proxy" not in str(info.value)


def test_proxy_status_advice() -> None:
    assert "rejected the credentials" in proxy_status_advice(401, credentials=True)
    assert "wants credentials" in proxy_status_advice(407, credentials=False)
    assert "access rules" in proxy_status_advice(403, credentials=True)
    assert "could not reach the server" in proxy_status_advice(502, credentials=False)
    assert proxy_status_advice(418, credentials=False)


def socks_failure(cause: BaseException) -> BaseException | None:
    """What the mapping makes of python-socks' ``cause``, wrapped as websockets wraps it."""
    exc = ProxyError("failed to connect to SOCKS proxy")
    exc.__cause__ = cause
    return handshake_failure(exc, "wss://example.test/", proxy=f"socks5://u:{SECRET}@h:1080")


def test_socks_errors_say_what_the_proxy_answered() -> None:
    socks = pytest.importorskip("python_socks", reason="python-socks (the test extra) is missing")
    refused = socks_failure(socks.ProxyError("Connection refused by destination host", 5))
    assert isinstance(refused, HandshakeError)
    assert "the SOCKS proxy socks5://***@h:1080 could not reach example.test:443" in str(refused)
    auth = socks_failure(socks.ProxyError("Username and password authentication failure"))
    assert "refused the authentication" in str(auth)
    assert "check the user name and password" in str(auth)
    closed = socks_failure(socks.ProxyError("Connection closed unexpectedly"))
    assert "closed the connection during the SOCKS handshake" in str(closed)
    rules = socks_failure(socks.ProxyError("Connection not allowed by ruleset", 2))
    assert "does not allow a connection to example.test:443" in str(rules)
    for mapped in (refused, auth, closed, rules):
        assert SECRET not in str(mapped)


def test_a_timeout_through_a_proxy_stays_a_timeout_and_names_it() -> None:
    mapped = handshake_failure(
        TimeoutError("timed out during opening handshake"),
        "ws://h/",
        proxy=f"http://u:{SECRET}@p:3128",
    )
    assert isinstance(mapped, TimeoutError)
    assert "through the HTTP proxy http://***@p:3128" in str(mapped)
    assert SECRET not in str(mapped)


def test_without_a_proxy_nothing_changes() -> None:
    assert handshake_failure(ConnectionRefusedError(111, "refused"), "ws://h/") is None
    assert handshake_failure(TimeoutError(), "ws://h/") is None


def test_proxy_for_mirrors_websockets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("https_proxy", "http://p:3128")
    wsuri = parse("wss://h/")
    assert proxy_for("wss://h/", wsuri, True) == "http://p:3128"
    assert proxy_for("wss://h/", wsuri, "socks5://s:1080") == "socks5://s:1080"
    assert proxy_for("wss://h/", wsuri, None) is None
    monkeypatch.setenv("no_proxy", "h")
    assert proxy_for("wss://h/", wsuri, True) is None


# A server that requires a client certificate (mutual TLS)


@contextlib.contextmanager
def mtls_server(maximum: ssl.TLSVersion) -> Iterator[tuple[int, trustme.CA]]:
    """A wss:// server that requires a client certificate; yields its port and CA."""
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    context.maximum_version = maximum

    def handler(sock: ws_stream.sync.WsSocket) -> None:
        with contextlib.suppress(OSError):
            sock.recv(1)

    # close_timeout: the asyncio opener leaves without a closing handshake.
    server = ws_stream.sync.serve(handler, "127.0.0.1", 0, ssl=context, close_timeout=1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.socket.getsockname()[1], ca
    finally:
        server.shutdown()
        thread.join(5)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_tls12_server_that_wants_a_client_certificate_says_so(shell: str) -> None:
    """TLS 1.2: the server's alert comes during the TLS handshake, on every shell."""
    with mtls_server(ssl.TLSVersion.TLSv1_2) as (port, ca), pytest.raises(HandshakeError) as info:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        SHELLS[shell](f"wss://127.0.0.1:{port}/", ssl=context)
    message = str(info.value)
    assert "client certificate" in message and "--client-cert" in message, message
    assert "may not speak TLS" not in message


@pytest.mark.parametrize("shell", PROXY_SHELLS)  # the shells built on websockets' clients
def test_a_tls13_server_that_wants_a_client_certificate_hints_at_it(shell: str) -> None:
    """TLS 1.3: the server's alert comes after the handshake, while the upgrade is sent
    or awaited: the message gives the alert when websockets saw it, else says the
    server closed without answering, which is what such a server does."""
    with mtls_server(ssl.TLSVersion.TLSv1_3) as (port, ca), pytest.raises(HandshakeError) as info:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        SHELLS[shell](f"wss://127.0.0.1:{port}/", ssl=context)
    message = str(info.value)
    assert "client certificate" in message, message
    assert "may not speak TLS" not in message


@pytest.mark.parametrize("shell", SHELLS)
def test_with_its_client_certificate_the_server_accepts(shell: str) -> None:
    with mtls_server(ssl.TLSVersion.TLSv1_3) as (port, ca):
        context = ssl.create_default_context()
        ca.configure_trust(context)
        ca.issue_cert("client.example").configure_cert(context)
        SHELLS[shell](f"wss://127.0.0.1:{port}/", ssl=context)


@pytest.mark.parametrize("password", ["pa/ss", "pa?ss", "pa#ss", "p@ss", "pa%2Fss"])
def test_redact_hides_passwords_with_any_character(password: str) -> None:
    for uri in (f"ws://user:{password}@h:1/p", f"http://user:{password}@proxy:3128"):
        shown = redact(uri)
        assert password not in shown and "ss" not in shown.split("@")[0], shown
        assert shown.endswith(("@h:1/p", "@proxy:3128")), shown
