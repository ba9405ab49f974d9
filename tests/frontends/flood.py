"""A raw WebSocket peer in its own process that floods the other side with binary messages.

Run by ``test_backpressure.py`` so that the test's process holds only what the
server (or the client) under test holds. Standard library only.

    python flood.py client PORT PATH TOTAL SIZE   # connect, then send
    python flood.py server TOTAL SIZE             # listen (prints "port N"), accept one, send

It sends TOTAL bytes as messages of SIZE bytes (message ``i`` is
:func:`message`), and prints on stdout ``stalled N`` each time the other side
has taken nothing for :data:`STALL` seconds (N: bytes handed to the kernel so
far), then ``done N``. It then answers the other side's close frame and exits
when the connection ends.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import select
import socket
import struct
import sys

STALL = 0.5
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_BLOCKS: dict[int, bytes] = {}


def message(i: int, size: int) -> bytes:
    """Message ``i`` of ``size`` bytes (>= 8): its index, then a fixed random block."""
    block = _BLOCKS.get(size)
    if block is None:
        block = _BLOCKS[size] = random.Random(size).randbytes(size)
    return struct.pack("!Q", i) + block[8:]


def expected_sha256(total: int, size: int) -> str:
    digest = hashlib.sha256()
    for i in range(total // size):
        digest.update(message(i, size))
    return digest.hexdigest()


def header(opcode: int, n: int, masked: bool) -> bytes:
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes([0x80 | opcode, mask_bit | n])
    elif n < 2**16:
        head = bytes([0x80 | opcode, mask_bit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x80 | opcode, mask_bit | 127]) + struct.pack("!Q", n)
    # A zero masking key is valid and leaves the payload as it is.
    return head + b"\0\0\0\0" if masked else head


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        data += chunk
    return data


def handshake_client(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = read_head(sock)
    if not response.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {response[:80]!r}")
    return sock


def handshake_server() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    print(f"port {listener.getsockname()[1]}", flush=True)
    sock, _ = listener.accept()
    listener.close()
    request = read_head(sock)
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    sock.sendall(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
    )
    return sock


def flood(sock: socket.socket, total: int, size: int, masked: bool) -> None:
    sock.setblocking(False)
    sent = 0
    stalled = False
    for i in range(total // size):
        frame = memoryview(header(0x2, size, masked) + message(i, size))
        offset = 0
        while offset < len(frame):
            _, writable, _ = select.select([], [sock], [], STALL)
            if not writable:
                if not stalled:
                    print(f"stalled {sent}", flush=True)
                    stalled = True
                continue
            try:
                n = sock.send(frame[offset : offset + 2**20])
            except BlockingIOError:
                continue
            offset += n
            sent += n
            stalled = False
    print(f"done {sent}", flush=True)


def answer_close(sock: socket.socket, masked: bool) -> None:
    """Discard frames until the other side's close; answer it; wait for the end."""
    sock.setblocking(True)
    sock.settimeout(30)
    buffer = b""

    def need(n: int) -> bytes:
        nonlocal buffer
        while len(buffer) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError
            buffer += chunk
        data, buffer = buffer[:n], buffer[n:]
        return data

    try:
        while True:
            b0, b1 = need(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", need(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", need(8))
            key = need(4) if b1 & 0x80 else b""
            payload = need(n)
            if key:
                payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            if b0 & 0x0F == 0x8:
                sock.sendall(header(0x8, len(payload[:2]), masked) + payload[:2])
                while sock.recv(65536):
                    pass
                return
    except (EOFError, OSError):
        return


def main() -> None:
    mode = sys.argv[1]
    if mode == "client":
        port, path, total, size = int(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:6])
        sock = handshake_client(port, path)
        masked = True
    else:
        total, size = map(int, sys.argv[2:4])
        sock = handshake_server()
        masked = False
    flood(sock, total, size, masked)
    answer_close(sock, masked)
    sock.close()


if __name__ == "__main__":
    main()
