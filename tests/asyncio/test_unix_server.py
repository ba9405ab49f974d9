"""start_unix_server(): a ws_stream server on a Unix socket (as behind nginx).

Runs on asyncio's default loop and on uvloop (conftest).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import stat
from pathlib import Path

import ws_stream

from .helpers import echo


async def test_start_unix_server_echoes_over_a_path(tmp_path: Path) -> None:
    path = tmp_path / "ws.sock"
    data = os.urandom(3 * 2**20)
    server = await ws_stream.start_unix_server(echo, str(path), ping_interval=None)
    async with server:
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert server.sockets[0].family == socket.AF_UNIX
        # websockets' client over a Unix socket: the URI gives Host and path only.
        reader, writer = await ws_stream.open_connection(
            "ws://localhost/", unix=True, path=str(path), ping_interval=None
        )
        # write() never blocks (the writer buffers); the echo comes back meanwhile.
        writer.write(data)
        got = await asyncio.wait_for(reader.readexactly(len(data)), 20)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        writer.close()
        await writer.wait_closed()
        stream = writer.get_extra_info("ws_stream")
        assert stream.close_code == 1000


async def test_start_unix_server_takes_a_bound_socket(tmp_path: Path) -> None:
    """sock=: permissions set between bind() and listen(), so no client ever sees others."""
    path = tmp_path / "ws.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    server = await ws_stream.start_unix_server(echo, sock=sock, ping_interval=None)
    async with server:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        reader, writer = await ws_stream.open_connection(
            "ws://localhost/", unix=True, path=str(path), ping_interval=None
        )
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"hello"
        writer.close()
        await writer.wait_closed()
