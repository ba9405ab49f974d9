"""``ws-stream serve``: accept WebSockets; echo each one, or bridge it to the ``--to`` target.

Owns what the server decides before and around a session: TLS (``--cert``,
``--key``), which requests are accepted (``--path``: 404; ``--origin``: 403;
``--max-connections``: 503; ``--subprotocol``, with ``binary`` always
accepted: 400 for a client that offers only others), the listening line, the
echo, the bridge (a new TCP connection to the target per WebSocket; 1014 when
it cannot be reached) and the graceful stop.

The target comes from :class:`~.args.ServeConfig` only: nothing in a request
(path, query, headers) can choose where bytes go, so the server is never an
open proxy. The bridge's tunnel is :class:`~.tunnel.Tunnel`; with ``--to-tls``
its connection to the target is TLS, the certificate verified (a refused one
is 1014 too, and says why in the log: :func:`target_failure`).

One process serves here; ``--workers`` runs several of these
(:mod:`.workers`), each given :class:`WorkerHooks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from websockets.exceptions import NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ..asyncio import WsStream, start_server, start_unix_server
from ..asyncio.server import ServerConnection
from .args import HostPort, ServeConfig, TargetTls, UnixAddress
from .endpoints import TcpEndpoint, open_tcp, open_unix
from .gateway import Admission, Gateway
from .gateway.reverse import MUX_SUBPROTOCOL
from .lifecycle import EXIT_ERROR, Sessions, Shutdown, Stopped, unless_stopped, until_shutdown
from .mux import serve_session
from .report import addr, describe, fields, log_connection
from .rules import CLEAN_CODES, SHUTDOWN
from .tuning import FRAME_SIZE
from .tunnel import WS_READ, Tunnel, watch_eof_marker
from .unix import UnixListener, unix_peer

__all__ = ["ConnectionLimit", "WorkerHooks", "serve", "target_failure"]

logger = logging.getLogger(__name__)

#: A connection without gateway options: ``serve``'s own target, nobody named.
_NO_GATEWAY = Admission(None, None, None, None)
#: What the client offers as the subprotocol of a byte stream (noVNC, websockify).
_BINARY = "binary"
#: Longest wait for the TCP connection to the target of ``serve --to``.
_TARGET_CONNECT_TIMEOUT = 10.0
#: OpenSSL's verify codes of a certificate for another name than the one asked.
_NAME_MISMATCH = frozenset({62, 64})  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


class ConnectionLimit(Protocol):
    """``--max-connections``: places taken before a handshake, given back when it is gone."""

    def acquire(self) -> bool:
        """Take a place; False when none is free (never blocks)."""
        ...

    def release(self) -> None:
        """Give a place back."""
        ...


class WorkerHooks(Protocol):
    """What makes :func:`serve` one of the processes of ``--workers`` (:mod:`.workers`)."""

    @property
    def limit(self) -> ConnectionLimit | None:
        """The ``--max-connections`` shared by every worker; None: no limit."""
        ...

    def running(
        self, urls: Sequence[str], what: str, shutdown: Shutdown, sessions: Sessions
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Entered once listening, instead of the listening line (the parent prints it)."""
        ...


class _Places:
    """``--max-connections`` in one process: a count."""

    def __init__(self, limit: int) -> None:
        self._free = limit

    def acquire(self) -> bool:
        if self._free == 0:
            return False
        self._free -= 1
        return True

    def release(self) -> None:
        self._free += 1


