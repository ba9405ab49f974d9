"""Watch a stream's control events while data flows; measure ping round trips.

The reader of a ws_stream carries data only. Everything else the WebSocket
does - pings, pongs, the close frame, errors and the end of the connection -
is published as events: ``stream.events()`` is an async iterator of
``PingReceived``, ``PongReceived``, ``CloseReceived``, ``Error`` and, always
last, ``Closed``. A subscription sees the events that happen *after* it was
made, so subscribe first, then start talking. ``await stream.ping()`` sends a
ping and returns the round-trip time in seconds when its pong arrives.

In the demo the client sends lines that the server echoes; both sides ping
each other while those lines are in flight; the server closes with a reason
after the line ``bye``. Each side prints its own events (``client:`` and
``server:`` prefixes), so you can see which side saw what.

Run::

    python examples/events_observer.py demo         # both sides in one process, exits 0
    python examples/events_observer.py serve --port 8768
    python examples/events_observer.py client ws://127.0.0.1:8768/

websockets' keepalive pings (every 20 s by default) would show up as events
too; they are disabled here so that every event in the output is one the
code asked for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import ws_stream
from ws_stream import events

LINES = 50  # lines the client sends; the pings travel among them
CLOSE_REASON = "demo finished"


async def observe(side: str, subscription: ws_stream.EventStream[events.Event]) -> None:
    """Print every event of ``subscription``; returns after Closed."""
    async for event in subscription:
        match event:
            case events.PingReceived(data):
                print(f"{side}: PingReceived data={data!r} (websockets sent the pong)")
            case events.PongReceived(data):
                print(f"{side}: PongReceived data={data!r}")
            case events.CloseReceived(code, reason):
                print(f"{side}: CloseReceived code={code} reason={reason!r}")
            case events.Error(error):
                print(f"{side}: Error {type(error).__name__}: {error}")
            case events.Closed(code, reason, clean):
                print(f"{side}: Closed code={code} reason={reason!r} clean={clean}")
    if subscription.dropped:
        print(f"{side}: {subscription.dropped} events were dropped (observer too slow)")


# Server: echo lines, ping the client once, close with a reason after "bye".


async def handle_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    stream: ws_stream.WsStream = writer.get_extra_info("ws_stream")
    observer = asyncio.create_task(observe("server", stream.events()))
    try:
        pinged = False
        while line := await reader.readline():
            if line == b"bye\n":
                break
            writer.write(line)
            await writer.drain()
            if not pinged:
                pinged = True
                # A payload of our own is echoed back in the client's pong.
                rtt = await stream.ping(b"from server")
                print(f"server: ping round trip {rtt * 1000:.2f} ms")
        # close() flushes, sends the close frame and waits for the client's.
        await stream.close(1000, CLOSE_REASON)
    except ConnectionError as exc:
        print(f"server: connection error: {exc}")
    finally:
        await stream.wait_closed()
        await observer  # finishes with Closed


# Client: lines and pings at the same time, then "bye" and read to EOF.


async def run_client(uri: str) -> None:
    stream = await ws_stream.connect_stream(uri, ping_interval=None)
    # Subscribe before anything can happen: earlier events are not replayed.
    observer = asyncio.create_task(observe("client", stream.events()))
    reader, writer = stream.reader, stream.writer

    async def send_lines() -> None:
        for i in range(LINES):
            writer.write(f"line {i}\n".encode())
            await writer.drain()
            await asyncio.sleep(0)  # let the other tasks run in between

    async def read_echoes() -> int:
        for i in range(LINES):
            line = await reader.readline()
            if line != f"line {i}\n".encode():
                raise RuntimeError(f"unexpected echo {line!r}")
        return LINES

    async def ping_a_few_times() -> list[float]:
        # An empty payload: ping() picks a unique random one.
        return [await stream.ping() for _ in range(3)]

    echoed, rtts = (await asyncio.gather(send_lines(), read_echoes(), ping_a_few_times()))[1:]
    print(f"client: {echoed} lines echoed; the reader saw no control frame")
    for rtt in rtts:
        print(f"client: ping round trip {rtt * 1000:.2f} ms")

    writer.write(b"bye\n")
    await writer.drain()
    rest = await reader.read()  # until EOF: the server's close frame
    print(f"client: EOF after {len(rest)} more bytes")
    await stream.wait_closed()
    await observer
    print(f"client: close_code={stream.close_code} close_reason={stream.close_reason!r}")


async def start(host: str, port: int) -> tuple[ws_stream.Server, str]:
    server = await ws_stream.start_server(handle_client, host, port, ping_interval=None)
    bound_port = server.sockets[0].getsockname()[1]
    return server, f"ws://{host}:{bound_port}/"


async def demo() -> None:
    server, uri = await start("127.0.0.1", 0)
    async with server:
        print(f"server listening on {uri}")
        await run_client(uri)
    print("demo done")


async def serve(host: str, port: int) -> None:
    server, uri = await start(host, port)
    async with server:
        print(f"listening on {uri}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # e.g. Windows
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="server and client in one process, then exit")
    serve_parser = commands.add_parser("serve", help="run the server")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8768, help="0: any free port")
    client_parser = commands.add_parser("client", help="run the client against a server")
    client_parser.add_argument("uri", help="for example ws://127.0.0.1:8768/")
    args = parser.parse_args()

    if args.command == "demo":
        asyncio.run(demo())
    elif args.command == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.host, args.port))
    else:
        try:
            asyncio.run(run_client(args.uri))
        except (OSError, TimeoutError) as exc:
            sys.exit(f"cannot talk to {args.uri}: {exc}")


if __name__ == "__main__":
    main()
