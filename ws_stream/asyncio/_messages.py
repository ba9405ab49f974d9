"""Message-based WebSockets (ASGI, aiohttp) under the same engine as every stream.

A front end such as ASGI or aiohttp hands over whole *messages*, not bytes: no
frames, no TCP. To keep every decision in the engine (text frames, close
codes, the close deadline, writes after a close, unread data...), this module
puts a :class:`MessageLink` where the TCP transport would be. Binary messages
go straight to and from the engine (``Engine.receive_message``, its
``send_message`` sink: data frames change nothing in websockets' protocol, so
they need no framing). Everything else becomes the frame a real peer would
have sent (websockets' ``Frame.serialize``): text (1003 or UTF-8 bytes, as the
engine decides), the peer's close, pings where the front end shows them; and
an in-memory WebSocket client (websockets' Sans-I/O ``ClientProtocol``, the
*mirror*) parses the control frames the engine sends (close, pong) into the
front end's calls. The stream above (``WsTransport``, ``WsStream``) is
exactly the one used over TCP.

Our close goes to the front end (``MessageSocket.close``) and the link keeps
receiving until the front end reports the peer's close: messages the peer sent
meanwhile are decided by the engine as over TCP, and the engine's
``close_timeout`` drops the link (:meth:`MessageLink.abort`) if that report never
comes. An abort before our close reached the front end cancels the send in
progress and ends the connection with 1011 (``MessageSocket.fail``).

Binary messages are sent *eagerly*: :meth:`MessageLink.send_message` runs
the front end's ``send`` coroutine at once, in the writer's call, and only
when it has to wait (the front end's own backpressure) does a task finish it
and what was queued behind it. A front end's send usually completes without
waiting (uvicorn, hypercorn and aiohttp write to their transport), so a
message costs no task switch, as in the framework's own message loop. The
send's first steps run in the writer's call and context (contextvars), as if
the writer awaited it; the rest, if it waits, runs in the link's task with a
copy of that context, taken then; closes and pongs always go through the
task. One limit: in those first steps ``asyncio.current_task()`` is the
writer's task (or None), so a front end whose send starts a timeout on the
current task would time out the writer instead; none of uvicorn's,
hypercorn's, Starlette's or aiohttp's sends does.

Messages are received by whoever needs them, one ``receive()`` in flight at
a time. While no reader waits, the link's task receives: it sees the peer's
close, pings and failures, and reads ahead up to ``limit``. A read that finds
nothing to read and no receive in flight runs the front end's ``receive()``
itself (:meth:`MessageLink.pull`): a message the front end holds already comes
back in the read's own call, and one it has to wait for is awaited in the
reader's task (:class:`_Pull`), so the message reaches it with no hop through
another task, as in the framework's own message loop. That is the
case of a reader that reads again as soon as it has handled what it read (an
echo, a codec's loop); a reader that awaits something else in between (the
link's task took over) waits for the message the task receives, and fetches
the one after itself. A read cancelled by a timeout cancels the receive it
was running, as ``asyncio.wait_for(websocket.receive(), t)`` would: the
front ends' receives are cancel-safe (uvicorn's, hypercorn's and aiohttp's
wait on a queue, and the message stays queued for the next one), with one
exception: a timeout that lands while aiohttp's receive is answering the
peer's close loses that close's reason (the code is kept).

What a front end cannot do, it says: a :class:`WsStream` over a message
socket has no keepalive of its own (the server's applies) and its ``ping()``
raises :exc:`NotImplementedError` naming the front end, instead of doing
nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import struct
from collections import deque
from collections.abc import Coroutine, Generator
from typing import Any, Protocol

from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

__all__ = [
    "BYTES",
    "CLOSE",
    "PING",
    "PONG",
    "TEXT",
    "VIOLATION",
    "MessageLink",
    "MessageSocket",
    "open_pair",
]

logger = logging.getLogger("ws_stream.asyncio")

BYTES, TEXT, CLOSE, PING, PONG = "bytes", "text", "close", "ping", "pong"
VIOLATION = "violation"
#: Close codes with which a front end ends a connection itself for a message it
#: refused (invalid, too big): a violation, as if websockets had detected it.
_VIOLATIONS = frozenset({1002, 1007, 1009})
#: What :meth:`MessageSocket.receive` returns: (BYTES, data), (TEXT, str),
#: (CLOSE, (code, reason)) - the peer's close, 1006 when the connection was
#: lost without one; (VIOLATION, (code, reason, why)) - the front end refused
#: the peer's message itself (too big, invalid) and failed the connection with
#: ``code`` and ``reason``, ``why`` saying what was wrong (aiohttp).
Message = tuple[str, Any]

_HIGH_WATER = 2**16  # bytes queued for the front end before pause_writing()


class MessageSocket(Protocol):
    """What a front end offers: whole messages in and out."""

    name: str  # for messages: "ASGI", "aiohttp"
    client: bool  # the client side of the WebSocket (the side of TLS inside it)

    async def receive(self) -> Message:
        """The next message from the peer (see :data:`Message`)."""

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary message."""

    #: Whether a CLOSE from :meth:`receive` can be the front end's own verdict (it
    #: refused the peer's message with 1002, 1007 or 1009): True for ASGI, whose
    #: ``websocket.disconnect`` cannot tell that from the peer's close.
    own_verdicts: bool
    #: The code the front end itself answered the peer's close with (aiohttp:
    #: 1000), set by :meth:`receive` with that CLOSE; None: it sends no answer of
    #: its own (the peer's close is echoed, as websockets does).
    answered: int | None
    #: Set by :meth:`receive` with the peer's CLOSE when the front end left the
    #: answer to the application (aiohttp with ``autoclose=False``): the engine's
    #: answer goes to :meth:`close`, and the link ends once it is sent.
    unanswered: bool

    async def close(self, code: int, reason: str) -> None:
        """Send our close frame; :meth:`receive` goes on until the peer's close (or
        the end of the connection), which it reports as CLOSE."""

    async def fail(self, code: int, reason: str) -> None:
        """End the connection now with ``code`` (a close frame if none went out yet);
        what the peer sends from then on is discarded."""

    async def drop(self) -> None:
        """Our close went out and the peer's answer did not come in time (or the
        front end failed meanwhile): end the connection, if the front end would
        not do it on its own."""

    def extra(self) -> dict[str, Any]:
        """``get_extra_info()`` names this front end answers (peername, ...)."""

    # Front ends that show the peer's pings (aiohttp with autoping=False) also
    # receive (PING, data) / (PONG, data) and have ``async def pong(data)``.


