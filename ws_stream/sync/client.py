"""connect(): a WebSocket client as a blocking, socket-like :class:`WsSocket`.

TCP (or a proxy's tunnel), TLS and the opening handshake are done here, on our
own socket: the handshake is :class:`ws_stream._handshake.ClientHandshake`,
an HTTP proxy's tunnel :class:`ws_stream._handshake.ProxyConnect`, a SOCKS
proxy's python-socks (:func:`ws_stream._handshake.socks_arguments`); every
failure is worded by :func:`ws_stream._failures.handshake_failure`.
"""

from __future__ import annotations

import socket
import ssl as ssl_module
from typing import Any

from websockets.proxy import parse_proxy
from websockets.uri import WebSocketURI

from .._failures import handshake_failure
from .._handshake import (
    ClientHandshake,
    ProxyConnect,
    is_socks,
    parse,
    proxy_for,
    socks_arguments,
    socks_failure,
)
from .._options import StreamOptions, split_options
from ._wire import Budget, Wire
from .connection import Connection
from .socket import WsSocket

__all__ = ["connect"]

_HANDSHAKE_KEYS = frozenset({"additional_headers", "subprotocols", "origin", "user_agent_header"})
_KEYS = _HANDSHAKE_KEYS | {
    "ssl",
    "server_hostname",
    "sock",
    "proxy",
    "proxy_ssl",
    "proxy_server_hostname",
    "source_address",
}

_OPEN_TIMEOUT = "timed out during the opening handshake"


def connect(uri: str, **options: Any) -> WsSocket:
    """Open a WebSocket to ``uri`` and return it as a connected :class:`WsSocket`.

    The socket is also a context manager: ``with connect(uri) as sock: ...``
    closes it on exit (with 1011 if the block raised).

    Options: ``open_timeout`` (10 s, for everything: TCP, proxy, TLS and
    the handshake), ``close_timeout`` (10 s), ``ping_interval`` (20 s),
    ``ping_timeout`` (20 s), ``max_size`` (largest incoming message, 1 MiB),
    ``max_frame_size`` (largest frame sent, 64 KiB), ``limit`` (receive
    buffer high-water mark, 1 MiB), ``compression`` (None; ``"deflate"`` to
    opt in), ``on_text`` (``"error"`` or ``"bytes"``), ``max_events`` (256).
    As websockets' ``connect()``: ``additional_headers``, ``subprotocols``,
    ``origin``, ``user_agent_header``; ``ssl`` (an :class:`ssl.SSLContext`
    for ``wss://``; default: the system's trust store) and
    ``server_hostname``; ``sock`` (a connected plain socket, used instead of
    opening one; it then belongs to the WsSocket); ``source_address``;
    ``proxy``, ``proxy_ssl``, ``proxy_server_hostname``.

    Raises:
        HandshakeError: the server refused the handshake (``.status`` is its
            HTTP status) or answered something that is not a WebSocket.
        TimeoutError: no handshake within ``open_timeout``.
        OSError: the TCP connection failed (refused, unreachable...).
        ssl.SSLCertVerificationError: the server's certificate was rejected.
        ValueError: ``uri`` is not a ws:// or wss:// URI, or an option is invalid.
        TypeError: an unknown option.

    Through a proxy (``proxy=URL``, or by default the one the environment sets:
    ``https_proxy``, ``socks_proxy``...; ``proxy=None`` for none; SOCKS needs
    ``ws-stream[socks]``), a failure of the proxy names it (without its
    credentials) and says how: an :class:`OSError` when it cannot be reached,
    a :class:`HandshakeError` when it refused the tunnel (``.status`` is the
    proxy's HTTP status, 407 for credentials) or a SOCKS error, an
    :class:`ImportError` when SOCKS support is not installed.
    """
    opts, rest = split_options(options)
    if "create_connection" in rest:
        raise TypeError("connect() makes its own connection class: no create_connection")
    unknown = set(rest) - _KEYS
    if unknown:
        raise TypeError(f"connect() got unexpected options {sorted(unknown)}")
    proxy: str | None = None
    try:
        wsuri = parse(uri)
        if rest.get("sock") is None:
            proxy = proxy_for(uri, wsuri, rest.get("proxy", True))
        return _connect(wsuri, proxy, opts, rest)
    except Exception as exc:
        mapped = handshake_failure(exc, uri, proxy=proxy)
        if mapped is None:
            raise
        raise mapped from exc


