"""The ``ws-stream`` command: ``serve``, ``forward`` and ``cat``.

``serve`` accepts WebSockets and echoes them, or bridges each one to a new TCP
connection to a target fixed on the command line. ``forward`` is the client
half of that tunnel: each local TCP client gets its own WebSocket. ``cat``
joins stdin and stdout to one WebSocket.

The *tunnel policy* (how the end of one side becomes the end of the other,
how errors travel, and how a shutdown closes every connection with 1001
within the close timeout) is decided in :mod:`ws_stream._tunnel_rules`, pure
and tested alone; :class:`_Tunnel` here does the I/O. A WebSocket close is not
a TCP half-close (the peer answers a close at once and cannot send
afterwards), so:

* the WebSocket peer closes with 1000, 1001 or no code: the local side gets
  EOF after every byte (TCP ``write_eof()``, then close once the local peer
  has closed too, at most ``--close-timeout`` later);
* the WebSocket fails (1006, protocol error) or closes with an error code:
  the local TCP connection is reset, so a truncated stream never looks
  complete; a local reset closes the WebSocket with 1011, which the other
  half of the tunnel turns back into a reset;
* the local side ends: on the server side (the target closed) the WebSocket
  is closed with 1000 at once, after the bytes before it; on the client side
  (``forward``, ``cat``), where EOF often means "my request is sent, now the
  answer", the close waits until the server closes (a clean end), or until
  it has sent nothing for ``--linger`` seconds - time spent waiting for the
  local side to take bytes is not silence. A close by ``--linger`` or
  ``--idle-timeout`` ends the tunnel before the server's close: what the
  server still had is unknown, so the local side is reset (``cat`` exits 1);
* a TCP reset after the session ended a direction (local EOF, a close
  received or sent) is a normal end, logged at info.

The target of ``serve --to`` comes from the command line only: nothing in a
request (path, query, headers) can choose where bytes go.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import re
import signal
import socket
import ssl
import stat
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import NegotiationError, WebSocketException
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from . import __version__
from ._tunnel_rules import CLEAN_CODES, Close, LocalKind, TunnelRules
from .asyncio import WsStream, connect_stream, start_server
from .asyncio._reader import ChunkedStreamReader
from .reconnect import ReconnectMachine, ReconnectPolicy

__all__ = ["build_parser", "main"]

logger = logging.getLogger("ws_stream.cli")

T = TypeVar("T")

#: Largest read from a TCP socket or stdin; the WebSocket writer splits it
#: into frames of at most ``max_frame_size`` (64 KiB).
_LOCAL_READ = 2**18
#: Largest read from a WebSocket reader: at least one whole frame, so frames
#: are handed over without copying.
_WS_READ = 2**20
#: Going-away reason sent to every connection at shutdown.
_SHUTDOWN = (1001, "going away")
#: What the client offers as the subprotocol of a byte stream (noVNC, websockify).
_BINARY = "binary"
#: Longest wait for the TCP connection to the target of ``serve --to``.
_TARGET_CONNECT_TIMEOUT = 10.0
#: Errors of one attempt to open a WebSocket.
_DIAL_ERRORS = (OSError, TimeoutError, WebSocketException)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


# Argument types: each raises ArgumentTypeError with a message that says what
# was expected, which argparse turns into exit status 2.


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return port


def _split_host_port(text: str, default_host: str | None) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep:
        if default_host is None:
            raise argparse.ArgumentTypeError(
                f"expected HOST:PORT (for example 127.0.0.1:5900), got {text!r}: "
                "the port is missing"
            )
        host, port_text = default_host, text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}: the host is missing")
    if not port_text:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT (for example 127.0.0.1:5900), got {text!r}: the port is missing"
        )
    return host, _port(port_text)


def _target(text: str) -> tuple[str, int]:
    host, port = _split_host_port(text, None)
    if port == 0:
        raise argparse.ArgumentTypeError(f"the target port cannot be 0 in {text!r}")
    return host, port


def _listen(text: str) -> tuple[str, int]:
    return _split_host_port(text, "127.0.0.1")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _linger(text: str) -> float:
    if text.lower() in ("inf", "infinity", "forever"):
        return math.inf
    return _seconds(text)


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _TOKEN.fullmatch(name):
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    if any(c in value for c in "\r\n\0"):
        raise argparse.ArgumentTypeError(f"a header value cannot contain CR, LF or NUL: {text!r}")
    return name, value


def _ws_uri(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"expected a ws:// or wss:// URI (for example ws://127.0.0.1:8765/), got {text!r}"
        )
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid port in {text!r}: {exc}") from None
    return text


_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[nrt0\\])")
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"0": b"\0", b"\\": b"\\"}


def _data(text: str) -> bytes:
    r"""UTF-8 bytes of ``text``, with \n \r \t \0 \\ and \xHH decoded."""

    def replace(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        return bytes([int(code[1:], 16)]) if code[:1] == b"x" else _ESCAPES[code]

    return _ESCAPE.sub(replace, text.encode("utf-8", "surrogateescape"))


# The parser


_DESCRIPTION = """\
A WebSocket that looks exactly like a TCP connection, from the command line.

  ws-stream serve                                  an echo server on ws://127.0.0.1:8765/
  ws-stream serve --to 127.0.0.1:5900              bridge each WebSocket to a TCP target
  ws-stream forward --listen 127.0.0.1:5901 URI    each local TCP client gets a WebSocket
  ws-stream cat ws://127.0.0.1:8765                stdin -> WebSocket -> stdout
