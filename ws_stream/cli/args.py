"""The command line of ``ws-stream``: from ``argv`` to a validated, frozen configuration.

Owns: the argument types (each raises :class:`argparse.ArgumentTypeError`
with a message that says what was expected, which argparse turns into exit
status 2), the parser with its help texts and epilogs, and
:func:`config_from_args`, which checks what argparse cannot check alone
(options that go together, a readable ``--cert``, a loadable ``--cafile``, the
bearer token) and turns the namespace into :class:`ServeConfig`,
:class:`ClientConfig` (``cat``) or :class:`ForwardConfig`. Every error here
exits 2 with the sub-command's usage; nothing after this module sees an
:class:`argparse.Namespace`.

A new option is added in three places, all here: its type, its
``add_argument``, and its field in the config it belongs to (common, serve or
client).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

from .. import __version__
from ..reconnect import ReconnectPolicy
from .report import describe

__all__ = [
    "PRESETS",
    "ClientConfig",
    "CommonConfig",
    "Config",
    "ForwardConfig",
    "HostPort",
    "ServeConfig",
    "build_parser",
    "config_from_args",
    "parse_config",
]

Command = Literal["serve", "forward", "cat"]


class HostPort(NamedTuple):
    """A TCP address from the command line (``--to``, ``--listen``)."""

    host: str
    port: int


#: ``forward --reconnect`` presets: the policies of the reconnecting API.
PRESETS: Mapping[str, Callable[[], ReconnectPolicy]] = {
    "fast": ReconnectPolicy.fast_reconnect,
    "stable": ReconnectPolicy.stable_connection,
    "low-latency": ReconnectPolicy.low_latency,
}


# The configuration the rest of the package takes


@dataclass(frozen=True, kw_only=True)
class CommonConfig:
    """Options of every sub-command."""

    command: Command
    #: ``-v`` and ``-q`` counts.
    verbose: int
    quiet: int
    #: Seconds between ``--stats`` lines; None: no ``--stats``.
    stats_interval: float | None
    #: Longest closing handshake, also at shutdown.
    close_timeout: float

    @property
    def prog(self) -> str:
        """``ws-stream CMD``: how log lines start."""
        return f"ws-stream {self.command}"


@dataclass(frozen=True, kw_only=True)
class ServeConfig(CommonConfig):
    """``ws-stream serve``."""

    host: str
    port: int
    #: ``--to``: the one TCP target of every connection; None: echo.
    target: HostPort | None
    #: ``--path``: the only request path accepted; None: any.
    path: str | None
    #: ``--origin`` values; empty: any origin.
    origins: tuple[str, ...]
    #: ``--cert``/``--key``: both or neither, both readable.
    cert: str | None
    key: str | None
    max_connections: int | None
    #: ``--subprotocol`` values, besides ``binary`` (always accepted).
    subprotocols: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class ClientConfig(CommonConfig):
    """A client of ``ws-stream serve``: ``cat`` (and, with a listen address, ``forward``)."""

    #: May hold ``user:password@``: shown only through :func:`~.report.redact`.
    uri: str = field(repr=False)
    #: Extra handshake headers, the ``Authorization`` of the bearer token included.
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    #: From ``--cafile`` (wss:// only); None: the default trust store.
    ssl_context: ssl.SSLContext | None
    send_on_connect: bytes | None
    #: The tunnel's timers and limit (see :class:`~.rules.TunnelRules`).
    linger: float
    idle_timeout: float | None
    max_bytes: int | None
    #: ``forward --reconnect``: retry opening each WebSocket; None: one attempt.
    reconnect: ReconnectPolicy | None = None


@dataclass(frozen=True, kw_only=True)
class ForwardConfig(ClientConfig):
    """``ws-stream forward``."""

    listen: HostPort


Config = ServeConfig | ClientConfig


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


def _split_host_port(text: str, default_host: str | None) -> HostPort:
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
    return HostPort(host, _port(port_text))


def _target(text: str) -> HostPort:
    address = _split_host_port(text, None)
    if address.port == 0:
        raise argparse.ArgumentTypeError(f"the target port cannot be 0 in {text!r}")
    return address


def _listen(text: str) -> HostPort:
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
    """The ``ws-stream`` argument parser.

    Each sub-parser is stored in its namespace as ``parser``, so that
    :func:`config_from_args` reports its errors with that sub-command's usage.
    """
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
    serve.set_defaults(parser=serve)

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
        choices=sorted(PRESETS),
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
    forward.set_defaults(parser=forward)

    cat = commands.add_parser(
        "cat",
        parents=[common, client],
        help="stdin -> WebSocket -> stdout (binary-safe; an SSH ProxyCommand)",
        description="Copy stdin to a WebSocket and the WebSocket to stdout, byte for byte.",
        epilog=_CAT_EPILOG + "\n" + _EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cat.add_argument("uri", type=_ws_uri, metavar="URI", help="ws:// or wss:// URI")
    cat.set_defaults(parser=cat)
    return parser


# From the namespace to the configuration


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into a configuration.

    Exits with status 2 and the sub-command's usage on any bad argument (as
    argparse does); ``--help`` and ``--version`` exit 0.
    """
    return config_from_args(build_parser().parse_args(argv))


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """Check ``args`` (from :func:`build_parser`) as a whole and freeze them.

    ``environ`` (default: :data:`os.environ`) supplies ``WS_STREAM_BEARER``.
    Errors exit 2 through the sub-command's parser.
    """
    parser: argparse.ArgumentParser = args.parser
    common: dict[str, Any] = {
        "command": args.command,
        "verbose": args.verbose,
        "quiet": args.quiet,
        "stats_interval": args.stats_interval if args.stats else None,
        "close_timeout": args.close_timeout,
    }
    if args.command == "serve":
        return _serve_config(args, parser, common)
    client = _client_config(args, parser, os.environ if environ is None else environ)
    if args.command == "forward":
        return ForwardConfig(**common, **client, listen=args.listen)
    return ClientConfig(**common, **client)


