"""The policy core: what happens to each frame, failure and closure.

This module does no I/O. The runtime shells (asyncio, trio, blocking) feed it
what websockets' Sans-I/O protocol reports - data and control frames, a parser
failure, the end of the TCP connection - and carry out what it answers: bytes
to append to the stream, an event to publish, a connection to fail with a close
code, the end of the stream. Every decision about text frames, close frames,
violations and abnormal closure is made here, once.

The machine, for one connection::

    OPEN --close frame--> ENDED (reader: data, then EOF)
    OPEN --text frame / violation--> FAILED (reader: data, then the error)
    any  --TCP closed--> CLOSED (reader: data, then EOF or the error;
                                 a lost connection is an AbnormalClosureError)
"""

from __future__ import annotations

import codecs
import enum
from collections import deque
from collections.abc import Callable
from typing import Final, Generic, Literal, NamedTuple, TypeVar

from websockets.exceptions import PayloadTooBig
from websockets.exceptions import ProtocolError as WsProtocolError
from websockets.frames import Close, Opcode

from .events import Closed, CloseReceived, Error, Event, PingReceived, PongReceived
from .exceptions import AbnormalClosureError, ProtocolError, TextFrameError, WsStreamError

__all__ = [
    "EventHub",
    "Failure",
    "State",
    "Step",
    "StreamPolicy",
    "Subscription",
    "check_close",
    "peer_close",
]

OnText = Literal["error", "bytes"]

# Close codes of RFC 6455, section 7.4.1.
NORMAL_CLOSURE: Final = 1000
PROTOCOL_ERROR: Final = 1002
UNSUPPORTED_DATA: Final = 1003
ABNORMAL_CLOSURE: Final = 1006
INVALID_DATA: Final = 1007
MESSAGE_TOO_BIG: Final = 1009
INTERNAL_ERROR: Final = 1011

TEXT_REASON: Final = "text frames are not supported"


class State(enum.Enum):
    """Where the byte stream stands (not the WebSocket: see websockets' State)."""

    OPEN = "open"  # data frames join the stream
    ENDED = "ended"  # the peer's close frame arrived: EOF after the data
    FAILED = "failed"  # we failed the connection: the error after the data
    CLOSED = "closed"  # the TCP connection is gone


class Failure(NamedTuple):
    """Fail the WebSocket connection with ``code``/``reason``; raise ``error``."""

    code: int
    reason: str
    error: WsStreamError


class Step(NamedTuple):
    """What the shell does after one frame, in this order.

    ``data``: append to the stream. ``event``: publish. ``failure``: fail the
    connection (send the close frame) and end the reader with the error.
    ``eof``: end the reader cleanly after its data.
    """

    data: bytes | None = None
    event: Event | None = None
    failure: Failure | None = None
    eof: bool = False


class Ending(NamedTuple):
    """What the shell does when the TCP connection is gone.

    ``error``: end the reader with it (None: the stream ended cleanly or was
    already ended). ``events``: publish them, in order; the last is
    :class:`Closed`.
    """

    error: WsStreamError | None
    events: tuple[Event, ...]


_NOTHING: Final = Step()
_BINARY: Final = Opcode.BINARY
_CONT: Final = Opcode.CONT
_TEXT: Final = Opcode.TEXT


