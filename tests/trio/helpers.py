"""trio test helpers: a ws_stream server on a random port, a raw-socket client peer."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ws_stream.trio import WsStream, serve_websocket_stream

from ..rawpeer import CLOSE, GUID, Frame, build_frame


async def start_server(
    nursery: trio.Nursery, handler: Callable[[WsStream], Awaitable[object]], **options: Any
) -> str:
    """Start serve_websocket_stream on 127.0.0.1:0 in ``nursery``; return its ws:// URI."""
    options.setdefault("ping_interval", None)
    listeners = await nursery.start(
        functools.partial(serve_websocket_stream, handler, 0, host="127.0.0.1", **options)
    )
    port = listeners[0].socket.getsockname()[1]
    return f"ws://127.0.0.1:{port}/"


async def accepting_server(nursery: trio.Nursery, **options: Any) -> tuple[str, Any]:
    """A server whose handler hands each stream to the test; returns (uri, receive channel)."""
    send, receive = trio.open_memory_channel[WsStream](10)

    async def handler(stream: WsStream) -> None:
        await send.send(stream)
        await trio.sleep_forever()  # the test owns the stream (returning would close it)

    return await start_server(nursery, handler, **options), receive


class TrioRawPeer:
    """A raw-socket WebSocket client: real handshake, then hand-built (masked) frames."""

    def __init__(self, tcp: trio.SocketStream) -> None:
        self.tcp = tcp
        self.buffer = bytearray()

    @classmethod
    async def connect(cls, uri: str) -> TrioRawPeer:
        host, port = uri.split("//")[1].rstrip("/").split(":")
        tcp = await trio.open_tcp_stream(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        await tcp.send_all(
            (
                f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        peer = cls(tcp)
        head = await peer._read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return peer

    async def _fill(self) -> bool:
        data = await self.tcp.receive_some(65536)
        self.buffer += data
        return bool(data)

    async def _read_until(self, sep: bytes) -> bytes:
        while sep not in self.buffer:
            if not await self._fill():
                raise EOFError
        i = self.buffer.index(sep) + len(sep)
        out = bytes(self.buffer[:i])
        del self.buffer[:i]
        return out

    async def _read_exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not await self._fill():
                raise EOFError
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    async def send(self, opcode: int, payload: bytes = b"", **kw: Any) -> None:
        kw.setdefault("mask", True)
        await self.tcp.send_all(build_frame(opcode, payload, **kw))

    async def send_raw(self, data: bytes) -> None:
        await self.tcp.send_all(data)

    async def recv_frame(self) -> Frame:
        with trio.fail_after(5):
            b0, b1 = await self._read_exactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self._read_exactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self._read_exactly(8))
            key = await self._read_exactly(4) if b1 & 0x80 else None
            payload = await self._read_exactly(n)
            if key:  # frames from a client are masked
                payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            return Frame(bool(b0 & 0x80), b0 & 0x0F, payload)

    async def recv_close(self) -> tuple[int, str]:
        while True:
            frame = await self.recv_frame()
            if frame.opcode == CLOSE:
                if len(frame.payload) < 2:
                    return 1005, ""
                code = struct.unpack("!H", frame.payload[:2])[0]
                return code, frame.payload[2:].decode()

    async def wait_eof(self) -> None:
        with trio.fail_after(5):
            while await self._fill():
                pass

    async def aclose(self) -> None:
        await self.tcp.aclose()


def upgrade_request(uri: str, headers: str = "") -> bytes:
    """A client's HTTP upgrade request for ``uri`` (ws://host:port/), with extra header lines."""
    host, port = uri.split("//")[1].rstrip("/").split(":")
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{headers}\r\n"
    ).encode()


def switching_protocols(request: bytes) -> bytes:
    """The ``101`` response a server answers to the upgrade ``request``."""
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()


async def start_raw_server(
    nursery: trio.Nursery, handler: Callable[[TrioRawPeer, bytes], Awaitable[object]]
) -> str:
    """A hand-driven WebSocket server on 127.0.0.1:0; returns its ws:// URI.

    For each client it reads the upgrade request, then calls ``handler(peer,
    response)`` with the ``101`` response *not yet sent*: the handler sends it,
    so it can put frames into the same TCP write.
    """

    async def serve(tcp: trio.SocketStream) -> None:
        peer = TrioRawPeer(tcp)
        try:
            request = await peer._read_until(b"\r\n\r\n")
        except EOFError:
            return
        await handler(peer, switching_protocols(request))

    listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return f"ws://127.0.0.1:{port}/"
