"""The yamux protocol as a pure state machine: bytes in, events and bytes out.

No I/O, no clock, no locks: a shell (:mod:`ws_stream.mux.asyncio`) feeds it the
bytes it reads (:meth:`Machine.receive_data`), takes the bytes to write
(:meth:`Machine.data_to_send`) and the :class:`Event` list
(:meth:`Machine.events`), and calls its commands (open, send, consumed,
close, reset, ping, go away). Everything yamux decides is decided here, once,
and tested by feeding bytes (``tests/mux/test_machine.py``).

The wire format is HashiCorp's yamux specification (version 0): a 12-byte
header - version (1 byte), type (1), flags (2), stream id (4), length (4),
big-endian - then, for a Data frame, ``length`` bytes of payload.

* **Types**: Data (0), Window Update (1), Ping (2), Go Away (3). **Flags**:
  SYN (1) opens a stream, ACK (2) accepts it (or answers a ping), FIN (4)
  half-closes it, RST (8) resets it.
* **Stream ids**: the client opens odd ids, the server even ones, each
  larger than the last; 0 is the session (ping, go away).
* **Flow control**: each direction of each stream has a window, 256 KiB at
  first. A sender sends at most the window; the receiver grows it again with
  Window Update frames (the length is the delta) as its application reads.
  This machine sends an update once half of its window is read, so a reader
  that does not read makes its peer stop after at most one window: per
  stream, memory is bounded by the window, and a stalled stream never holds
  the others back.

Decided here too:

* **Limits.** ``max_streams`` open streams (a SYN beyond it is answered with
  RST; :meth:`Machine.open_stream` raises :class:`MuxError`), ``backlog``
  streams opened by the peer and not yet taken by the application, even if
  they ended since (beyond: RST), ``window`` (the receive window this side
  grants, at least 256 KiB), and :data:`MAX_BLOCKED_ANSWERS` pongs and
  refusals in a row queued while the shell says its output is backed up
  (:attr:`Machine.output_blocked`): beyond, the session fails (a peer that
  pings without reading would otherwise fill memory with answers).
* **Protocol errors** (the session fails: Go Away with code 1, every stream
  reset, :class:`SessionFailed`): an unknown version or type, a SYN with the
  wrong parity or an id already used, data beyond the receive window, data
  after the peer's FIN (while the stream is open), a window that overflows
  2**32 - 1, a Data frame on stream 0, a ping or go away on a stream, a frame
  for an id beyond those opened so far. A Data frame longer than its window is
  refused at its header, before its payload is read: memory stays bounded by
  the windows. Frames for a stream that is gone (closed both ways or reset)
  are ignored, as are frames for a peer's id below the highest it opened:
  they may have been in flight.
* **Go Away.** Received: no new streams may be opened (existing ones go on;
  :class:`GoneAway`); sent: the peer's new SYNs are answered with RST.
"""

from __future__ import annotations

import enum
import struct
from typing import Final, NamedTuple

__all__ = [
    "CLOSE_TIMEOUT",
    "DEFAULT_WINDOW",
    "HEADER",
    "MAX_BLOCKED_ANSWERS",
    "Acked",
    "Data",
    "Eof",
    "Event",
    "Flag",
    "GoAwayCode",
    "GoneAway",
    "Machine",
    "MuxError",
    "Opened",
    "Pinged",
    "Pong",
    "Reset",
    "SessionFailed",
    "Type",
    "Writable",
    "header",
]

#: The header: version, type, flags, stream id, length.
HEADER: Final = struct.Struct(">BBHII")
#: The spec's initial window, both ways, of every stream.
DEFAULT_WINDOW: Final = 256 * 1024
#: Largest payload of one Data frame this side sends (the initial window: a
#: frame never waits for a partial window; the WebSocket below frames bytes
#: its own way).
MAX_FRAME: Final = DEFAULT_WINDOW
#: Longest wait, after a stream's close, for the peer's FIN; then the stream is
#: reset (as TCP gives up on a peer that never closes), freeing its slot.
CLOSE_TIMEOUT: Final = 10.0
#: Answers the peer provokes (a pong per ping, an RST per refused open) while the
#: byte stream under the session is backed up: past this many in a row, the peer
#: is not reading them, and the session fails rather than buffer them without end.
MAX_BLOCKED_ANSWERS: Final = 4096
_MAX_U32: Final = 2**32 - 1
_VERSION: Final = 0