async def serve(config: ServeConfig, hooks: WorkerHooks | None = None) -> int:
    """Run ``ws-stream serve`` until a signal; return the exit status.

    ``hooks``: this process is one of ``--workers`` (it listens with
    ``SO_REUSEPORT``, shares ``hooks.limit``, and reports to its parent).
    """
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
    # yamux first: a client offering it and binary gets the session it asked for.
    accepted = list(
        dict.fromkeys([*([MUX_SUBPROTOCOL] if config.mux else []), _BINARY, *config.subprotocols])
    )
    limit: ConnectionLimit | None = None
    if hooks is not None:
        limit = hooks.limit
    elif config.max_connections is not None:
        limit = _Places(config.max_connections)
    # One task per reserved connection, waiting for its end (websockets'
    # wait_closed()): a --max-connections place is free again once
    # the TCP connection is gone, whether the handshake succeeded or not.
    releases: set[asyncio.Task[None]] = set()

    def release(task: asyncio.Task[None]) -> None:
        assert limit is not None
        limit.release()
        releases.discard(task)

    gateway = Gateway(config)
    admitted: weakref.WeakKeyDictionary[ServerConnection, Admission] = weakref.WeakKeyDictionary()

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if config.path is not None and urlsplit(request.path).path != config.path:
            return connection.respond(404, "Not Found\n")
        return take_place(connection)

    async def process_gateway(connection: ServerConnection, request: Request) -> Response | None:
        peer = addr(connection.remote_address) or unix_peer()
        peercert = connection.transport.get_extra_info("peercert")
        decision = await gateway.admit(peer, request, peercert)
        if not isinstance(decision, Admission):
            return decision
        admitted[connection] = decision
        return take_place(connection)

    def take_place(connection: ServerConnection) -> Response | None:
        if limit is not None:
            if not limit.acquire():
                logger.warning(
                    "%s: refused with 503: --max-connections %d reached",
                    addr(connection.remote_address) or "a Unix-socket client",
                    config.max_connections,
                )
                return connection.respond(503, "Too many connections; try again later.\n")
            task = asyncio.create_task(connection.wait_closed())
            releases.add(task)
            task.add_done_callback(release)
        return None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream: WsStream = writer.get_extra_info("ws_stream")
        admission = admitted.pop(writer.get_extra_info("connection"), _NO_GATEWAY)
        to = target if admission.target is None else admission.target
        peer = addr(writer.get_extra_info("peername")) or unix_peer()
        started = loop.time()
        with sessions.session() as slot:
            sessions.attach(slot, stream)
            logger.debug("%s: connected (subprotocol %s)", peer, stream.subprotocol)
            try:
                if stream.subprotocol == MUX_SUBPROTOCOL:
                    error = await serve_session(
                        stream, slot.stop, to, config.target_tls, admission.reverse, peer
                    )
                elif to is None:
                    error = await _echo(stream, slot.stop)
                else:
                    error = await _bridge(stream, slot.stop, to, close_timeout, config.target_tls)
            except Exception:
                logger.exception("%s: internal error", peer)
                await stream.close(1011, "internal error")
                error = "internal error"
        log_connection(
            peer,
            stream,
            loop.time() - started,
            error,
            target=admission.name or ("echo" if to is None else addr(to)),
            identity=admission.identity,
            cert=admission.cert,
        )

    origins: list[str | None] | None = [*config.origins, None] if config.origins else None
    options: dict[str, Any] = {
        "ssl": context,
        "origins": origins,
        "select_subprotocol": _subprotocol_selector(accepted),
        "process_request": process_gateway if gateway.enabled else process_request,
        "close_timeout": close_timeout,
        "max_frame_size": FRAME_SIZE,
        "ping_interval": config.ping_interval,
        "ping_timeout": config.ping_timeout,
    }
    if hooks is not None:
        options["reuse_port"] = True  # the port its parent reserved, shared by every worker
    where = config.unix or (config.host, config.port)
    listener: UnixListener | None = None
    try:
        if config.unix is not None:
            listener = UnixListener.open(config.unix, config.mode)
            server = await start_unix_server(handle, sock=listener.sock, **options)
        else:
            server = await start_server(handle, config.host, config.port, **options)
    except OSError as exc:
        if listener is not None:
            listener.sock.close()
            listener.remove()
        logger.error("cannot listen on %s: %s", addr(where), describe(exc))
        return EXIT_ERROR
    scheme = "wss" if context is not None else "ws"
    path = config.path or "/"
    what = "echo" if target is None else f"bridging every connection to {addr(target)}"
    if config.targets is not None:
        what = f"bridging each connection to the target it names in {config.targets}"
    what += "".join(
        f"; {label}"
        for option, label in (
            (config.bearer_file, "bearer tokens required"),
            (config.basic_auth_file, "Basic authentication required"),
            (config.client_ca, "client certificates required"),
            (config.web, f"web files from {config.web}"),
            (config.mux or None, "yamux sessions accepted"),
            (
                config.allow_reverse or None,
                "reverse tunnels on " + ", ".join(str(r) for r in config.allow_reverse),
            ),
        )
        if option is not None
    )
    if config.target_tls is not None:
        what += f" over TLS, certificate verified for {config.target_tls.server_name}"
    if listener is not None:
        logger.info("listening on %s (%s://, path %s; %s)", listener.address, scheme, path, what)
    else:
        urls = [f"{scheme}://{addr(sock.getsockname())}{path}" for sock in server.sockets]
        if hooks is None:
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

    running = (
        contextlib.nullcontext()
        if hooks is None
        else hooks.running(
            urls if listener is None else [str(listener.address)], what, shutdown, sessions
        )
    )
    try:
        async with running:
            return await until_shutdown(
                shutdown, sessions, stop, prog=config.prog, stats_interval=config.stats_interval
            )
    finally:
        gateway.close()
        if listener is not None:
            listener.remove()


