"""http.client over a WsSocket, through a WebSocket->TCP bridge, to a real http.server."""

from __future__ import annotations

import contextlib
import functools
import http.client
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ws_stream.sync import WsSocket

from ..ports import refused_port
from .helpers import connect, stream_server


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def http_server(root: Path, protocol: str) -> Iterator[int]:
    versioned = type("Handler", (QuietHandler,), {"protocol_version": protocol})
    handler = functools.partial(versioned, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def make_bridge(target_port: int) -> Any:
    """A ws_stream.sync handler relaying each WebSocket to a new TCP connection."""

    def bridge(ws: WsSocket) -> None:
        tcp = socket.create_connection(("127.0.0.1", target_port), timeout=10)
        ws.settimeout(10)

        def tcp_to_ws() -> None:
            try:
                while data := tcp.recv(65536):
                    ws.sendall(data)
                ws.shutdown(socket.SHUT_WR)  # the server closed: close frame
            except OSError:
                pass  # the WebSocket side ended first

        thread = threading.Thread(target=tcp_to_ws)
        thread.start()
        try:
            while data := ws.recv(65536):
                tcp.sendall(data)
            tcp.shutdown(socket.SHUT_WR)
        except ConnectionError:
            pass
        finally:
            thread.join(10)
            tcp.close()

    return bridge


@pytest.fixture
def site(tmp_path: Path) -> dict[str, bytes]:
    files = {
        "index.html": b"<html><body>hello over a WebSocket</body></html>\n",
        "big.bin": os.urandom(3 * 2**20 + 17),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return files


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/1.0"])
def test_http_client_fetches_pages_through_the_bridge(
    tmp_path: Path, site: dict[str, bytes], protocol: str
) -> None:
    with http_server(tmp_path, protocol) as http_port, stream_server(make_bridge(http_port)) as uri:
        for _ in range(2 if protocol == "HTTP/1.0" else 1):
            sock = connect(uri)
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
            conn.sock = sock  # the only change
            names = ["index.html", "big.bin", "missing"] if protocol == "HTTP/1.1" else ["big.bin"]
            for name in names:
                conn.request("GET", f"/{name}")
                response = conn.getresponse()
                body = response.read()
                if name == "missing":
                    assert response.status == 404
                else:
                    assert response.status == 200
                    assert body == site[name]
                assert response.version == (11 if protocol == "HTTP/1.1" else 10)
            assert sock.bytes_received > len(site["big.bin"])
            conn.close()
            assert sock._closed
            if protocol == "HTTP/1.0":
                assert sock.close_code == 1000  # the server closed: EOF through the bridge


def test_bridge_reports_a_refused_tcp_target() -> None:
    with stream_server(make_bridge(refused_port())) as uri, connect(uri) as sock:
        sock.settimeout(5)
        assert sock.recv(1) == b""  # the handler raised ConnectionRefusedError
        assert sock.close_code == 1011