class Type(enum.IntEnum):
    """Frame types."""

    DATA = 0
    WINDOW_UPDATE = 1
    PING = 2
    GO_AWAY = 3


class Flag(enum.IntFlag):
    """Frame flags."""

    SYN = 1
    ACK = 2
    FIN = 4
    RST = 8


class GoAwayCode(enum.IntEnum):
    """Go Away's length field."""

    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


# The same numbers as plain ints: enum arithmetic is slow in the per-frame paths.
_DATA, _WINDOW_UPDATE, _PING, _GO_AWAY = 0, 1, 2, 3
_SYN, _ACK, _FIN, _RST = 1, 2, 4, 8


class MuxError(Exception):
    """A command the session cannot carry out (what happened, and what to do)."""


def header(type_: int, flags: int, stream: int, length: int) -> bytes:
    """One frame header."""
    return HEADER.pack(_VERSION, type_, flags, stream, length)


# Events


class Opened(NamedTuple):
    """The peer opened ``stream`` (already accepted: an ACK is sent)."""

    stream: int


class Acked(NamedTuple):
    """The peer accepted ``stream``, which this side opened."""

    stream: int


class Data(NamedTuple):
    """Bytes on ``stream``; :meth:`Machine.consumed` once the application has them."""

    stream: int
    data: bytes


class Eof(NamedTuple):
    """The peer half-closed ``stream`` (FIN): no more data comes."""

    stream: int


class Reset(NamedTuple):
    """``stream`` was reset: by the peer (also its refusal of a SYN), or by this side."""

    stream: int
    by_peer: bool = True


class Writable(NamedTuple):
    """``stream``'s send window grew: writers that waited may go on."""

    stream: int


class Pinged(NamedTuple):
    """The peer pinged (answered already)."""

    opaque: int


class Pong(NamedTuple):
    """The answer to this side's ping ``opaque``."""

    opaque: int


class GoneAway(NamedTuple):
    """The peer sent Go Away: no new streams; ``code`` is its reason."""

    code: int


class SessionFailed(NamedTuple):
    """The session is over: every stream is reset. ``by_peer``: the peer's Go Away said so."""

    code: int
    reason: str
    by_peer: bool = False


Event = Opened | Acked | Data | Eof | Reset | Writable | Pinged | Pong | GoneAway | SessionFailed


class _Stream:
    """One stream's state."""

    __slots__ = (
        "acked",
        "discard",
        "grant",
        "local_fin",
        "recv_window",
        "remote_fin",
        "send_window",
        "taken",
    )

    def __init__(self, send_window: int, recv_window: int, *, acked: bool, taken: bool) -> None:
        self.send_window = send_window
        self.recv_window = recv_window
        self.grant = 0  # bytes the application read, not yet granted back
        self.local_fin = False
        self.remote_fin = False
        self.acked = acked
        self.taken = taken
        self.discard = False  # the application closed it: data now resets it


class _Payload:
    """The payload of a Data frame still to come (delivered piece by piece)."""

    __slots__ = ("flags", "left", "state", "stream")

    def __init__(self, flags: int, stream: int, left: int, state: _Stream | None) -> None:
        self.flags = flags
        self.stream = stream
        self.left = left  # payload bytes not received yet
        self.state = state  # None: the payload is skipped (a stream gone or refused)


