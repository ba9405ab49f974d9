"""Helpers of the gateway tests (issue 16): raw HTTP on loopback, counting targets, the log line.

HTTP requests are written by hand on a socket, byte for byte, so that no
client library normalises the path (``/%2e%2e/``, ``//etc/passwd``, an
absolute-form request target) before the server sees it. Tunnels that should
work go through :func:`ws_stream.connect_stream`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme

import ws_stream

from ..cli.helpers import Cli, counting_echo

__all__ = [
    "Reply",
    "TlsFiles",
    "assert_no_leak",
    "closed_fields",
    "fields",
    "http",
    "leaks",
    "refused_fields",
    "rewrite_in_place",
    "round_trip",
    "start_unix_echo",
    "tls_files",
    "write_atomic",
]


@dataclass
class Reply:
    """An HTTP response as read off the wire."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), None if absent."""
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def __str__(self) -> str:
        return self.raw[:2000].decode("latin-1")


async def _read_until_eof(reader: asyncio.StreamReader, data: bytearray) -> None:
    while chunk := await reader.read(65536):
        data += chunk


async def http(
    port: int,
    target: str,
    *,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    upgrade: bool = False,
    context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
    allow_eof: bool = False,
) -> Reply:
    """Send one request exactly as given (``target`` unchanged) and read the response.

    ``upgrade``: a WebSocket opening handshake (a 101 is returned at once and
    the connection dropped). Otherwise the request says ``Connection: close``
    and the response is read to the end of the connection (or to its
    Content-Length for a GET). ``allow_eof``: a connection closed before any
    response is a :class:`Reply` with status 0 (else a failure).
    """
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if upgrade:
        key = base64.b64encode(os.urandom(16)).decode()
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
    else:
        lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in headers]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1" if context else None
        )
        try:
            writer.write(request)
            data = bytearray()
            while b"\r\n\r\n" not in data:
                chunk = await reader.read(65536)
                if not chunk:
                    if allow_eof and not data:
                        return Reply(0, "closed without a response", [], b"", b"")
                    raise AssertionError(
                        f"{method} {target!r}: the connection ended before a complete "
                        f"response; got {bytes(data)!r}"
                    )
                data += chunk
            head, _, rest = bytes(data).partition(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            version, status, *reason = status_line.split(" ", 2)
            assert version.startswith("HTTP/1."), status_line
            parsed = [
                (name.strip(), value.strip())
                for name, _, value in (line.partition(":") for line in header_lines)
            ]
            reply = Reply(int(status), reason[0] if reason else "", parsed, rest, bytes(data))
            if reply.status == 101:
                return reply
            body = bytearray(rest)
            length = reply.header("Content-Length")
            if method == "GET" and length is not None:
                while len(body) < int(length):
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    body += chunk
            else:
                await _read_until_eof(reader, body)
            reply.body = bytes(body)
            reply.raw = head + b"\r\n\r\n" + reply.body
            return reply
        finally:
            writer.transport.abort()


async def round_trip(uri: str, prefix: bytes = b"", size: int = 100_000, **options: object) -> int:
    """Tunnel ``size`` random bytes through ``uri`` to an echo target that sends ``prefix`` first.

    Checks the bytes (sha256) and closes with 1000; returns the client's local port.
    """
    payload = os.urandom(size)
    stream = await ws_stream.connect_stream(uri, **options)
    try:
        local_port = int(stream.writer.get_extra_info("sockname")[1])
        stream.writer.write(payload)
        got = await stream.reader.readexactly(len(prefix) + size)
    finally:
        await stream.close()
    expected = hashlib.sha256(prefix + payload).hexdigest()
    assert hashlib.sha256(got).hexdigest() == expected, f"{uri}: other bytes came back"
    return local_port


async def start_unix_echo(path: Path, prefix: bytes = b"") -> tuple[asyncio.Server, list[int]]:
    """A Unix-socket echo server (``prefix`` first) that counts its connections."""
    accepted: list[int] = []
    server = await asyncio.start_unix_server(counting_echo(prefix, accepted), str(path))
    return server, accepted


# The log line: `connection closed: key=value key=value ...` (values may be "quoted").

_FIELD = re.compile(r'([A-Za-z_]+)=("(?:[^"\\]|\\.)*"|[^\s"]+)')


def fields(line: str, kind: str) -> dict[str, str]:
    """The key=value fields after ``KIND: `` in a log line; fails unless all of it parses."""
    marker = f"{kind}: "
    assert marker in line, f"not a `{kind}` line: {line!r}"
    rest = line[line.index(marker) + len(marker) :]
    out: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        match = _FIELD.match(rest, pos)
        assert match, f"not key=value at {rest[pos:]!r} in {line!r}"
        key, value = match.groups()
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        assert key not in out, f"{key} twice in {line!r}"
        out[key] = value
        pos = match.end()
        if pos < len(rest):
            assert rest[pos] == " ", f"no space after {key}= in {line!r}"
            pos += 1
    return out


async def closed_fields(serve: Cli, count: int = 1, timeout: float = 10.0) -> dict[str, str]:
    """The fields of serve's ``count``-th `connection closed:` line (waits for it).

    Waits in a thread: the event loop keeps running the test's targets, which
    serve may still be waiting for before it logs the line.
    """
    match = await asyncio.to_thread(serve.wait_for, r"connection closed: ", timeout, count)
    return fields(match.string, "connection closed")


def refused_fields(serve: Cli) -> list[dict[str, str]]:
    """The fields of every `refused:` line so far."""
    return [fields(line, "refused") for line in serve.lines if "refused: " in line]


def leaks(secret: str, text: str, window: int = 8) -> list[str]:
    """Pieces of ``secret`` (``window`` characters or more) that appear in ``text``."""
    found = {
        secret[start : start + window]
        for start in range(len(secret) - window + 1)
        if secret[start : start + window] in text
    }
    return sorted(found)


def assert_no_leak(secret: str, text: str, what: str = "a token") -> None:
    """Not even part of ``secret`` (8 characters or more) in ``text`` (a log)."""
    pieces = leaks(secret, text)
    lines = [line for line in text.splitlines() if any(piece in line for piece in pieces)]
    assert not pieces, f"part of {what} ({len(secret)} characters) in the log:\n" + "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by a new file (a new inode), as editors and deploy tools do."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def rewrite_in_place(path: Path, text: str) -> None:
    """Rewrite ``path`` in place (same inode), as `echo ... > FILE` does."""
    inode = path.stat().st_ino
    with path.open("r+") as file:
        file.truncate(0)
        file.write(text)
    assert path.stat().st_ino == inode


@dataclass
class TlsFiles:
    chain: str
    key: str
    ca: str


def tls_files(
    directory: Path, ca: trustme.CA, *identities: str, common_name: str | None = None
) -> TlsFiles:
    """A certificate of ``ca`` for ``identities``: chain+key, key and the CA as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert(*identities, common_name=common_name)
    chain, key, cafile = directory / "chain.pem", directory / "key.pem", directory / "ca.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(
        cert.private_key_pem.bytes() + b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    )
    ca.cert_pem.write_to_path(str(cafile))
    return TlsFiles(str(chain), str(key), str(cafile))
