"""A blocking raw-socket WebSocket peer: a real handshake, then hand-built frames.

The blocking twin of ``tests/rawpeer.py`` (whose frame builder it reuses): it
shares no code with websockets' framing, so it can send what websockets never
would and read exactly what our side put on the wire. Every read has a timeout.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import queue
import socket
import struct
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import ws_stream.sync
from ws_stream.sync import WsSocket

from ..rawpeer import BINARY, CLOSE, CONT, GUID, TEXT, Frame, build_frame

__all__ = ["RawPeer", "RawServer", "connect_raw", "raw_connection"]


class RawPeer:
    """One end of a WebSocket connection driven by hand, over a blocking socket."""

    def __init__(self, sock: socket.socket, client: bool, pending: bytes = b"") -> None:
        self.sock = sock
        self.client = client  # a client masks what it sends
        self._buf = bytearray(pending)
        self.last_close: Frame | None = None

    def send(self, opcode: int, payload: bytes = b"", **kw: object) -> None:
        kw.setdefault("mask", self.client)
        self.sock.sendall(build_frame(opcode, payload, **kw))  # type: ignore[arg-type]

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_exactly(self, n: int, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        while len(self._buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"EOF after {len(self._buf)} of {n} bytes")
            self._buf += data
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def recv_frame(self, timeout: float = 5.0) -> Frame:
        b0, b1 = self._read_exactly(2, timeout)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read_exactly(2, timeout))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read_exactly(8, timeout))
        key = self._read_exactly(4, timeout) if b1 & 0x80 else None
        payload = self._read_exactly(n, timeout)
        if key:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        return Frame(bool(b0 & 0x80), b0 & 0x0F, payload)

    def recv_close(self, timeout: float = 5.0) -> tuple[int, str]:
        """Read frames until a close frame; return its (code, reason)."""
        while True:
            frame = self.recv_frame(timeout)
            if frame.opcode == CLOSE:
                self.last_close = frame
                if len(frame.payload) < 2:
                    return 1005, ""
                return struct.unpack("!H", frame.payload[:2])[0], frame.payload[2:].decode()

    def recv_data(self, timeout: float = 5.0) -> list[Frame]:
        """Data frames until (excluding) the first close frame."""
        frames: list[Frame] = []
        while True:
            frame = self.recv_frame(timeout)
            if frame.opcode == CLOSE:
                self.last_close = frame
                return frames
            if frame.opcode in (CONT, TEXT, BINARY):
                frames.append(frame)

    def wait_eof(self, timeout: float = 5.0) -> bytes:
        """Read until the other side closes TCP; return what came."""
        self.sock.settimeout(timeout)
        out = bytes(self._buf)
        self._buf.clear()
        while data := self.sock.recv(65536):
            out += data
        return out

    def close_tcp(self) -> None:
        self.sock.close()

    def reset_tcp(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def _read_head(sock: socket.socket, timeout: float) -> tuple[bytes, bytes]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError("EOF during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def connect_raw(port: int, path: str = "/") -> RawPeer:
    """Connect to a WebSocket server on 127.0.0.1:port and complete the handshake."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head, rest = _read_head(sock, 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return RawPeer(sock, client=True, pending=rest)


class RawServer:
    """A WebSocket server on 127.0.0.1 handing each handshaken peer to :meth:`accept`."""

    def __init__(self, respond: bool = True) -> None:
        self.respond = respond
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.peers: queue.Queue[RawPeer] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._socks: list[socket.socket] = []

    @property
    def uri(self) -> str:
        return f"ws://127.0.0.1:{self.listener.getsockname()[1]}/"

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() would not
        self.listener.close()
        self._thread.join(5)
        assert not self._thread.is_alive()
        for sock in self._socks:
            sock.close()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # closed
            self._socks.append(sock)
            try:
                head, rest = _read_head(sock, 5)
            except (OSError, EOFError):
                continue
            if not self.respond:
                self.peers.put(RawPeer(sock, client=False, pending=rest))
                continue
            key = next(
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
            sock.sendall(
                (
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                ).encode()
            )
            self.peers.put(RawPeer(sock, client=False, pending=rest))

    def accept(self, timeout: float = 5.0) -> RawPeer:
        return self.peers.get(timeout=timeout)


@contextlib.contextmanager
def raw_connection(**options: Any) -> Iterator[tuple[WsSocket, RawPeer]]:
    """A ws_stream.sync client connected to a raw server peer; yields (sock, peer).

    On exit the peer drops TCP first, so closing the socket does not wait for
    a close frame the raw peer would never send.
    """
    options.setdefault("ping_interval", None)
    options.setdefault("close_timeout", 2)
    with RawServer() as raw:
        sock = ws_stream.sync.connect(raw.uri, **options)
        try:
            peer = raw.accept()
            try:
                yield sock, peer
            finally:
                peer.close_tcp()
        finally:
            sock.close()
