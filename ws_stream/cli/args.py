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
import ipaddress
import math
import os
import re
import socket
import ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from urllib.parse import urlsplit

from .. import __version__
from .._failures import redact
from .._options import StreamOptions
from ..reconnect import ReconnectPolicy
from .proxy import DIRECT, ENVIRONMENT_HELP, ProxyChoice, choose_proxy, proxy_url
from .report import describe

if TYPE_CHECKING:
    from .gateway.reverse import AllowedRange

__all__ = [
    "PRESETS",
    "ClientConfig",
    "CommonConfig",
    "Config",
    "ForwardConfig",
    "HostPort",
    "PasswdConfig",
    "ReverseTunnel",
    "ServeConfig",
    "TargetTls",
    "UnixAddress",
    "build_parser",
    "config_from_args",
    "parse_config",
    "parse_target",
    "workers_problem",
]

Command = Literal["serve", "forward", "cat"]


class HostPort(NamedTuple):
    """A TCP address from the command line (``--to``, ``--listen``)."""

    host: str
    port: int


class UnixAddress(NamedTuple):
    """A Unix-socket address from the command line (``--to unix:PATH``, ``--listen unix:PATH``).

    ``path`` is checked: not empty, no NUL, within the system's length limit.
    """

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


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
    #: ``--ping-interval``: seconds between keepalive pings; None: no pings.
    ping_interval: float | None = 20.0
    #: ``--ping-timeout``: seconds to wait for the pong (then close 1011); None: forever.
    ping_timeout: float | None = 20.0

    @property
    def prog(self) -> str:
        """``ws-stream CMD``: how log lines start."""
        return f"ws-stream {self.command}"


@dataclass(frozen=True, kw_only=True)
class ServeConfig(CommonConfig):
    """``ws-stream serve``."""

    host: str
    port: int
    #: ``--to``: the one target (TCP or Unix socket) of every connection; None: echo.
    target: HostPort | UnixAddress | None
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
    #: ``--unix``: listen on this Unix socket instead of ``host``:``port``.
    unix: UnixAddress | None = None
    #: ``--mode``: permissions of the ``--unix`` socket file; None: as the umask makes them.
    mode: int | None = None
    #: ``--to-tls``: TLS to the target; None: plain TCP (or Unix socket).
    target_tls: TargetTls | None = None
    #: ``--workers``: processes sharing the port (:mod:`.workers`); 1: this process alone.
    workers: int = 1
    #: ``--targets``: the file (or directory) of named targets; None: ``--to`` or the echo.
    targets: str | None = None
    #: ``--web``: the directory of web files; None: plain HTTP requests get 426.
    web: str | None = None
    #: ``--bearer-file``, ``--basic-auth-file``: credentials files; None: not required.
    bearer_file: str | None = None
    basic_auth_file: str | None = None
    #: ``--client-ca``: the CAs of required TLS client certificates; None: none asked.
    client_ca: str | None = None
    #: ``--mux``: WebSockets offering the ``yamux`` subprotocol carry many streams.
    mux: bool = False
    #: ``--allow-reverse``: where clients may ask the server to listen (needs ``--mux``).
    allow_reverse: tuple[AllowedRange, ...] = ()


@dataclass(frozen=True, kw_only=True)
class TargetTls:
    """``serve --to-tls``: the target is reached over TLS, its certificate verified.

    ``context`` verifies the chain (the system's CAs, or ``--to-cafile``'s
    only) and the name; ``server_name`` is that name (``--to-server-name``,
    default the ``--to`` host), also sent as SNI unless it is an IP address.
    """

    context: ssl.SSLContext = field(repr=False)
    server_name: str