def _server_ssl(config: ServeConfig) -> ssl.SSLContext | None:
    if config.cert is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(config.cert, config.key)
    if config.client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=config.client_ca)
    return context


def _subprotocol_selector(
    accepted: Sequence[str],
) -> Callable[[ServerConnection, Sequence[Subprotocol]], Subprotocol | None]:
    def select(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        if not offered:
            return None
        for name in accepted:
            if name in offered:
                return Subprotocol(name)
        reason = (
            f"unsupported subprotocol {', '.join(offered)[:100]}; "
            f"this server accepts {', '.join(accepted)} or none"
        )
        if MUX_SUBPROTOCOL in offered:
            reason += " (yamux needs serve --mux)"
        peer = addr(connection.remote_address) or unix_peer()
        logger.info("refused: %s", fields(peer=peer, status=400, reason=reason))
        raise NegotiationError(reason)

    return select


async def _echo(stream: WsStream, stop: asyncio.Future[None]) -> str | None:
    """Echo until the client closes; returns an error description or None."""
    reader, writer = stream.reader, stream.writer
    closing: list[asyncio.Task[None]] = []

    def shutdown(_: asyncio.Future[None]) -> None:
        if not writer.is_closing():
            closing.append(asyncio.create_task(stream.close(SHUTDOWN.code, SHUTDOWN.reason)))

    input_ended = False

    def end_of_input() -> None:
        # Everything before the client's EOF marker is echoed: then the echo ends too.
        if not reader.buffered and not writer.is_closing():
            closing.append(asyncio.create_task(stream.close()))

    def marker() -> None:
        nonlocal input_ended
        input_ended = True
        end_of_input()

    stop.add_done_callback(shutdown)
    watcher = asyncio.create_task(watch_eof_marker(stream.events(), marker))
    error = None
    try:
        while data := await reader.read(WS_READ):
            if writer.is_closing():
                continue  # draining until the peer's close
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            if input_ended:
                end_of_input()
    except ConnectionError as exc:
        if not closing:
            error = f"the WebSocket failed: {describe(exc)}"
    finally:
        stop.remove_done_callback(shutdown)
        watcher.cancel()
    code = stream.close_code
    if error is None and not closing and code is not None and code not in CLEAN_CODES:
        error = f"the peer closed with {code}"
    await stream.close()
    return error


async def _bridge(
    stream: WsStream,
    stop: asyncio.Future[None],
    target: HostPort | UnixAddress,
    close_timeout: float,
    tls: TargetTls | None = None,
) -> str | None:
    """Tunnel ``stream`` to a new connection to ``target``; returns an error or None.

    ``tls``: the connection is TLS, verified (``--to-tls``).
    """
    # Subscribed before the target is dialed: the client's EOF marker may come
    # with its first bytes, and events are not kept for later subscribers.
    events = stream.events()
    context, name = (None, None) if tls is None else (tls.context, tls.server_name)
    connect = (
        open_unix(target.path, ssl=context, server_hostname=name)
        if isinstance(target, UnixAddress)
        else open_tcp(*target, ssl=context, server_hostname=name)
    )
    try:
        reader, writer = await unless_stopped(
            stop,
            asyncio.wait_for(connect, _TARGET_CONNECT_TIMEOUT),
        )
    except Stopped:
        events.close()
        await stream.close(SHUTDOWN.code, SHUTDOWN.reason)
        return None
    except (OSError, TimeoutError) as exc:
        # Logged once, with the end of the connection; the client learns 1014
        # and nothing about the target.
        events.close()
        await stream.close(1014, "cannot reach the target")
        return target_failure(exc, addr(target))
    tunnel = Tunnel(
        stream,
        TcpEndpoint(reader, writer, "target"),
        stop=stop,
        close_timeout=close_timeout,
        events=events,
    )
    await tunnel.run()
    return tunnel.error


def target_failure(exc: BaseException, target: str) -> str:
    """What the log says when the target of ``serve --to`` cannot be reached.

    The client learns 1014 and nothing more. A refused certificate
    (``--to-tls``) says why OpenSSL refused it and which option helps; a
    failed TLS handshake that it may not speak TLS at all.
    """
    where = f"cannot connect to the target {target}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = (
            "--to-server-name NAME sets the name it must carry"
            if exc.verify_code in _NAME_MISMATCH
            else "--to-cafile FILE trusts the CA that signed it"
        )
        return f"{where}: its TLS certificate was refused: {exc.verify_message} ({hint})"
    if isinstance(exc, ssl.SSLError):
        return (
            f"{where}: the TLS handshake failed: {exc.reason or describe(exc)} "
            "(does the target speak TLS on that port?)"
        )
    return f"{where}: {describe(exc)}"
