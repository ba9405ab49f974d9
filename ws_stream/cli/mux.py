"""Many tunnels over one WebSocket (yamux): ``serve --mux``, ``forward --mux`` and ``--reverse``.

A WebSocket offering the subprotocol ``yamux`` carries a
:mod:`ws_stream.mux` session; each stream is one tunnel, joined to a TCP (or
Unix) connection by :func:`~.splice.splice` (TCP's rules: half-closes cross,
a reset resets).

* ``serve --mux`` (:func:`serve_session`): each stream the client opens gets
  a new connection to the WebSocket's target (``--to``, or its ``--targets``
  name; the echo without either), under the same access rules as a plain
  WebSocket: they were checked at the handshake. With a reverse tunnel
  (``--allow-reverse``; the address was checked at the handshake) the server
  also listens there while the session lives, and each connection becomes a
  stream the server opens to the client.
* ``forward --mux`` (:class:`MuxLink`): every local client is a stream of one
  session; a session that drops is opened again when the next client comes
  (with ``--reconnect``'s backoff); streams that were open are reset, never
  moved to the new session.
* ``forward --reverse`` (:func:`reverse_tunnel`): one session per tunnel,
  asking the server to listen; each stream the server opens is joined to a
  new connection to the local target. The session is opened again while
  ``--reconnect`` allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from ..asyncio import WsStream
from ..exceptions import HandshakeError
from ..mux import MuxError, Session, open_session
from .args import HostPort, ReverseTunnel, TargetTls, UnixAddress
from .endpoints import TcpEndpoint, open_tcp, open_unix, start_tcp_server
from .gateway.reverse import MUX_SUBPROTOCOL
from .lifecycle import Sessions, Stopped, unless_stopped
from .report import addr, describe, fields
from .splice import splice

__all__ = ["MUX_SUBPROTOCOL", "MuxLink", "reverse_tunnel", "serve_session"]

logger = logging.getLogger(__name__)

#: Longest wait for a stream's TCP connection to its target.
_CONNECT_TIMEOUT: Final = 10.0

Target = HostPort | UnixAddress


async def _dial(target: Target, tls: TargetTls | None = None) -> TcpEndpoint:
    context, name = (None, None) if tls is None else (tls.context, tls.server_name)
    connect = (
        open_unix(target.path, ssl=context, server_hostname=name)
        if isinstance(target, UnixAddress)
        else open_tcp(*target, ssl=context, server_hostname=name)
    )
    reader, writer = await asyncio.wait_for(connect, _CONNECT_TIMEOUT)
    return TcpEndpoint(reader, writer, "target")


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except ConnectionError:
        writer.transport.abort()
    finally:
        writer.close()


async def _bridge_stream(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    target: Target,
    tls: TargetTls | None,
    peer: str,
) -> None:
    """One stream of a session to a new connection to ``target``; an unreachable one resets it."""
    stream = writer.get_extra_info("mux_stream")
    try:
        local = await _dial(target, tls)
    except (OSError, TimeoutError) as exc:
        logger.warning(
            "%s",
            fields(
                peer=peer, stream=stream, error=f"cannot connect to {addr(target)}: {describe(exc)}"
            ),
        )
        writer.transport.abort()
        return
    down, up, error = await splice((reader, writer), local)
    level = logging.DEBUG if error is None else logging.INFO
    logger.log(
        level,
        "stream closed: %s",
        fields(peer=peer, stream=stream, sent=down, received=up, error=error),
    )


async def serve_session(
    stream: WsStream,
    stop: asyncio.Future[None],
    target: Target | None,
    tls: TargetTls | None,
    reverse: HostPort | None,
    peer: str,
) -> str | None:
    """``serve --mux``: run one session until it ends or ``stop``; an error description or None."""

    def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Awaitable[None]:
        if target is None:
            return _echo(reader, writer)
        return _bridge_stream(reader, writer, target, tls, peer)

    session = await open_session(stream.reader, stream.writer, client=False, on_stream=on_stream)
    listener: asyncio.Server | None = None
    if reverse is not None:

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            local = TcpEndpoint(reader, writer, "reverse client")
            try:
                pair = await session.open_stream()
            except MuxError as exc:
                logger.info("%s: reverse connection refused: %s", addr(reverse), exc)
                local.abort()
                return
            await splice(pair, local)

        try:
            listener = await start_tcp_server(on_client, reverse.host, reverse.port)
        except OSError as exc:
            error = f"cannot listen on {addr(reverse)} for the reverse tunnel: {describe(exc)}"
            # The close with the reason first: the session's own close would end
            # the WebSocket with 1000, and the forwarder would not learn why.
            await stream.close(1011, error[:120])
            await session.close()
            return error
        logger.info("%s", fields(peer=peer, reverse=addr(reverse), listening=True))
    try:
        ended = asyncio.ensure_future(session.wait_closed())
        await asyncio.wait((ended, stop), return_when=asyncio.FIRST_COMPLETED)
        ended.cancel()
        if stop.done():
            # The WebSocket's close ends the session (its streams are reset).
            await stream.close(1001, "server shutting down")
            return None
    finally:
        if listener is not None:
            listener.close()
        await session.close()
    failed = session.error
    await stream.close()
    if failed is not None and failed.code != 2:
        return failed.reason
    return None


Dial = Callable[[], Awaitable[WsStream]]


async def _dial_mux(dial: Dial) -> WsStream:
    """Open a WebSocket offering yamux; a refusal of it says what the server must run.

    Raises:
        ConnectionError: it cannot be opened, or the server did not select yamux.
    """
    try:
        stream = await dial()
    except ConnectionError as exc:
        cause = exc.__cause__
        if isinstance(cause, HandshakeError) and cause.status == 400:
            raise ConnectionError(f"{exc} (is the server serve --mux? yamux needs it)") from exc
        raise
    if stream.subprotocol != MUX_SUBPROTOCOL:
        await stream.close(1002, "yamux expected")
        raise ConnectionError(
            "the server did not select the yamux subprotocol: start it with serve --mux"
        )
    return stream


class MuxLink:
    """``forward --mux``: the one session every local client is a stream of.

    :meth:`session` returns the live session, or opens a new one (one dial at
    a time: clients that come meanwhile wait for it).
    """

    def __init__(self, dial: Dial, sessions: Sessions, what: str) -> None:
        self._dial = dial
        self._sessions = sessions
        self._what = what
        self._lock = asyncio.Lock()
        self._session: Session | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _alive(self) -> Session | None:
        session = self._session
        if session is None or session.machine.failed is not None or session.machine.remote_go_away:
            return None
        return session

    async def session(self) -> Session:
        """The live session (opened now if there is none).

        Raises:
            ConnectionError: the WebSocket cannot be opened (after
                ``--reconnect``'s retries), or the server does not speak yamux.
        """
        async with self._lock:
            session = self._alive()
            if session is not None:
                return session
            stream = await _dial_mux(self._dial)
            session = await open_session(stream.reader, stream.writer, client=True)
            self._session = session
            task = asyncio.ensure_future(self._run(stream, session))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return session

    async def _run(self, stream: WsStream, session: Session) -> None:
        with self._sessions.session() as slot:
            self._sessions.attach(slot, stream)
            logger.info("mux session open to %s", self._what)
            ended = asyncio.ensure_future(session.wait_closed())
            await asyncio.wait((ended, slot.stop), return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
            if slot.stop.done():
                await stream.close(1001, "client shutting down")
                await session.close()
            else:
                await session.close()
                reason = session.error.reason if session.error else "ended"
                logger.warning("mux session to %s ended: %s", self._what, reason)
                await stream.close()

    async def close(self) -> None:
        """Close the session (at shutdown)."""
        if self._session is not None:
            await self._session.close()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)


async def reverse_tunnel(
    tunnel: ReverseTunnel,
    dial: Dial,
    sessions: Sessions,
    *,
    reconnect: bool,
    what: str,
) -> str | None:
    """``forward --reverse``: keep one session asking the server to listen; an error or None.

    Each stream the server opens is joined to a new connection to
    ``tunnel.local``. Without ``reconnect`` the first end of the session ends
    the tunnel; with it, the session is opened again (the dialer backs off).
    """
    delay = 0.0
    while True:
        if delay:
            await asyncio.sleep(delay)
        with sessions.session() as slot:
            if slot.stop.done():
                return None
            try:
                stream = await unless_stopped(slot.stop, _dial_mux(dial))
            except Stopped:
                return None  # shutdown while dialing (or backing off): not a failure
            except ConnectionError as exc:
                return f"reverse tunnel {tunnel}: {exc}"
            sessions.attach(slot, stream)

            def on_stream(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter
            ) -> Awaitable[None]:
                return _bridge_stream(reader, writer, tunnel.local, None, what)

            session = await open_session(
                stream.reader, stream.writer, client=True, on_stream=on_stream
            )
            logger.info(
                "reverse tunnel open: %s listens on %s for %s",
                what,
                addr(tunnel.remote),
                addr(tunnel.local),
            )
            opened = asyncio.get_running_loop().time()
            ended = asyncio.ensure_future(session.wait_closed())
            await asyncio.wait((ended, slot.stop), return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
            if slot.stop.done():
                await stream.close(1001, "client shutting down")
                await session.close()
                return None
            await session.close()
            await stream.close()
            # A session the server ends at once (it cannot listen there) is
            # not opened again at once: 0.5 s, doubling up to 30 s.
            lived = asyncio.get_running_loop().time() - opened
            delay = 0.0 if lived > 30 else min(max(2 * delay, 0.5), 30.0)
            close = stream.close_reason or (session.error.reason if session.error else "ended")
            if not reconnect:
                return f"reverse tunnel {tunnel} ended: {close}"
            logger.warning("reverse tunnel %s ended: %s; opening it again", tunnel, close)
