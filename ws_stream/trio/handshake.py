"""Opening handshakes over a trio stream, with websockets' Sans-I/O protocols."""

from __future__ import annotations

import ssl as ssl_module
from typing import Any

import trio
from websockets.exceptions import InvalidProxyMessage
from websockets.proxy import parse_proxy
from websockets.uri import WebSocketURI

from .._failures import tls_failure
from .._handshake import (
    ClientHandshake,
    Opened,
    ProxyConnect,
    ServerHandshake,
    is_socks,
    parse,
    shown,
    socks_arguments,
    socks_failure,
)
from .._options import StreamOptions

__all__ = ["client_handshake", "connect_transport", "parse", "server_handshake"]

_RECEIVE_SIZE = 2**16


async def _send_pending(stream: trio.abc.Stream, data: list[bytes]) -> None:
    for chunk in data:
        if chunk:
            await stream.send_all(chunk)


async def connect_transport(
    wsuri: WebSocketURI, ssl: ssl_module.SSLContext | None, proxy: str | None = None
) -> trio.abc.Stream:
    """Open TCP (and TLS for wss://) to the URI's host, through ``proxy`` if given
    (HTTP or HTTPS ``CONNECT``, or SOCKS with python-socks)."""
    if ssl is not None and not wsuri.secure:
        raise ValueError("ssl is incompatible with a ws:// URI")
    tcp = await _open_tcp(wsuri, proxy)
    if not wsuri.secure:
        return tcp
    context = ssl if ssl is not None else ssl_module.create_default_context()
    stream = trio.SSLStream(tcp, context, server_hostname=wsuri.host, https_compatible=True)
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(tcp)
        cause = exc.__cause__
        if isinstance(cause, ssl_module.SSLCertVerificationError):
            raise cause from None
        raise tls_failure(shown(wsuri), cause or exc) from exc
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return stream


async def _open_tcp(wsuri: WebSocketURI, proxy: str | None) -> trio.abc.Stream:
    if proxy is None:
        return await trio.open_tcp_stream(wsuri.host, wsuri.port)
    if is_socks(proxy):
        from python_socks.async_.trio import Proxy

        try:
            sock = await Proxy(**socks_arguments(proxy)).connect(wsuri.host, wsuri.port)
        except Exception as exc:
            raise socks_failure(exc) from exc
        return trio.SocketStream(sock)
    parsed = parse_proxy(proxy)
    stream: trio.abc.Stream = await trio.open_tcp_stream(parsed.host, parsed.port)
    try:
        if parsed.scheme == "https":
            context = ssl_module.create_default_context()
            stream = trio.SSLStream(stream, context, server_hostname=parsed.host)
            await stream.do_handshake()
        tunnel = ProxyConnect(proxy, wsuri)
        await stream.send_all(tunnel.request)
        while True:
            data = await stream.receive_some(_RECEIVE_SIZE)
            if not data:
                tunnel.receive_eof()
            rest = tunnel.receive_data(bytes(data))
            if rest is not None:
                break
        if rest:
            raise InvalidProxyMessage("the proxy sent bytes behind its answer to CONNECT")
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


async def client_handshake(
    stream: trio.abc.Stream,
    wsuri: WebSocketURI,
    options: StreamOptions,
    **kwargs: Any,
) -> Opened:
    """Run the client side of the opening handshake (:class:`ClientHandshake`).

    Keywords: ``additional_headers``, ``subprotocols``, ``origin``,
    ``user_agent_header``.

    Raises:
        HandshakeError: the server refused (``.status``) or answered nonsense.
    """
    handshake = ClientHandshake(wsuri, options, **kwargs)
    await _send_pending(stream, handshake.data_to_send())
    while True:
        data = await stream.receive_some(_RECEIVE_SIZE)
        if handshake.receive_data(data) if data else handshake.receive_eof():
            return handshake.result()


async def server_handshake(
    stream: trio.abc.Stream, options: StreamOptions, **kwargs: Any
) -> Opened | None:
    """Run the server side of the handshake (:class:`ServerHandshake`); None when it
    failed (an HTTP error was sent, or the client went away)."""
    handshake = ServerHandshake(options, **kwargs)
    while True:
        data = await stream.receive_some(_RECEIVE_SIZE)
        if handshake.receive_data(data) if data else handshake.receive_eof():
            break
    opened = not handshake.failed and handshake.respond()
    await _send_pending(stream, handshake.data_to_send())
    return handshake.result() if opened else None
