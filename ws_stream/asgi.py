"""A byte stream over the WebSockets of ASGI servers (uvicorn, hypercorn, daphne...).

``ws_stream.WsStream(websocket)`` wraps an accepted Starlette (so FastAPI)
``WebSocket``; :func:`accept` accepts a raw ASGI WebSocket and wraps it. The
stream is the same as over TCP (:mod:`ws_stream.asyncio._messages` explains
how): ``.reader``/``.writer`` over a real transport, ``close(code, reason)``,
``events()``, ``close_code``, ``stats``.

What ASGI cannot do: pings (``ping()`` raises :exc:`NotImplementedError`; the
server's own keepalive applies), frame boundaries (messages arrive whole,
within the server's own size limit), and telling a close frame without a code
from a lost connection (uvicorn reports both as 1005): ws_stream reads 1005 as
a lost connection (``AbnormalClosureError``), never as a clean end. A
disconnect with 1002, 1007 or 1009 (the server refused the peer's message:
too big, invalid) ends the reader with ``ProtocolError`` of that code.
After our close, the stream receives until ``websocket.disconnect``; uvicorn
(websockets-sansio, wsproto) discards what arrives after the application's
``websocket.close`` and reports the end at once, hypercorn delivers it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ._options import StreamOptions
from .asyncio._messages import BYTES, CLOSE, TEXT, Message
from .asyncio.stream import WsStream

__all__ = ["AsgiSocket", "TunnelApp", "accept"]

logger = logging.getLogger("ws_stream.asgi")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class AsgiSocket:
    """An accepted ASGI WebSocket as whole messages (see ``MessageSocket``)."""

    name = "ASGI"
    client = False
    # websocket.disconnect with 1002/1007/1009 may be the server's refusal of the
    # peer's message (too big, invalid): ASGI does not say whose close it was.
    own_verdicts = True
    answered: int | None = None  # the server sends no close of its own
    unanswered = False  # the server answers the peer's close itself

    def __init__(
        self, scope: Scope, receive: Receive, send: Send, subprotocol: str | None = None
    ) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.subprotocol = subprotocol

    async def receive(self) -> Message:
        message = await self._receive()
        kind = message.get("type")
        if kind == "websocket.receive":
            if message.get("bytes") is not None:
                return BYTES, message["bytes"]
            return TEXT, message.get("text") or ""
        if kind == "websocket.disconnect":
            code = message.get("code", 1005)
            # uvicorn reports a lost connection as 1005, the code of a close frame
            # without one: never let a truncated stream look complete.
            return CLOSE, (1006 if code == 1005 else code, message.get("reason") or "")
        raise RuntimeError(f"unexpected ASGI message {kind!r} on an accepted WebSocket")

    async def send_bytes(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})

    async def close(self, code: int, reason: str) -> None:
        """Send ``websocket.close``; the server goes on delivering the peer's messages
        until its ``websocket.disconnect``."""
        await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def fail(self, code: int, reason: str) -> None:
        """``websocket.close`` with ``code`` (the application then stops receiving)."""
        await self.close(code, reason)

    async def drop(self) -> None:
        """Nothing: after the application's ``websocket.close``, the server ends the
        connection (at the latest when the application returns)."""

    def extra(self) -> dict[str, Any]:
        scope = self.scope
        client, server = scope.get("client"), scope.get("server")
        return {
            "peername": tuple(client) if client else None,
            "sockname": tuple(server) if server else None,
            "subprotocol": self.subprotocol,
            "asgi_scope": scope,
            "path": scope.get("path"),
            "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
        }


async def accept(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    subprotocol: str | None = None,
    headers: Iterable[tuple[str, str]] | None = None,
    **options: Any,
) -> WsStream:
    """Accept the ASGI WebSocket connection ``scope`` and return it as a :class:`WsStream`.

    Sends ``websocket.accept`` (with ``subprotocol`` and extra response
    ``headers``) after the client's ``websocket.connect``. ``options``: the
    stream's (``limit``, ``max_frame_size``, ``on_text``, ``close_timeout``,
    ``max_events``).

    Raises:
        ValueError: ``scope`` is not a WebSocket scope, an option or a header
            is invalid, or the client did not offer ``subprotocol``. Nothing
            was sent: the application may still refuse the handshake
            (``websocket.close``: 403) or accept it otherwise.
        ConnectionResetError: the client went away before the accept.
        TypeError: an unknown option.
    """
    if scope.get("type") != "websocket":
        raise ValueError(f"accept() needs a WebSocket scope, not {scope.get('type')!r}")
    stream_options = _stream_options(options)
    if subprotocol is not None:
        offered = list(scope.get("subprotocols") or ())
        if subprotocol not in offered:
            named = ", ".join(map(repr, offered)) or "none"
            raise ValueError(
                f"the client did not offer the subprotocol {subprotocol!r} (it offered {named})"
            )
    accept_message: dict[str, Any] = {"type": "websocket.accept", "subprotocol": subprotocol}
    if headers:
        accept_message["headers"] = [_header(name, value) for name, value in headers]
    message = await receive()
    if message.get("type") != "websocket.connect":
        raise ConnectionResetError(
            f"the client went away before the WebSocket was accepted ({message.get('type')})"
        )
    try:
        await send(accept_message)
    except OSError as exc:  # uvicorn's ClientDisconnected is an OSError, no ConnectionError
        raise ConnectionResetError(
            f"the client went away before the WebSocket was accepted ({exc!r})"
        ) from exc
    socket = AsgiSocket(scope, receive, send, subprotocol)
    return WsStream._over_messages(socket, stream_options)


_OPTIONS = frozenset({"limit", "max_frame_size", "on_text", "close_timeout", "max_events"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 field names
_FIELD_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")  # no control but tab


def _header(name: str, value: str) -> tuple[bytes, bytes]:
    """A response header for ``websocket.accept``: bytes as ASGI wants them, ISO-8859-1
    as HTTP/1.1 has it (what the request headers of the scope decode with)."""
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}: letters, digits and !#$%&'*+-.^_`|~")
    if not isinstance(value, str) or not _FIELD_VALUE.fullmatch(value):
        raise ValueError(f"invalid value for the header {name}: {value!r} (no control characters)")
    try:
        return name.encode("ascii"), value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(
            f"the value of the header {name} is not ISO-8859-1 (HTTP/1.1's): {value!r}"
        ) from None


def _stream_options(options: dict[str, Any]) -> StreamOptions:
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TypeError(
            f"unexpected options {sorted(unknown)}: over ASGI, ws_stream takes "
            + ", ".join(sorted(_OPTIONS))
            + " (message size limits, pings and compression are the server's)"
        )
    return StreamOptions(ping_interval=None, ping_timeout=None, max_size=None, **options)


def starlette_socket(websocket: Any) -> AsgiSocket:
    """The :class:`AsgiSocket` of an accepted ``starlette.websockets.WebSocket``.

    Raises:
        ValueError: the WebSocket was not accepted (call ``await websocket.accept()``).
    """
    from starlette.websockets import WebSocketState

    if websocket.application_state is not WebSocketState.CONNECTED:
        raise ValueError(
            "the Starlette WebSocket must be accepted first (await websocket.accept()); "
            f"it is {websocket.application_state.name}"
        )
    # Starlette does not record the subprotocol the application accepted.
    return AsgiSocket(websocket.scope, websocket.receive, websocket.send)


class TunnelApp:
    """An ASGI application that bridges every WebSocket to one TCP (or Unix) target.

    ``target`` is ``"host:port"`` or ``"unix:/path"`` - the only place a
    connection can go: the client never chooses (no open proxy). Each
    WebSocket is bridged with exactly the rules of ``ws-stream serve --to``
    (backpressure both ways, the close codes of README's "How a tunnel
    ends"), except that ASGI shows no pings, so a client's end-of-input
    marker is not seen: the tunnel ends when either side closes.

    ``origins``: allowed ``Origin`` header values (None: any; include
    ``None`` in the list to allow clients that send none); a refused origin
    gets HTTP 403. ``subprotocols``: accepted in this order of preference; a
    client that offers others only is refused (403), one that offers none is
    accepted without. Plain HTTP requests get 426 Upgrade Required.
    ``close_timeout`` and the stream options (``limit``, ``max_frame_size``,
    ``max_events``) as for :func:`accept`.

    Mount it (``app.mount("/vnc", TunnelApp("127.0.0.1:5900"))`` in Starlette
    or FastAPI) or run it alone (``uvicorn --factory module:make_app``, with
    ``make_app()`` returning one).

    Raises:
        ValueError: ``target`` is not ``host:port`` or ``unix:/path``.
    """

    def __init__(
        self,
        target: str,
        *,
        origins: Iterable[str | None] | None = None,
        subprotocols: Iterable[str] = ("binary",),
        close_timeout: float = 10.0,
        **options: Any,
    ) -> None:
        import argparse

        from .cli.args import parse_target

        try:
            self.target = parse_target(target)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(str(exc)) from None
        self.origins = None if origins is None else list(origins)
        self.subprotocols = list(subprotocols)
        self.close_timeout = close_timeout
        self.options = dict(options, close_timeout=close_timeout)
        _stream_options(dict(self.options))  # invalid options fail here, not per connection

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if kind == "http":
            await _http_426(send)
            return
        if kind != "websocket":
            return
        peer = _peer(scope)
        if self.origins is not None:
            sent = [v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"origin"]
            origin = sent[0] if len(sent) == 1 else None
            if len(sent) > 1 or origin not in self.origins:
                shown = repr(origin) if len(sent) < 2 else f"{sent!r} (more than one)"
                logger.warning("%s: refused: origin %s is not allowed", peer, shown)
                await send({"type": "websocket.close", "code": 1008})
                return
        offered = list(scope.get("subprotocols") or ())
        chosen = next((name for name in self.subprotocols if name in offered), None)
        if offered and chosen is None:
            logger.warning("%s: refused: unsupported subprotocols %s", peer, offered)
            await send({"type": "websocket.close", "code": 1002})
            return
        await self._bridge(scope, receive, send, chosen, peer)

    async def _bridge(
        self, scope: Scope, receive: Receive, send: Send, subprotocol: str | None, peer: str
    ) -> None:
        import asyncio

        from .cli.report import log_end
        from .cli.serve import _bridge

        try:
            stream = await accept(scope, receive, send, subprotocol=subprotocol, **self.options)
        except ConnectionError as exc:
            logger.info("%s: %s", peer, exc)
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        stop: asyncio.Future[None] = loop.create_future()
        try:
            error = await _bridge(stream, stop, self.target, self.close_timeout)
        except Exception:
            logger.exception("%s: internal error", peer)
            await stream.close(1011, "internal error")
            error = "internal error"
        finally:
            stop.cancel()
        log_end(peer, stream, loop.time() - started, error)


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "a client"


async def _http_426(send: Send) -> None:
    body = b"This endpoint is a WebSocket tunnel: connect with a WebSocket client.\n"
    await send(
        {
            "type": "http.response.start",
            "status": 426,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"upgrade", b"websocket"),
                (b"connection", b"Upgrade"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
