"""The engine: one connection's whole byte-stream behaviour, without I/O.

Every runtime shell (asyncio, trio, blocking) and front end drives one
:class:`Engine` per connection. The engine owns websockets' Sans-I/O protocol
(``ClientProtocol`` / ``ServerProtocol``, already OPEN) and uses only its
documented API - ``receive_data``, ``receive_eof``, ``events_received``,
``data_to_send``, ``send_binary``, ``send_ping``, ``send_close``, ``fail``,
``close_expected``, ``state`` and ``close_exc`` - together with the policy core
(:mod:`ws_stream._policy`) and the receive buffer (:mod:`ws_stream._buffer`).
It decides, once for every shell: what each frame does, what a violation
does, when the closing handshake is bounded and when it timed out, keepalive
pings and their failure, ping latency, write framing and coalescing, what a
write after the close does, what the application's close does to unread
data, the counters (:class:`~ws_stream.stats.StreamStats`), the events, and
the error the reader ends with.

The interface, for a shell::

    what came before us         -> start(now, frames, peer_close, received)
    bytes read from the socket  -> receive_data(data, now)
    end of the socket           -> receive_eof()
    the socket is gone          -> connection_lost(cause)   (once; publishes Closed)
    the application writes      -> send(data) / write(data) + flush()
    close, ping                 -> close(code, reason, now) / ping(payload, now, waiter)
    a deadline passed           -> timer(now)  (True: drop TCP now)

    out: data_to_send()  bytes to write (b"" = half-close TCP), after every call
         deadline        when to call timer() next (math.inf: never)
         wake()          the ``on_wake`` callback: data, EOF or an error for the reader
         deliver(bytes)  the ``deliver`` callback, if given (else the engine's buffer)
         on_end(error)   the ``on_end`` callback, once: the reader's ending (None: EOF)

Reading: without ``deliver``, received bytes wait in :attr:`buffer`; the
shell reads them with :meth:`take` and stops reading the socket while
:meth:`should_pause` says so (``limit``), until :meth:`take` says to resume
(half of ``limit``). With ``deliver`` (asyncio: a ``Protocol``), the receiver
asks the shell to pause and resume; the shell asks :meth:`may_pause` first.

The per-frame guarantee: a text frame fails the connection with 1003 before
websockets reacts to anything behind it in the same read (a ping behind it is
never answered, a close never echoed). The engine scans frame headers (their
lengths, nothing else) and hands websockets the bytes up to and including
each frame that is not a binary or continuation frame, then decides that
frame before handing over the rest.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Final

from websockets.exceptions import ConnectionClosed
from websockets.exceptions import ProtocolError as WsProtocolError
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import CLOSED, OPEN, Protocol

from ._buffer import ChunkBuffer
from ._options import StreamOptions
from ._policy import EventHub, Step, StreamPolicy, check_close
from .events import Event
from .exceptions import AbnormalClosureError
from .reconnect import CloseFrames
from .stats import StreamStats

__all__ = ["Engine", "PingWaiter"]

logger = logging.getLogger("ws_stream.engine")

#: Called with the round trip in seconds when a ping's pong arrives, or with
#: None when the connection ended first.
PingWaiter = Callable[[float | None], None]

_BINARY: Final = Opcode.BINARY
_CLOSE: Final = Opcode.CLOSE
_PONG: Final = Opcode.PONG
# Frames that websockets never reacts to: data keeps flowing between cuts
# (continuations of a text message excepted).
_DATA_OPCODES: Final = frozenset({0x0, 0x2})
# At most this many frames per receive_data() call (see _Cutter).
_FRAMES_PER_FEED: Final = 64


def _nothing(_: object = None) -> None:
    pass


def _close_in(chunk: bytes) -> Close | None:
    """The close frame serialized in ``chunk`` (one frame, as websockets writes them)."""
    if len(chunk) < 2 or chunk[0] & 0x0F != 0x8:
        return None
    length = chunk[1] & 0x7F  # a control frame: at most 125 bytes, no extended length
    if chunk[1] & 0x80:  # a client's frame: unmask it
        key, payload = chunk[2:6], chunk[6 : 6 + length]
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    else:
        payload = chunk[2 : 2 + length]
    return Close.parse(payload)


class _Cutter:
    """Finds where to cut the bytes read before handing them to websockets.

    After each frame that is not a data frame (websockets may react to it), and
    after every ``_FRAMES_PER_FEED`` frames: websockets lists the frames of one
    ``receive_data()`` call as objects (about 150 bytes each), so a read of
    tiny frames must not be handed over whole. From frame headers only (their
    opcode and length); kept across reads, as a header or a payload may
    straddle two.
    """

    __slots__ = ("count", "cut_after", "head", "in_frame", "in_text", "left")

    def __init__(self) -> None:
        self.head = b""  # the start of a header that the last read cut short
        self.in_frame = False  # inside a frame's payload
        self.left = 0  # payload bytes of the current frame still to come
        self.cut_after = False  # the current frame is not a data frame
        self.count = 0  # frames since the last cut
        self.in_text = False  # inside a fragmented text message

    def cuts(self, data: bytes | bytearray) -> list[int]:
        """Offsets in ``data`` where to cut (each after the end of a frame)."""
        # Locals in the loop, written back at the end: this runs on every read.
        cuts: list[int] = []
        pos = 0
        end = len(data)
        in_frame = self.in_frame
        left = self.left
        count = self.count
        cut_after = self.cut_after
        while True:
            if in_frame:
                if left > end - pos:
                    left -= end - pos
                    break
                pos += left
                left = 0
                in_frame = False
                count += 1
                if cut_after or count >= _FRAMES_PER_FEED:
                    cuts.append(pos)
                    count = 0
                continue
            if pos >= end:
                break
            # A header starts at pos (possibly with bytes kept from the last read).
            if not self.head and end - pos >= 14:
                # The whole header is in data (the usual case): read it in place.
                b0 = data[pos]
                b1 = data[pos + 1]
                size = b1 & 0x7F
                if size < 126:
                    need = 2
                elif size == 126:
                    size = (data[pos + 2] << 8) | data[pos + 3]
                    need = 4
                else:
                    size = int.from_bytes(data[pos + 2 : pos + 10], "big")
                    need = 10
                if b1 & 0x80:
                    need += 4
                pos += need
            else:
                head = self.head + bytes(data[pos : pos + 14])
                if len(head) < 2:
                    self.head = head
                    break
                b0 = head[0]
                size = head[1] & 0x7F
                need = 2 + (2 if size == 126 else 8 if size == 127 else 0)
                need += 4 if head[1] & 0x80 else 0
                if len(head) < need:
                    self.head = head
                    break
                if size == 126:
                    size = int.from_bytes(head[2:4], "big")
                elif size == 127:
                    size = int.from_bytes(head[2:10], "big")
                pos += need - len(self.head)
                self.head = b""
            in_frame = True
            left = size
            # Text frames and their continuations are decided alone too (invalid
            # UTF-8 fails the connection with on_text="bytes").
            opcode = b0 & 0x0F
            if opcode == 0x1 or (opcode == 0x0 and self.in_text):
                self.in_text = not b0 & 0x80
                cut_after = True
            else:
                cut_after = opcode not in _DATA_OPCODES
        self.in_frame = in_frame
        self.left = left
        self.count = count
        self.cut_after = cut_after
        return cuts


class Engine:
    """The byte-stream behaviour of one open WebSocket connection (no I/O).

    Not thread-safe: a shell calls it from one task or thread at a time (the
    blocking shell under its lock). ``now`` arguments are the runtime's
    monotonic clock. See the module docstring for the interface; call
    :meth:`start` first. ``adopted``: the connection was taken over from
    websockets and may be closing already.
    """

    # One engine per connection: slots keep an idle one small (about 300 bytes
    # instead of a 1.5 KiB instance dict).
    __slots__ = (
        "_buffer",
        "_cutter",
        "_deliver",
        "_guessed_cause",
        "_held",
        "_keepalive",
        "_keepalive_deadline",
        "_next_ping",
        "_on_end",
        "_on_wake",
        "_pending",
        "_pending_size",
        "_pings",
        "_send_message",
        "_whole",
        "cause",
        "closed_locally",
        "closing_deadline",
        "closing_started",
        "ended",
        "eof",
        "hub",
        "limit",
        "lost",
        "lost_writes",
        "options",
        "ping_interval",
        "ping_timeout",
        "policy",
        "protocol",
        "rcvd",
        "rcvd_then_sent",
        "read_error",
        "sent",
        "stats",
        "writes_framed",
    )

    def __init__(
        self,
        protocol: Protocol,
        options: StreamOptions,
        *,
        now: float,
        hub: EventHub[Event] | None = None,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        deliver: Callable[[bytes], None] | None = None,
        on_wake: Callable[[], None] = _nothing,
        on_end: Callable[[Exception | None], None] = _nothing,
        adopted: bool = False,
        send_message: Callable[[bytes], None] | None = None,
    ) -> None:
        if protocol.state is not OPEN and not adopted:
            raise ValueError("the WebSocket handshake must be complete (protocol state OPEN)")
        self.protocol = protocol
        self.options = options
        self.limit = options.limit
        self.policy = StreamPolicy(on_text=options.on_text)
        self.hub: EventHub[Event] = hub if hub is not None else EventHub(options.max_events)
        self.stats = StreamStats()
        self._buffer: ChunkBuffer | None = None  # see buffer
        self._deliver = deliver if deliver is not None else self._buffered
        self._on_wake = on_wake
        self._on_end = on_end
        self._cutter = _Cutter()
        # A message front end (ASGI, aiohttp) sends data messages itself: data
        # is not framed (see receive_message, send).
        self._send_message = send_message
        #: Whether a write can leave frames in :meth:`data_to_send` (False for a
        #: message front end: its messages never go through websockets, so the
        #: shell need not collect output after a write).
        self.writes_framed = send_message is None
        self._whole = False  # websockets discards what comes: no more cuts
        # The reader's ending.
        self.eof = False
        self.read_error: Exception | None = None
        self.ended = False  # on_end was called
        # The closing handshake, as seen on the wire.
        self.rcvd: Close | None = None
        self.sent: Close | None = None
        self.rcvd_then_sent: bool | None = None
        self.closing_started = False  # a close frame went out or websockets failed
        self.closed_locally = False  # the application closed its end
        self.lost = False  # connection_lost() was called
        self.cause: BaseException | None = None  # why TCP was dropped, when we dropped it
        self.closing_deadline = math.inf
        # Writes.
        # Lists made when needed (most connections never hold anything here).
        self._pending: list[bytes] | None = None
        self._pending_size = 0
        self._held: list[bytes] | None = None  # taken from websockets to read a close frame
        self._guessed_cause: Exception | None = None
        self.lost_writes = 0  # writes refused after the close (asyncio counts them)
        # Pings: payload -> (sent at, waiter); the keepalive's payload, if one waits.
        self._pings: dict[bytes, tuple[float, PingWaiter]] = {}
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._keepalive: bytes | None = None
        self._keepalive_deadline = math.inf
        self._next_ping = now + ping_interval if ping_interval else math.inf

    def start(
        self,
        now: float,
        frames: Sequence[Frame] = (),
        peer_close: Close | None = None,
        received: bytes = b"",
    ) -> None:
        """Take over what arrived before the engine: call once, before any other input.

        ``frames``: data and control frames already parsed (a connection
        adopted from websockets), then the ones websockets still lists;
        ``peer_close``: the close frame the peer already sent, if any;
        ``received``: bytes read behind the handshake, not parsed yet.
        """
        self._frames([*frames, *self.protocol.events_received()], now)
        if peer_close is not None:
            self._closing_frame(peer_close)
            self._apply(self.policy.close_received(peer_close))
        if self.protocol.state is not OPEN:
            self._whole = True
            self._closing(now)
        if received:
            self.receive_data(received, now)

    # Properties

    @property
    def deadline(self) -> float:
        """When the shell must call :meth:`timer` next (``math.inf``: never)."""
        if self.lost:
            return math.inf
        return min(self.closing_deadline, self._next_ping, self._keepalive_deadline)

    @property
    def buffer(self) -> ChunkBuffer:
        """The received bytes not read yet (shells without ``deliver``).

        Made when first used: with ``deliver`` (asyncio) it never is.
        """
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = ChunkBuffer()
        return buffer

    @property
    def error(self) -> Exception | None:
        """What ended the stream abnormally (text frame, violation, lost connection), or None."""
        return self.policy.error

    @property
    def is_open(self) -> bool:
        """True while data may be sent (websockets' state is OPEN)."""
        return self.protocol.state is OPEN and not self.lost

    def close_frames(self) -> CloseFrames:
        """The closing handshake so far (for the reconnect loop)."""
        return CloseFrames(self.rcvd, self.sent, self.rcvd_then_sent, self.lost)

    @property
    def close_code(self) -> int | None:
        """The peer's close code: None while open, 1006 if the connection was lost."""
        if self.rcvd is not None:
            return self.rcvd.code
        return 1006 if self.lost else None

    @property
    def close_reason(self) -> str | None:
        """The peer's close reason: None while open, "" if none was received."""
        if self.rcvd is not None:
            return self.rcvd.reason
        return "" if self.lost else None

    # Incoming

    def receive_data(self, data: bytes | bytearray, now: float) -> None:
        """Bytes read from the socket: frames decided in wire order."""
        protocol = self.protocol
        if self.lost:
            return
        state = protocol.state
        if state is CLOSED:
            return
        if self._whole:
            protocol.receive_data(data)
            self._after(protocol.events_received(), now, state is OPEN)
            return
        cuts = self._cutter.cuts(data)
        if not cuts:  # the common case: nothing to decide alone (data frames)
            if data:
                protocol.receive_data(data)
                self._after(protocol.events_received(), now, state is OPEN)
            return
        start = 0
        for cut in cuts:
            was_open = protocol.state is OPEN
            protocol.receive_data(data[start:cut] if start or cut < len(data) else data)
            start = cut
            self._after(protocol.events_received(), now, was_open)
            if self._whole:
                break
        if start < len(data) and protocol.state is not CLOSED:
            was_open = protocol.state is OPEN
            protocol.receive_data(data[start:] if start else data)
            self._after(protocol.events_received(), now, was_open)

    def receive_message(self, data: bytes, now: float) -> bool:
        """A whole binary message from a message front end (ASGI, aiohttp): decided as a
        binary frame, without framing it (data frames change nothing in websockets).

        Returns whether the shell must collect output (:meth:`data_to_send`,
        :attr:`deadline`): False when the message was only delivered.
        """
        if self.lost or self.protocol.state is CLOSED or self._whole:
            return False  # after a close frame or a failure: discarded (RFC 6455)
        stats = self.stats
        stats.frames_received += 1
        stats.last_frame_at = now
        policy = self.policy
        if policy.delivering:  # the policy's own test for data (receive_frame's)
            if data:
                stats.bytes_received += len(data)
                self._deliver(data)
            return False
        step = policy.receive_frame(_BINARY, data, True)
        self._apply(step)
        return step.failure is not None or step.eof

    def receive_eof(self) -> None:
        """The peer closed its side of TCP: no more bytes will come.

        An end in the middle of a frame, or without a closing handshake, is
        an abnormal closure: decided by :meth:`connection_lost`.
        """
        if self.lost:
            return
        self.protocol.receive_eof()  # idempotent
        self._whole = True

    def _after(self, events: Sequence[object], now: float, was_open: bool) -> None:
        if events:
            self._frames(events, now)
        if self.protocol.state is not OPEN:
            self._whole = True
            if was_open and self.rcvd is None and self.policy.error is None:
                self._websockets_failed()
            self._closing(now)

    def _frames(self, events: Sequence[object], now: float) -> None:
        if not events:
            return
        stats = self.stats
        stats.frames_received += len(events)
        stats.last_frame_at = now
        policy = self.policy
        for frame in events:
            assert isinstance(frame, Frame)
            opcode = frame.opcode
            if opcode is _CLOSE:
                self._closing_frame(Close.parse(frame.data))
            elif opcode is _PONG:
                stats.pongs_received += 1
                self._pong(bytes(frame.data), now)
            self._apply(policy.receive_frame(opcode, bytes(frame.data), frame.fin))

    def _closing_frame(self, close: Close) -> None:
        if self.rcvd is None:
            self.rcvd = close
            if self.sent is None:
                self.rcvd_then_sent = True
        self._whole = True  # websockets discards what follows a close frame

    def _websockets_failed(self) -> None:
        """websockets left OPEN while parsing, without a close frame from the peer: it
        failed the connection (a violation), and the close frame it sent says why."""
        self._take_output()
        sent = self.sent
        if sent is None:
            return  # nothing was sent: an abnormal closure, decided at the end
        cause: Exception = (
            WsProtocolError(sent.reason) if sent.code == 1002 else _Violation(sent.reason)
        )
        self._guessed_cause = cause  # websockets' own exception replaces it at the end
        self._apply(self.policy.parser_failed(cause, sent.code))
        if self.policy.error is not None:
            logger.info("the peer violated the protocol: %s", self.policy.error)
            self._end(self.policy.error)

    def front_end_answered(self, close: Close, *, ours_first: bool) -> None:
        """A message front end answered the peer's close itself with ``close`` (aiohttp
        answers 1000, whatever the peer's code). Unless a close of ours went out
        before the peer's came (``ours_first``: the closing handshake was ours), that
        answer is the close sent, not what the engine queued instead (the echo, or
        1002 for a code no peer may send), which the front end did not send."""
        if not ours_first:
            self.sent = close

    def violation(self, code: int, reason: str, why: str | None = None) -> None:
        """A front end (ASGI, aiohttp) failed the connection itself, with ``code`` and
        ``reason``, for a message it refused (too big, invalid: ``why``, by default the
        reason) before the engine saw it: the reader ends with the
        :class:`ProtocolError` of that code after its data, as when websockets detects
        a violation."""
        if self.policy.error is not None or self.ended:
            return
        try:
            check_close(code, "")
        except ValueError:
            pass  # no close frame carries that code (1006): the front end sent none
        else:
            self._sent(Close(code, reason))
        why = reason if why is None else why
        cause: Exception = WsProtocolError(why) if code == 1002 else _Violation(why)
        self._apply(self.policy.parser_failed(cause, code))
        if self.policy.error is not None:
            self._end(self.policy.error)

    def _apply(self, step: Step) -> None:
        data, event, failure, eof = step
        if data is not None:
            self.stats.bytes_received += len(data)
            self._deliver(data)
        if event is not None:
            self.hub.publish(event)
        if failure is not None:
            if self.protocol.state is OPEN:
                self.closing_started = True
                self.protocol.fail(failure.code, failure.reason)
                self._sent(Close(failure.code, failure.reason))
                self._whole = True
                self._take_output()
            logger.info("failing the connection with %d: %s", failure.code, failure.error)
            self._end(failure.error)
        if eof:
            self.eof = True
            self._end(None)

    def _buffered(self, data: bytes) -> None:
        self.buffer.append(data)
        self._on_wake()

    def _end(self, error: Exception | None) -> None:
        if self.ended:
            return
        self.ended = True
        if error is not None:
            self.read_error = error
        self._on_wake()
        self._on_end(error)

    def end_reader(self, error: Exception) -> None:
        """End the reader with ``error`` after its data, unless it ended already
        (reconnect's idle timeout)."""
        self._end(error)

    # Reading from the buffer (shells without ``deliver``)

    def should_pause(self) -> bool:
        """Stop reading the socket? (the buffer passed ``limit``; never after the close)."""
        return len(self.buffer) > self.limit and self.policy.may_pause()

    def may_pause(self) -> bool:
        """The receiver passed its limit: may the shell stop reading the socket?"""
        return self.policy.may_pause()

    def should_resume(self) -> bool:
        """After a read from :attr:`buffer`: may the shell read the socket again?
        (the buffer is down to half of ``limit``)."""
        return len(self.buffer) <= self.limit // 2

    def take(self, n: int) -> tuple[bytes, bool]:
        """Up to ``n`` buffered bytes, and whether the shell should resume reading."""
        data = self.buffer.take(n, exact=False)
        return data, self.should_resume()

    # Outgoing

    def data_to_send(self) -> list[bytes]:
        """What to write to the socket, in order; ``b""`` means: half-close TCP."""
        writes = self.protocol.data_to_send()
        held = self._held
        if held:
            writes, self._held = held + writes, None
        elif writes and self.sent is None and self.protocol.state is not OPEN:
            self._seen(writes)
        return writes

    def _seen(self, writes: list[bytes]) -> None:
        """Note the close frame websockets sent on its own (an echo, a failure)."""
        for chunk in writes:
            close = _close_in(chunk) if chunk else None
            if close is not None:
                self._sent(close)

    def _sent(self, close: Close) -> None:
        if self.sent is None:
            self.sent = close
            if self.rcvd_then_sent is None:
                self.rcvd_then_sent = self.rcvd is not None

    def _take_output(self) -> None:
        """Peek at what websockets queued (a close frame it sent) without losing it."""
        # data_to_send() empties websockets' queue: keep the bytes for the shell.
        writes = self.protocol.data_to_send()
        if writes:
            self._seen(writes)
            if self._held is None:
                self._held = writes
            else:
                self._held.extend(writes)

    def send_refusal(self) -> str | None:
        """Why data cannot be sent now, or None when it can (decided here, once)."""
        if self.closed_locally:
            return "this stream was closed: data can no longer be sent"
        if self.protocol.state is not OPEN or self.lost:
            code = self.close_code
            peer = f" (peer close code {code})" if code is not None else ""
            return f"the WebSocket is closing or closed: data can no longer be sent{peer}"
        return None

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Frame ``data`` now (binary frames of at most ``max_frame_size``); return
        the number of frames. The caller checked :meth:`send_refusal`."""
        size = self.options.max_frame_size
        n = len(data) if type(data) is not memoryview else data.nbytes
        stats = self.stats
        message = self._send_message
        if message is not None:  # a message front end keeps what it gets: bytes
            whole = bytes(data)
            if n <= size:
                message(whole)
                frames = 1
            else:
                for start in range(0, n, size):
                    message(whole[start : start + size])
                frames = -(-n // size)
        elif n <= size:
            self.protocol.send_binary(data)
            frames = 1
        else:
            view = memoryview(data).cast("B")
            for start in range(0, n, size):
                self.protocol.send_binary(view[start : start + size])
            frames = -(-n // size)
        stats.frames_sent += frames
        stats.bytes_sent += n
        return frames

    def write(self, data: bytes | bytearray | memoryview, *, first: bool) -> bool:
        """A coalescing write (asyncio transports). ``first``: the first write since the
        last :meth:`flush` - it is framed at once (no added latency); later ones wait
        for :meth:`flush` unless ``max_frame_size`` is pending. Returns False when
        the write was refused (after the close; counted in :attr:`lost_writes`)."""
        n = len(data) if type(data) is not memoryview else data.nbytes
        if self.protocol.state is not OPEN or self.lost:
            self.lost_writes += 1
            return False
        if n >= self.options.max_frame_size:
            if self._pending:
                self.flush()
            self.send(data)
        elif first and not self._pending:
            self.send(data)
        else:
            chunk = bytes(data)  # the caller may reuse its buffer
            if self._pending is None:
                self._pending = [chunk]
            else:
                self._pending.append(chunk)
            self._pending_size += n
            if self._pending_size >= self.options.max_frame_size:
                self.flush()
        return True

    def flush(self) -> None:
        """Frame the writes coalesced since the first one."""
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self._pending = None
        self._pending_size = 0
        if self.protocol.state is OPEN and not self.lost:
            self.send(data)
        else:
            self.lost_writes += 1

    def drop_pending(self) -> None:
        """Forget coalesced writes (the connection is being dropped)."""
        self._pending = None
        self._pending_size = 0

    @property
    def pending_size(self) -> int:
        """Bytes written and not yet framed."""
        return self._pending_size

    # Closing

    def close(
        self, code: int, reason: str, now: float, *, discard: bool = False, send: bool = True
    ) -> None:
        """The application closes: flush, send a close frame (if none went out), and
        bound the closing handshake by ``close_timeout``.

        Unread data never holds the closing handshake back: received bytes
        still reach the reader while it has room; once it is full the socket
        is read on and data frames are discarded (:meth:`StreamPolicy.may_pause`).
        ``discard``: the application can no longer read (trio's ``aclose``,
        a blocking socket's ``close``): the buffer is emptied now. ``send``
        False: no close frame can be written (a write was cut short in the
        middle of a frame); the shell drops TCP.

        Raises:
            ValueError: ``code``/``reason`` cannot be sent.
        """
        check_close(code, reason)
        if not self.closed_locally:
            self.closed_locally = True
            self.policy.local_close()
        if discard and self._buffer is not None:
            self._buffer.clear()
        if send:
            self.send_close(code, reason, now)

    def send_close(self, code: int, reason: str, now: float) -> None:
        """Send a close frame (after coalesced writes) if the WebSocket is open; bound the
        handshake. The stream keeps receiving until the peer's close (``write_eof``,
        trio's ``send_close``)."""
        check_close(code, reason)
        self.flush()
        if self.protocol.state is OPEN and not self.lost:
            self.closing_started = True
            self.protocol.send_close(code, reason)
            self._sent(Close(code, reason))
        self._closing(now)

    def _closing(self, now: float) -> None:
        if (
            self.closing_deadline == math.inf
            and not self.lost
            and (self.closing_started or self.protocol.close_expected())
        ):
            self.closing_deadline = now + self.options.close_timeout

    def timer(self, now: float) -> bool:
        """A deadline passed; True means: drop TCP now (the closing handshake timed out)."""
        if self.lost:
            return False
        if now >= self.closing_deadline:
            logger.info(
                "the peer did not complete the closing handshake within %.1f s; dropping TCP",
                self.options.close_timeout,
            )
            self.cause = TimeoutError("timed out while closing the connection")
            return True
        if now >= self._keepalive_deadline:
            self._keepalive_failed(now)
        elif now >= self._next_ping:
            self._send_keepalive(now)
        return False

    def _settle(self, closed: ConnectionClosed) -> None:
        """At the end, websockets' account of the closing handshake (``close_exc``)
        completes ours: a close frame it recorded before failing the connection
        (inside a fragmented message) never reached us as a frame; and the
        exception its parser raised becomes the cause of the violation."""
        if self.rcvd is None and closed.rcvd is not None:
            self.rcvd = closed.rcvd
            self.rcvd_then_sent = closed.rcvd_then_sent
        if self.sent is None and closed.sent is not None:
            self.sent = closed.sent
        error = self.policy.error
        cause = closed.__cause__
        guessed = self._guessed_cause
        if error is not None and guessed is not None and error.__cause__ is guessed and cause:
            error.__cause__ = cause

    def timed_out(self) -> None:
        """The shell dropped TCP for the close deadline (without calling :meth:`timer`)."""
        self.cause = TimeoutError("timed out while closing the connection")

    # Pings

    def ping(self, payload: bytes, now: float, waiter: PingWaiter) -> bytes:
        """Send a ping (after coalesced writes); ``waiter`` gets the round trip.

        An empty ``payload`` sends a unique random one; returns the payload sent.

        Raises:
            ValueError: a ping with this payload is already waiting.
            ConnectionError: the WebSocket is closing or closed.
        """
        if not payload:
            payload = os.urandom(4)
            while payload in self._pings:
                payload = os.urandom(4)
        payload = bytes(payload)
        if payload in self._pings:
            raise ValueError("a ping with this payload is already waiting for its pong")
        if self.protocol.state is not OPEN or self.lost:
            raise ConnectionResetError("cannot ping: the WebSocket is closing or closed")
        self.flush()
        self.protocol.send_ping(payload)
        self._pings[payload] = (now, waiter)
        self.stats.pings_sent += 1
        return payload

    def forget_ping(self, payload: bytes) -> None:
        """Stop waiting for this ping's pong (its waiter timed out)."""
        self._pings.pop(payload, None)

    def _pong(self, payload: bytes, now: float) -> None:
        if payload not in self._pings:
            return
        # A pong acknowledges its ping and every earlier one (RFC 6455 allows
        # answering only the latest).
        for key in list(self._pings):
            sent_at, waiter = self._pings.pop(key)
            latency = now - sent_at
            self.stats.last_latency = latency
            if key == self._keepalive:
                self._keepalive = None
                self._keepalive_deadline = math.inf
            waiter(latency)
            if key == payload:
                break

    def _send_keepalive(self, now: float) -> None:
        assert self.ping_interval
        self._next_ping = now + self.ping_interval
        if self._keepalive is not None or self.protocol.state is not OPEN:
            return
        self._keepalive = self.ping(b"", now, _nothing)
        if self.ping_timeout is not None:
            self._keepalive_deadline = now + self.ping_timeout

    def _keepalive_failed(self, now: float) -> None:
        self._keepalive_deadline = math.inf
        self._next_ping = math.inf
        logger.info("no pong within %s s: failing the connection", self.ping_timeout)
        error = AbnormalClosureError(
            f"no pong within ping_timeout ({self.ping_timeout} s): the connection is "
            "dead or overloaded (closed with 1011) - reconnect to continue"
        )
        self._apply(self.policy.keepalive_failed(error))
        self._closing(now)

    # The end

    def connection_lost(self, cause: BaseException | None = None) -> None:
        """The socket is closed: end the reader, publish the final events, fail pings."""
        if self.lost:
            return
        protocol = self.protocol
        if protocol.state is not CLOSED:
            protocol.receive_eof()
            self._take_output()
        self._settle(protocol.close_exc)
        self.lost = True
        self._pending = None
        self._pending_size = 0
        if cause is None:
            cause = self.cause
        ending = self.policy.connection_lost(self.rcvd, self.sent, cause)
        for event in ending.events:
            self.hub.publish(event)
        if self.lost_writes:
            logger.warning(
                "%d write() calls after the connection closed were not sent", self.lost_writes
            )
        pings, self._pings = self._pings, {}
        for _, waiter in pings.values():
            waiter(None)
        self._end(ending.error if ending.error is not None else self.policy.error)
        self._on_wake()


class _Violation(Exception):
    """What websockets' parser reported, as the reason of the close frame it sent."""