@dataclass(frozen=True, kw_only=True)
class ClientConfig(CommonConfig):
    """A client of ``ws-stream serve``: ``cat`` (and, with a listen address, ``forward``)."""

    #: May hold ``user:password@``: shown only through :func:`ws_stream._failures.redact`.
    uri: str = field(repr=False)
    #: Extra handshake headers, the ``Authorization`` of the bearer token included.
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    #: From ``--cafile``, ``--insecure``, ``--client-cert``/``--client-key`` (wss://
    #: only); None: the default trust store, no client certificate.
    ssl_context: ssl.SSLContext | None
    send_on_connect: bytes | None
    #: The tunnel's timers and limit (see :class:`~.rules.TunnelRules`).
    linger: float
    idle_timeout: float | None
    max_bytes: int | None
    #: ``forward --reconnect``: retry opening each WebSocket; None: one attempt.
    reconnect: ReconnectPolicy | None = None
    #: The proxy of every connection: ``--proxy``, the environment's, or none
    #: (``--no-proxy``, or none configured) (see :mod:`.proxy`).
    proxy: ProxyChoice = DIRECT
    #: ``--insecure``: the server's certificate is not verified (``ssl_context``
    #: skips it); every connection logs a warning.
    insecure: bool = False
    #: ``--subprotocol`` values, offered in this order; empty: none offered.
    subprotocols: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ForwardConfig(ClientConfig):
    """``ws-stream forward``."""

    #: ``--listen``; None: only ``--reverse`` tunnels.
    listen: HostPort | UnixAddress | None
    #: ``--mode``: permissions of a ``unix:`` listening socket; None: as the umask makes them.
    mode: int | None = None
    #: ``--mux``: every local client is a stream of one yamux session (one WebSocket).
    mux: bool = False
    #: ``--reverse``: the server listens on ``remote``; each connection there reaches ``local``.
    reverse: tuple[ReverseTunnel, ...] = ()


class ReverseTunnel(NamedTuple):
    """``forward --reverse REMOTE_IP:PORT:LOCAL_HOST:PORT``."""

    remote: HostPort
    local: HostPort | UnixAddress

    def __str__(self) -> str:
        host = f"[{self.remote.host}]" if ":" in self.remote.host else self.remote.host
        local = self.local if isinstance(self.local, UnixAddress) else _shown(self.local)
        return f"{host}:{self.remote.port} -> {local}"


def _shown(address: HostPort) -> str:
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"{host}:{address.port}"


@dataclass(frozen=True, kw_only=True)
class PasswdConfig:
    """``ws-stream passwd USER``."""

    user: str
    command: Literal["passwd"] = "passwd"


Config = ServeConfig | ClientConfig | PasswdConfig


# Argument types: each raises ArgumentTypeError with a message that says what
# was expected, which argparse turns into exit status 2.


_PORT_DIGITS = re.compile(r"[0-9]{1,5}")


def port_number(text: str) -> int | None:
    """``text`` as a number if it is 1 to 5 ASCII digits, else None (``int()``
    also takes a sign, ``_``, spaces and other scripts' digits); the caller
    checks the range."""
    return int(text) if _PORT_DIGITS.fullmatch(text) else None


def _port(text: str) -> int:
    port = port_number(text)
    if port is None or port > 65535:
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


def parse_target(text: str) -> HostPort | UnixAddress:
    """A target address: ``HOST:PORT`` (port not 0) or ``unix:PATH``.

    Raises:
        argparse.ArgumentTypeError: it is neither (the message says why).
    """
    if text.startswith("unix:"):
        return _unix_path(text[5:], text)
    address = _split_host_port(text, None)
    if address.port == 0:
        raise argparse.ArgumentTypeError(f"the target port cannot be 0 in {text!r}")
    return address


def _listen(text: str) -> HostPort | UnixAddress:
    if text.startswith("unix:"):
        return _unix_path(text[5:], text)
    return _split_host_port(text, "127.0.0.1")


#: Longest Unix socket path: ``sun_path`` less its NUL (108 bytes on Linux, 104 elsewhere).
_UNIX_PATH_MAX = 107 if sys.platform.startswith("linux") else 103


def _unix_path(path: str, given: str) -> UnixAddress:
    if not path:
        raise argparse.ArgumentTypeError(
            f"expected unix:PATH (for example unix:/run/ws-stream.sock), got {given!r}: "
            "the path is missing"
        )
    if "\0" in path:
        raise argparse.ArgumentTypeError(f"a Unix socket path cannot contain NUL: {given!r}")
    size = len(os.fsencode(path))
    if size > _UNIX_PATH_MAX:
        raise argparse.ArgumentTypeError(
            f"the Unix socket path {path!r} is {size} bytes long; this system allows "
            f"{_UNIX_PATH_MAX}: use a shorter path"
        )
    return UnixAddress(path)


