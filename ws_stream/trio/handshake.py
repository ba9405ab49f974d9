"""Opening handshakes over a trio stream, with websockets' Sans-I/O protocols."""

from __future__ import annotations

import ssl as ssl_module
from collections.abc import Sequence
from typing import Any

import trio
from websockets.client import ClientProtocol
from websockets.datastructures import Headers, HeadersLike
from websockets.exceptions import InvalidURI
from websockets.extensions.permessage_deflate import (
    enable_client_permessage_deflate,
    enable_server_permessage_deflate,
)
from websockets.http11 import Request, Response
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.typing import Origin, Subprotocol
from websockets.uri import WebSocketURI, parse_uri

from .._handshake import handshake_failure, redact, tls_failure
from .._options import StreamOptions
from ..exceptions import HandshakeError

__all__ = ["client_handshake", "connect_transport", "parse", "server_handshake"]

_RECEIVE_SIZE = 2**16
_END_OF_HEAD = b"\r\n\r\n"


class _HeadSplitter:
    """Splits what the handshake reads into the HTTP head and what follows it.

    websockets' protocol parses frames as soon as it has parsed the HTTP
    head, in the same ``receive_data()`` call. Frames the peer sent in the
    same TCP read as its head (a server that greets first, a client that
    writes right behind its request) must instead reach the stream, whose
    reader decides each one as websockets parses it (a text frame fails with
    1003 before websockets reacts to the frames behind it) - and on the
    server, only once the response fixed the extensions. So the handshake
    feeds websockets the head only and hands the rest to the stream.
    A handshake request and a ``101`` response have no body; the end of the
    head is the first empty line.
    """

    def __init__(self) -> None:
        self.done = False
        self._tail = b""  # the last bytes before ``data``: a split CRLFCRLF

    def split(self, data: bytes | bytearray) -> tuple[bytes | bytearray, bytes]:
        """Return (the head's bytes in ``data``, the bytes after the head)."""
        if self.done:
            return data, b""
        window = self._tail + data
        end = window.find(_END_OF_HEAD)
        if end < 0:
            self._tail = window[-(len(_END_OF_HEAD) - 1) :]
            return data, b""
        self.done = True
        cut = end + len(_END_OF_HEAD) - len(self._tail)
        return data[:cut], bytes(data[cut:])


async def _send_pending(stream: trio.abc.Stream, protocol: ClientProtocol | ServerProtocol) -> None:
    for data in protocol.data_to_send():
        if data:
            await stream.send_all(data)


def parse(uri: str) -> WebSocketURI:
    """Parse ``uri``; raises ValueError (without its credentials) when it is not valid."""
    try:
        return parse_uri(uri)
    except InvalidURI as exc:
        raise handshake_failure(exc, uri) or ValueError(redact(uri)) from exc


def _shown(wsuri: WebSocketURI) -> str:
    """``wsuri`` for messages: never its user info."""
    scheme = "wss" if wsuri.secure else "ws"
    return f"{scheme}://{wsuri.host}:{wsuri.port}{wsuri.resource_name}"


async def connect_transport(
    wsuri: WebSocketURI, ssl: ssl_module.SSLContext | None
) -> trio.abc.Stream:
    """Open TCP (and TLS for wss://) to the URI's host."""
    if ssl is not None and not wsuri.secure:
        raise ValueError("ssl is incompatible with a ws:// URI")
    tcp = await trio.open_tcp_stream(wsuri.host, wsuri.port)
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
        raise tls_failure(_shown(wsuri), cause or exc) from exc
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return stream


async def client_handshake(
    stream: trio.abc.Stream,
    wsuri: WebSocketURI,
    options: StreamOptions,
    *,
    additional_headers: HeadersLike | None = None,
    subprotocols: Sequence[str] | None = None,
    origin: str | None = None,
    user_agent_header: str | None = "ws_stream (websockets Sans-I/O; trio)",
) -> tuple[ClientProtocol, Request, Response, bytes]:
    """Run the client side of the opening handshake; the protocol is OPEN after it.

    Returns the protocol, the request, the response and the bytes the server
    sent right behind its response (the start of its frames, unparsed: pass
    them to :class:`WsStream` as ``received``).

    Raises:
        HandshakeError: the server refused (``.status``) or answered nonsense.
    """
    extensions = enable_client_permessage_deflate(None) if options.compression else None
    protocol = ClientProtocol(
        wsuri,
        origin=Origin(origin) if origin is not None else None,
        extensions=extensions,
        subprotocols=[Subprotocol(s) for s in subprotocols] if subprotocols else None,
        max_size=options.websockets_max_size(),
    )
    request = protocol.connect()
    if additional_headers is not None:
        request.headers.update(Headers(additional_headers))
    if user_agent_header is not None and "User-Agent" not in request.headers:
        request.headers["User-Agent"] = user_agent_header
    protocol.send_request(request)
    await _send_pending(stream, protocol)
    head = _HeadSplitter()
    rest = b""
    while True:
        data = await stream.receive_some(_RECEIVE_SIZE)
        if data:
            data, rest = head.split(data)
            protocol.receive_data(data)
            if rest and protocol.state is not OPEN:
                # Not a 101 (its body follows), or a refused one: not frames.
                protocol.receive_data(rest)
                rest = b""
        else:
            protocol.receive_eof()
        events = protocol.events_received()
        if events or protocol.handshake_exc is not None:
            break
        if not data:
            raise HandshakeError(
                f"the server at {wsuri.host}:{wsuri.port} closed the connection "
                "during the WebSocket handshake"
            )
    exc = protocol.handshake_exc
    if exc is not None:
        raise handshake_failure(exc, _shown(wsuri)) or HandshakeError(str(exc)) from exc
    response = events[0]
    assert isinstance(response, Response)
    # Frames sent right behind the response are in ``rest``, unparsed: the
    # stream's reader parses them first.
    return protocol, request, response, rest


async def server_handshake(
    stream: trio.abc.Stream,
    options: StreamOptions,
    *,
    origins: Sequence[str | None] | None = None,
    subprotocols: Sequence[str] | None = None,
    **_: Any,
) -> tuple[ServerProtocol, Request, Response, bytes] | None:
    """Run the server side of the handshake; None when it failed (HTTP error sent).

    Returns the protocol, the request, the response and the bytes the client
    sent right behind its request (the start of its frames, unparsed: pass
    them to :class:`WsStream` as ``received``).
    """
    extensions = enable_server_permessage_deflate(None) if options.compression else None
    protocol = ServerProtocol(
        origins=[Origin(o) if o is not None else None for o in origins] if origins else None,
        extensions=extensions,
        subprotocols=[Subprotocol(s) for s in subprotocols] if subprotocols else None,
        max_size=options.websockets_max_size(),
    )
    request: Request | None = None
    head = _HeadSplitter()
    rest = b""
    while request is None:
        data = await stream.receive_some(_RECEIVE_SIZE)
        if data:
            data, rest = head.split(data)
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        events = protocol.events_received()
        if events:
            assert isinstance(events[0], Request)
            request = events[0]
        elif protocol.handshake_exc is not None or not data:
            await _send_pending(stream, protocol)
            return None
    response = protocol.accept(request)
    protocol.send_response(response)
    await _send_pending(stream, protocol)
    if protocol.state is not OPEN:
        return None
    return protocol, request, response, rest
