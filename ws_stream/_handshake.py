"""Opening handshakes without I/O, shared by every shell (client and server side).

Each side is a small machine over websockets' Sans-I/O ``ClientProtocol`` /
``ServerProtocol``: the shell writes :meth:`data_to_send`, feeds what it reads
to :meth:`receive_data` until it returns True, and takes the result. Failures
are mapped once, by :func:`ws_stream._failures.handshake_failure` (never showing
credentials). The bytes read behind the HTTP head (the peer's first frames)
are never parsed here: they are handed over as ``received`` and the engine
decides them like every later frame (see :class:`HeadSplitter`).

TLS, TCP, proxies and the open timeout are the shells' (they do I/O); what a
proxy's answer means is decided here too (:class:`ProxyConnect`).
"""

from __future__ import annotations

import base64
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

from websockets.client import ClientProtocol
from websockets.datastructures import Headers, HeadersLike
from websockets.exceptions import (
    InvalidProxy,
    InvalidProxyMessage,
    InvalidProxyStatus,
    InvalidURI,
    ProxyError,
)
from websockets.extensions.permessage_deflate import (
    enable_client_permessage_deflate,
    enable_server_permessage_deflate,
)
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, Protocol
from websockets.proxy import get_proxy, parse_proxy
from websockets.server import ServerProtocol
from websockets.typing import Origin, Subprotocol
from websockets.uri import WebSocketURI, parse_uri

from ._failures import handshake_failure, redact
from ._options import StreamOptions
from .exceptions import HandshakeError

__all__ = [
    "USER_AGENT",
    "ClientHandshake",
    "HeadSplitter",
    "Opened",
    "ProxyConnect",
    "ServerHandshake",
    "is_socks",
    "parse",
    "proxy_for",
    "shown",
    "socks_arguments",
    "socks_failure",
]

USER_AGENT = "ws_stream (websockets Sans-I/O)"
_END_OF_HEAD = b"\r\n\r\n"
#: Largest HTTP head accepted from a peer or a proxy.
MAX_HEAD = 64 * 1024

#: process_request(protocol, request) -> a Response to send instead of the
#: upgrade (build it with ``protocol.reject(status, text)``), or None.
ProcessRequest = Callable[[ServerProtocol, Request], Response | None]


class Opened(NamedTuple):
    """A completed handshake: the OPEN protocol and what to hand to the stream."""

    protocol: Protocol
    request: Request
    response: Response
    received: bytes  # read behind the HTTP head: the peer's first frames, unparsed


class HeadSplitter:
    """Splits what the handshake reads into the HTTP head and what follows it.

    websockets' protocol parses frames as soon as it has parsed the HTTP
    head, in the same ``receive_data()`` call. Frames the peer sent in the
    same TCP read as its head (a server that greets first, a client that
    writes right behind its request) must instead reach the stream's engine,
    which decides each one (a text frame fails with 1003 before websockets
    reacts to the frames behind it) - and on the server, only once the
    response fixed the extensions. A handshake request and a ``101``
    response have no body; the end of the head is the first empty line.
    """

    def __init__(self) -> None:
        self.done = False
        self.size = 0
        self._tail = b""  # the last bytes before ``data``: a split CRLFCRLF

    def split(self, data: bytes | bytearray) -> tuple[bytes | bytearray, bytes]:
        """Return (the head's bytes in ``data``, the bytes after the head)."""
        if self.done:
            return data, b""
        window = self._tail + data
        end = window.find(_END_OF_HEAD)
        if end < 0:
            self.size += len(data)
            self._tail = window[-(len(_END_OF_HEAD) - 1) :]
            return data, b""
        self.done = True
        cut = end + len(_END_OF_HEAD) - len(self._tail)
        self.size += cut
        return data[:cut], bytes(data[cut:])


