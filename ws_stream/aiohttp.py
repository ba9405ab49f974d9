"""A byte stream over aiohttp's WebSockets, server (``web.WebSocketResponse``) and
client (``ClientSession.ws_connect()``).

``ws_stream.WsStream(ws)`` wraps a prepared ``WebSocketResponse`` or a
``ClientWebSocketResponse``; the stream is the same as over TCP (see
:mod:`ws_stream.asyncio._messages`). What aiohttp does itself: pings (its
``heartbeat``, and answering the peer's pings with ``autoping=True``, the
default; with ``autoping=False`` the stream answers them and reports
``PingReceived``; ``ping()`` of the stream raises
:exc:`NotImplementedError`), the message size limit (``max_msg_size``), checking
the peer's close frames, and answering the peer's close. A message or close frame
aiohttp refuses (too big, an invalid close code, a reason that is not UTF-8) makes
it fail the connection with 1009, 1002 or 1007: the reader gets the data before
it, then :exc:`~ws_stream.ProtocolError` of that code, as over TCP.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

from .asyncio._messages import BYTES, CLOSE, PING, PONG, TEXT, VIOLATION, Message

__all__ = ["AiohttpSocket"]

logger = logging.getLogger("ws_stream.aiohttp")


class AiohttpSocket:
    """An aiohttp WebSocket as whole messages (see ``MessageSocket``)."""

    name = "aiohttp"
    own_verdicts = False  # a CLOSE message is always the peer's close frame

    def __init__(self, ws: Any, *, client: bool) -> None:
        self.ws = ws
        self.client = client  # a ClientWebSocketResponse (TLS inside: the client side)
        #: The close code aiohttp answered the peer's close with (its ``close()``
        #: with ``autoclose=True``: always 1000), None if it did not answer.
        self.answered: int | None = None
        #: The peer's close came and aiohttp left the answer to the application
        #: (``autoclose=False``): the stream's engine answers, through close().
        self.unanswered = False
        self._closed_by_us = False  # our close frame went out (send_frame)
        self._closing: set[asyncio.Task[Any]] = set()  # aiohttp's close() in the background
        from aiohttp import WSMsgType  # loaded already: ``ws`` is aiohttp's

        self._binary = WSMsgType.BINARY

    async def receive(self) -> Message:
        message = await self.ws.receive()
        if message.type is self._binary:  # the bulk of the traffic: nothing else to look up
            return BYTES, message.data
        return self._other(message)

    def _other(self, message: Any) -> Message:
        """Any message but a binary one, as :data:`Message`."""
        from aiohttp import WebSocketError, WSMsgType

        ws = self.ws
        kind = message.type
        if kind is WSMsgType.TEXT:
            return TEXT, message.data
        if kind is WSMsgType.CLOSE:
            # aiohttp says 0 for a close frame without a code (1005). With
            # autoclose, it answered with its close(): code 1000. Without,
            # the answer is the application's: the engine's, through
            # close() (1000 for a close without a code: aiohttp cannot send
            # an empty one).
            code = int(message.data) or 1005
            if ws.closed:
                self.answered = 1000
            elif self._closed_by_us:
                # autoclose=False, and this answers our close: the handshake
                # is over; aiohttp's close() ends the connection, with one
                # more close frame, as autoclose does.
                self._close_in_background(1000, "")
            else:
                self.unanswered = True
                if code == 1005:
                    self.answered = 1000
            return CLOSE, (code, message.extra or "")
        if kind is WSMsgType.PING:  # autoping=False: the stream answers
            return PING, bytes(message.data)
        if kind is WSMsgType.PONG:
            return PONG, bytes(message.data)
        if kind is WSMsgType.ERROR and isinstance(message.data, WebSocketError):
            # aiohttp refused the peer's message (too big, an invalid close or text)
            # and failed the connection with the error's code, without a reason.
            return VIOLATION, (int(message.data.code), "", str(message.data))
        # CLOSING, CLOSED, other errors: the connection is over.
        code = ws.close_code
        if code is None or kind is WSMsgType.ERROR:
            return CLOSE, (1006, "")
        return CLOSE, (code, "")

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def close(self, code: int, reason: str) -> None:
        """Send our close frame with ``send_frame()``, not aiohttp's ``close()``: that
        one reads on until the peer's close and discards every message meanwhile.
        :meth:`receive` goes on; when the peer's close comes, aiohttp answers it
        (autoclose: a second close frame, 1000, which the peer ignores after its
        closing handshake) and ends the connection.

        Raises:
            ConnectionError: the connection is gone (aiohttp's own errors).
        """
        from aiohttp import WSMsgType

        if self.unanswered:  # the answer to the peer's close: aiohttp's close() ends it
            self._close_in_background(1000 if code == 1005 else code, reason)
            return
        self._closed_by_us = True
        payload = struct.pack("!H", code) + reason.encode()
        await self.ws.send_frame(payload, WSMsgType.CLOSE)

    async def fail(self, code: int, reason: str) -> None:
        """aiohttp's ``close()`` with ``code``: the close frame (unless one went out),
        then aiohttp drops the connection after its own close timeout at the latest;
        no clean close can follow."""
        await self.ws.close(code=code, message=reason.encode())

    def _close_in_background(self, code: int, reason: str) -> None:
        """aiohttp's ``close()``, in a task: it sends the close frame at once, then may
        wait for a close frame that will not come (aiohttp's client does when the
        peer's close had no code), up to aiohttp's own close timeout; the stream
        does not wait for that."""
        task = asyncio.get_running_loop().create_task(
            self.ws.close(code=code, message=reason.encode())
        )
        self._closing.add(task)
        task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[Any]) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.info("closing the aiohttp WebSocket failed: %r", task.exception())

    async def drop(self) -> None:
        """Our close went out and the peer did not answer it within the stream's
        ``close_timeout``: aiohttp's ``close()`` (it does not know of our close)
        sends one more and ends the connection, after its own close timeout at
        the latest."""
        await self.ws.close(code=1011, message=b"close timeout")

    async def pong(self, data: bytes) -> None:
        await self.ws.pong(data)

    def extra(self) -> dict[str, Any]:
        ws = self.ws
        return {
            "peername": self._transport_info("peername"),
            "sockname": self._transport_info("sockname"),
            # The subprotocol: ws_protocol on the server's class, protocol on the client's.
            "subprotocol": getattr(ws, "ws_protocol", None) or getattr(ws, "protocol", None),
            "aiohttp_ws": ws,
        }

    def _transport_info(self, name: str) -> Any:
        get = getattr(self.ws, "get_extra_info", None)
        return get(name) if get is not None else None
