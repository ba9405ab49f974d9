"""A raw-socket WebSocket peer for tests: a real handshake, then hand-built frames.

It shares no code with websockets' framing, so it can send what websockets
never would (reserved bits, bad opcodes, wrong masking, oversized control
frames) and read exactly what our side put on the wire.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from dataclasses import dataclass

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def build_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = False,
    length: int | None = None,
) -> bytes:
    """Serialize one frame; ``length`` overrides the declared payload length."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 2**16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes


class RawPeer:
    """One end of a WebSocket connection driven by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: bool):
        self.reader = reader
        self.writer = writer
        self.client = client  # a client masks what it sends

    def send(self, opcode: int, payload: bytes = b"", **kw: object) -> None:
        kw.setdefault("mask", self.client)
        self.writer.write(build_frame(opcode, payload, **kw))  # type: ignore[arg-type]

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv_frame(self, timeout: float = 5.0) -> Frame:
        async with asyncio.timeout(timeout):
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            key = await self.reader.readexactly(4) if b1 & 0x80 else None
            payload = await self.reader.readexactly(n)
            if key:
                payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            return Frame(bool(b0 & 0x80), b0 & 0x0F, payload)

    async def recv_close(self, timeout: float = 5.0) -> tuple[int, str]:
        """Read frames until a close frame; return its (code, reason)."""
        while True:
            frame = await self.recv_frame(timeout)
            if frame.opcode == CLOSE:
                if len(frame.payload) < 2:
                    return 1005, ""
                return struct.unpack("!H", frame.payload[:2])[0], frame.payload[2:].decode()

    async def recv_data(self, timeout: float = 5.0) -> list[Frame]:
        """Data frames until (excluding) the first close frame."""
        frames = []
        while True:
            frame = await self.recv_frame(timeout)
            if frame.opcode == CLOSE:
                self.last_close = frame
                return frames
            if frame.opcode in (CONT, TEXT, BINARY):
                frames.append(frame)

    async def wait_eof(self, timeout: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout):
            return await self.reader.read()

    def close_tcp(self) -> None:
        self.writer.close()

    def reset_tcp(self) -> None:
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(
            __import__("socket").SOL_SOCKET,
            __import__("socket").SO_LINGER,
            struct.pack("ii", 1, 0),
        )
        self.writer.transport.abort()


async def send_handshake(
    port: int, path: str = "/", headers: str = ""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to 127.0.0.1:port and send a WebSocket handshake request (``headers``:
    extra lines, each ending with CRLF); the response is the caller's to read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{headers}\r\n"
        ).encode()
    )
    await writer.drain()
    return reader, writer


async def connect_raw(port: int, path: str = "/", headers: str = "") -> RawPeer:
    """Connect to a WebSocket server on 127.0.0.1:port and complete the handshake."""
    reader, writer = await send_handshake(port, path, headers)
    async with asyncio.timeout(5):
        response = await reader.readuntil(b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 101"), response
    return RawPeer(reader, writer, client=True)


class RawServer:
    """A WebSocket server on 127.0.0.1 that hands each handshaken peer to a queue."""

    def __init__(self) -> None:
        self.peers: asyncio.Queue[RawPeer] = asyncio.Queue()
        # Every peer stays referenced until the server goes: a test that drops
        # what accept() returned (a peer that never reads) must not close it.
        # Since Python 3.13 asyncio's server keeps no reference to the
        # StreamWriter it hands over, and a collected StreamWriter closes its
        # connection (the peer would reset it, unread bytes in its buffer).
        self.held: list[RawPeer] = []
        self.server: asyncio.Server | None = None
        self.respond = True

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def uri(self) -> str:
        assert self.server is not None
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        peer = RawPeer(reader, writer, client=False)
        self.held.append(peer)
        if not self.respond:
            await self.peers.put(peer)
            return
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        await self.peers.put(peer)

    async def accept(self, timeout: float = 5.0) -> RawPeer:
        async with asyncio.timeout(timeout):
            return await self.peers.get()
