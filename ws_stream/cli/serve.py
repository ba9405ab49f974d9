"""``ws-stream serve``: accept WebSockets; echo each one, or bridge it to the ``--to`` target.

Owns what the server decides before and around a session: TLS (``--cert``,
``--key``), which requests are accepted (``--path``: 404; ``--origin``: 403;
``--max-connections``: 503; ``--subprotocol``, with ``binary`` always
accepted: 400 for a client that offers only others), the listening line, the
echo, the bridge (a new TCP connection to the target per WebSocket; 1014 when
it cannot be reached) and the graceful stop.

The target comes from :class:`~.args.ServeConfig` only: nothing in a request
(path, query, headers) can choose where bytes go, so the server is never an
open proxy. The bridge's tunnel is :class:`~.tunnel.Tunnel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ..asyncio import WsStream, start_server
from .args import HostPort, ServeConfig
from .endpoints import TcpEndpoint, open_tcp
from .lifecycle import EXIT_ERROR, Sessions, Shutdown, Stopped, unless_stopped, until_shutdown
from .report import addr, describe, log_end
from .rules import CLEAN_CODES, SHUTDOWN
from .tunnel import WS_READ, Tunnel

__all__ = ["serve"]

logger = logging.getLogger(__name__)

#: What the client offers as the subprotocol of a byte stream (noVNC, websockify).
_BINARY = "binary"
#: Longest wait for the TCP connection to the target of ``serve --to``.
_TARGET_CONNECT_TIMEOUT = 10.0


async def serve(config: ServeConfig) -> int:
    """Run ``ws-stream serve`` until a signal; return the exit status."""
    loop = asyncio.get_running_loop()
    shutdown = Shutdown()
    sessions = Sessions()
    try:
        context = _server_ssl(config)
    except (OSError, ssl.SSLError) as exc:
        logger.error(
            "cannot load the TLS certificate --cert %s with its key --key %s: %s "
            "(both must be PEM files, the key matching the certificate)",
            config.cert,
            config.key,
            describe(exc),
        )
        return EXIT_ERROR
    target = config.target
    close_timeout = config.close_timeout
    accepted = list(dict.fromkeys([_BINARY, *config.subprotocols]))
    reserved = 0
    # One task per reserved connection, waiting for its end (websockets'
    # public wait_closed()): a --max-connections place is free again once
    # the TCP connection is gone, whether the handshake succeeded or not.
    releases: set[asyncio.Task[None]] = set()

    def release(task: asyncio.Task[None]) -> None:
        nonlocal reserved
        reserved -= 1
        releases.discard(task)

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        nonlocal reserved
        if config.path is not None and urlsplit(request.path).path != config.path:
            return connection.respond(404, "Not Found\n")
        if config.max_connections is not None:
            if reserved >= config.max_connections:
                logger.warning(
                    "%s: refused with 503: --max-connections %d reached",
                    addr(connection.remote_address),
                    config.max_connections,
                )
                return connection.respond(503, "Too many connections; try again later.\n")
            reserved += 1
            task = asyncio.create_task(connection.wait_closed())
            releases.add(task)
            task.add_done_callback(release)
        return None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream: WsStream = writer.get_extra_info("ws_stream")
        peer = addr(writer.get_extra_info("peername"))
        started = loop.time()
        with sessions.session() as slot:
            sessions.attach(slot, stream)
            logger.debug("%s: connected (subprotocol %s)", peer, stream.websocket.subprotocol)
            try:
                if target is None:
                    error = await _echo(stream, slot.stop)
                else:
                    error = await _bridge(stream, slot.stop, target, close_timeout)
            except Exception:
                logger.exception("%s: internal error", peer)
                await stream.close(1011, "internal error")
                error = "internal error"
        log_end(peer, stream, loop.time() - started, error)

    origins: list[str | None] | None = [*config.origins, None] if config.origins else None
    try:
        server = await start_server(
            handle,
            config.host,
            config.port,
            ssl=context,
            origins=origins,
            select_subprotocol=_subprotocol_selector(accepted),
            process_request=process_request,
            close_timeout=close_timeout,
        )
    except OSError as exc:
        logger.error("cannot listen on %s: %s", addr((config.host, config.port)), describe(exc))
        return EXIT_ERROR
    scheme = "wss" if context is not None else "ws"
    path = config.path or "/"
    urls = [f"{scheme}://{addr(sock.getsockname())}{path}" for sock in server.sockets]
    what = "echo" if target is None else f"bridging every connection to {addr(target)}"
    logger.info("listening on %s (%s)", ", ".join(urls), what)

    async def stop() -> None:
        server.close(close_connections=False)  # stop accepting; handshakes under way get 503
        sessions.stop_all()
        try:
            async with asyncio.timeout(close_timeout + 1.5):
                await server.wait_closed()
        except TimeoutError:
            logger.warning("connections still open after %.1f s: dropping them", close_timeout)
            sessions.abort_all()

    return await until_shutdown(
        shutdown, sessions, stop, prog=config.prog, stats_interval=config.stats_interval
    )


def _server_ssl(config: ServeConfig) -> ssl.SSLContext | None:
    if config.cert is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(config.cert, config.key)
    return context


def _subprotocol_selector(
    accepted: Sequence[str],
) -> Callable[[ServerConnection, Sequence[Subprotocol]], Subprotocol | None]:
    def select(_: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        if not offered:
            return None
        for name in accepted:
            if name in offered:
                return Subprotocol(name)
        raise NegotiationError(
            f"unsupported subprotocol {', '.join(offered)}; "
            f"this server accepts {', '.join(accepted)} or none"
        )

    return select


async def _echo(stream: WsStream, stop: asyncio.Future[None]) -> str | None:
    """Echo until the client closes; returns an error description or None."""
    reader, writer = stream.reader, stream.writer
    closing: list[asyncio.Task[None]] = []

    def shutdown(_: asyncio.Future[None]) -> None:
        if not writer.is_closing():
            closing.append(asyncio.create_task(stream.close(SHUTDOWN.code, SHUTDOWN.reason)))

    stop.add_done_callback(shutdown)
    error = None
    try:
        while data := await reader.read(WS_READ):
            if writer.is_closing():
                continue  # draining until the peer's close
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
    except ConnectionError as exc:
        if not closing:
            error = f"the WebSocket failed: {describe(exc)}"
    finally:
        stop.remove_done_callback(shutdown)
    code = stream.close_code
    if error is None and not closing and code is not None and code not in CLEAN_CODES:
        error = f"the peer closed with {code}"
    await stream.close()
    return error


async def _bridge(
    stream: WsStream,
    stop: asyncio.Future[None],
    target: HostPort,
    close_timeout: float,
) -> str | None:
    """Tunnel ``stream`` to a new TCP connection to ``target``; returns an error or None."""
    host, port = target
    try:
        reader, writer = await unless_stopped(
            stop,
            asyncio.wait_for(open_tcp(host, port), _TARGET_CONNECT_TIMEOUT),
        )
    except Stopped:
        await stream.close(SHUTDOWN.code, SHUTDOWN.reason)
        return None
    except (OSError, TimeoutError) as exc:
        # Logged once, with the end of the connection; the client learns 1014
        # and nothing about the target.
        await stream.close(1014, "cannot reach the target")
        return f"cannot connect to the target {addr(target)}: {describe(exc)}"
    tunnel = Tunnel(
        stream, TcpEndpoint(reader, writer, "target"), stop=stop, close_timeout=close_timeout
    )
    await tunnel.run()
    return tunnel.error