def _unix_listen(text: str) -> UnixAddress:
    """``serve --unix``: a PATH, or unix:PATH like ``--to``."""
    return _unix_path(text.removeprefix("unix:"), text)


_MODE = re.compile(r"(?:0o?)?([0-7]{1,3})")


def _mode(text: str) -> int:
    match = _MODE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected octal permissions such as 0600 or 0660, got {text!r}"
        )
    mode = int(match.group(1), 8)
    if not mode & 0o222:
        raise argparse.ArgumentTypeError(
            f"{text} lets nobody connect: connecting to a Unix socket needs write "
            "permission (for example 0600, or 0660 for a group)"
        )
    return mode


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


#: ``--ping-interval``/``--ping-timeout``: the shortest non-zero value (0 means off).
_MIN_PING = 0.1


def _ping_seconds(text: str) -> float:
    value = _seconds(text)
    if 0 < value < _MIN_PING:
        raise argparse.ArgumentTypeError(
            f"expected 0 (off) or a number of seconds >= {_MIN_PING}, got {text!r}"
        )
    return value


#: ``serve --workers``: at most this many processes (a few per core of a big machine).
_MAX_WORKERS = 256


def _workers(text: str) -> int:
    value = _positive_int(text)
    if value > _MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"expected at most {_MAX_WORKERS} workers (about one per CPU core; this machine "
            f"has {os.cpu_count() or 'an unknown number of'}), got {text!r}"
        )
    return value


def _listen_host(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"expected an address to listen on, got {text!r}: use 0.0.0.0 (IPv4) or :: (IPv6) "
            "to listen on every interface"
        )
    return text


def _request_path(text: str) -> str:
    if not text.startswith("/") or any(c in "?#" or c.isspace() or c < " " for c in text):
        raise argparse.ArgumentTypeError(
            f"expected a request path starting with / (for example /vnc), without query, "
            f"fragment, spaces or control characters, got {text!r}"
        )
    return text