def _connect(
    wsuri: WebSocketURI, proxy: str | None, opts: StreamOptions, rest: dict[str, Any]
) -> WsSocket:
    context: ssl_module.SSLContext | None = rest.get("ssl")
    if context is not None and not wsuri.secure:
        raise ValueError("the ssl argument is incompatible with a ws:// URI")
    budget = Budget(opts.open_timeout, _OPEN_TIMEOUT)
    sock: socket.socket | None = rest.get("sock")
    if sock is not None:
        wire = Wire(sock)
    elif proxy is not None:
        wire = _through_proxy(proxy, wsuri, budget, rest)
    else:
        wire = Wire(
            socket.create_connection(
                (wsuri.host, wsuri.port),
                timeout=budget.left(),
                source_address=rest.get("source_address"),
            )
        )
    try:
        if wsuri.secure:
            wire.start_tls(
                context if context is not None else ssl_module.create_default_context(),
                server_side=False,
                server_hostname=rest.get("server_hostname") or wsuri.host,
                budget=budget,
            )
        handshake = ClientHandshake(
            wsuri, opts, **{k: v for k, v in rest.items() if k in _HANDSHAKE_KEYS}
        )
        for data in handshake.data_to_send():
            wire.send_plain(data, budget)
        while True:
            data = wire.recv_plain(budget)
            if handshake.receive_data(data) if data else handshake.receive_eof():
                break
        opened = handshake.result()
        return WsSocket(Connection(wire, opened, opts))
    except BaseException:
        wire.close()
        raise


def _through_proxy(proxy: str, wsuri: WebSocketURI, budget: Budget, rest: dict[str, Any]) -> Wire:
    """A tunnel to the server through ``proxy`` (HTTP CONNECT, or SOCKS)."""
    if is_socks(proxy):
        if rest.get("proxy_ssl") is not None:
            raise ValueError("the proxy_ssl argument is incompatible with a SOCKS proxy")
        return Wire(_socks(proxy, wsuri, budget, rest.get("source_address")))
    parsed = parse_proxy(proxy)
    if parsed.scheme != "https" and rest.get("proxy_ssl") is not None:
        raise ValueError("the proxy_ssl argument is incompatible with an http:// proxy")
    wire = Wire(
        socket.create_connection(
            (parsed.host, parsed.port),
            timeout=budget.left(),
            source_address=rest.get("source_address"),
        )
    )
    try:
        if parsed.scheme == "https":
            context = rest.get("proxy_ssl") or ssl_module.create_default_context()
            wire.start_tls(
                context,
                server_side=False,
                server_hostname=rest.get("proxy_server_hostname") or parsed.host,
                budget=budget,
            )
        agent = {"user_agent": rest["user_agent_header"]} if "user_agent_header" in rest else {}
        tunnel = ProxyConnect(proxy, wsuri, **agent)
        wire.send_plain(tunnel.request, budget)
        while True:  # its refusal raises websockets' InvalidProxyStatus: mapped
            data = wire.recv_plain(budget)
            if not data:
                tunnel.receive_eof()  # raises: the proxy closed without answering
            after = tunnel.receive_data(data)
            if after is not None:
                break
        if after:
            wire.push_back(after)  # the server's first bytes
        return wire
    except BaseException:
        wire.close()
        raise


def _socks(proxy: str, wsuri: WebSocketURI, budget: Budget, source_address: Any) -> socket.socket:
    """A TCP connection to the server through a SOCKS proxy (python-socks).

    Raises:
        ImportError: python-socks is not installed (``ws-stream[socks]``).
        websockets.exceptions.ProxyError: the proxy refused (its reason is the
            ``__cause__``), as websockets raises it: mapped by handshake_failure.
        OSError: the proxy cannot be reached; TimeoutError: it did not answer.
    """
    arguments = socks_arguments(proxy)
    from python_socks.sync import Proxy as SocksProxy

    try:
        return SocksProxy(**arguments).connect(
            dest_host=wsuri.host,
            dest_port=wsuri.port,
            timeout=budget.left(),
            local_addr=source_address,
        )
    except Exception as exc:
        failure = socks_failure(exc)
        if failure is exc:
            raise  # an OSError: the proxy cannot be reached, or a timeout
        raise failure from exc
