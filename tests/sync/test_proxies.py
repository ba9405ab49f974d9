"""The blocking client through proxies: HTTP CONNECT (also over TLS: TLS in TLS for
wss://), SOCKS5 (python-socks), the environment's proxy, and what a refusal says.

The proxies are the small independent ones of tests/sync/proxies.py; the real
ones (tinyproxy, dante, pproxy) are exercised by tests/cli/test_proxies.py.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import threading

import pytest
import trustme

import ws_stream
from ws_stream.sync import WsSocket

from .helpers import connect, stream_server
from .proxies import http_proxy, socks5_proxy

DATA = os.urandom(300_000)


def echo_all(sock: WsSocket) -> None:
    with sock.makefile("rb") as f:
        while data := f.read1(65536):
            sock.sendall(data)


def round_trip(sock: WsSocket) -> None:
    sock.settimeout(10)
    sock.sendall(DATA)
    with sock.makefile("rb") as f:
        assert f.read(len(DATA)) == DATA
    sock.close()
    assert sock.close_code == 1000


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    return context


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)


def test_ws_through_an_http_proxy_with_credentials() -> None:
    with (
        stream_server(echo_all) as uri,
        http_proxy(credentials="alice:s3cret") as (proxy, seen),
    ):
        round_trip(connect(uri, proxy=proxy))
    port = uri.rsplit(":", 1)[1].strip("/")
    assert seen.requests[0].startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n".encode())
    assert b"Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n" in seen.requests[0]


def test_wss_through_an_https_proxy_is_tls_in_tls(ca: trustme.CA) -> None:
    with (
        stream_server(echo_all, ssl=server_context(ca)) as uri,
        http_proxy(tls=server_context(ca)) as (proxy, seen),
    ):
        wss = uri.replace("ws://127.0.0.1", "wss://localhost")
        sock = connect(wss, proxy=proxy, ssl=client_context(ca), proxy_ssl=client_context(ca))
        round_trip(sock)
    assert len(seen.requests) == 1


def test_the_environment_proxy_is_used_unless_proxy_is_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with stream_server(echo_all) as uri, http_proxy() as (proxy, seen):
        monkeypatch.setenv("ws_proxy", proxy)
        monkeypatch.setenv("no_proxy", "")
        round_trip(connect(uri))
        assert len(seen.requests) == 1
        round_trip(connect(uri, proxy=None))
        assert len(seen.requests) == 1


def test_a_proxy_refusal_names_the_proxy_and_the_status() -> None:
    with http_proxy(credentials="alice:s3cret") as (proxy, _):
        wrong = proxy.replace("alice:s3cret", "alice:wrong")
        with pytest.raises(ws_stream.HandshakeError) as info:
            connect("ws://127.0.0.1:1/", proxy=wrong)
    assert info.value.status == 407
    message = str(info.value)
    assert "the HTTP proxy http://***@127.0.0.1:" in message, message
    assert "refused the tunnel to 127.0.0.1:1 with HTTP 407" in message, message
    assert "wrong" not in message and "s3cret" not in message


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
def test_through_a_socks5_proxy(scheme: str) -> None:
    pytest.importorskip("python_socks")
    with (
        stream_server(echo_all) as uri,
        socks5_proxy(credentials=("bob", "pw")) as (port, seen),
    ):
        target = uri.replace("127.0.0.1", "localhost")
        round_trip(connect(target, proxy=f"{scheme}://bob:pw@127.0.0.1:{port}"))
    host = seen.destinations[0][0]
    # socks5h: the proxy resolves the name; socks5: this machine does.
    assert host == ("localhost" if scheme == "socks5h" else "127.0.0.1")


def test_a_socks_refusal_says_the_proxy_could_not_reach_the_server() -> None:
    pytest.importorskip("python_socks")
    with (
        socks5_proxy(refuse=True) as (port, _),
        pytest.raises(ws_stream.HandshakeError) as info,
    ):
        connect("ws://127.0.0.1:1/", proxy=f"socks5://127.0.0.1:{port}")
    assert f"the SOCKS proxy socks5://127.0.0.1:{port} could not reach 127.0.0.1:1" in str(
        info.value
    )


def test_socks_with_wrong_credentials_is_an_authentication_error() -> None:
    pytest.importorskip("python_socks")
    with (
        socks5_proxy(credentials=("bob", "pw")) as (port, _),
        pytest.raises(ws_stream.HandshakeError) as info,
    ):
        connect("ws://127.0.0.1:1/", proxy=f"socks5://bob:nope@127.0.0.1:{port}")
    assert "refused the authentication" in str(info.value)
    assert "nope" not in str(info.value)


def test_proxy_options_that_do_not_fit_are_value_errors() -> None:
    with pytest.raises(ValueError):
        connect(
            "ws://127.0.0.1:1/", proxy="http://127.0.0.1:1", proxy_ssl=ssl.create_default_context()
        )
    with pytest.raises(ValueError, match="invalid proxy"):
        connect("ws://127.0.0.1:1/", proxy="ftp://127.0.0.1:1")


def test_socks_without_python_socks_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "python_socks", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "python_socks.sync", None)
    with pytest.raises(ImportError, match=r"pip install 'ws-stream\[socks\]'"):
        connect("ws://127.0.0.1:1/", proxy="socks5://127.0.0.1:1")


def test_an_http_proxy_that_closes_without_answering() -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def close_after_request() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.close()

    thread = threading.Thread(target=close_after_request, daemon=True)
    thread.start()
    try:
        with pytest.raises(ws_stream.HandshakeError) as info:
            connect("ws://127.0.0.1:1/", proxy=f"http://127.0.0.1:{listener.getsockname()[1]}")
        assert "proxy" in str(info.value) and "CONNECT" in str(info.value)
    finally:
        thread.join(5)
        listener.close()