def parse(uri: str) -> WebSocketURI:
    """Parse ``uri``.

    Raises:
        ValueError: ``uri`` is not a ws:// or wss:// URI (its credentials hidden).
    """
    try:
        return parse_uri(uri)
    except InvalidURI as exc:
        raise handshake_failure(exc, uri) or ValueError(redact(uri)) from exc


def shown(wsuri: WebSocketURI) -> str:
    """``wsuri`` for messages: never its user info, nor a ``token=`` value (:func:`redact`)."""
    scheme = "wss" if wsuri.secure else "ws"
    return redact(f"{scheme}://{wsuri.host}:{wsuri.port}{wsuri.resource_name}")


class ClientHandshake:
    """The client side: send the upgrade request, read the response.

    ``additional_headers``, ``subprotocols``, ``origin`` and
    ``user_agent_header`` (None: no header) are websockets' names.
    """

    def __init__(
        self,
        wsuri: WebSocketURI,
        options: StreamOptions,
        *,
        additional_headers: HeadersLike | None = None,
        subprotocols: Sequence[str] | None = None,
        origin: str | None = None,
        user_agent_header: str | None = USER_AGENT,
    ) -> None:
        self.wsuri = wsuri
        extensions = enable_client_permessage_deflate(None) if options.compression else None
        self.protocol = ClientProtocol(
            wsuri,
            origin=Origin(origin) if origin is not None else None,
            extensions=extensions,
            subprotocols=[Subprotocol(s) for s in subprotocols] if subprotocols else None,
            max_size=options.websockets_max_size(),
        )
        self.request = self.protocol.connect()
        if additional_headers is not None:
            self.request.headers.update(Headers(additional_headers))
        if user_agent_header is not None and "User-Agent" not in self.request.headers:
            self.request.headers["User-Agent"] = user_agent_header
        self.protocol.send_request(self.request)
        self._head = HeadSplitter()
        self._rest = b""
        self._response: Response | None = None
        self._eof = False

    def data_to_send(self) -> list[bytes]:
        """The request's bytes (then nothing)."""
        return [data for data in self.protocol.data_to_send() if data]

    def receive_data(self, data: bytes | bytearray) -> bool:
        """Bytes from the server; True once the handshake is over (see :meth:`result`)."""
        head, rest = self._head.split(data)
        protocol = self.protocol
        protocol.receive_data(head)
        if rest and protocol.state is not OPEN:
            # Not a 101 (its body follows), or a refused one: not frames.
            protocol.receive_data(rest)
            rest = b""
        self._rest += rest
        return self._check()

    def receive_eof(self) -> bool:
        """The server closed the connection; True (the handshake is over)."""
        self._eof = True
        self.protocol.receive_eof()
        self._check()
        return True

    def _check(self) -> bool:
        if self._response is not None or self.protocol.handshake_exc is not None:
            return True
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                self._response = event
                return True
        return self.protocol.handshake_exc is not None

    def result(self) -> Opened:
        """The OPEN protocol, request, response and the bytes read behind the response.

        Raises:
            HandshakeError: the server refused (``.status``), answered
                something that is not a WebSocket, or closed the connection.
        """
        exc = self.protocol.handshake_exc
        if exc is not None:
            where = shown(self.wsuri)
            raise handshake_failure(exc, where) or HandshakeError(str(exc)) from exc
        if self._response is None:
            raise HandshakeError(
                f"the server at {self.wsuri.host}:{self.wsuri.port} closed the connection "
                "during the WebSocket handshake"
            )
        return Opened(self.protocol, self.request, self._response, self._rest)


