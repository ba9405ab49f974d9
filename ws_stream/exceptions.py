"""Exceptions raised by ws_stream.

Every exception is a :class:`WsStreamError`, itself a :class:`ConnectionError`,
so code written for TCP streams (``except ConnectionError``) keeps working.
"""

from __future__ import annotations

__all__ = [
    "AbnormalClosureError",
    "HandshakeError",
    "ProtocolError",
    "TextFrameError",
    "WsStreamError",
]


class WsStreamError(ConnectionError):
    """Base class of every error ws_stream raises about a connection."""


class ProtocolError(WsStreamError):
    """The peer broke RFC 6455 (or our byte-stream contract).

    The connection was failed with close code :attr:`code` (1002 protocol
    error, 1007 invalid data, 1009 message too big, ...). The reader returned
    every byte that arrived before the violation; this error comes after them.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type[ProtocolError], tuple[int, str]]:
        return (type(self), (self.code, str(self)))


class TextFrameError(ProtocolError):
    """The peer sent a text frame into a byte stream.

    The connection was closed with 1003. Pass ``on_text="bytes"`` to accept
    text frames as their UTF-8 bytes instead.
    """

    def __init__(self, code: int = 1003, message: str = "") -> None:
        super().__init__(
            code,
            message
            or "the peer sent a text frame; a byte stream carries binary frames only "
            '(closed with 1003; pass on_text="bytes" to accept text as UTF-8 bytes)',
        )


class AbnormalClosureError(WsStreamError, ConnectionResetError):
    """The connection was lost without a close frame (close code 1006).

    It is a :class:`ConnectionResetError`, which is what a TCP stream raises
    when the peer vanishes: the data stream did not end cleanly, so it must not
    look like EOF.
    """


class HandshakeError(WsStreamError):
    """The opening handshake failed.

    :attr:`status` is the HTTP status code when the server answered with one
    (401, 403, 404, 500, ...), else :obj:`None`.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type[HandshakeError], tuple[str, int | None]]:
        return (type(self), (str(self), self.status))
