"""A line echo server: every line a client sends comes back unchanged.

The handler is written exactly as for :func:`asyncio.start_server`: it reads
with ``reader.readline()`` and answers with ``writer.write()``. The client may
split its bytes into WebSocket frames however it likes; ``readline()`` only
sees a byte stream.

Run it (Ctrl+C or SIGTERM stops it)::

    python examples/line_echo_server.py                # ws://127.0.0.1:8765/
    python examples/line_echo_server.py --port 0       # any free port

The first line on stdout is always ``listening on ws://HOST:PORT/``, so a
script can start the server with ``--port 0`` and read the port it got. Then,
in another terminal::

    python examples/line_echo_client.py ws://127.0.0.1:8765/ hello world
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import ws_stream


async def handle_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo each line back until the client closes the connection."""
    peer = writer.get_extra_info("peername")
    print(f"{peer}: connected", flush=True)
    try:
        # readline() returns b"" at EOF: when the client's close frame arrived.
        while line := await reader.readline():
            if not line.endswith(b"\n"):
                # The client closed in the middle of a line. Unlike a TCP
                # half-close, a WebSocket close ends both directions: this
                # partial line could not be echoed any more.
                print(f"{peer}: closed after a partial line {line[:40]!r}", flush=True)
                break
            writer.write(line)
            await writer.drain()  # backpressure, as with TCP
    except ValueError:
        # A line longer than the reader's limit (1 MiB by default).
        print(f"{peer}: line too long, closing", flush=True)
    except ConnectionError as exc:
        # ws_stream errors are ConnectionErrors: lost connection, protocol violation...
        print(f"{peer}: connection error: {exc}", flush=True)
    finally:
        writer.close()  # sends a close frame (1000) unless the client closed first
        # As with TCP, wait_closed() raises the error that ended the connection,
        # if any: it was reported above already.
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    print(f"{peer}: disconnected", flush=True)


async def serve(host: str, port: int) -> None:
    server = await ws_stream.start_server(handle_client, host, port)
    async with server:
        # With --port 0 the OS picked the port: report the one we really got.
        bound_port = server.sockets[0].getsockname()[1]
        print(f"listening on ws://{host}:{bound_port}/", flush=True)

        # Stop cleanly on Ctrl+C or SIGTERM (where the loop supports signals).
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # e.g. Windows
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("shutting down", flush=True)
    # Leaving "async with" closed the server and its connections.


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