"""

_EXIT_CODES = """\
exit status: 0 done (also after SIGINT/SIGTERM/SIGHUP), 1 runtime error (cannot
listen, cannot connect, the connection failed or ended before the server's close),
2 bad arguments.
"""

_SERVE_EPILOG = """\
Without --to, every connection is echoed until the client closes. With --to,
every accepted WebSocket gets a new TCP connection to that target, with
backpressure both ways; the target is fixed here: no path, query or header of
a request can choose another, so the server is never an open proxy.

Clients that offer subprotocols must offer one of --subprotocol (the `binary`
of noVNC and websockify is always accepted); clients that offer none are
accepted. With --origin, a browser whose Origin header is not listed is refused
with HTTP 403; requests without an Origin header (non-browser clients) pass.

The target closing its side closes the WebSocket with 1000 after its last
bytes; a client close (1000/1001) half-closes the target connection; an error
on either side resets the other (1011 toward the client, a TCP reset toward
the target); an unreachable target closes the WebSocket with 1014. A reset by
the target after the session ended a direction (the target's EOF, or a close
received or sent) is a normal end: logged at info, closed with 1000.

The first line on stderr (unless -q) is `listening on ws://HOST:PORT/ (...)`,
with the real port when --port is 0. Each connection is logged when it ends:
peer, duration, bytes each way, close codes. SIGINT/SIGTERM/SIGHUP stop
accepting, close every connection with 1001 and exit 0 within --close-timeout.
"""

_CLIENT_EPILOG = """\
When the local side ends (EOF on stdin for cat, a half-close by a TCP client
for forward), the WebSocket stays open until the server closes (a clean end),
or until it has sent nothing for --linger seconds (default 2; 0 closes at
once, `inf` waits for the server); everything the server sends before its
close is still delivered. A WebSocket close is not a TCP half-close, so this is
how `echo hi | ws-stream cat URI` gets its echo. Time spent waiting for the
local side to take bytes (a reader that pauses) is never silence, for
--linger and --idle-timeout alike. A tunnel that --linger or --idle-timeout
closes before the server's close may be incomplete, so it is not a clean end:
forward resets its client, cat exits 1 with a message. A reset by the local
client after its EOF is a normal end (logged at info, closed with 1000).

The bearer token (--bearer or WS_STREAM_BEARER, which keeps it out of `ps`) is
sent as `Authorization: Bearer TOKEN` and never logged.
"""

_CAT_EPILOG = (
    _CLIENT_EPILOG
    + """
cat is binary-safe and works as an SSH ProxyCommand:
  ssh -o ProxyCommand='ws-stream cat wss://gateway.example/ssh' user@host
It exits 0 when the server closed with 1000/1001, or cat closed it on a
signal (SIGINT, SIGTERM, SIGHUP: close 1001), --max-bytes or --linger 0; 1 when
the connection failed, the server closed with an error code, --linger or
--idle-timeout ended it before the server's close, or stdin/stdout failed (the
OS error is shown; a reader of stdout that goes away, EPIPE, is a quiet end).
A closed stdin or stdout (`<&-`, `>&-`) is /dev/null.
"""
)


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("output")
    group.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeatable)"
    )
    group.add_argument(
        "-q", "--quiet", action="count", default=0, help="less log output (repeatable)"
    )
    group.add_argument(
        "--stats",
        action="store_true",
        help="print throughput and totals to stderr every --stats-interval, and a summary at exit",
    )
    group.add_argument(
        "--stats-interval",
        type=_positive_seconds,
        default=5.0,
        metavar="S",
        help="seconds between --stats lines (default: 5)",
    )
    common.add_argument(
        "--close-timeout",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="longest wait for a closing handshake, also at shutdown (default: 10)",
    )
    return common


def _client_options() -> argparse.ArgumentParser:
    client = argparse.ArgumentParser(add_help=False)
    group = client.add_argument_group("WebSocket client")
    group.add_argument(
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra HTTP header of the opening handshake (repeatable)",
    )
    group.add_argument(
        "--bearer",
        metavar="TOKEN",
        help="send `Authorization: Bearer TOKEN` (default: $WS_STREAM_BEARER); never logged",
    )
    group.add_argument(
        "--cafile", metavar="FILE", help="trust the CA certificates in FILE (wss:// only)"
    )
    group.add_argument(
        "--send-on-connect",
        type=_data,
        metavar="DATA",
        help=r"send DATA first on every connection (UTF-8; \n \r \t \0 \\ \xHH decoded)",
    )
    group.add_argument(
        "--idle-timeout",
        type=_positive_seconds,
        metavar="S",
        help="close with 1000 after S seconds without data either way, not counting time "
        "waiting for the local side to take bytes; an error exit / a reset (default: never)",
    )
    group.add_argument(
        "--max-bytes",
        type=_positive_int,
        metavar="N",
        help="deliver at most N received bytes, then close with 1000",
    )
    group.add_argument(
        "--linger",
        type=_linger,
        default=2.0,
        metavar="S",
        help="after the local side ends, close once the server has sent nothing for S seconds "
        "(an early end: an error exit / a reset) (default: 2; 0: at once, a clean end; "
        "inf: wait for the server)",
    )
    return client


def build_parser() -> argparse.ArgumentParser:
    """The ``ws-stream`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="ws-stream",
        description=_DESCRIPTION,
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ws-stream {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_options()
    client = _client_options()

    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="a WebSocket server: echo, or a bridge to one TCP target",
        description="Accept WebSockets; echo them, or bridge each to a new TCP connection.",
        epilog=_SERVE_EPILOG + "\n" + _EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    serve.add_argument(
        "--port",
        type=_port,
        default=8765,
        help="port to listen on; 0 picks one (default: %(default)s)",
    )
    serve.add_argument(
        "--to",
        type=_target,
        metavar="HOST:PORT",
        help="bridge every connection to this TCP target (default: echo)",
    )
    serve.add_argument("--path", help="accept this request path only (others get 404)")
    serve.add_argument(
        "--origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow this Origin (repeatable); others get 403 (default: any)",
    )
    serve.add_argument("--cert", metavar="FILE", help="TLS certificate chain (PEM): serve wss://")
    serve.add_argument("--key", metavar="FILE", help="TLS private key (PEM) of --cert")
    serve.add_argument(
        "--max-connections",
        type=_positive_int,
        metavar="N",
        help="refuse handshakes beyond N open connections with HTTP 503",
    )
    serve.add_argument(
        "--subprotocol",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept this subprotocol (repeatable; `binary` always is)",
    )
    serve.set_defaults(run=_serve, parser=serve)

    forward = commands.add_parser(
        "forward",
        parents=[common, client],
        help="listen on TCP; tunnel each client through its own WebSocket",
        description="Listen on a local TCP port; each client gets its own WebSocket to URI.",
        epilog=_CLIENT_EPILOG + "\n" + _EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    forward.add_argument(
        "--listen",
        type=_listen,
        required=True,
        metavar="HOST:PORT",
        help="local TCP address (a bare PORT means 127.0.0.1:PORT; 0 picks one)",
    )
    forward.add_argument(
        "--reconnect",
        choices=sorted(_PRESETS),
        help="retry opening each client's WebSocket with this preset's backoff "
        "(fast: 0.5 s x1.5 up to 10 s; stable: 2 s x2 up to 120 s; low-latency: "
        "0.1 s x1.2 up to 5 s) instead of resetting the client at the first failure; "
        "a tunnel that was open is never moved to a new WebSocket",
    )
    forward.add_argument(
        "--reconnect-attempts",
        type=int,
        default=5,
        metavar="N",
        help="with --reconnect: give up (reset the client) after N failed attempts (default 5)",
    )
    forward.add_argument("uri", type=_ws_uri, metavar="URI", help="ws:// or wss:// URI")
    forward.set_defaults(run=_forward, parser=forward)

    cat = commands.add_parser(
        "cat",
        parents=[common, client],
        help="stdin -> WebSocket -> stdout (binary-safe; an SSH ProxyCommand)",
        description="Copy stdin to a WebSocket and the WebSocket to stdout, byte for byte.",
        epilog=_CAT_EPILOG + "\n" + _EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cat.add_argument("uri", type=_ws_uri, metavar="URI", help="ws:// or wss:// URI")
    cat.set_defaults(run=_cat, parser=cat)
    return parser


# Logging and statistics


class _Formatter(logging.Formatter):
    """``ws-stream serve: message``; warnings and errors say so."""

    def __init__(self, prog: str) -> None:
        super().__init__()
        self._prog = prog

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else record.levelname.lower() + ": "
        text = f"{self._prog}: {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _configure_logging(prog: str, default: int, verbose: int, quiet: int) -> None:
    level = min(max(default + 10 * (quiet - verbose), logging.DEBUG), logging.CRITICAL + 10)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(prog))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.WARNING))
    logging.getLogger("ws_stream").setLevel(level)
    # websockets' debug log shows handshake headers, Authorization included:
    # it stays at WARNING whatever -v says.
    logging.getLogger("websockets").setLevel(max(level, logging.WARNING))


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _addr(sockname: Any) -> str:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host = str(sockname[0])
        return f"[{host}]:{sockname[1]}" if ":" in host else f"{host}:{sockname[1]}"
    return str(sockname)


def _redact(uri: str) -> str:
    """``uri`` without the password of its user info."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


@dataclass(eq=False)
class _Slot:
    """One session's place in :class:`_Sessions`."""

    stop: asyncio.Future[None]
    stream: WsStream | None = None


class _Sessions:
    """The live sessions of this process: stop them all, count their bytes."""

    def __init__(self) -> None:
        self._slots: dict[_Slot, asyncio.Task[Any] | None] = {}
        self.stopping = False
        self.opened = 0
        self.started = time.monotonic()
        self._received = 0
        self._sent = 0

    @contextlib.contextmanager
    def session(self) -> Iterator[_Slot]:
        """A slot for the current task; its ``stop`` future is set at shutdown."""
        slot = _Slot(asyncio.get_running_loop().create_future())
        if self.stopping:
            slot.stop.set_result(None)
        self._slots[slot] = asyncio.current_task()
        try:
            yield slot
        finally:
            del self._slots[slot]
            if slot.stream is not None:
                self._received += slot.stream.bytes_received
                self._sent += slot.stream.bytes_sent

    def attach(self, slot: _Slot, stream: WsStream) -> None:
        """Count ``stream``'s bytes as this slot's."""
        slot.stream = stream
        self.opened += 1

    @property
    def open(self) -> int:
        return sum(1 for slot in self._slots if slot.stream is not None)

    def totals(self) -> tuple[int, int]:
        """Payload bytes (received, sent) over WebSockets so far."""
        streams = [slot.stream for slot in self._slots if slot.stream is not None]
        return (
            self._received + sum(s.bytes_received for s in streams),
            self._sent + sum(s.bytes_sent for s in streams),
        )

    def stop_all(self) -> None:
        self.stopping = True
        for slot in self._slots:
            if not slot.stop.done():
                slot.stop.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Wait for every session's task; after ``timeout``, drop what is left."""
        tasks = {task for task in self._slots.values() if task is not None}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                self.abort_all()
                _, pending = await asyncio.wait(pending, timeout=1.0)
                for task in pending:
                    task.cancel()

    def abort_all(self) -> None:
        for slot in list(self._slots):
            if slot.stream is not None:
                slot.stream.transport.abort()

    def report(self, prog: str, last: tuple[float, int, int]) -> tuple[float, int, int]:
        now = time.monotonic()
        received, sent = self.totals()
        dt = max(now - last[0], 1e-9)
        print(
            f"{prog}: stats: {self.open} open, {self.opened} total; "
            f"received {_human(received)} ({_human((received - last[1]) / dt)}/s), "
            f"sent {_human(sent)} ({_human((sent - last[2]) / dt)}/s)",
            file=sys.stderr,
            flush=True,
        )
        return now, received, sent

    def summary(self, prog: str) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        received, sent = self.totals()
        print(
            f"{prog}: summary: {self.opened} connection{'' if self.opened == 1 else 's'} "
            f"in {elapsed:.1f} s; "
            f"received {received} bytes ({_human(received / elapsed)}/s), "
            f"sent {sent} bytes ({_human(sent / elapsed)}/s)",
            file=sys.stderr,
            flush=True,
        )


async def _print_stats(sessions: _Sessions, prog: str, interval: float) -> None:
    last = (sessions.started, 0, 0)
    while True:
        await asyncio.sleep(interval)
        last = sessions.report(prog, last)


class _Stopped(Exception):
    """The process is shutting down."""


async def _unless_stopped(stop: asyncio.Future[None], coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; raise :class:`_Stopped` if ``stop`` completes first."""
    task = asyncio.ensure_future(coro)
    waiters: set[asyncio.Future[Any]] = {task, stop}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.cancelled():
        raise _Stopped
    return task.result()


#: The signals that stop every sub-command gracefully. SIGHUP too: OpenSSH
#: sends it to its ProxyCommand (``cat``) when it exits, and a terminal that
#: goes away sends it to what runs in it.
_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def _install_signal_handlers(on_signal: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)


class _Shutdown:
    """SIGINT/SIGTERM/SIGHUP: the first stops gracefully, a second one stops now."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.requested: asyncio.Future[None] = loop.create_future()
        self._main = asyncio.current_task()
        self.forced = False
        _install_signal_handlers(self._signal)

    def _signal(self) -> None:
        if not self.requested.done():
            logger.info("stopping: closing every connection with 1001")
            self.requested.set_result(None)
        elif not self.forced and self._main is not None:
            logger.warning("second signal: dropping every connection now")
            self.forced = True
            self._main.cancel()


# Local endpoints: the non-WebSocket side of a tunnel


class _Endpoint(Protocol):
    """The local side of a tunnel: a TCP connection, or stdin and stdout."""

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

    async def finish(self, timeout: float) -> None:
        """End cleanly: the bytes written so far, then EOF. Never raises."""
        ...

    async def fail(self, timeout: float) -> None:
        """End after an error, so that the local peer cannot mistake it for EOF."""
        ...

    def abort(self) -> None:
        """Drop everything at once."""
        ...


class _TcpEndpoint:
    """A TCP connection: the target of ``serve --to``, a client of ``forward``."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.role = role
        self.kind: LocalKind = "tcp"

    async def read(self) -> bytes:
        return await self._reader.read(_LOCAL_READ)

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            # asyncio's "Connection lost" hides what the socket said.
            raise _cause(self._reader) or exc from None

    async def finish(self, timeout: float) -> None:
        writer = self._writer
        try:
            if not writer.is_closing():
                # Half-close, then wait for the peer's own EOF (what it still
                # sends has nowhere to go): closing with unread bytes would
                # make the kernel send a reset instead of a FIN.
                writer.write_eof()
                async with asyncio.timeout(timeout):
                    while await self._reader.read(_LOCAL_READ):
                        pass
        except (OSError, TimeoutError, RuntimeError) as exc:
            logger.debug("%s: ending the connection: %s", self.role, _describe(exc))
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
# socket returned and hands it over whole to read(_LOCAL_READ). asyncio's own
# reader copies every byte into a bytearray and out again; on a bridge that
# is most of the CPU it spends on the target -> WebSocket direction.


def _tcp_protocol(
    cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> asyncio.StreamReaderProtocol:
    loop = asyncio.get_running_loop()
    return asyncio.StreamReaderProtocol(ChunkedStreamReader(_LOCAL_READ, loop), cb, loop)


async def _open_tcp(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """As :func:`asyncio.open_connection`."""
    loop = asyncio.get_running_loop()
    reader = ChunkedStreamReader(_LOCAL_READ, loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def _start_tcp_server(
    cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    host: str,
    port: int,
) -> asyncio.Server:
    """As :func:`asyncio.start_server`."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _tcp_protocol(cb), host, port)


def _cause(reader: asyncio.StreamReader) -> OSError | None:
    """The OS error that ended a transport, which asyncio hands to its protocol's reader."""
    exc = reader.exception()
    return exc if isinstance(exc, OSError) else None


def _pollable(fd: int) -> bool:
    """Whether the event loop can wait on ``fd`` (regular files and /dev/null it cannot)."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (stat.S_ISCHR(mode) and os.isatty(fd))


class _Stdio:
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
    async def open(cls) -> _Stdio:
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
                reader = asyncio.StreamReader(limit=_LOCAL_READ)
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
            return await self._reader.read(_LOCAL_READ)
        if self._in_fd is not None:
            await asyncio.sleep(0)  # a file is always readable: let others run
            return os.read(self._in_fd, _LOCAL_READ)
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
                logger.debug("stdout: %s", _describe(exc))
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


# The tunnel: one WebSocket and one local endpoint


class _Tunnel:
    """Bytes both ways between a WebSocket and a local endpoint, and how they end.

    The I/O half of the tunnel: it moves bytes, waits and wakes; every
    decision (when ``linger`` and ``idle_timeout`` fire, what a local error
    means, how the tunnel ended) is :class:`~ws_stream._tunnel_rules.TunnelRules`'s.

    The WebSocket reader is drained until the end of the WebSocket, always:
    every other ending (the local side ends or fails, ``max_bytes``, a timer,
    the process stops) *starts* a close, and the close handshake, bounded by
    ``close_timeout``, ends the WebSocket. Only then is the local side
    finished (EOF) or aborted (reset), as the rules decide.

    ``linger``: after local EOF, close with 1000 once the server has sent
    nothing for that many seconds (0: at once; ``math.inf``: never). Time
    spent waiting for the local side to take bytes is not silence.
    """

    def __init__(
        self,
        stream: WsStream,
        local: _Endpoint,
        *,
        stop: asyncio.Future[None],
        close_timeout: float,
        linger: float = 0.0,
        idle_timeout: float | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.stream = stream
        self.local = local
        self._stop = stop
        self._close_timeout = close_timeout
        self._loop = asyncio.get_running_loop()
        self.rules = TunnelRules(
            role=local.role,
            kind=local.kind,
            now=self._loop.time(),
            linger=linger,
            idle_timeout=idle_timeout,
            max_bytes=max_bytes,
        )
        self._up: asyncio.Task[None] | None = None
        self._deadline: asyncio.Timeout | None = None
        self._closing: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ws_error: ConnectionError | None = None
        self._local_late = False
        #: Why the tunnel did not end cleanly; None when it did.
        self.error: str | None = None

    async def run(self) -> None:
        """Move bytes until both sides are done; never raises for I/O errors."""
        try:
            async with asyncio.timeout(None) as self._deadline:
                self._up = asyncio.create_task(self._local_to_ws())
                self._stop.add_done_callback(self._on_stop)
                self._arm()
                await self._ws_to_local()
        except TimeoutError:
            # Only our deadline: a close began and the local side never took
            # the last bytes (the WebSocket itself is bounded by close_timeout).
            self._local_late = True
        finally:
            self._stop.remove_done_callback(self._on_stop)
            if self._timer is not None:
                self._timer.cancel()
            if self._up is not None:
                self._up.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._up
        await self._end()

    async def _ws_to_local(self) -> None:
        reader = self.stream.reader
        local = self.local
        rules = self.rules
        loop = self._loop
        discarding = False  # the local side failed or has enough: drain until the close
        while True:
            try:
                data = await reader.read(_WS_READ)
            except ConnectionError as exc:
                self._ws_error = exc
                return
            if not data:
                return
            if discarding:
                continue
            size, close = rules.received(loop.time(), len(data))
            if size < len(data):
                data = data[:size]
            rules.local_write_started(loop.time())
            try:
                local.write(data)
                await local.drain()
            except OSError as exc:
                discarding = True
                self._local_failed(exc, writing=True)
                continue
            finally:
                rules.local_write_finished(loop.time())
            if self._timer is None:
                self._arm()  # a timer waits while the local side is not taking bytes
            if close is not None:
                discarding = True
                self._begin_close(close)

    async def _local_to_ws(self) -> None:
        writer = self.stream.writer
        while True:
            try:
                data = await self.local.read()
            except OSError as exc:
                self._local_failed(exc, writing=False)
                return
            if not data:
                logger.debug("%s: EOF", self.local.role)
                close = self.rules.local_eof(self._loop.time())
                if close is not None:
                    self._begin_close(close)
                else:
                    self._arm()
                return
            if writer.is_closing():
                return  # the peer closed: _ws_to_local sees how
            self.rules.sent(self._loop.time())
            writer.write(data)
            try:
                await writer.drain()
            except ConnectionError:
                return  # the same

    # What starts a close

    def _arm(self) -> None:
        """Have a timer at the rules' deadline (they say when one is due)."""
        due = self.rules.deadline()
        if due is None:
            return
        if self._timer is not None:
            if self._timer.when() <= due:
                return  # it fires first, and asks again
            self._timer.cancel()
        self._timer = self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        close = self.rules.poll(self._loop.time())
        if close is not None:
            self._begin_close(close)
        else:
            self._arm()

    def _on_stop(self, _: asyncio.Future[None]) -> None:
        close = self.rules.stop()
        if close is not None:
            self._begin_close(close)
        else:
            self._begin_close(None)  # a close is under way: still bound the tunnel

    def _local_failed(self, exc: OSError, *, writing: bool) -> None:
        failure = self.rules.local_failed(
            exc, writing=writing, ws_closing=self.stream.writer.is_closing()
        )
        logger.log(failure.level, "%s", failure.message)
        self._begin_close(failure.close)

    def _begin_close(self, close: Close | None) -> None:
        """Send a close frame; the WebSocket reader still delivers until the peer's close.

        From now on the tunnel ends within ``close_timeout`` + 1 s, whatever
        the local side does. ``None``: only that bound.
        """
        if self._deadline is not None and self._deadline.when() is None:
            self._deadline.reschedule(self._loop.time() + self._close_timeout + 1)
        if self._up is not None and self._up is not asyncio.current_task():
            self._up.cancel()
        if close is None or self.rules.close_sent is not None or self.stream.writer.is_closing():
            return  # a close is under way already (ours, or the peer's)
        logger.debug("%s", close.why or "closing")  # an early end is reported at the end
        self.rules.closing(close)
        self._closing = asyncio.create_task(self.stream.close(close.code, close.reason))

    # How it ends

    async def _end(self) -> None:
        stream = self.stream
        ending = self.rules.ending(
            peer_code=stream.close_code,
            peer_reason=stream.close_reason or "",
            ws_error=None if self._ws_error is None else _describe(self._ws_error),
            local_late=self._local_late,
        )
        self.error = ending.error
        if ending.reset_local:
            # The stream did not end cleanly: the local peer must not see EOF.
            await self.local.fail(self._close_timeout)
        else:
            await self.local.finish(self._close_timeout)
        if self._closing is not None:
            await self._closing
        else:
            await stream.close()


async def _echo(stream: WsStream, stop: asyncio.Future[None]) -> str | None:
    """Echo until the client closes; returns an error description or None."""
    reader, writer = stream.reader, stream.writer
    closing: list[asyncio.Task[None]] = []

    def shutdown(_: asyncio.Future[None]) -> None:
        if not writer.is_closing():
            closing.append(asyncio.create_task(stream.close(*_SHUTDOWN)))

    stop.add_done_callback(shutdown)
    error = None
    try:
        while data := await reader.read(_WS_READ):
            if writer.is_closing():
                continue  # draining until the peer's close
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
    except ConnectionError as exc:
        if not closing:
            error = f"the WebSocket failed: {_describe(exc)}"
    finally:
        stop.remove_done_callback(shutdown)
    code = stream.close_code
    if error is None and not closing and code is not None and code not in CLEAN_CODES:
        error = f"the peer closed with {code}"
    await stream.close()
    return error


# serve


def _server_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.cert is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    return context


def _subprotocol_selector(
    accepted: Sequence[str],
) -> Callable[[ServerConnection, Sequence[Subprotocol]], Subprotocol | None]:
    def select(_: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        if not offered:
            return None
        for name in accepted:
            if name in offered:
                return Subprotocol(name)
        raise NegotiationError(
            f"unsupported subprotocol {', '.join(offered)}; "
            f"this server accepts {', '.join(accepted)} or none"
        )

    return select


async def _serve(args: argparse.Namespace, prog: str) -> int:
    loop = asyncio.get_running_loop()
    shutdown = _Shutdown()
    sessions = _Sessions()
    try:
        context = _server_ssl(args)
    except (OSError, ssl.SSLError) as exc:
        logger.error(
            "cannot load the TLS certificate --cert %s with its key --key %s: %s "
            "(both must be PEM files, the key matching the certificate)",
            args.cert,
            args.key,
            _describe(exc),
        )
        return EXIT_ERROR
    target: tuple[str, int] | None = args.to
    close_timeout: float = args.close_timeout
    accepted = list(dict.fromkeys([_BINARY, *args.subprotocol]))
    reserved = 0

    def release(_: asyncio.Future[None]) -> None:
        nonlocal reserved
        reserved -= 1

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        nonlocal reserved
        if args.path is not None and urlsplit(request.path).path != args.path:
            return connection.respond(404, "Not Found\n")
        if args.max_connections is not None:
            if reserved >= args.max_connections:
                logger.warning(
                    "%s: refused with 503: --max-connections %d reached",
                    _addr(connection.remote_address),
                    args.max_connections,
                )
                return connection.respond(503, "Too many connections; try again later.\n")
            reserved += 1
            connection.connection_lost_waiter.add_done_callback(release)
        return None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream: WsStream = writer.get_extra_info("ws_stream")
        peer = _addr(writer.get_extra_info("peername"))
        started = loop.time()
        with sessions.session() as slot:
            sessions.attach(slot, stream)
            logger.debug("%s: connected (subprotocol %s)", peer, stream.websocket.subprotocol)
            try:
                if target is None:
                    error = await _echo(stream, slot.stop)
                else:
                    error = await _bridge(stream, slot.stop, target, close_timeout)
            except Exception:
                logger.exception("%s: internal error", peer)
                await stream.close(1011, "internal error")
                error = "internal error"
        _log_end(peer, stream, loop.time() - started, error)

    origins: list[str | None] | None = [*args.origin, None] if args.origin else None
    try:
        server = await start_server(
            handle,
            args.host,
            args.port,
            ssl=context,
            origins=origins,
            select_subprotocol=_subprotocol_selector(accepted),
            process_request=process_request,
            close_timeout=close_timeout,
        )
    except OSError as exc:
        logger.error("cannot listen on %s: %s", _addr((args.host, args.port)), _describe(exc))
        return EXIT_ERROR
    scheme = "wss" if context is not None else "ws"
    path = args.path or "/"
    urls = [f"{scheme}://{_addr(sock.getsockname())}{path}" for sock in server.sockets]
    what = "echo" if target is None else f"bridging every connection to {_addr(target)}"
    logger.info("listening on %s (%s)", ", ".join(urls), what)

    async def stop() -> None:
        server.close(close_connections=False)  # stop accepting; handshakes under way get 503
        sessions.stop_all()
        try:
            async with asyncio.timeout(close_timeout + 1.5):
                await server.wait_closed()
        except TimeoutError:
            logger.warning("connections still open after %.1f s: dropping them", close_timeout)
            sessions.abort_all()

    return await _until_shutdown(shutdown, sessions, args, prog, stop)


async def _until_shutdown(
    shutdown: _Shutdown,
    sessions: _Sessions,
    args: argparse.Namespace,
    prog: str,
    stop: Callable[[], Awaitable[None]],
) -> int:
    """Serve (with --stats) until SIGINT/SIGTERM/SIGHUP, then ``stop()``; a second forces."""
    stats = (
        asyncio.create_task(_print_stats(sessions, prog, args.stats_interval))
        if args.stats
        else None
    )
    try:
        await shutdown.requested
        await stop()
    except asyncio.CancelledError:
        if not shutdown.forced:
            raise
        sessions.abort_all()
        return EXIT_ERROR
    finally:
        if stats is not None:
            stats.cancel()
            sessions.summary(prog)
    return EXIT_OK


async def _bridge(
    stream: WsStream,
    stop: asyncio.Future[None],
    target: tuple[str, int],
    close_timeout: float,
) -> str | None:
    host, port = target
    try:
        reader, writer = await _unless_stopped(
            stop,
            asyncio.wait_for(_open_tcp(host, port), _TARGET_CONNECT_TIMEOUT),
        )
    except _Stopped:
        await stream.close(*_SHUTDOWN)
        return None
    except (OSError, TimeoutError) as exc:
        # Logged once, with the end of the connection; the client learns 1014
        # and nothing about the target.
        await stream.close(1014, "cannot reach the target")
        return f"cannot connect to the target {_addr(target)}: {_describe(exc)}"
    tunnel = _Tunnel(
        stream, _TcpEndpoint(reader, writer, "target"), stop=stop, close_timeout=close_timeout
    )
    await tunnel.run()
    return tunnel.error


def _log_end(who: str, stream: WsStream, duration: float, error: str | None) -> None:
    ws = stream.websocket.protocol
    sent_code = ws.close_sent.code if ws.close_sent is not None else "-"
    level = logging.INFO if error is None else logging.WARNING
    logger.log(
        level,
        "%s: closed after %.2f s: received %d bytes, sent %d bytes; close code sent %s, "
        "received %s%s",
        who,
        duration,
        stream.bytes_received,
        stream.bytes_sent,
        sent_code,
        stream.close_code,
        "" if error is None else f"; {error}",
    )


# The client side: forward and cat


class _Dialer:
    """Opens the WebSocket of a client session: the one place forward and cat connect.

    One attempt per :meth:`dial`; a reconnecting policy belongs here.
    """

    def __init__(
        self, uri: str, options: dict[str, Any], policy: ReconnectPolicy | None = None
    ) -> None:
        self.uri = uri
        self.shown_uri = _redact(uri)
        self._options = options
        self.policy = policy

    async def dial(self) -> WsStream:
        """Open one WebSocket. Raises one of ``_DIAL_ERRORS``, its message redacted.

        With a reconnect policy (``forward --reconnect``), transient failures
        are retried after the policy's backoff delays, up to its
        ``max_attempts``; fatal ones (HTTP 401/403/404, bad certificate) are
        not. A live tunnel is never moved to a new WebSocket: its bytes would
        splice two connections.
        """
        machine = ReconnectMachine(self.policy, self.shown_uri) if self.policy else None
        while True:
            try:
                return await connect_stream(self.uri, **self._options)
            except _DIAL_ERRORS as exc:
                message = str(exc).replace(self.uri, self.shown_uri)
                error = ConnectionError(message or type(exc).__name__)
                if machine is None:
                    raise error from exc
                try:
                    delay = machine.failed(exc)
                except BaseException:
                    raise error from exc
                await asyncio.sleep(delay)


def _dialer(args: argparse.Namespace, parser: argparse.ArgumentParser) -> _Dialer:
    headers: list[tuple[str, str]] = list(args.header)
    token = args.bearer if args.bearer is not None else os.environ.get("WS_STREAM_BEARER")
    if token:
        if not re.fullmatch(r"[\x21-\x7e]+", token):
            parser.error("the bearer token must be printable ASCII without spaces")
        if any(name.lower() == "authorization" for name, _ in headers):
            parser.error(
                "use either --bearer (or WS_STREAM_BEARER) or --header 'Authorization: ...'"
            )
        headers.append(("Authorization", f"Bearer {token}"))
    options: dict[str, Any] = {
        "additional_headers": Headers(headers),
        "close_timeout": args.close_timeout,
    }
    if args.cafile is not None:
        if not args.uri.startswith("wss://"):
            parser.error("--cafile applies to wss:// URIs only")
        try:
            options["ssl"] = ssl.create_default_context(cafile=args.cafile)
        except (OSError, ssl.SSLError) as exc:
            parser.error(f"--cafile: cannot load {args.cafile}: {_describe(exc)}")
    policy = None
    if getattr(args, "reconnect", None) is not None:
        if args.reconnect_attempts < 1:
            parser.error("--reconnect-attempts must be at least 1")
        policy = _PRESETS[args.reconnect]().with_options(max_attempts=args.reconnect_attempts)
    return _Dialer(args.uri, options, policy)


_PRESETS = {
    "fast": ReconnectPolicy.fast_reconnect,
    "stable": ReconnectPolicy.stable_connection,
    "low-latency": ReconnectPolicy.low_latency,
}


def _tunnel_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "close_timeout": args.close_timeout,
        "linger": args.linger,
        "idle_timeout": args.idle_timeout,
        "max_bytes": args.max_bytes,
    }


async def _forward(args: argparse.Namespace, prog: str) -> int:
    loop = asyncio.get_running_loop()
    shutdown = _Shutdown()
    sessions = _Sessions()
    dialer: _Dialer = args.dialer
    tunnel_options = _tunnel_options(args)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _addr(writer.get_extra_info("peername"))
        local = _TcpEndpoint(reader, writer, "client")
        started = loop.time()
        with sessions.session() as slot:
            try:
                stream = await _unless_stopped(slot.stop, dialer.dial())
            except _Stopped:
                local.abort()
                return
            except ConnectionError as exc:
                logger.error("%s: cannot open %s: %s", peer, dialer.shown_uri, exc)
                local.abort()  # a reset: the client must not mistake this for an empty answer
                return
            sessions.attach(slot, stream)
            logger.debug("%s: tunnel open to %s", peer, dialer.shown_uri)
            try:
                if args.send_on_connect:
                    stream.writer.write(args.send_on_connect)
                tunnel = _Tunnel(stream, local, stop=slot.stop, **tunnel_options)
                await tunnel.run()
                error = tunnel.error
            except Exception:
                logger.exception("%s: internal error", peer)
                local.abort()
                await stream.close(1011, "internal error")
                error = "internal error"
        _log_end(peer, stream, loop.time() - started, error)

    host, port = args.listen
    try:
        server = await _start_tcp_server(on_client, host, port)
    except OSError as exc:
        logger.error("cannot listen on %s: %s", _addr((host, port)), _describe(exc))
        return EXIT_ERROR
    addresses = ", ".join(_addr(sock.getsockname()) for sock in server.sockets)
    logger.info("listening on %s (each connection tunnels to %s)", addresses, dialer.shown_uri)

    async def stop() -> None:
        server.close()
        sessions.stop_all()
        await sessions.wait(args.close_timeout + 1.5)

    return await _until_shutdown(shutdown, sessions, args, prog, stop)


async def _cat(args: argparse.Namespace, prog: str) -> int:
    shutdown = _Shutdown()
    sessions = _Sessions()
    dialer: _Dialer = args.dialer
    shutdown.requested.add_done_callback(lambda _: sessions.stop_all())
    stats = (
        asyncio.create_task(_print_stats(sessions, prog, args.stats_interval))
        if args.stats
        else None
    )
    try:
        with sessions.session() as slot:
            try:
                stream = await _unless_stopped(slot.stop, dialer.dial())
            except _Stopped:
                return EXIT_OK
            except ConnectionError as exc:
                logger.error("cannot open %s: %s", dialer.shown_uri, exc)
                return EXIT_ERROR
            sessions.attach(slot, stream)
            logger.info("connected to %s", dialer.shown_uri)
            error = await _cat_session(stream, slot.stop, args, shutdown)
            if error is not None:
                logger.error("%s", error)  # before the --stats summary, which comes last
    finally:
        if stats is not None:
            stats.cancel()
            sessions.summary(prog)
    if error is not None:
        return EXIT_ERROR
    logger.info(
        "closed: received %d bytes, sent %d bytes; close code %s",
        stream.bytes_received,
        stream.bytes_sent,
        stream.close_code,
    )
    return EXIT_OK


async def _cat_session(
    stream: WsStream, stop: asyncio.Future[None], args: argparse.Namespace, shutdown: _Shutdown
) -> str | None:
    stdio = await _Stdio.open()
    try:
        if args.send_on_connect:
            stream.writer.write(args.send_on_connect)
        tunnel = _Tunnel(stream, stdio, stop=stop, **_tunnel_options(args))
        await tunnel.run()
        return tunnel.error
    except asyncio.CancelledError:
        if not shutdown.forced:
            raise
        stream.transport.abort()
        return "interrupted"
    finally:
        stdio.abort()  # nothing left to do after a clean finish
        stdio.restore()


# Entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ws-stream`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    _reserve_stdio()
    parser = build_parser()
    args = parser.parse_args(argv)
    sub: argparse.ArgumentParser = args.parser
    prog = f"ws-stream {args.command}"
    if args.command == "serve":
        if (args.cert is None) != (args.key is None):
            sub.error("--cert and --key go together")
        for option, path in (("--cert", args.cert), ("--key", args.key)):
            if path is not None:
                problem = _unreadable(path)
                if problem is not None:
                    sub.error(f"{option}: cannot read {path}: {problem}")
    else:
        args.dialer = _dialer(args, sub)
    default_level = logging.WARNING if args.command == "cat" else logging.INFO
    _configure_logging(prog, default_level, args.verbose, args.quiet)
    run: Callable[[argparse.Namespace, str], Awaitable[int]] = args.run
    try:
        return asyncio.run(_main(run, args, prog))
    except KeyboardInterrupt:  # before the signal handlers were installed
        return EXIT_OK


def _unreadable(path: str) -> str | None:
    """Why ``path`` cannot be read as a file, or None if it can."""
    try:
        with open(path, "rb"):
            return None
    except OSError as exc:
        return exc.strerror or _describe(exc)


def _reserve_stdio() -> None:
    """Open /dev/null on whichever of descriptors 0, 1 and 2 is closed (``<&-``, ``>&-``).

    Otherwise the event loop's own descriptors would take those numbers, and
    ``cat`` would read its epoll descriptor as stdin, or logging write into a
    socket. A closed stdin reads as empty, a closed stdout or stderr discards.
    """
    for fd, flags in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, flags)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stderr is None:  # Python found fd 2 closed at startup
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115


async def _main(
    run: Callable[[argparse.Namespace, str], Awaitable[int]], args: argparse.Namespace, prog: str
) -> int:
    try:
        return await run(args, prog)
    except asyncio.CancelledError:
        return EXIT_ERROR  # a second signal
