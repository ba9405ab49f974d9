"""ws_stream.sync.serve(): its own accept loop and handshake, hooks, and shutdown."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

import ws_stream
import ws_stream.sync
from ws_stream.sync import WsSocket

from .helpers import connect, echo, stream_server


def never(sock: WsSocket) -> None:
    raise AssertionError("the handler must not run")


def test_process_request_gets_the_protocol_and_can_refuse() -> None:
    seen: list[tuple[Any, Any]] = []

    def reject(protocol: ServerProtocol, request: Request) -> Response | None:
        seen.append((protocol, request))
        if request.path == "/ok":
            return None
        return protocol.reject(403, "no\n")

    with stream_server(echo, process_request=reject) as uri:
        with pytest.raises(ws_stream.HandshakeError) as info:
            connect(uri + "nope")
        assert info.value.status == 403
        with connect(uri + "ok") as sock:
            sock.settimeout(5)
            sock.sendall(b"hi")
            assert sock.recv(2) == b"hi"
    assert [type(p) for p, _ in seen] == [ServerProtocol, ServerProtocol]
    assert [r.path for _, r in seen] == ["/nope", "/ok"]


def test_process_request_that_raises_is_http_500() -> None:
    def broken(protocol: ServerProtocol, request: Request) -> Response | None:
        raise RuntimeError("bug in the hook")

    with (
        stream_server(never, process_request=broken) as uri,
        pytest.raises(ws_stream.HandshakeError) as info,
    ):
        connect(uri)
    assert info.value.status == 500


def test_select_subprotocol_gets_the_protocol() -> None:
    seen: list[object] = []

    def select(protocol: ServerProtocol, offered: Any) -> Any:
        seen.append(protocol)
        return offered[-1]

    with (
        stream_server(echo, subprotocols=["a", "b"], select_subprotocol=select) as uri,
        connect(uri, subprotocols=["a", "b"]) as sock,
    ):
        assert sock.websocket.subprotocol == "b"
    assert len(seen) == 1 and isinstance(seen[0], ServerProtocol)


def test_origins_are_checked() -> None:
    with stream_server(never, origins=["https://good.example"]) as uri:
        with pytest.raises(ws_stream.HandshakeError) as info:
            connect(uri, origin="https://evil.example")
        assert info.value.status == 403


def test_connections_and_shutdown_without_closing_them() -> None:
    entered = threading.Event()
    release = threading.Event()

    def handler(sock: WsSocket) -> None:
        entered.set()
        release.wait(10)
        sock.sendall(b"bye")

    server = ws_stream.sync.serve(handler, "127.0.0.1", 0, ping_interval=None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.socket.getsockname()[1]
    with connect(f"ws://127.0.0.1:{port}/") as sock:
        assert entered.wait(5)
        (conn,) = server.connections
        assert conn.remote_address == sock.getsockname()
        stopper = threading.Thread(target=server.shutdown, kwargs={"close_connections": False})
        stopper.start()
        stopper.join(0.3)
        assert stopper.is_alive()  # it waits for the handler
        release.set()
        stopper.join(5)
        assert not stopper.is_alive()
        sock.settimeout(5)
        assert sock.makefile("rb").read() == b"bye"
        assert sock.close_code == 1000  # the handler returned: a normal close
    assert server.connections == set()
    with pytest.raises(OSError):  # no longer listening
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_shutdown_does_not_wait_for_a_silent_client_in_the_handshake() -> None:
    server = ws_stream.sync.serve(never, "127.0.0.1", 0, open_timeout=30)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.socket.getsockname()[1]
    silent = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        time.sleep(0.1)  # accepted, waiting for the request
        t0 = time.monotonic()
        server.shutdown()
        assert time.monotonic() - t0 < 5
        assert silent.recv(100) == b""  # dropped, not answered
    finally:
        silent.close()


def test_a_handshake_that_completes_during_shutdown_gets_503() -> None:
    started = threading.Event()

    def slow(protocol: ServerProtocol, request: Request) -> Response | None:
        started.set()
        deadline = time.monotonic() + 5
        while server.socket.fileno() != -1 and time.monotonic() < deadline:
            time.sleep(0.01)  # until shutdown() closed the listening socket
        return None

    server = ws_stream.sync.serve(never, "127.0.0.1", 0, process_request=slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.socket.getsockname()[1]

    def stop() -> None:
        started.wait(5)
        server.shutdown()

    stopper = threading.Thread(target=stop)
    stopper.start()
    try:
        with pytest.raises(ws_stream.HandshakeError) as info:
            connect(f"ws://127.0.0.1:{port}/")
        assert info.value.status == 503
    finally:
        stopper.join(10)


def test_serve_on_a_given_socket_and_option_errors() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with ws_stream.sync.serve(echo, sock=listener, ping_interval=None) as server:
        assert server.socket is listener
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with connect(f"ws://127.0.0.1:{port}/") as sock:
            sock.settimeout(5)
            sock.sendall(b"x")
            assert sock.recv(1) == b"x"
    with socket.socket() as unused, pytest.raises(ValueError):
        ws_stream.sync.serve(echo, "127.0.0.1", 0, sock=unused)
    with pytest.raises(TypeError):
        ws_stream.sync.serve(echo, "127.0.0.1", 0, no_such_option=1)
    with pytest.raises(TypeError):
        ws_stream.sync.connect("ws://127.0.0.1:1/", no_such_option=1)
    with pytest.raises(ValueError):
        ws_stream.sync.connect("ws://127.0.0.1:1/", ssl=object())


def test_client_on_a_given_socket() -> None:
    with stream_server(echo) as uri:
        port = int(uri.rsplit(":", 1)[1].strip("/"))
        tcp = socket.create_connection(("127.0.0.1", port), timeout=5)
        with connect(f"ws://127.0.0.1:{port}/", sock=tcp) as sock:
            sock.settimeout(5)
            sock.sendall(b"abc")
            assert sock.recv(3) == b"abc"
        assert tcp.fileno() == -1  # it belonged to the WsSocket


def test_a_bad_request_gets_http_400_and_the_server_goes_on() -> None:
    with stream_server(echo) as uri:
        port = int(uri.rsplit(":", 1)[1].strip("/"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # no Upgrade
            answer = b""
            while chunk := raw.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 4"), answer[:40]
        with connect(uri) as sock:
            sock.settimeout(5)
            sock.sendall(b"ok")
            assert sock.recv(2) == b"ok"