def open_pair() -> tuple[ServerProtocol, ClientProtocol]:
    """An OPEN pair of Sans-I/O protocols, connected in memory (no size limits:
    the front end enforces its own)."""
    client = ClientProtocol(parse_uri("ws://front-end/"), max_size=None)
    server = ServerProtocol(max_size=None)
    client.send_request(client.connect())
    for data in client.data_to_send():
        server.receive_data(data)
    (request,) = server.events_received()
    server.send_response(server.accept(request))  # type: ignore[arg-type]
    for data in server.data_to_send():
        client.receive_data(data)
    client.events_received()
    assert client.state is OPEN and server.state is OPEN
    return server, client


class _Rest:
    """Awaiting it finishes a coroutine that was started by hand and is waiting.

    ``coro.send(None)`` ran the coroutine up to its first real wait and
    returned what it yielded (the future it waits on). Awaited in a task,
    this hands that very future to the task, then passes every result or
    exception (a cancellation) on to the coroutine until it returns, as
    ``yield from`` would.
    """

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def close(self) -> None:
        """End the coroutine where it waits (GeneratorExit: its cleanup runs), when
        no task will ever await this (it was cancelled before its first step)."""
        self._coro.close()

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._yielded
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


class _Pull:
    """The rest of a ``receive()`` the reader's task started and has to wait for.

    :meth:`MessageLink.pull` runs the front end's ``receive()`` up to its
    first wait in the reader's call (a message already queued by the front
    end comes back at once, with no await at all); awaiting this finishes
    it, handing every future it waits on to the reader's task (one hop, as
    when a framework's own loop awaits it). When the link is lost meanwhile
    (a send failed, an abort, the close deadline), :meth:`interrupt` cancels
    the future the receive waits on, as a task's cancellation would; the
    receive ends and the reader finds the stream's end. The reader's own
    cancellation (a timeout around ``read()``) goes into the receive too
    (see the module on cancel-safety). A message it returns is handled as
    the link's task would (a failure ends the connection).
    """

    __slots__ = ("_coro", "_interrupted", "_link", "_waiting_on")

    def __init__(self, link: MessageLink, coro: Coroutine[Any, Any, Message], first: Any) -> None:
        self._link = link
        self._coro = coro
        self._waiting_on: Any = first
        self._interrupted = False

    def interrupt(self) -> None:
        self._interrupted = True
        future = self._waiting_on
        if future is not None and hasattr(future, "cancel"):
            future.cancel()

    def __await__(self) -> Generator[Any, Any, None]:
        link, coro = self._link, self._coro
        yielded = self._waiting_on
        # A cancellation is the reader's own only if it was asked for during this
        # receive (a count left over from an earlier, caught one does not count).
        task = asyncio.current_task(link._loop)
        cancels = task.cancelling() if task is not None else 0
        try:
            while True:
                thrown: BaseException | None = None
                self._waiting_on = yielded
                try:
                    yield yielded
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:  # a cancellation: into the receive
                    thrown = exc
                finally:
                    self._waiting_on = None
                if self._interrupted and thrown is None:
                    thrown = asyncio.CancelledError()
                try:
                    yielded = coro.send(None) if thrown is None else coro.throw(thrown)
                except StopIteration as stop:
                    message = stop.value
                    break
        except asyncio.CancelledError:
            if self._interrupted and (task is None or task.cancelling() <= cancels):
                return  # the link was lost: the reader finds out why
            raise
        except Exception as exc:
            link._receive_failed(exc)
            return
        finally:
            link._receiving = False
            link._pulling = None
        if not self._interrupted:
            link._pulled(message)