def _serve_config(
    args: argparse.Namespace, parser: argparse.ArgumentParser, common: dict[str, Any]
) -> ServeConfig:
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    for option, path in (("--cert", args.cert), ("--key", args.key)):
        if path is not None:
            problem = _unreadable(path)
            if problem is not None:
                parser.error(f"{option}: cannot read {path}: {problem}")
    return ServeConfig(
        **common,
        host=args.host,
        port=args.port,
        target=args.to,
        path=args.path,
        origins=tuple(args.origin),
        cert=args.cert,
        key=args.key,
        max_connections=args.max_connections,
        subprotocols=tuple(args.subprotocol),
    )


def _client_config(
    args: argparse.Namespace, parser: argparse.ArgumentParser, environ: Mapping[str, str]
) -> dict[str, Any]:
    """The fields of :class:`ClientConfig` of its own, checked."""
    headers: list[tuple[str, str]] = list(args.header)
    token = args.bearer if args.bearer is not None else environ.get("WS_STREAM_BEARER")
    if token:
        if not re.fullmatch(r"[\x21-\x7e]+", token):
            parser.error("the bearer token must be printable ASCII without spaces")
        if any(name.lower() == "authorization" for name, _ in headers):
            parser.error(
                "use either --bearer (or WS_STREAM_BEARER) or --header 'Authorization: ...'"
            )
        headers.append(("Authorization", f"Bearer {token}"))
    context = None
    if args.cafile is not None:
        if not args.uri.startswith("wss://"):
            parser.error("--cafile applies to wss:// URIs only")
        try:
            context = ssl.create_default_context(cafile=args.cafile)
        except (OSError, ssl.SSLError) as exc:
            parser.error(f"--cafile: cannot load {args.cafile}: {describe(exc)}")
    policy = None
    if getattr(args, "reconnect", None) is not None:
        if args.reconnect_attempts < 1:
            parser.error("--reconnect-attempts must be at least 1")
        policy = PRESETS[args.reconnect]().with_options(max_attempts=args.reconnect_attempts)
    return {
        "uri": args.uri,
        "headers": tuple(headers),
        "ssl_context": context,
        "send_on_connect": args.send_on_connect,
        "linger": args.linger,
        "idle_timeout": args.idle_timeout,
        "max_bytes": args.max_bytes,
        "reconnect": policy,
    }


def _unreadable(path: str) -> str | None:
    """Why ``path`` cannot be read as a file, or None if it can."""
    try:
        with open(path, "rb"):
            return None
    except OSError as exc:
        return exc.strerror or describe(exc)
