"""open_connection(): a WebSocket client as an asyncio reader/writer pair.

The opening handshake is the shared Sans-I/O one (:mod:`ws_stream._handshake`);
this module only opens TCP (directly, through an HTTP or SOCKS proxy), layers
TLS, moves the handshake's bytes and bounds it all by ``open_timeout``.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from typing import Any

from websockets.proxy import parse_proxy
from websockets.uri import WebSocketURI

from .._failures import handshake_failure
from .._handshake import (
    ClientHandshake,
    Opened,
    ProxyConnect,
    is_socks,
    parse,
    proxy_for,
    socks_arguments,
    socks_failure,
)
from .._options import StreamOptions, split_options
from .stream import WsStream

__all__ = ["connect_stream", "open_connection"]

_CLIENT_KEYS = frozenset(
    {
        "additional_headers",
        "subprotocols",
        "origin",
        "user_agent_header",
        "ssl",
        "server_hostname",
        "sock",
        "proxy",
        "proxy_ssl",
        "unix",
        "path",
    }
)
_HANDSHAKE_KEYS = ("additional_headers", "subprotocols", "origin", "user_agent_header")


class _Reading(asyncio.Protocol):
    """The TCP transport's protocol until the stream takes over: feeds a handshake."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.feed: Any = None  # receives each read; returns True when it has enough
        self.done: asyncio.Future[None] = loop.create_future()
        self.rest = b""  # read after the feed was satisfied
        self.transport: asyncio.Transport | None = None
        self.eof = False  # the peer half-closed after the feed was satisfied

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def expect(self, feed: Any) -> asyncio.Future[None]:
        """Hand reads to ``feed(data | None)`` until it returns True."""
        self.feed = feed
        self.done = asyncio.get_running_loop().create_future()
        if self.rest:
            data, self.rest = self.rest, b""
            self.data_received(data)
        return self.done

    def data_received(self, data: bytes) -> None:
        if self.done.done() or self.feed is None:
            self.rest += data
            return
        try:
            if self.feed(data):
                self.done.set_result(None)
        except Exception as exc:
            self.done.set_exception(exc)

    def eof_received(self) -> bool:
        if self.done.done() or self.feed is None:
            self.eof = True
        else:
            try:
                if self.feed(None):
                    self.done.set_result(None)
            except Exception as exc:
                self.done.set_exception(exc)
        return True  # keep the transport: its owner closes it

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionResetError("the connection was closed"))


async def _open_tcp(
    wsuri: WebSocketURI,
    proxy: str | None,
    ssl: ssl_module.SSLContext | None,
    rest: dict[str, Any],
) -> tuple[asyncio.Transport, _Reading]:
    """TCP (and TLS for wss://) to the server, through ``proxy`` if given."""
    loop = asyncio.get_running_loop()
    reading = _Reading(loop)
    server_hostname = rest.get("server_hostname") or wsuri.host
    sock = rest.get("sock")
    if rest.get("unix"):
        transport, _ = await loop.create_unix_connection(
            lambda: reading,
            rest.get("path"),
            sock=sock,
            ssl=ssl,
            server_hostname=server_hostname if ssl else None,
        )
        return transport, reading
    if sock is None and proxy is not None and is_socks(proxy):
        from python_socks.async_.asyncio import Proxy

        try:
            sock = await Proxy(**socks_arguments(proxy)).connect(wsuri.host, wsuri.port)
        except Exception as exc:
            raise socks_failure(exc) from exc
        proxy = None
    if sock is not None or proxy is None:
        if sock is None:
            host, port = wsuri.host, wsuri.port
            transport, _ = await loop.create_connection(
                lambda: reading,
                host,
                port,
                ssl=ssl,
                server_hostname=server_hostname if ssl else None,
            )
        else:
            transport, _ = await loop.create_connection(
                lambda: reading,
                sock=sock,
                ssl=ssl,
                server_hostname=server_hostname if ssl else None,
            )
        return transport, reading
    # An HTTP(S) proxy: CONNECT, then TLS to the server inside the tunnel.
    tunnel = ProxyConnect(proxy, wsuri)
    parsed = parse_proxy(proxy)
    proxy_ssl = None
    if parsed.scheme == "https":
        proxy_ssl = rest.get("proxy_ssl") or ssl_module.create_default_context()
    transport, _ = await loop.create_connection(
        lambda: reading,
        parsed.host,
        parsed.port,
        ssl=proxy_ssl,
        server_hostname=parsed.host if proxy_ssl is not None else None,
    )
    try:
        transport.write(tunnel.request)
        left: list[bytes] = []

        def answer(data: bytes | None) -> bool:
            if data is None:
                tunnel.receive_eof()
            got = tunnel.receive_data(data or b"")
            if got is None:
                return False
            left.append(got)
            return True

        await reading.expect(answer)
        reading.rest = left[0] + reading.rest
        if ssl is not None:
            transport.pause_reading()
            tls = await loop.start_tls(transport, reading, ssl, server_hostname=server_hostname)
            assert tls is not None
            transport = tls
            transport.resume_reading()
    except BaseException:
        transport.abort()
        raise
    return transport, reading