class Machine:
    """One yamux session's protocol state (see the module docstring).

    ``client``: this side opens odd stream ids. ``window``: the receive window
    granted to each stream (at least 256 KiB; larger windows are granted with
    the SYN or ACK). ``max_streams``: open streams at most; ``backlog``: streams
    the peer opened and the application has not taken (:meth:`take`).
    ``take_on_open``: the application takes every stream as it opens (a
    callback): no backlog applies, however many open in one read.
    """

    def __init__(
        self,
        *,
        client: bool,
        window: int = DEFAULT_WINDOW,
        max_streams: int = 1024,
        backlog: int = 256,
        take_on_open: bool = False,
    ) -> None:
        if not DEFAULT_WINDOW <= window <= _MAX_U32:
            raise ValueError(f"window must be {DEFAULT_WINDOW} to {_MAX_U32} bytes, got {window}")
        if max_streams < 1 or backlog < 1:
            raise ValueError("max_streams and backlog must be at least 1")
        self.client = client
        self.window = window
        self.max_streams = max_streams
        self.backlog = backlog
        self.take_on_open = take_on_open
        self.streams: dict[int, _Stream] = {}
        self._next_id = 1 if client else 2
        self._peer_max_id = 0  # the largest id the peer opened
        self._pending = 0  # opened by the peer, not yet taken (gone or not)
        self._gone_untaken: set[int] = set()  # ended before the application took them
        self._out: list[bytes | memoryview] = []
        self._events: list[Event] = []
        self._buffer = bytearray()
        self._frame: _Payload | None = None  # a Data frame whose payload is still coming
        self._ping_id = 0
        self.local_go_away = False
        self.remote_go_away = False
        self.failed: SessionFailed | None = None
        self._output_blocked = False
        self._blocked_answers = 0  # answers queued since the output last drained

    # Input

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the peer; then read :meth:`events` and :meth:`data_to_send`.

        Frames are parsed from ``data`` itself. A Data frame's payload is
        handed on as it arrives (one :class:`Data` event per piece: a frame cut
        across reads gives several); only the start of a header cut short is
        kept (less than 12 bytes).
        """
        if self.failed is not None:
            return
        if type(data) is not bytes:
            data = bytes(data)
        view: bytes | memoryview = data
        buffer = self._buffer
        if buffer:  # the start of a header: complete it, then go on after it
            need = HEADER.size - len(buffer)
            buffer += data[:need]
            if len(buffer) < HEADER.size:
                return
            self._buffer = bytearray()
            self._parse(bytes(buffer))
            if self.failed is not None:
                return
            view = memoryview(data)[need:]
        offset = self._parse(view)
        if offset < len(view) and self.failed is None:
            self._buffer = bytearray(memoryview(view)[offset:])

    def _parse(self, view: bytes | memoryview) -> int:
        """Handle the frames in ``view``, payloads piece by piece; returns how many
        bytes were taken (all but the start of a header cut short). A payload that
        is all in ``view`` goes on without a record of it (:class:`_Payload` is
        for one still to come)."""
        offset = 0
        size = len(view)
        unpack = HEADER.unpack_from
        while self.failed is None:
            frame = self._frame
            if frame is None:
                if size - offset < 12:
                    break
                version, type_, flags, stream, left = unpack(view, offset)
                offset += 12
                if version != _VERSION:
                    self._fail(f"unsupported yamux version {version}")
                    break
                if type_ != _DATA:
                    self._control(type_, flags, stream, left)
                    continue
                # Checked at the header, before any payload: no frame may
                # hold more than the window it is sent against.
                if flags & _SYN:
                    limit = DEFAULT_WINDOW  # a new stream: the initial window
                else:
                    # A stream gone lately may get frames sent against the last window.
                    known = self.streams.get(stream)
                    limit = self.window if known is None else known.recv_window
                if left > limit:
                    self._fail(
                        f"a {left}-byte data frame on stream {stream}, beyond its "
                        f"receive window ({limit} bytes)"
                    )
                    break
                state = self._data_header(flags, stream, left)
                if self.failed is not None:
                    break
            else:
                if offset >= size:
                    break
                flags, stream, left, state = frame.flags, frame.stream, frame.left, frame.state
                if state is not None and self.streams.get(stream) is not state:
                    state = frame.state = None  # reset by this side meanwhile
            take = left if left <= size - offset else size - offset
            if state is not None and take:
                if state.discard:
                    # The application stopped reading meanwhile (see _data_header).
                    self.reset_stream(stream)
                    state = None
                    if frame is not None:
                        frame.state = None
                else:
                    chunk = view[offset : offset + take]
                    payload = chunk.tobytes() if isinstance(chunk, memoryview) else chunk
                    self._events.append(Data(stream, payload))
            offset += take
            if take < left:  # the rest comes with later reads
                if frame is None:
                    self._frame = _Payload(flags, stream, left - take, state)
                else:
                    frame.left = left - take
                break
            self._frame = None
            if state is not None and flags & (_FIN | _RST):
                self._flags(flags, stream, state)
        return offset

    def _control(self, type_: int, flags: int, stream: int, length: int) -> None:
        if type_ == _WINDOW_UPDATE:
            self._window_update(flags, stream, length)
        elif type_ == _PING:
            if stream != 0:
                self._fail(f"a ping on stream {stream} (pings use stream 0)")
            elif flags & _SYN:
                self._events.append(Pinged(length))
                self._answer(header(_PING, _ACK, 0, length))
            elif flags & _ACK:
                self._events.append(Pong(length))
        elif type_ == _GO_AWAY:
            if stream != 0:
                self._fail(f"a go away on stream {stream} (it uses stream 0)")
            elif length == GoAwayCode.NORMAL:
                if not self.remote_go_away:
                    self.remote_go_away = True
                    self._events.append(GoneAway(length))
            else:
                what = "a protocol error" if length == GoAwayCode.PROTOCOL_ERROR else "an error"
                self._end(
                    SessionFailed(length, f"the peer went away with {what} (code {length})", True)
                )
        else:
            self._fail(f"unknown frame type {type_}")

    def _open_by_peer(self, flags: int, stream: int) -> _Stream | None:
        """A frame with SYN: a new stream (None: refused, or the session failed)."""
        if stream == 0 or (stream % 2 == 1) == self.client:
            self._fail(f"the peer opened stream {stream}, an id of this side's parity")
            return None
        if stream <= self._peer_max_id:
            self._fail(f"the peer opened stream {stream} again (ids are never reused)")
            return None
        self._peer_max_id = stream
        if (
            self.local_go_away
            or len(self.streams) >= self.max_streams
            or self._pending >= self.backlog
        ):
            self._answer(header(_WINDOW_UPDATE, _RST, stream, 0))
            return None
        taken = self.take_on_open
        state = _Stream(DEFAULT_WINDOW, DEFAULT_WINDOW, acked=True, taken=taken)
        self.streams[stream] = state
        if not taken:
            self._pending += 1
        self._out.append(header(_WINDOW_UPDATE, _ACK, stream, self.window - DEFAULT_WINDOW))
        state.recv_window = self.window
        self._events.append(Opened(stream))
        return state

    def _lookup(self, flags: int, stream: int) -> _Stream | None:
        """The stream a frame is for (None: ignore the frame, or the session failed)."""
        if flags & _SYN:
            return self._open_by_peer(flags, stream)
        state = self.streams.get(stream)
        if state is not None:
            return state
        if stream == 0:
            self._fail("a stream frame on stream 0")
        elif not self._was_used(stream):
            self._fail(f"a frame for stream {stream}, which was never opened")
        return None  # closed or reset lately: in flight, ignored

    def _was_used(self, stream: int) -> bool:
        mine = (stream % 2 == 1) == self.client
        return stream < self._next_id if mine else stream <= self._peer_max_id

    def _window_update(self, flags: int, stream: int, delta: int) -> None:
        state = self._lookup(flags, stream)
        if state is None:
            return
        if flags & _ACK and not state.acked:
            state.acked = True
            self._events.append(Acked(stream))
        if delta:
            if state.send_window + delta > _MAX_U32:
                self._fail(f"stream {stream}'s send window overflows 2**32 - 1")
                return
            state.send_window += delta
            if not state.local_fin:
                self._events.append(Writable(stream))
        self._flags(flags, stream, state)

    def _data_header(self, flags: int, stream: int, length: int) -> _Stream | None:
        """A Data frame's header: the stream its payload goes to (None: skip it)."""
        state = None if flags & _SYN else self.streams.get(stream)
        if state is None:
            state = self._lookup(flags, stream)
            if state is None:
                return None
        if flags & _ACK and not state.acked:
            state.acked = True
            self._events.append(Acked(stream))
        if length:
            if state.remote_fin:
                self._fail(f"data on stream {stream} after the peer's FIN")
                return None
            if length > state.recv_window:
                self._fail(
                    f"{length} bytes on stream {stream}, beyond its receive window "
                    f"({state.recv_window} bytes)"
                )
                return None
            if state.discard:
                # As TCP after close(): bytes nobody will read reset the stream,
                # so the peer's writer learns it instead of sending forever.
                self.reset_stream(stream)
                return None
            state.recv_window -= length
        return state

    def _flags(self, flags: int, stream: int, state: _Stream) -> None:
        if flags & _RST:
            self._forget(stream, state)
            self._events.append(Reset(stream))
            return
        if flags & _FIN:
            if state.remote_fin:
                return  # a second FIN says nothing new
            state.remote_fin = True
            self._events.append(Eof(stream))
            if state.local_fin:
                self._forget(stream, state)

    def _forget(self, stream: int, state: _Stream) -> None:
        del self.streams[stream]
        if not state.taken:
            # It keeps its place in the backlog until taken: the shell holds it for
            # accept() (an ended stream is still handed out), so a peer that opens
            # and resets streams at once cannot queue more than the backlog.
            self._gone_untaken.add(stream)

    @property
    def output_blocked(self) -> bool:
        """Set by the shell: the byte stream under the session is backed up (its writes
        wait). Answers the peer provokes meanwhile are counted, from the last time
        the shell set it False (the output drained), up to :data:`MAX_BLOCKED_ANSWERS`."""
        return self._output_blocked

    @output_blocked.setter
    def output_blocked(self, blocked: bool) -> None:
        if not blocked:
            self._blocked_answers = 0
        self._output_blocked = blocked

    def _answer(self, frame: bytes) -> None:
        """Queue a frame the peer's own frame calls for; bounded while output is blocked."""
        self._out.append(frame)
        if not self._output_blocked:
            return
        self._blocked_answers += 1
        if self._blocked_answers > MAX_BLOCKED_ANSWERS:
            self._fail(
                f"the peer sent more than {MAX_BLOCKED_ANSWERS} pings or refused opens "
                "without reading the answers"
            )

    def _fail(self, reason: str) -> None:
        self._out.append(header(_GO_AWAY, 0, 0, GoAwayCode.PROTOCOL_ERROR))
        self._end(SessionFailed(GoAwayCode.PROTOCOL_ERROR, f"yamux protocol error: {reason}"))

    def _end(self, failed: SessionFailed) -> None:
        self.failed = failed
        self.streams.clear()
        self._pending = 0
        self._gone_untaken.clear()
        self._buffer = bytearray()  # rebound, not cleared: a parse may hold a view of it
        self._frame = None
        self._events.append(failed)

    # Output

    def events(self) -> list[Event]:
        """What happened since the last call."""
        events, self._events = self._events, []
        return events

    @property
    def has_output(self) -> bool:
        """Whether :meth:`data_to_send` has frames."""
        return bool(self._out)

    def data_to_send(self) -> list[bytes | memoryview]:
        """The frames to write, in order (a list of buffers: write them all, in order)."""
        out, self._out = self._out, []
        return out

    # Commands

    def _check_open(self) -> None:
        if self.failed is not None:
            raise MuxError(f"the session is over: {self.failed.reason}")

    def check_incoming(self) -> None:
        """For ``accept()`` with nothing queued: may the peer still open streams?

        Raises:
            MuxError: no more will come (the session is over, or the peer went away).
        """
        if self.failed is not None:
            raise MuxError(f"no more streams: {self.failed.reason}")
        if self.remote_go_away:
            raise MuxError("no more streams: the peer went away")

    def open_stream(self) -> int:
        """Open a stream (SYN); returns its id. Data may be sent at once (before the ACK).

        Raises:
            MuxError: the session failed, either side went away, the ids are
                used up, or ``max_streams`` streams are open (close some, or
                raise the limit).
        """
        self._check_open()
        if self.remote_go_away or self.local_go_away:
            raise MuxError("the session is going away: no new streams (open a new session)")
        if len(self.streams) >= self.max_streams:
            raise MuxError(
                f"{len(self.streams)} streams are open, the limit (max_streams): close some first"
            )
        stream = self._next_id
        if stream > _MAX_U32:
            raise MuxError("the session has used every stream id: open a new session")
        self._next_id += 2
        self.streams[stream] = _Stream(DEFAULT_WINDOW, self.window, acked=False, taken=True)
        self._out.append(header(_WINDOW_UPDATE, _SYN, stream, self.window - DEFAULT_WINDOW))
        return stream

    def take(self, stream: int) -> None:
        """The application took ``stream`` (the peer opened it): out of the backlog.

        A stream that ended before it was taken stays in the backlog until this
        call: the shell still hands it out (reset, or ended), and the peer cannot
        queue more than ``backlog`` of them by opening and resetting streams.
        """
        state = self.streams.get(stream)
        if state is not None and not state.taken:
            state.taken = True
            self._pending -= 1
        elif stream in self._gone_untaken:
            self._gone_untaken.discard(stream)
            self._pending -= 1

    def send_window(self, stream: int) -> int:
        """How many bytes :meth:`send` takes on ``stream`` now (0: wait for :class:`Writable`)."""
        state = self.streams.get(stream)
        if state is None or state.local_fin or self.failed is not None:
            return 0
        return state.send_window

    def send(self, stream: int, data: bytes | bytearray | memoryview) -> int:
        """Send as much of ``data`` as the window allows; returns how much (0: wait).

        Raises:
            MuxError: the stream is closed for writing (FIN sent), reset, or
                the session is over.
        """
        if self.failed is not None:
            self._check_open()
        state = self.streams.get(stream)
        if state is None:
            raise MuxError(f"stream {stream} is reset or closed")
        if state.local_fin:
            raise MuxError(f"stream {stream} is closed for writing (write_eof or close was called)")
        window = state.send_window
        n = len(data)
        if type(data) is bytes and 0 < n <= window and n <= MAX_FRAME:
            # The usual case: one frame, the bytes as given (no view, no slice).
            self._out += (HEADER.pack(_VERSION, _DATA, 0, stream, n), data)
            state.send_window = window - n
            return n
        view = memoryview(data).cast("B")
        count = len(view) if len(view) < window else window
        sent = 0
        out = self._out
        while sent < count:
            size = min(MAX_FRAME, count - sent)
            out.append(header(_DATA, 0, stream, size))
            out.append(view[sent : sent + size])
            sent += size
        state.send_window -= count
        return count

    def consumed(self, stream: int, count: int) -> None:
        """The application read ``count`` bytes of ``stream``: granted back by half windows."""
        state = self.streams.get(stream)
        if state is None or state.remote_fin or self.failed is not None:
            return
        state.grant += count
        if state.grant >= self.window // 2:
            self._out.append(header(_WINDOW_UPDATE, 0, stream, state.grant))
            state.recv_window += state.grant
            state.grant = 0

    def stop_reading(self, stream: int) -> None:
        """The application will read ``stream`` no more (it closed it).

        Data that arrives from now on resets the stream (RST, and a
        :class:`Reset` with ``by_peer`` False), as TCP does after ``close()``.
        """
        state = self.streams.get(stream)
        if state is not None:
            state.discard = True

    def close_stream(self, stream: int) -> None:
        """Half-close ``stream`` (FIN): nothing more is sent; reading goes on to the peer's FIN.

        Closing twice, or a stream already gone, does nothing.
        """
        state = self.streams.get(stream)
        if state is None or state.local_fin or self.failed is not None:
            return
        state.local_fin = True
        self._out.append(header(_WINDOW_UPDATE, _FIN, stream, 0))
        if state.remote_fin:
            self._forget(stream, state)

    def reset_stream(self, stream: int) -> None:
        """Reset ``stream`` (RST) both ways: data in flight is dropped. Nothing if it is gone."""
        state = self.streams.get(stream)
        if state is None or self.failed is not None:
            return
        self._out.append(header(_WINDOW_UPDATE, _RST, stream, 0))
        self._forget(stream, state)
        self._events.append(Reset(stream, by_peer=False))

    def ping(self) -> int:
        """Send a ping; returns its opaque value (the :class:`Pong` carries it back).

        Raises:
            MuxError: the session is over.
        """
        self._check_open()
        self._ping_id = (self._ping_id + 1) & _MAX_U32
        self._out.append(header(_PING, _SYN, 0, self._ping_id))
        return self._ping_id

    def go_away(self, code: int = GoAwayCode.NORMAL) -> None:
        """Accept no new streams (``code`` 0), or end the session with an error ``code``."""
        if self.failed is not None or (self.local_go_away and code == GoAwayCode.NORMAL):
            return
        self.local_go_away = True
        self._out.append(header(_GO_AWAY, 0, 0, code))
        if code != GoAwayCode.NORMAL:
            self._end(SessionFailed(code, f"this side went away with code {code}"))

    def lost(self, reason: str) -> None:
        """The byte stream under the session ended or failed: every stream is reset."""
        if self.failed is None:
            self._end(SessionFailed(GoAwayCode.INTERNAL_ERROR, reason))