class ServerHandshake:
    """The server side: read the upgrade request, answer it.

    ``origins``, ``subprotocols`` and ``select_subprotocol`` are websockets'
    (``ServerProtocol``). ``process_request(protocol, request)`` may return a
    response to send instead of the upgrade (``protocol.reject(status, text)``).
    """

    def __init__(
        self,
        options: StreamOptions,
        *,
        origins: Sequence[str | None] | None = None,
        subprotocols: Sequence[str] | None = None,
        select_subprotocol: Callable[[ServerProtocol, Sequence[Subprotocol]], Subprotocol | None]
        | None = None,
        process_request: ProcessRequest | None = None,
        server_header: str | None = USER_AGENT,
    ) -> None:
        extensions = enable_server_permessage_deflate(None) if options.compression else None
        self.protocol = ServerProtocol(
            origins=[Origin(o) if o is not None else None for o in origins] if origins else None,
            extensions=extensions,
            subprotocols=[Subprotocol(s) for s in subprotocols] if subprotocols else None,
            select_subprotocol=select_subprotocol,
            max_size=options.websockets_max_size(),
        )
        self._process_request = process_request
        self._server_header = server_header
        self._head = HeadSplitter()
        self._rest = b""
        self.request: Request | None = None
        self.response: Response | None = None
        self.failed = False  # no request (garbage or EOF): close without a stream

    def receive_data(self, data: bytes | bytearray) -> bool:
        """Bytes from the client; True once the request is read (or the handshake failed).

        Then call :meth:`respond`.
        """
        head, rest = self._head.split(data)
        self.protocol.receive_data(head)
        self._rest += rest
        return self._check()

    def receive_eof(self) -> bool:
        """The client closed the connection; True (the handshake is over, failed)."""
        self.protocol.receive_eof()
        self._check()
        if self.request is None:
            self.failed = True
        return True

    def _check(self) -> bool:
        for event in self.protocol.events_received():
            if isinstance(event, Request):
                self.request = event
                return True
        if self.protocol.handshake_exc is not None:
            self.failed = True  # websockets queued an HTTP 400 response
            return True
        return False

    def respond(self, response: Response | None = None) -> bool:
        """Answer the request (upgrade, or the hook's / websockets' refusal); True if OPEN.

        ``response``: the answer a shell's own (async) hook chose instead of the
        ``process_request`` given here.
        """
        protocol = self.protocol
        request = self.request
        if request is None:
            return False
        if response is None and self._process_request is not None:
            response = self._process_request(protocol, request)
        if response is None:
            response = protocol.accept(request)
        if self._server_header is not None and "Server" not in response.headers:
            response.headers["Server"] = self._server_header
        self.response = response
        protocol.send_response(response)
        return protocol.state is OPEN

    def data_to_send(self) -> list[bytes]:
        """The response's bytes; ``b""`` means: close TCP after writing them."""
        return self.protocol.data_to_send()

    def result(self) -> Opened:
        """The OPEN protocol, request, response and the bytes read behind the request."""
        assert self.request is not None and self.response is not None
        assert self.protocol.state is OPEN
        return Opened(self.protocol, self.request, self.response, self._rest)


class ProxyConnect:
    """An HTTP proxy tunnel: the ``CONNECT`` request and what its answer means.

    Raises (from :meth:`receive_data` / :meth:`receive_eof`) websockets'
    ``InvalidProxyStatus`` (the proxy refused: 407 for credentials, 403 for
    its rules, 5xx when it cannot reach the server) or
    ``InvalidProxyMessage`` (not HTTP), which
    :func:`ws_stream._failures.handshake_failure` words for the user.
    """

    def __init__(self, proxy: str, wsuri: WebSocketURI, *, user_agent: str | None = USER_AGENT):
        self.proxy = proxy
        parts = urlsplit(proxy)
        host = f"[{wsuri.host}]" if ":" in wsuri.host else wsuri.host
        lines = [f"CONNECT {host}:{wsuri.port} HTTP/1.1", f"Host: {host}:{wsuri.port}"]
        if user_agent is not None:
            lines.append(f"User-Agent: {user_agent}")
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            lines.append("Proxy-Authorization: Basic " + base64.b64encode(token.encode()).decode())
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self._head = HeadSplitter()
        self._buffer = b""

    def receive_data(self, data: bytes) -> bytes | None:
        """The proxy's bytes; once its answer is complete, the bytes after it (often b"").

        Returns None while the answer is incomplete.
        """
        head, rest = self._head.split(data)
        self._buffer += bytes(head)
        if not self._head.done:
            if len(self._buffer) > MAX_HEAD:
                raise InvalidProxyMessage("the proxy's answer is over 64 KiB")
            return None
        status_line = self._buffer.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise InvalidProxyMessage(f"not an HTTP status line: {status_line[:80]!r}")
        status = int(parts[1])
        if not 200 <= status < 300:
            reason = parts[2] if len(parts) > 2 else ""
            raise InvalidProxyStatus(Response(status, reason, Headers()))
        return rest

    def receive_eof(self) -> None:
        raise InvalidProxyMessage("the proxy closed the connection before answering CONNECT")