_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _name_problem(name: str) -> str | None:
    """Why ``name`` is not a DNS name or an IP address, or None when it is one."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return None
    if ":" in name:
        return "no port (and an IPv6 address goes without brackets)"
    if len(name) > 253:
        return f"it is {len(name)} characters long, at most 253 are allowed"
    labels = name.split(".")
    if any(not label for label in labels):
        return "a name cannot have an empty label (.. or a leading or trailing dot)"
    for label in labels:
        if not _LABEL.fullmatch(label):
            return (
                f"the label {label!r} is not 1-63 letters, digits, - or _ (with no - at either end)"
            )
    if labels[-1].isdigit():
        return "not a valid IP address"
    return None


def _server_name(text: str) -> str:
    problem = _name_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(
            f"expected a host name or an IP address, got {text!r}: {problem}"
        )
    return text


_ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://(\[[0-9a-f:.]+\]|[^\[\]:/?#@]+)(?::([0-9]+))?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(text: str) -> str:
    expected = (
        f"expected an origin as scheme://host[:port] (for example https://vnc.example), "
        f"got {text!r}"
    )
    if not text:
        raise argparse.ArgumentTypeError(f"{expected}: the origin is empty")
    if text == "null":
        raise argparse.ArgumentTypeError(
            f"{expected}: `null` is not allowed: browsers send it for sandboxed frames and "
            "local files, which any site can create, so it would let every page in"
        )
    match = _ORIGIN.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{expected}: browsers send exactly that, the scheme in lowercase, with no path, "
            "query or trailing /"
        )
    scheme, host, port = match.groups()
    if host.startswith("["):
        problem = None if _is_ip(host[1:-1], 6) else "not a valid IPv6 address"
    else:
        problem = _name_problem(host)
    if problem is None and host != host.lower():
        problem = "browsers send the host in lowercase"
    if problem is None and port is not None:
        if not 1 <= int(port) <= 65535:
            problem = "the port must be 1-65535"
        elif _DEFAULT_PORTS.get(scheme) == int(port):
            problem = f"browsers leave out the default port: write {scheme}://{host}"
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{expected}: {problem}")
    return text


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _allowed_range(text: str) -> AllowedRange:
    from .gateway.reverse import parse_allowed

    return parse_allowed(text)


def _reverse(text: str) -> ReverseTunnel:
    """``--reverse REMOTE_IP:PORT:LOCAL``: LOCAL is HOST:PORT or unix:PATH."""
    if text.startswith("["):
        end = text.find("]")
        remote_text, sep, local_text = text[: end + 1], text[end + 1 : end + 2], text[end + 2 :]
        port_text, _, local_text = local_text.partition(":")
        remote_text = f"{remote_text}:{port_text}"
    else:
        host, sep, rest = text.partition(":")
        port_text, _, local_text = rest.partition(":")
        remote_text = f"{host}:{port_text}"
    try:
        allowed = _allowed_range(remote_text)
        if allowed.low != allowed.high or not sep or not local_text:
            raise argparse.ArgumentTypeError("")
        local = parse_target(local_text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected REMOTE_IP:PORT:LOCAL_HOST:LOCAL_PORT or REMOTE_IP:PORT:unix:PATH (for "
            f"example 127.0.0.1:9001:localhost:22), got {text!r}"
        ) from None
    return ReverseTunnel(HostPort(allowed.host, allowed.low), local)


def _basic_user(text: str) -> str:
    from .gateway.access import valid_user

    if not valid_user(text):
        raise argparse.ArgumentTypeError(
            f"a user name is 1-128 characters without a colon, spaces or control "
            f"characters, got {text!r}"
        )
    return text


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _TOKEN.fullmatch(name):
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    if any(c in value for c in "\r\n\0"):
        raise argparse.ArgumentTypeError(f"a header value cannot contain CR, LF or NUL: {text!r}")
    return name, value


def _subprotocol(text: str) -> str:
    if not _TOKEN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"expected a subprotocol name (an HTTP token: letters, digits and !#$%&'*+-.^_`|~), "
            f"got {text!r}"
        )
    return text


def _ws_uri(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            "expected a ws:// or wss:// URI (for example ws://127.0.0.1:8765/), "
            f"got {redact(text)!r}"
        )
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        # urllib's message may quote a piece of the password: not shown.
        raise argparse.ArgumentTypeError(
            f"invalid port in {redact(text)!r}: expected a number from 0 to 65535"
        ) from None
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


#: ``serve``'s default address (``--host``, ``--port``).
_SERVE_HOST = "127.0.0.1"
_SERVE_PORT = 8765
#: The library's keepalive defaults, which ``--ping-interval``/``--ping-timeout`` keep.
_KEEPALIVE = StreamOptions()

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
with the real port when --port is 0 (with --unix: `listening on unix:PATH
(...)`). Each connection is logged when it ends:
peer, duration, bytes each way, close codes. SIGINT/SIGTERM/SIGHUP stop
accepting, close every connection with 1001 and exit 0 within --close-timeout.

With --workers N, N processes share the port (SO_REUSEPORT, Linux): the parent
prints the listening line once (`...; N workers, pids ...)`), each worker's lines
start with `ws-stream serve worker I:`, a signal to the parent stops them all,
--stats sums them, and --max-connections is one total for all of them. A worker
that dies stops the others: exit 1.
"""