class MessageLink(asyncio.Transport):
    """Stands where the TCP transport would: bytes of frames in and out, messages below.

    Reading pauses by not calling the front end's ``receive()``: past the
    reader's ``limit``, the front end's own buffers hold what the peer sends
    (and its flow control slows the peer). A waiting reader receives the next
    message itself (:meth:`pull`; see the module). Binary messages are sent eagerly
    (see the module); what has to wait is queued, in order, for a sender
    task; past 64 KiB queued, the stream's protocol is paused.
    """

    def __init__(self, socket: MessageSocket, mirror: ClientProtocol) -> None:
        super().__init__()
        self._socket = socket
        self._mirror = mirror
        self._loop = asyncio.get_running_loop()
        self._protocol: asyncio.Protocol | None = None
        self._outbox: deque[tuple[str, Any]] = deque()
        self._queued = 0
        self._sender: asyncio.Task[None] | None = None  # sends what had to wait
        self._unstarted: _Rest | None = None  # the send _sender has yet to take over
        self._pumping = False
        self._send_failed = False  # a send failed: the link ends (from the loop)
        self._reading = asyncio.Event()
        self._reading.set()
        self._writing_paused = False
        self._peer_closed = False  # the front end reported the peer's close
        self._close_sent = False  # our close went (or goes) to the front end
        self._close_started = False  # the front end's close was called (it went out)
        self._answering = False  # the engine's answer to the peer's close is queued
        self._failing: asyncio.Task[None] | None = None  # abort()'s close with 1011
        self._closing = False
        self._lost = False
        self._receiver_task: asyncio.Task[None] | None = None
        self._receiving = False  # a receive() is in flight (the task's or a reader's)
        self._pulling: _Pull | None = None  # the reader's receive in flight
        self._watching = asyncio.Event()  # set: the receiver task may receive again
        self._reader_waits = False  # a reader waits while the task receives
        self._idle_check = False
        self._stream: Any = None  # the WsTransport, once it is our protocol

    def start(self) -> None:
        """Start moving messages (once the stream is the protocol)."""
        self._receiver_task = self._loop.create_task(self._receiver())

    # Incoming: messages -> the frames a peer would have sent
    #
    # One receive() is in flight at a time, awaited by whoever needs it: the
    # stream's reader when it has nothing to read (pull(): the message reaches
    # it with no hop through another task, as in the framework's own message
    # loop), otherwise the receiver task, which keeps watching the connection
    # (the peer's close, pings, a failure) and reads ahead up to ``limit``.
    # The task steps aside while a reader waits, and takes over again from the
    # loop (idle()) once no reader is fetching.

    async def _receiver(self) -> None:
        try:
            while not (self._lost or self._peer_closed):  # then nothing more comes
                await self._reading.wait()
                if self._receiving:  # the reader fetches: wait until it stops
                    self._watching.clear()
                    await self._watching.wait()
                    continue
                self._receiving = True
                try:
                    kind, value = await self._socket.receive()
                finally:
                    self._receiving = False
                if self._received(kind, value):
                    return
                if self._reader_waits:
                    # A reader waited for this message: let it run first, so
                    # that it fetches the next one itself if it wants more.
                    self._reader_waits = False
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._receive_failed(exc)

    def pull(self) -> _Pull | bool:
        """For the reader, which has nothing to read: the front end's ``receive()`` run
        in its own call. True: it ended at once (its message was handled, or its
        failure ended the connection; the reader looks again); a :class:`_Pull` to
        await when it has to wait; False when no receive may start now (one is in
        flight, reading is paused, or no more will be made). A cancellation raised
        at once reaches the reader, as if it had awaited the receive itself."""
        if self._receiving or self._lost or self._peer_closed or not self._reading.is_set():
            self._reader_waits = True
            return False
        self._receiving = True
        coro = self._socket.receive()
        try:
            waiting_on = coro.send(None)
        except StopIteration as stop:
            self._receiving = False
            self._pulled(stop.value)
            return True
        except Exception as exc:
            self._receiving = False
            self._receive_failed(exc)
            return True
        except BaseException:
            self._receiving = False
            raise
        pull = self._pulling = _Pull(self, coro, waiting_on)
        return pull

    def _pulled(self, message: Message) -> None:
        """What the reader's receive returned: handled as the link's task would (a
        failure, or something that is no message, ends the connection)."""
        try:
            kind, value = message
            self._received(kind, value)
        except Exception as exc:
            self._receive_failed(exc)

    def idle(self) -> None:
        """The reader stopped waiting: unless it fetches again in this loop
        iteration, the receiver task watches the connection again."""
        if not self._idle_check:
            self._idle_check = True
            stream = self._stream
            if stream is not None:
                stream.at_iteration_end(self._check_idle)  # with the writes' flush
            else:
                self._loop.call_soon(self._check_idle)

    def _check_idle(self) -> None:
        self._idle_check = False
        if not self._receiving and not self._lost:
            self._watching.set()

    def _received(self, kind: str, value: Any) -> bool:
        """Hand a message to the stream; True when it ended the connection (or the
        connection was already lost: then it is discarded). After our close the
        peer's messages still go to the engine, which decides what reaches the reader
        (as over TCP): the link ends with the front end's CLOSE, or when the engine
        drops it (close_timeout)."""
        if self._lost:
            return True
        if kind == BYTES:
            # Data needs no framing: the engine decides it as a binary frame.
            ws = self._stream
            if ws is not None:
                ws._message_received(bytes(value))
        elif kind == TEXT:
            self._feed(Opcode.TEXT, value.encode())
        elif kind == PING:
            self._feed(Opcode.PING, value)  # the engine answers (write())
        elif kind == PONG:
            self._feed(Opcode.PONG, value)
        elif kind == VIOLATION:
            self._peer_closed = True  # nothing more comes
            self._violation(*value)
            return True
        else:
            code, reason = value
            self._peer_closed = True
            if code == 1006:
                self._connection_lost(_lost())
            elif code in _VIOLATIONS and self._socket.own_verdicts:
                self._violation(code, reason, reason)
            else:
                ours_first = self._close_sent  # our close went out before the peer's came
                self._feed_close(code, reason)
                # A front end that answers the peer's close itself (aiohttp:
                # 1000, whatever the peer's code) sent that instead of the
                # engine's echo (or of its 1002 for a code no peer may send).
                answer = self._socket.answered
                ws = self._stream
                if answer is not None and ws is not None:
                    ws.engine.front_end_answered(Close(answer, ""), ours_first=ours_first)
                if self._socket.unanswered and self._close_sent and not self._close_started:
                    self._answering = True  # our close, still queued, is the answer
                if not self._answering:  # else the sender ends the link, once it answered
                    self._connection_lost(None)
            return True
        return False

    def _violation(self, code: int, reason: str, why: str) -> None:
        """The front end failed the connection itself with ``code`` and ``reason`` for a
        message of the peer it refused (``why``): the reader ends with the
        ProtocolError of that code, as when websockets refuses it over TCP."""
        ws = getattr(self._protocol, "ws", None)
        if ws is not None:
            ws._front_end_violation(code, reason, why)
        self._connection_lost(None)

    def _receive_failed(self, exc: Exception) -> None:
        """The front end's ``receive()`` raised (aiohttp's ``receive_timeout``, a
        broken connection): the stream ends with ``exc``, and the front end's
        connection with 1011 unless it is over, never left open with the peer
        waiting."""
        logger.info("the %s WebSocket failed: %r", self._socket.name, exc)
        self._fail_front_end()
        self._connection_lost(exc)

    def _feed(self, opcode: Opcode, data: bytes) -> None:
        """Hand the stream the frame a peer would have sent (masked: a client's)."""
        if self._protocol is not None and not self._lost:
            frame = Frame(opcode, data).serialize(mask=True, extensions=[])
            self._protocol.data_received(frame)

    def _feed_close(self, code: int, reason: str) -> None:
        if code == 1005:
            payload = b""
        elif self._socket.own_verdicts:
            # A server's report (ASGI), not always a frame: a code no peer may
            # send fails the link (serialize() raises), a lost connection.
            payload = Close(code, reason).serialize()
        else:
            # The peer's own close frame (aiohttp), unchecked: websockets, in
            # the engine, decides an invalid code as over TCP (1002).
            payload = struct.pack("!H", code) + reason.encode()
        self._feed(Opcode.CLOSE, payload)

    # Outgoing: frames from the engine -> messages

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._lost:
            return
        mirror = self._mirror
        mirror.receive_data(bytes(data))
        for event in mirror.events_received():
            assert isinstance(event, Frame)
            if event.opcode is Opcode.BINARY or event.opcode is Opcode.CONT:
                self._outbox.append((BYTES, event.data))
                self._queued += len(event.data)
            elif event.opcode is Opcode.CLOSE:
                close = Close.parse(event.data)
                if self._close_sent:
                    pass
                elif not self._peer_closed:
                    self._close_sent = True
                    self._outbox.append((CLOSE, (close.code, close.reason)))
                elif self._socket.unanswered:  # the answer is ours to send
                    self._close_sent = self._answering = True
                    self._outbox.append((CLOSE, (close.code, close.reason)))
            elif event.opcode is Opcode.PONG and hasattr(self._socket, "pong"):
                self._outbox.append((PONG, event.data))
            # Pings cannot come: a stream over a front end without pings
            # refuses ping() and has no keepalive.
        # The mirror answers pings and closes on its own: ignored, the front
        # end's peer answers (see _sender for the close).
        mirror.data_to_send()
        self._pump()

    def _pump(self) -> None:
        """Send the queued binary messages now, for as long as the front end takes
        them without waiting; the first one that waits, and everything behind it
        (closes, pongs), goes to the sender task, in order. Not re-entrant (a
        message queued from inside a send is taken by the running loop), and a
        failure is reported from the event loop, not inside the writer's call."""
        if not self._pumping:
            self._pumping = True
            try:
                self._send_eagerly()
            finally:
                self._pumping = False
        if self._queued > _HIGH_WATER and not self._writing_paused and self._protocol:
            self._writing_paused = True
            self._protocol.pause_writing()

    def _send_eagerly(self) -> None:
        outbox = self._outbox
        while outbox and self._sender is None and not (self._lost or self._send_failed):
            if outbox[0][0] != BYTES:
                self._sender = self._loop.create_task(self._send_queued(None, b""))
                return
            data = bytes(outbox.popleft()[1])
            if not self._start(data):
                return
            self._sent(len(data))

    def _start(self, data: bytes) -> bool:
        """Run the front end's send of ``data`` up to its first wait; True when it
        completed. If it has to wait, the sender task finishes it and sends what is
        queued behind it; if it fails, the link ends (see :meth:`_failed`)."""
        coro = self._socket.send_bytes(data)
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return True
        except Exception as exc:
            self._failed(exc)
            return False
        rest = self._unstarted = _Rest(coro, waiting_on)
        self._sender = self._loop.create_task(
            self._send_queued(rest, data), context=contextvars.copy_context()
        )
        return False

    def _sent(self, size: int) -> None:
        self._queued -= size
        if self._writing_paused and self._queued <= _HIGH_WATER // 4:
            self._writing_paused = False
            if self._protocol is not None and not self._lost:
                self._protocol.resume_writing()

    def _failed(self, exc: Exception) -> None:
        """A send failed: nothing more is sent, and the link ends (from the loop, never
        inside the writer's call)."""
        logger.info("sending on the %s WebSocket failed: %r", self._socket.name, exc)
        self._send_failed = True
        self._outbox.clear()
        self._loop.call_soon(self._connection_lost, exc)

    async def _send_queued(self, pending: _Rest | None, data: bytes) -> None:
        """Finish the send that had to wait, then send the outbox in order until it
        is empty (then the next message is sent eagerly again)."""
        socket = self._socket
        outbox = self._outbox
        try:
            if pending is not None:
                self._unstarted = None
                await pending
                self._sent(len(data))
            while outbox:
                kind, value = outbox.popleft()
                if kind == PONG:
                    await socket.pong(bytes(value))  # type: ignore[attr-defined]
                elif kind == BYTES:
                    await socket.send_bytes(bytes(value))
                    self._sent(len(value))
                else:
                    code, reason = value
                    self._close_started = True
                    # The receiver goes on until the front end reports the
                    # peer's close: what the peer sent before it still counts.
                    await socket.close(code, reason)
                    if self._answering:  # that was the answer to the peer's close
                        self._sender = None
                        self._connection_lost(None)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)
        finally:
            self._sender = None

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._reading.set()
        self._watching.set()
        pulling = self._pulling
        if pulling is not None:
            pulling.interrupt()
        current = asyncio.current_task()
        for task in (self._receiver_task, self._sender):
            if task is not None and task is not current:
                task.cancel()
        self._sender = None
        rest, self._unstarted = self._unstarted, None
        if rest is not None:
            rest.close()  # its task was cancelled before taking it over
        if self._protocol is not None:
            self._protocol.connection_lost(exc)

    # asyncio.Transport, as the stream uses it

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol
        self._stream = getattr(protocol, "ws", None)  # the WsTransport above

    def send_message(self, data: bytes) -> None:
        """A binary message from the engine (data is never framed here): queued for the
        front end, in order with what :meth:`write` queues (control frames). Dropped
        once the connection is lost or our close is on its way (after ``abort()``)."""
        if self._lost or self._close_sent:
            return
        self._queued += len(data)
        if self._outbox or self._pumping or self._sender is not None or self._send_failed:
            self._outbox.append((BYTES, data))
            self._pump()
            return
        # Nothing queued before it: sent at once, without the queue.
        self._pumping = True
        try:
            done = self._start(data)
        finally:
            self._pumping = False
        if done:
            self._sent(len(data))
        if self._outbox or self._queued > _HIGH_WATER:
            self._pump()  # what a send queued meanwhile; the high-water mark

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._socket.extra().get(name, default)

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """The stream is done with the connection (its closing handshake is over)."""
        self._closing = True
        if not self._close_sent and not self._peer_closed and not self._lost:
            self._close_sent = True
            self._outbox.append((CLOSE, (1000, "")))
            self._pump()
        elif self._answering and not self._lost:
            pass  # the sender ends the link once the answer to the peer's close is sent
        elif self._peer_closed or not self._outbox:
            self._loop.call_soon(self._connection_lost, None)

    def abort(self) -> None:
        """Drop the connection. Unless our close already went out (or the peer's
        came), what waits to be sent is dropped, the send in progress cancelled, and
        the front end ends the connection with 1011: a stream cut short never ends
        with a clean close. The link ends at once (the front end's close goes on in
        its own task)."""
        self._closing = True
        self._outbox.clear()
        self._fail_front_end()
        self._loop.call_soon(self._connection_lost, None)

    def _fail_front_end(self) -> None:
        """Unless the peer's close came and was answered: cancel the send in progress
        and end the front end's connection with 1011 (the answer, if the front end
        left it to us), or, once our close went out, drop it (in a task)."""
        if self._lost or self._failing is not None:
            return
        if self._peer_closed and not (self._answering and not self._close_started):
            return
        drop = self._close_started
        self._close_started = self._close_sent = True
        sender = self._sender
        if sender is not None:
            sender.cancel()  # before the close: its cancellation runs first
        self._failing = self._loop.create_task(self._fail(drop))

    async def _fail(self, drop: bool) -> None:
        try:
            if drop:
                await self._socket.drop()
            else:
                await self._socket.fail(1011, "connection dropped")
        except Exception as exc:
            logger.info("closing the %s WebSocket failed: %r", self._socket.name, exc)
        finally:
            self._failing = None

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def is_reading(self) -> bool:
        return self._reading.is_set()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass  # the end of the connection is the front end's close

    def get_write_buffer_size(self) -> int:
        return self._queued

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return _HIGH_WATER // 4, _HIGH_WATER

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # fixed: the front end has its own


def _lost() -> ConnectionResetError:
    return ConnectionResetError(
        "the front end reported the end of the connection without a close frame"
    )