def proxy_for(uri: str, wsuri: WebSocketURI, proxy: str | bool | None) -> str | None:
    """The proxy to go through: ``True`` means the environment's (as websockets:
    ``wss_proxy``/``ws_proxy``, ``socks_proxy``, ``https_proxy``, ``http_proxy``,
    ``no_proxy``), a string that proxy, None or False none.

    Raises:
        ValueError: the proxy URL is invalid (credentials hidden).
    """
    if proxy is True:
        proxy = _environment_proxy(_proxy_environment(), wsuri.secure, wsuri.host, wsuri.port)
    if not proxy:
        return None
    try:
        parse_proxy(proxy)
    except InvalidProxy as exc:
        raise handshake_failure(exc, uri) or ValueError(redact(proxy)) from exc
    return proxy


def _proxy_environment() -> tuple[tuple[str, str], ...]:
    """The environment variables the proxy decision depends on (``*_proxy``)."""
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.lower().endswith("_proxy")))


@functools.lru_cache(maxsize=256)
def _environment_proxy(
    environment: tuple[tuple[str, str], ...], secure: bool, host: str, port: int
) -> str | None:
    """websockets' ``get_proxy``, remembered per environment and destination: it
    scans the whole environment twice (a fifth of a client's handshake CPU)."""
    del environment  # the cache key: a changed variable is a new decision
    wsuri = parse_uri(f"{'wss' if secure else 'ws'}://{_host(host)}:{port}/")
    return get_proxy(wsuri)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def is_socks(proxy: str) -> bool:
    """Whether ``proxy`` is a SOCKS proxy URL (else HTTP or HTTPS)."""
    return parse_proxy(proxy).scheme.startswith("socks")


def socks_arguments(proxy: str) -> dict[str, Any]:
    """The arguments of python-socks' ``Proxy`` (any flavour) for the SOCKS ``proxy`` URL.

    Raises:
        ImportError: python-socks is not installed (``ws-stream[socks]``).
    """
    from python_socks import ProxyType

    parsed = parse_proxy(proxy)
    parts = urlsplit(proxy)  # credentials percent-decoded (websockets does only from 17.2)
    kind = {"socks5h": ProxyType.SOCKS5, "socks5": ProxyType.SOCKS5}
    kind.update({"socks4a": ProxyType.SOCKS4, "socks4": ProxyType.SOCKS4})
    return {
        "proxy_type": kind[parsed.scheme],
        "host": parsed.host,
        "port": parsed.port,
        "username": None if parts.username is None else unquote(parts.username),
        "password": None if parts.password is None else unquote(parts.password),
        "rdns": parsed.scheme in ("socks5h", "socks4a"),
    }


def socks_failure(exc: Exception) -> Exception:
    """python-socks' ``exc`` as websockets reports it: an OSError stays, the rest is a
    ``ProxyError`` caused by it (worded by ``handshake_failure``)."""
    if isinstance(exc, OSError):
        return exc
    error = ProxyError("failed to connect to SOCKS proxy")
    error.__cause__ = exc
    return error