class StreamPolicy:
    """Turns websockets frames into stream data, events and close decisions.

    One instance per connection; not thread-safe (a shell calls it from the
    thread or task that reads the connection).
    """

    def __init__(self, *, on_text: OnText = "error") -> None:
        if on_text not in ("error", "bytes"):
            raise ValueError(f'on_text must be "error" or "bytes", not {on_text!r}')
        self.on_text: OnText = on_text
        self.state = State.OPEN
        self.error: WsStreamError | None = None
        self._in_text = False  # inside a fragmented text message
        self._decoder: codecs.IncrementalDecoder | None = None
        self.closed_locally = False  # the application closed its end
        self.discarding = False  # data frames go nowhere from now on

    # Unread data and the closing handshake

    @property
    def delivering(self) -> bool:
        """True while data frames can still join the stream."""
        return self.state is State.OPEN and not self.discarding

    def local_close(self) -> None:
        """The application closed its end (``close()``); its close frame goes out.

        Data frames the peer sent before it saw our close still join the
        stream while the reader has room: the application may read them.
        Once the reader is full, see :meth:`may_pause`.
        """
        self.closed_locally = True

    def may_pause(self) -> bool:
        """The reader passed ``limit``: may the shell stop reading TCP?

        Yes while the stream is open: that is flow control. No once nothing
        more joins the stream (EOF, failure), and no after the application's
        close: the peer's close frame may sit behind data that nobody will
        read, and waiting for a reader would cost ``close_timeout`` and turn a
        clean close into 1006. Decided here, once: after the application's
        close, a full reader makes every later data frame be discarded (text
        frames too: they no longer fail the connection); control frames still
        count, and the closing handshake completes at once.
        """
        if self.closed_locally:
            self.discarding = True
        return self.delivering

    # Frames

    def receive_frame(self, opcode: Opcode, data: bytes, fin: bool) -> Step:
        """Decide what one frame received from the peer does."""
        if self.state is not State.OPEN:
            # After our failure or the peer's close, RFC 6455 says to discard.
            return _NOTHING
        if opcode is _BINARY or (opcode is _CONT and not self._in_text):
            return Step(data) if data and self.delivering else _NOTHING
        if opcode is _TEXT or opcode is _CONT:
            if self.discarding:
                return _NOTHING
            return self._text(data, first=opcode is _TEXT, fin=fin)
        if opcode is Opcode.PING:
            return Step(event=PingReceived(bytes(data)))
        if opcode is Opcode.PONG:
            return Step(event=PongReceived(bytes(data)))
        if opcode is Opcode.CLOSE:
            # websockets validated the payload before reporting the frame.
            return self.close_received(Close.parse(data))
        raise AssertionError(f"unexpected opcode {opcode!r}")  # pragma: no cover

    def close_received(self, close: Close) -> Step:
        """The peer's close frame: EOF after the data, and a CloseReceived event."""
        if self.state is not State.OPEN:
            return _NOTHING
        self.state = State.ENDED
        return Step(event=CloseReceived(close.code, close.reason), eof=True)

    def _text(self, data: bytes, *, first: bool, fin: bool) -> Step:
        if self.on_text == "error":
            return self._fail(UNSUPPORTED_DATA, TEXT_REASON, TextFrameError())
        if first:
            self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._in_text = not fin
        assert self._decoder is not None
        try:
            self._decoder.decode(data, final=fin)
        except UnicodeDecodeError as exc:
            reason = f"invalid UTF-8 in a text frame: {exc.reason}"
            return self._fail(INVALID_DATA, reason, ProtocolError(INVALID_DATA, reason))
        return Step(bytes(data)) if data else _NOTHING

    def _fail(self, code: int, reason: str, error: WsStreamError) -> Step:
        self.state = State.FAILED
        self.error = error
        return Step(event=Error(error), failure=Failure(code, reason, error))

    # Failures detected by websockets itself

    def parser_failed(self, exc: BaseException, code: int | None) -> Step:
        """websockets' parser failed the connection with ``code`` because of ``exc``.

        Only violations matter here; an EOF in the middle of a frame is an
        abnormal closure, decided by :meth:`connection_lost`.
        """
        if self.state is not State.OPEN or isinstance(exc, EOFError):
            return _NOTHING
        if code is None or code == ABNORMAL_CLOSURE:
            return _NOTHING
        error = ProtocolError(code, _violation_message(exc, code))
        error.__cause__ = exc
        self.state = State.FAILED
        self.error = error
        # websockets already sent the close frame: nothing to fail again.
        return Step(event=Error(error), eof=False)

    def keepalive_failed(self, error: WsStreamError) -> Step:
        """No pong within ``ping_timeout``: fail with 1011; the reader ends with ``error``."""
        if self.state is not State.OPEN:
            return _NOTHING
        return self._fail(INTERNAL_ERROR, "keepalive ping timeout", error)

    # The end

    def connection_lost(
        self, rcvd: Close | None, sent: Close | None, cause: BaseException | None = None
    ) -> Ending:
        """The TCP connection is gone; ``rcvd``/``sent`` are the close frames, if any."""
        previous = self.state
        self.state = State.CLOSED
        code = rcvd.code if rcvd is not None else ABNORMAL_CLOSURE
        reason = rcvd.reason if rcvd is not None else ""
        closed = Closed(code, reason, clean=rcvd is not None and sent is not None)
        if previous is not State.OPEN:
            # The reader already has its ending (EOF or the failure).
            return Ending(None, (closed,))
        if rcvd is not None:  # pragma: no cover - the close frame ends OPEN first
            return Ending(None, (closed,))
        detail = f": {cause}" if cause is not None and str(cause) else ""
        error = AbnormalClosureError(
            "the WebSocket connection was lost without a close frame (1006)"
            f"{detail}; data may be missing - reconnect to continue"
        )
        if cause is not None:
            error.__cause__ = cause
        self.error = error
        return Ending(error, (Error(error), closed))


