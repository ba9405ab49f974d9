"""TLS *inside* a WebSocket with trio: end-to-end encryption through a relay.

The WebSocket carries a byte stream; ``trio.SSLStream`` runs TLS over it, so
whatever relays the WebSocket (a proxy, a load balancer) sees only ciphertext.
A line protocol runs on top.

    python examples/trio_tls_over_websocket.py demo

``demo`` makes a throwaway CA and certificate with trustme, starts a server on
127.0.0.1 (random port), connects, exchanges a few lines over TLS-in-WebSocket
and exits 0.
"""

from __future__ import annotations

import argparse
import functools
import ssl
from collections.abc import Awaitable, Callable

import trio
import trustme

from ws_stream.trio import WsStream, open_websocket_stream, serve_websocket_stream


async def read_line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> bytes:
    """One line from ``stream`` (b"" at EOF), keeping what follows in ``buffer``."""
    while b"\n" not in buffer:
        data = await stream.receive_some()
        if not data:
            line = bytes(buffer)
            buffer.clear()
            return line
        buffer += data
    end = buffer.index(b"\n") + 1
    line = bytes(buffer[:end])
    del buffer[:end]
    return line


def make_handler(server_ctx: ssl.SSLContext) -> Callable[[WsStream], Awaitable[None]]:
    async def handler(stream: WsStream) -> None:
        tls = trio.SSLStream(stream, server_ctx, server_side=True)
        buffer = bytearray()
        while line := await read_line(tls, buffer):
            await tls.send_all(b"server saw: " + line.upper())
        await tls.aclose()

    return handler


async def demo() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("tunnel.example").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(serve_websocket_stream, make_handler(server_ctx), 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        uri = f"ws://127.0.0.1:{port}/"
        print(f"server listening on {uri}")
        with trio.fail_after(10):
            async with open_websocket_stream(uri) as stream:
                tls = trio.SSLStream(stream, client_ctx, server_hostname="tunnel.example")
                await tls.do_handshake()
                print(f"TLS inside the WebSocket: {tls.version()}")
                buffer = bytearray()
                for text in (b"hello\n", b"secret data\n"):
                    await tls.send_all(text)
                    print((await read_line(tls, buffer)).decode().rstrip())
                await tls.aclose()
        nursery.cancel_scope.cancel()
    print("done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["demo"])
    parser.parse_args()
    trio.run(demo)


if __name__ == "__main__":
    main()
