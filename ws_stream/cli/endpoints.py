"""The local side of a tunnel: everything that is not the WebSocket.

Owns the :class:`Endpoint` protocol the tunnel drives (read, write, drain,
and the three ways to end: :meth:`~Endpoint.finish` with EOF,
:meth:`~Endpoint.fail` so the peer cannot mistake the end for EOF,
:meth:`~Endpoint.abort`), and its implementations:

* :class:`TcpEndpoint`: a TCP connection (the target of ``serve --to``, a
  client of ``forward``); a failure is a TCP reset (RST), never a FIN;
* :class:`Stdio`: stdin and stdout of ``cat``: pipes, terminals, sockets,
  regular files and /dev/null, descriptors duplicated and their blocking
  mode restored.

and how TCP connections are opened and accepted (:func:`open_tcp`,
:func:`start_tcp_server`): with ws_stream's
:class:`~ws_stream.asyncio.ChunkedStreamReader` as the reader.

An endpoint moves bytes and reports OS errors; what an error *means* (a
normal end, 1011, a quiet end on EPIPE) is decided by :mod:`.rules`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl as ssl_module
import stat
import struct
from collections.abc import Awaitable, Callable
from typing import Protocol

from ..asyncio import ChunkedStreamReader
from .report import describe
from .rules import LocalKind

__all__ = [
    "LOCAL_READ",
    "Endpoint",
    "Stdio",
    "TcpEndpoint",
    "open_tcp",
    "open_unix",
    "start_tcp_server",
    "start_unix_stream_server",
]

logger = logging.getLogger(__name__)

#: Largest read from a TCP socket or stdin; the WebSocket writer splits it
#: into frames of at most ``max_frame_size`` (64 KiB).
LOCAL_READ = 2**18


class Endpoint(Protocol):
    """The local side of a tunnel: a TCP connection, or stdin and stdout."""

    #: How logs and errors name it: "client", "target", "stdio".
    role: str
    #: What the tunnel rules know of it: "tcp" or "stdio".
    kind: LocalKind

    async def read(self) -> bytes:
        """The next bytes; ``b""`` at EOF. Raises OSError."""
        ...

    def write(self, data: bytes) -> None:
        """Queue ``data``. Raises OSError."""
        ...

    async def drain(self) -> None:
        """Wait until writing may continue. Raises OSError (the OS's own error where known)."""
        ...

    def send_eof(self) -> None:
        """Half-close: EOF after the bytes written so far; reading goes on. Raises OSError."""
        ...

    async def finish(self, timeout: float) -> None:
        """End cleanly: the bytes written so far, then EOF. Never raises."""
        ...

    async def fail(self, timeout: float) -> None:
        """End after an error, so that the local peer cannot mistake it for EOF."""
        ...

    def abort(self) -> None:
        """Drop everything at once."""
        ...


# TCP


class TcpEndpoint:
    """A TCP connection: the target of ``serve --to``, a client of ``forward``."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.role = role
        self.kind: LocalKind = "tcp"

    @property
    def streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The connection's reader and writer (for :func:`~.splice.splice`)."""
        return self._reader, self._writer

    async def read(self) -> bytes:
        return await self._reader.read(LOCAL_READ)

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            # asyncio's "Connection lost" hides what the socket said.
            raise _cause(self._reader) or exc from None

    def send_eof(self) -> None:
        if self._writer.is_closing():
            return
        if not self._writer.can_write_eof():
            # TLS (serve --to-tls): asyncio has no half-close there; the target
            # sees the end when the tunnel closes.
            logger.debug("%s: no half-close over TLS: EOF comes with the close", self.role)
            return
        self._writer.write_eof()

    async def finish(self, timeout: float) -> None:
        writer = self._writer
        try:
            # TLS (serve --to-tls) has no half-close in asyncio: close() sends
            # close_notify and reads until the peer's, which is the same end.
            if not writer.is_closing() and writer.can_write_eof():
                # Half-close, then wait for the peer's own EOF (what it still
                # sends has nowhere to go): closing with unread bytes would
                # make the kernel send a reset instead of a FIN.
                writer.write_eof()
                async with asyncio.timeout(timeout):
                    while await self._reader.read(LOCAL_READ):
                        pass
        except (OSError, TimeoutError, RuntimeError) as exc:
            logger.debug("%s: ending the connection: %s", self.role, describe(exc))
        finally:
            writer.close()

    async def fail(self, timeout: float) -> None:
        self.abort()

    def abort(self) -> None:
        """A TCP reset (RST), not a FIN: the peer's read fails instead of seeing EOF."""
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._writer.transport.abort()


# TCP streams whose reader is ws_stream's ChunkedStreamReader: a real
# asyncio.StreamReader that keeps each received chunk as the bytes object the
# socket returned and hands it over whole to read(LOCAL_READ). asyncio's own
# reader copies every byte into a bytearray and out again; on a bridge that
# is most of the CPU it spends on the target -> WebSocket direction.


def _tcp_protocol(
    cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> asyncio.StreamReaderProtocol:
    loop = asyncio.get_running_loop()
    return asyncio.StreamReaderProtocol(ChunkedStreamReader(LOCAL_READ, loop), cb, loop)


async def open_tcp(
    host: str,
    port: int,
    *,
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """As :func:`asyncio.open_connection`; with ``ssl``, TLS verified for ``server_hostname``.

    Raises OSError (:class:`ssl.SSLCertVerificationError` for a refused
    certificate, another :class:`ssl.SSLError` for a failed handshake).
    """
    loop = asyncio.get_running_loop()
    reader = ChunkedStreamReader(LOCAL_READ, loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(
        lambda: protocol, host, port, ssl=ssl, server_hostname=server_hostname
    )
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def start_tcp_server(
    cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    host: str,
    port: int,
) -> asyncio.Server:
    """As :func:`asyncio.start_server`."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _tcp_protocol(cb), host, port)


# Unix stream sockets: the same streams, and the same TcpEndpoint (the
# socket file itself is .unix's). A Unix socket has no reset: where
# TcpEndpoint.abort() resets a TCP peer, a Unix peer sees EOF.


async def open_unix(
    path: str,
    *,
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """As :func:`asyncio.open_unix_connection` (``serve --to unix:PATH``).

    ``ssl`` and ``server_hostname`` as for :func:`open_tcp`.
    """
    loop = asyncio.get_running_loop()
    reader = ChunkedStreamReader(LOCAL_READ, loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_unix_connection(
        lambda: protocol, path, ssl=ssl, server_hostname=server_hostname
    )
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def start_unix_stream_server(
    cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    sock: socket.socket,
) -> asyncio.Server:
    """As :func:`asyncio.start_unix_server` on a listening socket (``forward --listen unix:``)."""
    loop = asyncio.get_running_loop()
    return await loop.create_unix_server(lambda: _tcp_protocol(cb), sock=sock)


def _cause(reader: asyncio.StreamReader) -> OSError | None:
    """The OS error that ended a transport, which asyncio hands to its protocol's reader."""
    exc = reader.exception()
    return exc if isinstance(exc, OSError) else None


# stdin and stdout


def _pollable(fd: int) -> bool:
    """Whether the event loop can wait on ``fd`` (regular files and /dev/null it cannot)."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (stat.S_ISCHR(mode) and os.isatty(fd))


class Stdio:
    """stdin and stdout as one endpoint, byte for byte.

    Pipes, sockets and terminals go through asyncio; regular files and
    devices such as /dev/null are read and written directly (they never
    block). Descriptors are duplicated, and their blocking mode restored at
    the end, so a shell sharing the terminal is left as it was.
    """

    role = "stdio"
    kind: LocalKind = "stdio"

    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None
        self._in_transport: asyncio.BaseTransport | None = None
        self._in_fd: int | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._out_errors = asyncio.StreamReader()  # where asyncio puts stdout's OS error
        self._out_fd: int | None = None
        self._blocking: dict[int, bool] = {}
        self._finished = False

    @classmethod
    async def open(cls) -> Stdio:
        """stdin and stdout of this process; a closed one behaves like /dev/null."""
        self = cls()
        loop = asyncio.get_running_loop()
        for fd in (0, 1):
            with contextlib.suppress(OSError):
                self._blocking[fd] = os.get_blocking(fd)
        try:
            in_fd = os.dup(0)
        except OSError:
            logger.debug("stdin is closed: nothing to send")
        else:
            if _pollable(in_fd):
                reader = asyncio.StreamReader(limit=LOCAL_READ)
                self._in_transport, _ = await loop.connect_read_pipe(
                    lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(in_fd, "rb", 0)
                )
                self._reader = reader
            else:
                self._in_fd = in_fd
        try:
            out_fd = os.dup(1)
        except OSError:
            logger.debug("stdout is closed: received bytes are dropped")
        else:
            if _pollable(out_fd):
                # A StreamReaderProtocol gives the writer drain() and
                # wait_closed(); its reader only receives the OS error.
                transport, protocol = await loop.connect_write_pipe(
                    lambda: asyncio.StreamReaderProtocol(self._out_errors),
                    os.fdopen(out_fd, "wb", 0),
                )
                self._writer = asyncio.StreamWriter(transport, protocol, None, loop)
            else:
                self._out_fd = out_fd
        return self

    async def read(self) -> bytes:
        if self._reader is not None:
            return await self._reader.read(LOCAL_READ)
        if self._in_fd is not None:
            await asyncio.sleep(0)  # a file is always readable: let others run
            return os.read(self._in_fd, LOCAL_READ)
        return b""

    def write(self, data: bytes) -> None:
        if self._writer is not None:
            self._writer.write(data)
        elif self._out_fd is not None:
            view = memoryview(data)
            while view:
                view = view[os.write(self._out_fd, view) :]

    async def drain(self) -> None:
        if self._writer is not None:
            try:
                await self._writer.drain()
            except ConnectionError as exc:
                raise _cause(self._out_errors) or exc from None

    def send_eof(self) -> None:
        """Nothing before :meth:`finish`: stdout ends with the tunnel.

        (Only a server's local side hears the peer's EOF marker; ``cat`` is a client.)
        """

    async def finish(self, timeout: float) -> None:
        if self._finished:
            return
        self._finished = True
        if self._writer is not None:
            try:
                async with asyncio.timeout(timeout):
                    await self._writer.drain()
                    self._writer.close()
                    await self._writer.wait_closed()
            except (OSError, TimeoutError) as exc:
                logger.debug("stdout: %s", describe(exc))
        self._release()

    async def fail(self, timeout: float) -> None:
        # A pipe has no reset: what arrived before the error is still output,
        # and the exit status tells the error.
        await self.finish(timeout)

    def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._writer is not None:
            self._writer.transport.abort()
        self._release()

    def _release(self) -> None:
        if self._in_transport is not None:
            self._in_transport.close()
        if self._writer is not None:
            self._writer.close()
        for fd in (self._in_fd, self._out_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._in_fd = self._out_fd = None

    def restore(self) -> None:
        """Give stdin and stdout their blocking mode back (they share it with our parent)."""
        for fd, blocking in self._blocking.items():
            with contextlib.suppress(OSError):
                os.set_blocking(fd, blocking)
