"""The client sub-commands: ``forward`` and ``cat``, and the :class:`Dialer` both use.

Owns:

* :class:`Dialer`, the one place that opens a client WebSocket: the options
  of :func:`~ws_stream.asyncio.connect_stream` built from
  :class:`~.args.ClientConfig` (headers with the bearer token, TLS, close
  timeout), ``--reconnect`` retries, and error messages with the URI's
  password redacted;
* ``forward``: listen on TCP, one WebSocket and one :class:`~.tunnel.Tunnel`
  per local client; a client whose WebSocket cannot be opened is reset (it
  must not mistake that for an empty answer) and ``forward`` keeps serving;
* ``cat``: one WebSocket and stdin/stdout; its exit status says whether the
  tunnel ended cleanly.

How a tunnel ends (``--linger``, ``--idle-timeout``, ``--max-bytes``, errors)
is decided by :mod:`.rules`; the local side is :mod:`.endpoints`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from websockets.datastructures import Headers
from websockets.exceptions import WebSocketException

from .._failures import redact
from ..asyncio import WsStream, connect_stream
from ..mux import MuxError
from ..reconnect import ReconnectMachine
from .args import ClientConfig, ForwardConfig, HostPort, UnixAddress
from .endpoints import (
    Endpoint,
    Stdio,
    TcpEndpoint,
    start_tcp_server,
    start_unix_stream_server,
)
from .gateway.reverse import MUX_SUBPROTOCOL, REVERSE_HEADER
from .lifecycle import (
    EXIT_ERROR,
    EXIT_OK,
    Sessions,
    Shutdown,
    Stopped,
    unless_stopped,
    until_shutdown,
)
from .mux import MuxLink, reverse_tunnel
from .report import addr, describe, fields, log_end, stats_output
from .splice import splice
from .tuning import FRAME_SIZE
from .tunnel import Tunnel
from .unix import UnixListener, unix_peer

__all__ = ["DIAL_ERRORS", "Dialer", "cat", "forward"]

logger = logging.getLogger(__name__)

#: Errors of one attempt to open a WebSocket.
DIAL_ERRORS = (OSError, TimeoutError, WebSocketException)


class Dialer:
    """Opens the WebSocket of a client session: the one place forward and cat connect.

    One attempt per :meth:`dial`, or the retries of ``config.reconnect``.
    """

    def __init__(
        self, config: ClientConfig, *, mux: bool = False, reverse: HostPort | None = None
    ) -> None:
        """``mux``: offer the ``yamux`` subprotocol only; ``reverse``: ask the server to
        listen there (a reverse tunnel, which is a mux session)."""
        self.uri = config.uri
        #: The URI as logs show it: without its password.
        self.shown_uri = redact(config.uri)
        self.policy = config.reconnect
        options: dict[str, Any] = {
            "additional_headers": Headers(list(config.headers)),
            "close_timeout": config.close_timeout,
            "max_frame_size": FRAME_SIZE,
            "ping_interval": config.ping_interval,
            "ping_timeout": config.ping_timeout,
        }
        if config.ssl_context is not None:
            options["ssl"] = config.ssl_context
        # Always explicit: None is "direct" (--no-proxy, or none in the
        # environment); the environment was read once, by the config.
        options["proxy"] = config.proxy.url
        if config.subprotocols:
            options["subprotocols"] = list(config.subprotocols)
        if mux or reverse is not None:
            options["subprotocols"] = [MUX_SUBPROTOCOL]
        if reverse is not None:
            host = f"[{reverse.host}]" if ":" in reverse.host else reverse.host
            options["additional_headers"][REVERSE_HEADER] = f"{host}:{reverse.port}"
        self._options = options
        self.proxy = config.proxy
        self.insecure = config.insecure
        #: How logs say where connections go: the URI and the proxy, if any.
        self.route = self.shown_uri + config.proxy.describe()

    def opened(self, stream: WsStream) -> str:
        """What logs say about ``stream``, just opened: the proxy and the subprotocol."""
        subprotocol = stream.subprotocol
        if subprotocol is not None:
            selected = f"; the server selected the subprotocol {subprotocol}"
        elif "subprotocols" in self._options:
            selected = "; the server selected none of the subprotocols offered"
        else:
            selected = ""
        return self.proxy.describe() + selected

    async def dial(self) -> WsStream:
        """Open one WebSocket. Raises :class:`ConnectionError`, its message redacted.

        With a reconnect policy (``forward --reconnect``), transient failures
        are retried after the policy's backoff delays, up to its
        ``max_attempts``; fatal ones (HTTP 401/403/404, bad certificate) are
        not. A live tunnel is never moved to a new WebSocket: its bytes would
        splice two connections.
        """
        machine = ReconnectMachine(self.policy, self.shown_uri) if self.policy else None
        while True:
            try:
                stream = await connect_stream(self.uri, **self._options)
            except DIAL_ERRORS as exc:
                message = str(exc).replace(self.uri, self.shown_uri)
                if self.proxy.url is not None:  # the library hides it too; twice is safe
                    message = message.replace(self.proxy.url, redact(self.proxy.url))
                error = ConnectionError(message or type(exc).__name__)
                if machine is None:
                    raise error from exc
                try:
                    delay = machine.failed(exc)
                except BaseException:
                    raise error from exc
                await asyncio.sleep(delay)
                continue
            if self.insecure:
                logger.warning(
                    "the TLS certificate of %s was not verified (--insecure): anyone on the "
                    "path can read and change this connection",
                    self.shown_uri,
                )
            return stream


def _tunnel(
    stream: WsStream, local: Endpoint, stop: asyncio.Future[None], config: ClientConfig
) -> Tunnel:
    """The tunnel of a client session, ``--send-on-connect`` already sent."""
    if config.send_on_connect:
        stream.writer.write(config.send_on_connect)
    return Tunnel(
        stream,
        local,
        stop=stop,
        close_timeout=config.close_timeout,
        linger=config.linger,
        idle_timeout=config.idle_timeout,
        max_bytes=config.max_bytes,
    )


# forward


async def forward(config: ForwardConfig) -> int:
    """Run ``ws-stream forward`` until a signal; return the exit status.

    Exits 1 at once if ``--listen`` cannot listen, or when a ``--reverse``
    tunnel ends for good (without ``--reconnect``, or refused).
    """
    loop = asyncio.get_running_loop()
    shutdown = Shutdown()
    sessions = Sessions()
    dialer = Dialer(config)
    link: MuxLink | None = None
    if config.mux:
        link = MuxLink(Dialer(config, mux=True).dial, sessions, dialer.route)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = addr(writer.get_extra_info("peername")) or unix_peer()
        local = TcpEndpoint(reader, writer, "client")
        if link is not None:
            await _mux_client(link, local, peer, sessions, dialer.shown_uri)
            return
        started = loop.time()
        with sessions.session() as slot:
            try:
                stream = await unless_stopped(slot.stop, dialer.dial())
            except Stopped:
                local.abort()
                return
            except ConnectionError as exc:
                logger.error("%s: cannot open %s: %s", peer, dialer.shown_uri, exc)
                local.abort()  # a reset: the client must not mistake this for an empty answer
                return
            sessions.attach(slot, stream)
            logger.debug("%s: tunnel open to %s%s", peer, dialer.shown_uri, dialer.opened(stream))
            try:
                tunnel = _tunnel(stream, local, slot.stop, config)
                await tunnel.run()
                error = tunnel.error
            except Exception:
                logger.exception("%s: internal error", peer)
                local.abort()
                await stream.close(1011, "internal error")
                error = "internal error"
        log_end(peer, stream, loop.time() - started, error)

    failures: list[str] = []

    def reverse_ended(task: asyncio.Task[str | None]) -> None:
        error = None if task.cancelled() else task.result()
        if error is not None:
            logger.error("%s", error)
            failures.append(error)
            if not shutdown.requested.done():
                shutdown.requested.set_result(None)

    reverse_tasks = []
    for tunnel in config.reverse:
        task = asyncio.ensure_future(
            reverse_tunnel(
                tunnel,
                Dialer(config, reverse=tunnel.remote).dial,
                sessions,
                reconnect=config.reconnect is not None,
                what=dialer.shown_uri,
            )
        )
        task.add_done_callback(reverse_ended)
        reverse_tasks.append(task)

    listen = config.listen
    listener: UnixListener | None = None
    server: asyncio.Server | None = None
    try:
        if isinstance(listen, UnixAddress):
            listener = UnixListener.open(listen, config.mode)
            server = await start_unix_stream_server(on_client, listener.sock)
        elif listen is not None:
            server = await start_tcp_server(on_client, listen.host, listen.port)
    except OSError as exc:
        if listener is not None:
            listener.sock.close()
            listener.remove()
        for task in reverse_tasks:
            task.cancel()
        logger.error("cannot listen on %s: %s", addr(listen), describe(exc))
        return EXIT_ERROR
    if server is not None:
        if listener is not None:
            addresses = str(listener.address)
        else:
            addresses = ", ".join(addr(sock.getsockname()) for sock in server.sockets)
        how = "one mux session" if link is not None else "each connection"
        logger.info("listening on %s (%s tunnels to %s)", addresses, how, dialer.route)

    async def stop() -> None:
        if server is not None:
            server.close()
        sessions.stop_all()
        if link is not None:
            await link.close()
        await sessions.wait(config.close_timeout + 1.5)
        for task in reverse_tasks:
            task.cancel()

    try:
        status = await until_shutdown(
            shutdown, sessions, stop, prog=config.prog, stats_interval=config.stats_interval
        )
    finally:
        if listener is not None:
            listener.remove()
    return EXIT_ERROR if failures else status


async def _mux_client(
    link: MuxLink, local: TcpEndpoint, peer: str, sessions: Sessions, where: str
) -> None:
    """``forward --mux``: one local client as a stream of the link's session."""
    with sessions.session() as slot:
        try:
            session = await unless_stopped(slot.stop, link.session())
            pair = await session.open_stream()
        except Stopped:
            local.abort()
            return
        except (ConnectionError, MuxError) as exc:
            logger.error("%s: cannot open a stream to %s: %s", peer, where, exc)
            local.abort()
            return
        stream_id = pair[1].get_extra_info("mux_stream")
        sent, received, error = await splice(pair, local)
    logger.log(
        logging.INFO if error is None else logging.WARNING,
        "%s",
        fields(peer=peer, stream=stream_id, sent=sent, received=received, error=error),
    )


