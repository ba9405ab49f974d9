"""A line echo client: send a few lines, print what the server sends back.

It talks to ``examples/line_echo_server.py`` and is written exactly as for
:func:`asyncio.open_connection`. Start the server first, then::

    python examples/line_echo_client.py ws://127.0.0.1:8765/ hello "two words" bye
    python examples/line_echo_client.py --port 8765            # default lines
    python examples/line_echo_client.py --host 127.0.0.1 --port 8765 one two

The first argument is the server's URI when it starts with ``ws://`` or
``wss://``; otherwise the URI is ``ws://HOST:PORT/`` from ``--host`` and
``--port``. The remaining arguments are the lines to send (one line each).
For each line the client prints ``sent: ...`` and then ``echo: ...``, and it
exits with status 1 if an echo differs from what was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import ws_stream

DEFAULT_LINES = ["hello", "WebSocket as a byte stream", "bye"]


async def run(uri: str, lines: list[str]) -> bool:
    """Send ``lines`` one by one and print their echoes; True if all came back."""
    reader, writer = await ws_stream.open_connection(uri)
    ok = True
    try:
        for text in lines:
            writer.write(text.encode() + b"\n")
            await writer.drain()
            print(f"sent: {text}", flush=True)

            echo = await reader.readline()
            if not echo:
                print("the server closed the connection", file=sys.stderr)
                return False
            received = echo.decode().rstrip("\n")
            print(f"echo: {received}", flush=True)
            ok = ok and received == text
    finally:
        # Like a TCP writer: close() flushes and sends a close frame (1000);
        # wait_closed() returns once the server has answered it (and raises,
        # as with TCP, if the connection had failed: then it is too late).
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").partition("\n")[0],
        usage="%(prog)s [--host HOST] [--port PORT] [URI] [LINE ...]",
    )
    parser.add_argument("--host", default="127.0.0.1", help="server address (without URI)")
    parser.add_argument("--port", type=int, default=8765, help="server port (without URI)")
    parser.add_argument("args", nargs="*", metavar="[URI] [LINE ...]", help=argparse.SUPPRESS)
    args = parser.parse_args()

    rest: list[str] = args.args
    if rest and rest[0].startswith(("ws://", "wss://")):
        uri = rest.pop(0)
    else:
        uri = f"ws://{args.host}:{args.port}/"
    lines = rest or DEFAULT_LINES
    if any("\n" in line for line in lines):
        parser.error("a line to send cannot contain a newline")

    try:
        ok = asyncio.run(run(uri, lines))
    except (OSError, TimeoutError) as exc:
        # ws_stream.HandshakeError, refused connections... are all OSErrors.
        sys.exit(f"cannot talk to {uri}: {exc}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
