"""Out-of-band events of a stream: control frames and errors, never data.

Subscribe with ``stream.events()``. :class:`Closed` is always the last event.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CloseReceived", "Closed", "Error", "Event", "PingReceived", "PongReceived"]


@dataclass(frozen=True, slots=True)
class PingReceived:
    """The peer sent a ping with payload :attr:`data` (answered automatically)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The peer sent a pong with payload :attr:`data`."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer sent a close frame with :attr:`code` and :attr:`reason`.

    An empty close frame is reported as code 1005, as RFC 6455 says.
    """

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Error:
    """A failure that did not raise in the caller's code (text frame, violation...)."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is closed; always the last event.

    :attr:`code` and :attr:`reason` are those of the peer's close frame, 1006
    and ``""`` when none was received. After *we* fail the connection (a text
    frame: 1003; a violation: 1002...), RFC 6455 has us discard whatever the
    peer sends next, its close frame included: such a connection reports 1006
    and ``clean=False`` even when the peer answered. :attr:`clean` is true when
    both close frames were exchanged.
    """

    code: int
    reason: str
    clean: bool


Event = PingReceived | PongReceived | CloseReceived | Error | Closed