async def _handshake(
    transport: asyncio.Transport, reading: _Reading, handshake: ClientHandshake
) -> Opened:
    for data in handshake.data_to_send():
        transport.write(data)
    await reading.expect(
        lambda data: handshake.receive_data(data) if data is not None else handshake.receive_eof()
    )
    opened = handshake.result()
    # Bytes read behind the response (the server's first frames) go to the stream.
    received = opened.received + reading.rest
    reading.rest = b""
    return opened._replace(received=received)


async def connect_stream(uri: str, **options: Any) -> WsStream:
    """Open a WebSocket to ``uri`` and return it as a :class:`WsStream`.

    Options are those of :func:`open_connection`.
    """
    opts, rest = split_options(options)
    unknown = set(rest) - _CLIENT_KEYS
    if unknown:
        raise TypeError(
            f"open_connection() got unexpected options {sorted(unknown)}; it takes "
            + ", ".join(sorted(_CLIENT_KEYS | set(StreamOptions.__dataclass_fields__)))
        )
    wsuri = parse(uri)
    ssl = rest.get("ssl")
    if ssl is not None and not wsuri.secure:
        raise ValueError("ssl is incompatible with a ws:// URI")
    if wsuri.secure and not isinstance(ssl, ssl_module.SSLContext):
        ssl = ssl_module.create_default_context()
    explicit = rest.get("sock") is not None or bool(rest.get("unix"))
    proxy = None if explicit else proxy_for(uri, wsuri, rest.get("proxy", True))
    transport: asyncio.Transport | None = None
    try:
        async with asyncio.timeout(opts.open_timeout):
            transport, reading = await _open_tcp(wsuri, proxy, ssl, rest)
            kwargs = {key: rest[key] for key in _HANDSHAKE_KEYS if key in rest}
            opened = await _handshake(transport, reading, ClientHandshake(wsuri, opts, **kwargs))
    except Exception as exc:
        if transport is not None:
            transport.abort()
        mapped = handshake_failure(exc, uri, proxy=proxy)
        if mapped is None:
            raise
        raise mapped from exc
    except BaseException:
        if transport is not None:
            transport.abort()
        raise
    extra = {
        "subprotocol": opened.protocol.subprotocol,
        "request": opened.request,
        "response": opened.response,
    }
    stream = WsStream._over(transport, opened.protocol, opts, extra, received=opened.received)
    if reading.eof:
        stream._transport._tcp_late_eof()
    return stream


async def open_connection(
    uri: str, **options: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a WebSocket to ``uri``; return ``(reader, writer)``.

    Shaped like :func:`asyncio.open_connection`.

    Options: ``additional_headers``, ``subprotocols``, ``origin``,
    ``user_agent_header``, ``ssl`` (an :class:`ssl.SSLContext` for wss://),
    ``server_hostname``, ``sock`` (a connected socket to use), ``unix=True``
    with ``path`` (a Unix socket: the URI gives only the Host header and
    path), ``proxy``
    (see below), ``proxy_ssl`` (the context for an https:// proxy),
    ``open_timeout`` (10 s), ``close_timeout`` (10 s), ``ping_interval``,
    ``ping_timeout``, ``max_size`` (largest incoming message, 1 MiB),
    ``max_frame_size`` (largest frame sent, 64 KiB), ``limit`` (reader
    high-water mark, 1 MiB), ``compression`` (None; ``"deflate"`` to opt in),
    ``on_text`` (``"error"`` or ``"bytes"``), ``max_events`` (256).

    ``writer.get_extra_info("ws_stream")`` is the :class:`WsStream`.

    Raises:
        HandshakeError: the server refused the handshake (``.status`` is its
            HTTP status) or answered something that is not a WebSocket.
        TimeoutError: no handshake within ``open_timeout``.
        OSError: the TCP connection failed (refused, unreachable...).
        ValueError: ``uri`` is not a ws:// or wss:// URI, or an option is invalid.
        TypeError: an unknown option.

    Through a proxy (``proxy=URL``, or by default the one the environment sets:
    ``https_proxy``, ``socks_proxy``...; SOCKS needs ``ws-stream[socks]``;
    ``proxy=None`` for none), a failure of the proxy names it (without its
    credentials) and says how: an :class:`OSError` when it cannot be reached,
    a :class:`HandshakeError` when it refused the tunnel (``.status`` is the
    proxy's HTTP status, 407 for credentials) or a SOCKS error.
    """
    stream = await connect_stream(uri, **options)
    return stream.reader, stream.writer