# cat


async def cat(config: ClientConfig) -> int:
    """Run ``ws-stream cat``: stdin -> WebSocket -> stdout; return the exit status."""
    shutdown = Shutdown()
    sessions = Sessions()
    dialer = Dialer(config)
    shutdown.requested.add_done_callback(lambda _: sessions.stop_all())
    with stats_output(sessions, config.prog, config.stats_interval), sessions.session() as slot:
        try:
            stream = await unless_stopped(slot.stop, dialer.dial())
        except Stopped:
            return EXIT_OK
        except ConnectionError as exc:
            logger.error("cannot open %s: %s", dialer.shown_uri, exc)
            return EXIT_ERROR
        sessions.attach(slot, stream)
        logger.info("connected to %s%s", dialer.shown_uri, dialer.opened(stream))
        error = await _cat_session(stream, slot.stop, config, shutdown)
        if error is not None:
            logger.error("%s", error)  # before the --stats summary, which comes last
    if error is not None:
        return EXIT_ERROR
    logger.info(
        "closed: received %d bytes, sent %d bytes; close code %s",
        stream.bytes_received,
        stream.bytes_sent,
        stream.close_code,
    )
    return EXIT_OK


async def _cat_session(
    stream: WsStream, stop: asyncio.Future[None], config: ClientConfig, shutdown: Shutdown
) -> str | None:
    stdio = await Stdio.open()
    try:
        tunnel = _tunnel(stream, stdio, stop, config)
        await tunnel.run()
        return tunnel.error
    except asyncio.CancelledError:
        if not shutdown.forced:
            raise
        stream.transport.abort()
        return "interrupted"
    finally:
        stdio.abort()  # nothing left to do after a clean finish
        stdio.restore()
