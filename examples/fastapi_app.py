"""A FastAPI app whose WebSocket endpoints are byte streams.

``/upper``: a line codec over ``ws_stream.WsStream(websocket)`` - each line comes
back upper-cased. ``/tunnel/...``: ``ws_stream.asgi.TunnelApp`` bridging every
WebSocket to a TCP service (``--to HOST:PORT``), as ``ws-stream serve --to`` does.

    python examples/fastapi_app.py --port 8000 --to 127.0.0.1:5900

(needs ``pip install fastapi uvicorn``). In production, run the app with
uvicorn or gunicorn workers: ``uvicorn --factory examples.fastapi_app:make_app``
reads the target from ``WS_STREAM_TARGET``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket

import uvicorn
from fastapi import FastAPI, WebSocket

import ws_stream
from ws_stream.asgi import TunnelApp


def make_app(target: str | None = None) -> FastAPI:
    app = FastAPI()

    @app.websocket("/upper")
    async def upper(websocket: WebSocket) -> None:
        await websocket.accept()
        async with ws_stream.WsStream(websocket) as stream:
            while line := await stream.reader.readline():
                stream.writer.write(line.upper())
                await stream.writer.drain()

    target = target or os.environ.get("WS_STREAM_TARGET")
    if target:
        app.mount("/tunnel", TunnelApp(target))
    return app


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--to", help="the TCP service /tunnel/ bridges to (HOST:PORT)")
    args = parser.parse_args()
    sock = socket.socket()
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)  # clients may connect (and wait) from now on
    port = sock.getsockname()[1]
    config = uvicorn.Config(make_app(args.to), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGTERM, then raises it again with the
    # handler it found: a quiet one makes that a clean exit (status 0).
    signal.signal(signal.SIGTERM, lambda *_: None)
    print(f"listening on ws://127.0.0.1:{port}/", flush=True)
    await server.serve(sockets=[sock])


if __name__ == "__main__":
    asyncio.run(main())
