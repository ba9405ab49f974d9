"""Authenticate and route with plain websockets, then wrap the connection.

``ws_stream.start_server()`` hands every connection to one callback. When you
need more - a bearer token checked during the handshake, several paths with
different protocols - write a normal ``websockets.asyncio.server.serve()``
server, do all of that with websockets' own tools, and only then turn the
accepted connection into a byte stream with ``ws_stream.WsStream(websocket)``.

Here:

* ``process_request`` runs during the opening handshake. It answers
  ``401 Unauthorized`` when the ``Authorization: Bearer <token>`` header is
  missing or wrong, and ``404 Not Found`` for an unknown path. The client then
  gets ``ws_stream.HandshakeError`` with ``.status`` set to that HTTP status.
  (Checking the token inside the handler works too, but by then the handshake
  has succeeded, so all you can do is close the WebSocket, e.g. with 1008.)
* the handler routes on ``websocket.request.path`` and wraps the connection:
  ``/whoami`` writes one line and closes, ``/echo`` echoes lines.

Run::

    python examples/accept_wrap_auth.py demo      # everything in one process, exits 0
    python examples/accept_wrap_auth.py serve --port 8767
    python examples/accept_wrap_auth.py client --token s3cret ws://127.0.0.1:8767/echo hi there
    python examples/accept_wrap_auth.py client --token s3cret ws://127.0.0.1:8767/whoami
    python examples/accept_wrap_auth.py client --token nope ws://127.0.0.1:8767/echo hi
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import http
import signal
import sys
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

import ws_stream

#: Bearer tokens and the user each one identifies. Keep real ones out of code.
TOKENS = {"s3cret": "alice", "t0ken": "bob"}

Route = Callable[[asyncio.StreamReader, asyncio.StreamWriter, str], Awaitable[None]]


# Routes: ordinary stream handlers, plus the authenticated user.


async def whoami(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, user: str) -> None:
    writer.write(f"you are {user}\n".encode())
    await writer.drain()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, user: str) -> None:
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()


ROUTES: dict[str, Route] = {"/whoami": whoami, "/echo": echo}


# The handshake: authentication and a 404 for unknown paths.


def user_for(authorization: str | None) -> str | None:
    """The user an ``Authorization: Bearer <token>`` header identifies, if any."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    for known, user in TOKENS.items():
        # compare_digest takes the same time whatever the mismatch.
        if hmac.compare_digest(known.encode(), token.strip().encode()):
            return user
    return None


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    """Refuse the handshake with 401 or 404; None lets it proceed."""
    user = user_for(request.headers.get("Authorization"))
    if user is None:
        response = connection.respond(http.HTTPStatus.UNAUTHORIZED, "Invalid bearer token\n")
        response.headers["WWW-Authenticate"] = 'Bearer realm="ws_stream example"'
        return response
    if urlsplit(request.path).path not in ROUTES:
        return connection.respond(http.HTTPStatus.NOT_FOUND, "No such endpoint\n")
    connection.username = user  # an attribute websockets provides for this
    return None


async def handler(websocket: ServerConnection) -> None:
    """Runs after a successful handshake: route, then wrap as a byte stream."""
    assert websocket.request is not None  # the handshake is done
    route = ROUTES[urlsplit(websocket.request.path).path]
    # From here on the stream owns the connection's data: no websocket.recv().
    # Leaving "async with" flushes and closes (1000; 1011 if the route raised).
    async with ws_stream.WsStream(websocket) as stream:
        try:
            await route(stream.reader, stream.writer, websocket.username)
        except ConnectionError as exc:  # the client vanished or broke the protocol
            print(f"{websocket.username} on {websocket.request.path}: {exc}", file=sys.stderr)


async def start_server(host: str, port: int) -> tuple[ws_stream.Server, str]:
    """Start the server; return it and its base ws:// URI."""
    server = await serve(
        handler,
        host,
        port,
        process_request=process_request,
        # websockets enables permessage-deflate by default; ws_stream's own
        # start_server() does not, because byte streams are often compressed
        # or encrypted already. Do the same here.
        compression=None,
    )
    bound_port = server.sockets[0].getsockname()[1]
    return server, f"ws://{host}:{bound_port}"


# Client


async def request_lines(uri: str, token: str, lines: list[str]) -> list[str]:
    """Connect with ``token``, send ``lines``, return the answers.

    With lines to send (``/echo``), read one answer line per line sent, then
    close. Without (``/whoami``), read until the server closes.
    """
    reader, writer = await ws_stream.open_connection(
        uri, additional_headers={"Authorization": f"Bearer {token}"}
    )
    try:
        if lines:
            for line in lines:
                writer.write(line.encode() + b"\n")
            await writer.drain()
            # Not write_eof(): a WebSocket close is not a TCP half-close, the
            # server could not answer after our close frame. Read, then close.
            answers = [await reader.readline() for _ in lines]
        else:
            answers = [line async for line in reader]  # until the server's close
    finally:
        writer.close()
        # As with TCP, wait_closed() raises the error that ended the connection.
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return [answer.decode().rstrip("\n") for answer in answers]


async def try_request(label: str, uri: str, token: str, lines: list[str]) -> None:
    try:
        received = await request_lines(uri, token, lines)
    except ws_stream.HandshakeError as exc:
        print(f"{label}: refused: HandshakeError status={exc.status}")
    else:
        print(f"{label}: ok: {received}")


async def demo() -> None:
    server, base = await start_server("127.0.0.1", 0)
    async with server:
        print(f"server listening on {base}/")
        await try_request("good token /whoami", f"{base}/whoami", "s3cret", [])
        await try_request("good token /echo", f"{base}/echo", "t0ken", ["one", "two"])
        await try_request("wrong token /echo", f"{base}/echo", "wrong", ["one"])
        await try_request("good token /nowhere", f"{base}/nowhere", "s3cret", [])
    print("demo done")


async def run_server(host: str, port: int) -> None:
    server, base = await start_server(host, port)
    async with server:
        print(f"listening on {base}/ (routes: {', '.join(ROUTES)})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # e.g. Windows
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="server and clients in one process, then exit")
    serve_parser = commands.add_parser("serve", help="run the server")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8767, help="0: any free port")
    client_parser = commands.add_parser(
        "client",
        help="connect, send lines, print answers",
        usage="%(prog)s --token TOKEN URI [LINE ...]",  # options first: argparse needs it
    )
    client_parser.add_argument("uri", help="for example ws://127.0.0.1:8767/echo")
    client_parser.add_argument("--token", required=True, help="the bearer token")
    client_parser.add_argument("lines", nargs="*", help="lines to send")
    args = parser.parse_args()

    if args.command == "demo":
        asyncio.run(demo())
    elif args.command == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_server(args.host, args.port))
    else:
        try:
            for line in asyncio.run(request_lines(args.uri, args.token, args.lines)):
                print(line)
        except ws_stream.HandshakeError as exc:
            sys.exit(f"refused (HTTP {exc.status}): {exc}")
        except (OSError, TimeoutError) as exc:
            sys.exit(f"cannot talk to {args.uri}: {exc}")


if __name__ == "__main__":
    main()