_CLIENT_EPILOG = (
    """\
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
    + ENVIRONMENT_HELP
)

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
    keepalive = common.add_argument_group("keepalive")
    keepalive.add_argument(
        "--ping-interval",
        type=_ping_seconds,
        metavar="S",
        help="send a WebSocket ping every S seconds; pings are traffic, so they also keep "
        "proxies and load balancers from cutting an idle tunnel: keep S below their idle "
        "timeout, and at least 0.1 (default: 20; 0: no pings)",
    )
    keepalive.add_argument(
        "--ping-timeout",
        type=_ping_seconds,
        metavar="S",
        help="close the connection with 1011 when a ping gets no answer within S seconds "
        "(a dead peer or network path) (at least 0.1; default: 20; 0: wait forever)",
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
    group.add_argument(
        "--subprotocol",
        type=_subprotocol,
        action="append",
        default=[],
        metavar="NAME",
        help="offer this subprotocol (repeatable, in order of preference); the one the "
        "server selects is logged at -v",
    )
    # Not a mutually exclusive group: argparse moves those out of their
    # argument group in a parent parser; config_from_args checks the pair.
    proxy = client.add_argument_group("proxy (see below for the environment variables)")
    proxy.add_argument(
        "--proxy",
        type=proxy_url,
        metavar="URL",
        help="connect through this proxy: http://HOST:PORT or https://HOST:PORT (HTTP "
        "CONNECT), socks5://HOST:PORT (this machine resolves the server's name) or "
        "socks5h://HOST:PORT (the proxy resolves it); USER:PASSWORD@ before HOST if the "
        "proxy wants them (default: from the environment)",
    )
    proxy.add_argument(
        "--no-proxy",
        action="store_true",
        help="connect directly, ignoring the proxy environment variables",
    )
    tls = client.add_argument_group("TLS (wss:// only)")
    tls.add_argument("--cafile", metavar="FILE", help="trust the CA certificates in FILE (PEM)")
    tls.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the server's certificate (its chain and name): anyone on the "
        "path can read and change the tunnel; a warning is logged on every connection",
    )
    tls.add_argument(
        "--client-cert",
        metavar="FILE",
        help="present this client certificate chain (PEM) to servers that require one "
        "(mutual TLS); the file may also hold the key",
    )
    tls.add_argument(
        "--client-key",
        metavar="FILE",
        help="the private key (PEM, unencrypted) of --client-cert, if not in that file",
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
        "--host", type=_listen_host, help=f"address to listen on (default: {_SERVE_HOST})"
    )
    serve.add_argument(
        "--port",
        type=_port,
        help=f"port to listen on; 0 picks one (default: {_SERVE_PORT})",
    )
    serve.add_argument(
        "--unix",
        type=_unix_listen,
        metavar="PATH",
        help="listen on this Unix socket instead of --host/--port (behind a reverse proxy "
        "on the same machine); a stale socket file there is replaced, any other file is an "
        "error; removed at exit",
    )
    serve.add_argument(
        "--mode",
        type=_mode,
        metavar="MODE",
        help="with --unix: permissions of the socket file, in octal (for example 0660: "
        "the proxy's group may connect) (default: from the umask)",
    )
    serve.add_argument(
        "--to",
        type=parse_target,
        metavar="HOST:PORT|unix:PATH",
        help="bridge every connection to this target: a TCP address or a Unix socket "
        "(default: echo)",
    )
    serve.add_argument(
        "--path", type=_request_path, help="accept this request path only (others get 404)"
    )
    serve.add_argument(
        "--origin",
        type=_origin,
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
        help="refuse handshakes beyond N open connections with HTTP 503 "
        "(in total, over all --workers)",
    )
    serve.add_argument(
        "--subprotocol",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept this subprotocol (repeatable; `binary` always is)",
    )
    target_tls = serve.add_argument_group("TLS to the target")
    target_tls.add_argument(
        "--to-tls",
        action="store_true",
        help="connect to the --to target over TLS, verifying its certificate chain and "
        "name (a refused certificate closes the WebSocket with 1014, as an unreachable "
        "target does)",
    )
    target_tls.add_argument(
        "--to-cafile",
        metavar="FILE",
        help="with --to-tls: trust only the CA certificates in FILE (PEM) instead of the system's",
    )
    target_tls.add_argument(
        "--to-server-name",
        type=_server_name,
        metavar="NAME",
        help="with --to-tls: the name the target's certificate must carry, also sent as "
        "SNI (default: the --to host; required for a unix: target)",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="run N processes sharing the listening port (SO_REUSEPORT, Linux only); "
        "signals, --stats and --max-connections cover all of them (1-256; default: 1)",
    )
    gateway = serve.add_argument_group(
        "gateway (authentication, named targets, web files; see below)"
    )
    gateway.add_argument(
        "--targets",
        metavar="FILE|DIR",
        help="bridge each connection to the target it names (last path segment, or "
        "?token=NAME) among the lines `NAME: HOST:PORT` / `NAME: unix:/path` of FILE "
        "(websockify's token-file format; a DIR: all its files); unknown names get 404; "
        "read again when it changes; instead of --to",
    )
    gateway.add_argument(
        "--web",
        metavar="DIR",
        help="answer plain HTTP GET/HEAD requests on the same port with the files of DIR "
        "(index.html for directories, no listings, nothing outside DIR)",
    )
    gateway.add_argument(
        "--bearer-file",
        metavar="FILE",
        help="require a bearer token listed in FILE (one `TOKEN [LABEL]` per line): "
        "`Authorization: Bearer TOKEN`, ?token=TOKEN or its cookie; 401 otherwise; "
        "read again when it changes",
    )
    gateway.add_argument(
        "--basic-auth-file",
        metavar="FILE",
        help="require HTTP Basic credentials of a `USER:HASH` line of FILE (hashes from "
        "`ws-stream passwd USER`; plain-text passwords are refused); 401 otherwise",
    )
    mux = serve.add_argument_group("multiplexing (yamux) and reverse tunnels")
    mux.add_argument(
        "--mux",
        action="store_true",
        help="also accept yamux sessions (clients offering the subprotocol `yamux`, as "
        "forward --mux does): each stream is bridged to the target like a WebSocket of its own",
    )
    mux.add_argument(
        "--allow-reverse",
        type=_allowed_range,
        action="append",
        default=[],
        metavar="IP:PORT[-PORT]",
        help="with --mux: let clients (forward --reverse) ask this server to listen on an "
        "address in this range, each connection there becoming a stream back to the client "
        "(repeatable; other addresses get 403)",
    )
    gateway.add_argument(
        "--client-ca",
        metavar="FILE",
        help="with --cert: require TLS client certificates signed by the CAs in FILE "
        "(PEM); the log names each certificate's subject",
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
        "--mux",
        action="store_true",
        help="carry every local client as a stream of one WebSocket (yamux; the server needs "
        "serve --mux); with --reconnect, a session that drops is opened again (streams open "
        "then are reset, never moved)",
    )
    forward.add_argument(
        "--reverse",
        type=_reverse,
        action="append",
        default=[],
        metavar="REMOTE_IP:PORT:LOCAL",
        help="a reverse tunnel: the server listens on REMOTE_IP:PORT (it must allow it: serve "
        "--allow-reverse) and each connection there reaches LOCAL (HOST:PORT or unix:PATH) "
        "from this machine (repeatable; one WebSocket each)",
    )
    forward.add_argument(
        "--listen",
        type=_listen,
        metavar="HOST:PORT|unix:PATH",
        help="local TCP address (a bare PORT means 127.0.0.1:PORT; 0 picks one), or a Unix "
        "socket (a stale socket file there is replaced, any other file is an error; removed "
        "at exit)",
    )
    forward.add_argument(
        "--mode",
        type=_mode,
        metavar="MODE",
        help="with --listen unix:PATH: permissions of the socket file, in octal "
        "(for example 0600: only this user) (default: from the umask)",
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

    passwd = commands.add_parser(
        "passwd",
        help="print a `USER:HASH` line for serve --basic-auth-file",
        description="Read a password (a prompt on a terminal, else the first line of stdin) "
        "and print `USER:HASH` (scrypt) for serve --basic-auth-file.",
    )
    passwd.add_argument("user", type=_basic_user, metavar="USER", help="the user name")
    passwd.set_defaults(parser=passwd)
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
    if args.command == "passwd":
        return PasswdConfig(user=args.user)
    common: dict[str, Any] = {
        "command": args.command,
        "verbose": args.verbose,
        "quiet": args.quiet,
        "stats_interval": args.stats_interval if args.stats else None,
        "close_timeout": args.close_timeout,
        **_keepalive(args, parser),
    }
    if args.command == "serve":
        return _serve_config(args, parser, common)
    client = _client_config(args, parser, os.environ if environ is None else environ)
    if args.command == "forward":
        if args.mode is not None and not isinstance(args.listen, UnixAddress):
            parser.error("--mode applies to a Unix socket only: --listen unix:PATH")
        if args.listen is None and not args.reverse:
            parser.error("forward needs --listen ADDRESS, or --reverse tunnels, or both")
        if args.mux and args.listen is None:
            parser.error("--mux carries the clients of --listen: give --listen ADDRESS")
        return ForwardConfig(
            **common,
            **client,
            listen=args.listen,
            mode=args.mode,
            mux=args.mux,
            reverse=tuple(args.reverse),
        )
    return ClientConfig(**common, **client)


def _keepalive(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """``ping_interval`` and ``ping_timeout`` of the config: 0 (off) becomes None."""
    interval = args.ping_interval
    if interval is None:
        interval = _KEEPALIVE.ping_interval
    if interval == 0 and args.ping_timeout is not None:
        parser.error(
            "--ping-timeout needs pings: with --ping-interval 0 none are sent "
            "(drop --ping-timeout, or give --ping-interval a number of seconds)"
        )
    timeout = args.ping_timeout if args.ping_timeout is not None else _KEEPALIVE.ping_timeout
    return {"ping_interval": interval or None, "ping_timeout": timeout or None}


def _serve_config(
    args: argparse.Namespace, parser: argparse.ArgumentParser, common: dict[str, Any]
) -> ServeConfig:
    if args.unix is not None and (args.host is not None or args.port is not None):
        parser.error("--unix replaces --host and --port: give one or the other")
    if args.mode is not None and args.unix is None:
        parser.error("--mode applies to the Unix socket of --unix only")
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    for option, path in (("--cert", args.cert), ("--key", args.key)):
        if path is not None:
            problem = _unreadable(path)
            if problem is not None:
                parser.error(f"{option}: cannot read {path}: {problem}")
    if args.to is not None and args.targets is not None:
        parser.error(
            "--to and --targets exclude each other: one target for every connection, "
            "or the target each connection names"
        )
    if args.allow_reverse and not args.mux:
        parser.error("--allow-reverse needs --mux: reverse tunnels are streams of a mux session")
    if args.client_ca is not None:
        if args.cert is None:
            parser.error("--client-ca needs TLS: --cert FILE --key FILE")
        try:
            ssl.create_default_context(cafile=args.client_ca)
        except (OSError, ssl.SSLError) as exc:
            parser.error(
                f"--client-ca: cannot load CA certificates from {args.client_ca}: "
                f"{describe(exc)} (a PEM file is expected)"
            )
    target_tls = _target_tls(args, parser)
    problem = workers_problem(args.workers, unix=args.unix is not None)
    if problem is not None:
        parser.error(problem)
    config = ServeConfig(
        **common,
        host=_SERVE_HOST if args.host is None else args.host,
        port=_SERVE_PORT if args.port is None else args.port,
        target=args.to,
        path=args.path,
        origins=tuple(args.origin),
        cert=args.cert,
        key=args.key,
        max_connections=args.max_connections,
        subprotocols=tuple(args.subprotocol),
        unix=args.unix,
        mode=args.mode,
        target_tls=target_tls,
        workers=args.workers,
        targets=args.targets,
        web=args.web,
        bearer_file=args.bearer_file,
        basic_auth_file=args.basic_auth_file,
        client_ca=args.client_ca,
        mux=args.mux,
        allow_reverse=tuple(args.allow_reverse),
    )
    from .gateway import check_files

    problem = check_files(config)
    if problem is not None:
        parser.error(problem)
    return config


def _target_tls(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TargetTls | None:
    """``--to-tls``, ``--to-cafile``, ``--to-server-name``: checked, the context loaded."""
    if not args.to_tls:
        given = (("--to-cafile", args.to_cafile), ("--to-server-name", args.to_server_name))
        for option, value in given:
            if value is not None:
                parser.error(f"{option} goes with --to-tls (TLS to the target)")
        return None
    if args.to is None:
        parser.error("--to-tls needs a target: --to HOST:PORT (without --to, serve echoes)")
    name = args.to_server_name
    if name is None:
        if isinstance(args.to, UnixAddress):
            parser.error(
                "--to-tls with a unix: target needs --to-server-name NAME: the name the "
                "target's certificate carries"
            )
        name = args.to.host
    try:
        # Without a cafile: the system's CAs. With one: that file's CAs only.
        context = ssl.create_default_context(cafile=args.to_cafile)
    except (OSError, ssl.SSLError) as exc:
        parser.error(f"--to-cafile: cannot load {args.to_cafile}: {describe(exc)}")
    return TargetTls(context=context, server_name=name)


def workers_problem(workers: int, *, unix: bool, platform: str = sys.platform) -> str | None:
    """Why ``serve --workers N`` cannot run here, or None when it can.

    Several processes share one TCP port through ``SO_REUSEPORT``, whose
    kernel load balancing between listening sockets is Linux's (macOS has the
    option but gives every connection to one socket). A Unix socket (``--unix``)
    cannot be shared that way.
    """
    if workers == 1:
        return None
    if unix:
        return (
            "--workers shares a TCP port (SO_REUSEPORT) and cannot share the Unix socket "
            "of --unix: use --workers 1 with --unix"
        )
    if not platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        return (
            f"--workers {workers} needs SO_REUSEPORT with Linux's load balancing, which this "
            f"system ({platform}) does not have: use --workers 1 (or run several ws-stream "
            "serve on different ports behind a load balancer)"
        )
    return None


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
    context = _client_tls(args, parser)
    if args.proxy is not None and args.no_proxy:
        parser.error("--proxy and --no-proxy exclude each other: give one or the other")
    try:
        proxy = choose_proxy(
            args.uri, args.proxy, use_environment=not args.no_proxy, environ=environ
        )
    except ValueError as exc:
        parser.error(str(exc))
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
        "proxy": proxy,
        "insecure": args.insecure,
        "subprotocols": tuple(args.subprotocol),
    }


class _EncryptedKeyError(Exception):
    """A client key that asks for a password: ``ws-stream`` never prompts for one."""


def _no_password() -> str:
    raise _EncryptedKeyError(
        "the private key is encrypted; give an unencrypted copy "
        "(for example: openssl pkey -in KEY -out PLAIN.key)"
    )


def _client_tls(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ssl.SSLContext | None:
    """``--cafile``, ``--insecure``, ``--client-cert``, ``--client-key``: checked, one context.

    None when none is given (websockets' default context then verifies the
    server against the system's CAs).
    """
    given = [
        option
        for option, value in (
            ("--cafile", args.cafile),
            ("--insecure", args.insecure),
            ("--client-cert", args.client_cert),
            ("--client-key", args.client_key),
        )
        if value
    ]
    if not given:
        return None
    if urlsplit(args.uri).scheme != "wss":
        parser.error(f"{given[0]} applies to wss:// URIs only")
    if args.insecure and args.cafile is not None:
        parser.error(
            "--insecure (no certificate check) and --cafile (check with FILE) exclude each other"
        )
    if args.client_key is not None and args.client_cert is None:
        parser.error("--client-key goes with --client-cert")
    for option, path in (("--client-cert", args.client_cert), ("--client-key", args.client_key)):
        if path is not None:
            problem = _unreadable(path)
            if problem is not None:
                parser.error(f"{option}: cannot read {path}: {problem}")
    try:
        context = ssl.create_default_context(cafile=args.cafile)
    except (OSError, ssl.SSLError) as exc:
        parser.error(f"--cafile: cannot load {args.cafile}: {describe(exc)}")
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if args.client_cert is not None:
        try:
            context.load_cert_chain(args.client_cert, args.client_key, password=_no_password)
        except (OSError, ssl.SSLError, _EncryptedKeyError) as exc:
            key = args.client_key or "(the same file)"
            parser.error(
                f"--client-cert: cannot load the certificate {args.client_cert} with the key "
                f"{key}: {describe(exc)}; both must be PEM, the key unencrypted and matching "
                "the certificate (a key in another file goes in --client-key)"
            )
    return context


def _unreadable(path: str) -> str | None:
    """Why ``path`` cannot be read as a file, or None if it can."""
    try:
        with open(path, "rb"):
            return None
    except OSError as exc:
        return exc.strerror or describe(exc)