def check_close(code: int, reason: str) -> None:
    """Validate a close code and reason we are asked to send.

    Raises:
        ValueError: ``code`` is not one an endpoint may send (1000-1003,
            1007-1014, 3000-4999) or the reason is over 123 bytes of UTF-8.
    """
    try:
        if len(Close(code, reason).serialize()) > 125:
            raise ValueError("the close frame payload is over 125 bytes")
    except Exception as exc:
        raise ValueError(
            f"cannot close with code {code} and reason {reason!r}: {exc} "
            "(use 1000-1003, 1007-1014 or 3000-4999 and a reason of at most 123 bytes)"
        ) from None


def peer_close(close_rcvd: Close | None, ended: bool) -> tuple[int | None, str | None]:
    """The (code, reason) a stream reports: None while open, 1006 if none arrived."""
    if close_rcvd is not None:
        return close_rcvd.code, close_rcvd.reason
    return (ABNORMAL_CLOSURE, "") if ended else (None, None)


def _violation_message(exc: BaseException, code: int) -> str:
    if isinstance(exc, PayloadTooBig) or code == MESSAGE_TOO_BIG:
        what = f"the peer sent a message over max_size ({exc})"
        hint = "raise max_size on this side if such messages are expected"
    elif isinstance(exc, UnicodeDecodeError) or code == INVALID_DATA:
        what = f"the peer sent invalid UTF-8 ({exc})"
        hint = "the peer is broken"
    elif isinstance(exc, WsProtocolError):
        what = f"the peer violated the WebSocket protocol ({exc})"
        hint = "the peer is broken or is not a WebSocket endpoint"
    else:
        what = f"the connection failed ({exc!r})"
        hint = "see the cause"
    return f"{what}; closed with {code} - {hint}"


# Events: bounded per-subscriber queues. A slow subscriber loses its oldest
# events (counted), never slows the data path, and always gets the final one
# (Closed) last. The same hub carries a reconnecting client's status changes.

T = TypeVar("T")


def _is_closed(item: object) -> bool:
    return isinstance(item, Closed)


class Subscription(Generic[T]):
    """One subscriber's queue, bounded to ``maxlen``; nothing comes after the final item."""

    __slots__ = ("dropped", "ended", "is_final", "maxlen", "queue", "wake")

    def __init__(
        self, maxlen: int, wake: Callable[[], None], is_final: Callable[[T], bool]
    ) -> None:
        self.maxlen = maxlen
        self.queue: deque[T] = deque()
        self.dropped = 0
        self.ended = False  # the final item was queued
        self.wake = wake
        self.is_final = is_final

    def push(self, item: T) -> None:
        if self.ended:
            return
        if len(self.queue) >= self.maxlen:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(item)
        if self.is_final(item):
            self.ended = True
        self.wake()

    def pop(self) -> T | None:
        """The next item, or None when none is queued."""
        return self.queue.popleft() if self.queue else None

    def finished(self) -> bool:
        """True once the final item was delivered: the iteration ends."""
        return self.ended and not self.queue

    def cancel(self) -> None:
        """End this subscription now, dropping what is queued."""
        self.ended = True
        self.queue.clear()
        self.wake()


class EventHub(Generic[T]):
    """Publishes items (events, statuses) to every current subscriber."""

    def __init__(self, maxlen: int = 256, is_final: Callable[[T], bool] = _is_closed) -> None:
        if maxlen < 1:
            raise ValueError("the event queue length must be at least 1")
        self.maxlen = maxlen
        self.is_final = is_final
        self.subscriptions: list[Subscription[T]] = []
        self.final: T | None = None

    def subscribe(self, wake: Callable[[], None]) -> Subscription[T]:
        """Subscribe from now on; after the end, the subscription holds only the final item."""
        sub = Subscription(self.maxlen, wake, self.is_final)
        if self.final is not None:
            sub.push(self.final)
        else:
            self.subscriptions.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription[T]) -> None:
        if sub in self.subscriptions:
            self.subscriptions.remove(sub)
        sub.cancel()

    def publish(self, item: T) -> None:
        if self.final is not None:
            return
        if self.is_final(item):
            self.final = item
        for sub in self.subscriptions:
            sub.push(item)
        if self.final is not None:
            self.subscriptions.clear()
