"""The implementations the benchmark suite compares: a server and a client each.

A server runs in its own process (``python -m bench.impls IMPL MODE``) and
prints its port on its first line. Modes: ``sink`` (read everything),
``echo``, ``slow`` (a reader that takes 64 KiB every millisecond), ``idle``
(accept and hold). Clients run in the suite's process; every client operation
returns what it measured.

Each row is compared with up to three references of its runtime: the plain
websockets loop (``REFERENCE``); raw TCP streams, the physical limit
(``RAW_TCP``: asyncio streams, trio's SocketStream, blocking sockets); and, for
asyncio and uvloop rows, picows (``WS_REFERENCE``), a Cython WebSocket library:
what a WebSocket costs at its cheapest. picows runs on asyncio's own transports
(``use_aiofastnet=False``, not its default), like every other asyncio row, so
its ratio measures WebSocket framing, not a faster socket layer. picows has no
``slow`` server (its API pushes frames; a slow reader would need
pause_reading()), so it is left out of the slow-reader scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import trio

MAX = 2**24  # message size limit for the plain loops (our streams split frames)
WS: dict[str, Any] = {"compression": None, "ping_interval": None, "max_size": MAX}
SLOW_READ = 2**16
SLOW_PAUSE = 0.001

# name -> (runtime, reference implementation of that runtime)
IMPLS: dict[str, str] = {
    "tcp.asyncio": "asyncio",
    "websockets.asyncio": "asyncio",
    "naive_pump": "asyncio",
    "picows": "asyncio",
    "ws_stream.asyncio": "asyncio",
    "ws_stream.uvloop": "uvloop",
    "tcp.trio": "trio",
    "websockets.trio": "trio",
    "trio-websocket": "trio",
    "ws_stream.trio": "trio",
    "tcp.sync": "sync",
    "websockets.sync": "sync",
    "ws_stream.sync": "sync",
}
REFERENCE = {
    "asyncio": "websockets.asyncio",
    "uvloop": "websockets.asyncio",
    "trio": "websockets.trio",
    "sync": "websockets.sync",
}
# The physical limit: raw TCP streams of the same runtime (uvloop rows against
# the default loop's, as the targets are stated).
RAW_TCP = {
    "asyncio": "tcp.asyncio",
    "uvloop": "tcp.asyncio",
    "trio": "tcp.trio",
    "sync": "tcp.sync",
}
# The cheapest WebSocket: compared with the asyncio and uvloop rows only.
WS_REFERENCE = {"asyncio": "picows", "uvloop": "picows"}
# Implementations that come from an optional package: module to import.
OPTIONAL = {"picows": "picows", "ws_stream.uvloop": "uvloop", "trio-websocket": "trio_websocket"}
# Server modes an implementation lacks (the suite leaves it out of those scenarios).
UNSUPPORTED_MODES = {"picows": ("slow",)}


def unavailable(impl: str) -> str | None:
    """Why ``impl`` cannot run here (its package does not import), or None."""
    module = OPTIONAL.get(split_impl(impl)[0])
    if module is None:
        return None
    try:
        __import__(module)
    except Exception as exc:  # ImportError, or a binary wheel that does not load
        return f"{module} does not import ({type(exc).__name__}: {exc})"
    return None


def supports(impl: str, mode: str) -> bool:
    return mode not in UNSUPPORTED_MODES.get(split_impl(impl)[0], ())


# ---- asyncio servers -------------------------------------------------------


def split_impl(impl: str) -> tuple[str, int | None]:
    """``"ws_stream.asyncio@262144"`` -> the implementation and its reader limit."""
    name, _, limit = impl.partition("@")
    return name, int(limit) if limit else None


async def _asyncio_server(impl: str, mode: str) -> None:
    import websockets.asyncio.server as wss

    import ws_stream

    impl, limit = split_impl(impl)

    async def stream_cb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(SLOW_READ if mode == "slow" else 2**20):
            if mode == "echo":
                writer.write(data)
                await writer.drain()
            elif mode == "slow":
                await asyncio.sleep(SLOW_PAUSE)
        writer.close()

    async def ws_handler(ws: Any) -> None:
        if impl == "naive_pump":  # what users write by hand: recv() into a StreamReader
            reader = asyncio.StreamReader(limit=2**20)

            async def pump() -> None:
                async for msg in ws:
                    reader.feed_data(msg)
                reader.feed_eof()

            task = asyncio.create_task(pump())
            while data := await reader.read(SLOW_READ if mode == "slow" else 2**20):
                if mode == "echo":
                    await ws.send(data)
                elif mode == "slow":
                    await asyncio.sleep(SLOW_PAUSE)
            await task
            return
        async for msg in ws:
            if mode == "echo":
                await ws.send(msg)
            elif mode == "slow":
                await asyncio.sleep(SLOW_PAUSE * len(msg) / SLOW_READ)

    if impl == "tcp.asyncio":
        server: Any = await asyncio.start_server(stream_cb, "127.0.0.1", 0, limit=2**20)
    elif impl == "picows":
        import picows

        if not supports(impl, mode):
            raise SystemExit(f"picows: no {mode!r} server in the bench")
        listener = _picows_listeners()[0]
        server = await picows.ws_create_server(
            lambda request: listener(mode),
            "127.0.0.1",
            0,
            max_frame_size=MAX,
            use_aiofastnet=False,
        )
    elif impl.startswith("ws_stream"):
        server = await ws_stream.start_server(
            stream_cb,
            "127.0.0.1",
            0,
            ping_interval=None,
            max_size=MAX,
            **({"limit": limit} if limit else {}),
        )
    else:
        server = await wss.serve(ws_handler, "127.0.0.1", 0, **WS)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


# ---- picows: callbacks on asyncio's transports ----------------------------------


@functools.cache
def _picows_listeners() -> tuple[Any, Any]:
    """The picows server and client listeners (defined once picows is imported)."""
    import picows

    binary, close = picows.WSMsgType.BINARY, picows.WSMsgType.CLOSE

    class ServerListener(picows.WSListener):
        """sink / echo / idle: data frames are dropped or echoed; a close is answered."""

        def __init__(self, mode: str) -> None:
            super().__init__()
            self.echo = mode == "echo"

        def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
            if frame.msg_type == binary:
                if self.echo:
                    transport.send(binary, frame.get_payload_as_bytes())
            elif frame.msg_type == close:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

    class ClientListener(picows.WSListener):
        """Counts received bytes for recv_exactly; exposes write flow control."""

        def __init__(self) -> None:
            super().__init__()
            self.writable = asyncio.Event()
            self.writable.set()
            self.received = 0
            self.wanted = 0
            self.waiter: asyncio.Future[None] | None = None

        def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
            if frame.msg_type == binary:
                self.received += frame.payload_size
                if self.waiter is not None and self.received >= self.wanted:
                    self.waiter.set_result(None)
                    self.waiter = None
            elif frame.msg_type == close:  # the answer to our close: the peer read all
                transport.disconnect()

        def pause_writing(self) -> None:
            self.writable.clear()

        def resume_writing(self) -> None:
            self.writable.set()

        async def receive_exactly(self, n: int) -> None:
            self.wanted = n  # (received counts the bytes not consumed yet)
            if self.received < n:
                self.waiter = asyncio.get_running_loop().create_future()
                await self.waiter
            self.received -= n

    return ServerListener, ClientListener


# ---- trio servers ------------------------------------------------------------


async def _trio_server(impl: str, mode: str) -> None:
    import functools

    async def handle_bytes(receive: Callable[[], Any], send: Callable[[bytes], Any]) -> None:
        while data := await receive():
            if mode == "echo":
                await send(data)
            elif mode == "slow":
                await trio.sleep(SLOW_PAUSE * max(1, len(data) / SLOW_READ))

    async with trio.open_nursery() as nursery:
        if impl == "tcp.trio":

            async def tcp_handler(stream: trio.SocketStream) -> None:
                size = SLOW_READ if mode == "slow" else 2**20
                await handle_bytes(lambda: stream.receive_some(size), stream.send_all)

            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, tcp_handler, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
        elif impl == "ws_stream.trio":
            from ws_stream.trio import WsStream, serve_websocket_stream

            async def stream_handler(stream: WsStream) -> None:
                size = SLOW_READ if mode == "slow" else 2**20
                await handle_bytes(lambda: stream.receive_some(size), stream.send_all)

            listeners = await nursery.start(
                functools.partial(
                    serve_websocket_stream,
                    stream_handler,
                    0,
                    host="127.0.0.1",
                    ping_interval=None,
                    max_size=MAX,
                )
            )
            port = listeners[0].socket.getsockname()[1]
        elif impl == "websockets.trio":
            from websockets.trio.server import serve

            async def ws_handler(ws: Any) -> None:
                async def receive() -> bytes:
                    try:
                        return bytes(await ws.recv())
                    except Exception:
                        return b""

                await handle_bytes(receive, ws.send)

            server = await nursery.start(
                functools.partial(serve, ws_handler, 0, host="127.0.0.1", **WS)
            )
            port = server.listeners[0].socket.getsockname()[1]
        else:
            from trio_websocket import serve_websocket

            async def tw_handler(request: Any) -> None:
                ws = await request.accept()

                async def receive() -> bytes:
                    try:
                        return bytes(await ws.get_message())
                    except Exception:
                        return b""

                await handle_bytes(receive, ws.send_message)

            server = await nursery.start(
                functools.partial(
                    serve_websocket,
                    tw_handler,
                    "127.0.0.1",
                    0,
                    ssl_context=None,
                    max_message_size=MAX,
                )
            )
            port = server.port
        print(port, flush=True)


# ---- blocking servers (a thread per connection) ------------------------------------


def _sync_server(impl: str, mode: str) -> None:
    def handle(receive: Callable[[], bytes], send: Callable[[bytes], Any]) -> None:
        while data := receive():
            if mode == "echo":
                send(data)
            elif mode == "slow":
                time.sleep(SLOW_PAUSE * max(1, len(data) / SLOW_READ))

    size = SLOW_READ if mode == "slow" else 2**20
    if impl == "tcp.sync":
        import socketserver

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)  # as websockets
                handle(lambda: sock.recv(size), sock.sendall)

        class TCPServer(socketserver.ThreadingTCPServer):
            daemon_threads = True
            request_queue_size = 128

        server: Any = TCPServer(("127.0.0.1", 0), Handler)
    elif impl == "ws_stream.sync":
        import ws_stream.sync

        def stream_handler(sock: Any) -> None:
            handle(lambda: sock.recv(size), sock.sendall)

        server = ws_stream.sync.serve(
            stream_handler, "127.0.0.1", 0, ping_interval=None, max_size=MAX
        )
    else:
        from websockets.sync.server import serve

        def ws_handler(ws: Any) -> None:
            def receive() -> bytes:
                try:
                    return bytes(ws.recv())
                except Exception:
                    return b""

            handle(receive, ws.send)

        server = serve(ws_handler, "127.0.0.1", 0, **WS)
    print(server.socket.getsockname()[1], flush=True)
    server.serve_forever()


class SyncClient:
    """send / receive-exactly / close over the blocking implementations."""

    def __init__(self, impl: str) -> None:
        self.impl = impl

    def open(self, port: int) -> None:
        uri = f"ws://127.0.0.1:{port}/"
        self.s: Any
        if self.impl == "tcp.sync":
            self.s = socket.create_connection(("127.0.0.1", port))
            self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        elif self.impl == "ws_stream.sync":
            import ws_stream.sync

            self.s = ws_stream.sync.connect(uri, ping_interval=None, max_size=MAX)
        else:
            from websockets.sync.client import connect

            self.s = connect(uri, **WS)

    def send(self, data: bytes) -> None:
        if self.impl in ("tcp.sync", "ws_stream.sync"):
            self.s.sendall(data)
        else:
            self.s.send(data)

    def recv_exactly(self, n: int) -> None:
        got = 0
        stream = self.impl in ("tcp.sync", "ws_stream.sync")
        while got < n:
            got += len(self.s.recv(n - got) if stream else self.s.recv())

    def close(self) -> None:
        """Close and wait until the peer has read everything."""
        if self.impl == "tcp.sync":
            self.s.shutdown(socket.SHUT_WR)
            while self.s.recv(2**16):  # the server closes after reading EOF
                pass
        self.s.close()


def _sync_op(impl: str, port: int, op: str, kw: dict[str, Any]) -> Any:
    if op == "idle":
        clients = [SyncClient(impl) for _ in range(kw["count"])]
        t0 = time.perf_counter()
        for c in clients:
            c.open(port)
        rate = kw["count"] / (time.perf_counter() - t0)
        kw["hold"]()
        for c in clients:
            c.close()
        return rate
    client = SyncClient(impl)
    client.open(port)
    if op == "bulk":
        chunk = os.urandom(kw["size"])
        t0 = time.perf_counter()
        for _ in range(kw["total"] // kw["size"]):
            client.send(chunk)
        client.close()  # the closing handshake: the peer read everything
        return time.perf_counter() - t0
    msg = os.urandom(64)
    out = []
    for _ in range(kw["rounds"]):
        t0 = time.perf_counter()
        client.send(msg)
        client.recv_exactly(64)
        out.append(time.perf_counter() - t0)
    client.close()
    return out


# ---- clients -------------------------------------------------------------------


class AsyncioClient:
    """send / receive-exactly / close over each asyncio implementation."""

    def __init__(self, impl: str) -> None:
        self.impl = impl

    async def open(self, port: int) -> None:
        import websockets.asyncio.client as wsc

        import ws_stream

        uri = f"ws://127.0.0.1:{port}/"
        if self.impl == "tcp.asyncio":
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        elif self.impl == "picows":
            import picows

            self.binary = picows.WSMsgType.BINARY
            self.listener: Any  # our ClientListener
            self.pw, self.listener = await picows.ws_connect(
                _picows_listeners()[1], uri, max_frame_size=MAX, use_aiofastnet=False
            )
        elif self.impl.startswith("ws_stream"):
            self.reader, self.writer = await ws_stream.open_connection(
                uri, ping_interval=None, max_size=MAX
            )
        else:
            self.ws = await wsc.connect(uri, **WS)
            if self.impl == "naive_pump":
                self.reader = asyncio.StreamReader(limit=2**20)
                self.pump = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for msg in self.ws:
            self.reader.feed_data(msg)  # type: ignore[arg-type]
        self.reader.feed_eof()

    async def send(self, data: bytes) -> None:
        if self.impl in ("websockets.asyncio", "naive_pump"):
            await self.ws.send(data)
        elif self.impl == "picows":
            self.pw.send(self.binary, data)
            if not self.listener.writable.is_set():
                await self.listener.writable.wait()
        else:
            self.writer.write(data)
            await self.writer.drain()

    async def recv_exactly(self, n: int) -> None:
        if self.impl == "websockets.asyncio":
            got = 0
            while got < n:
                got += len(await self.ws.recv())
        elif self.impl == "picows":
            await self.listener.receive_exactly(n)
        else:
            await self.reader.readexactly(n)

    async def close(self) -> None:
        """Close and wait until the peer has read everything."""
        if self.impl in ("websockets.asyncio", "naive_pump"):
            await self.ws.close()
        elif self.impl == "picows":
            import picows

            self.pw.send_close(picows.WSCloseCode.OK)
            await self.pw.wait_disconnected()  # the listener disconnects on the answer
        elif self.impl == "tcp.asyncio":
            self.writer.write_eof()
            await self.reader.read()  # the server closes after reading EOF
            self.writer.close()
        else:
            await self.writer.get_extra_info("ws_stream").close()


class TrioClient:
    """send / receive-exactly / close over each trio implementation."""

    def __init__(self, impl: str) -> None:
        self.impl = impl

    async def open(self, port: int, nursery: trio.Nursery) -> None:
        uri = f"ws://127.0.0.1:{port}/"
        if self.impl == "tcp.trio":
            self.s: Any = await trio.open_tcp_stream("127.0.0.1", port)
        elif self.impl == "ws_stream.trio":
            from ws_stream.trio import connect_stream

            self.s = await connect_stream(nursery, uri, ping_interval=None, max_size=MAX)
        elif self.impl == "websockets.trio":
            from websockets.trio.client import connect

            self._cm = connect(uri, **WS)
            self.s = await self._cm.__aenter__()
        else:
            from trio_websocket import connect_websocket_url

            self.s = await connect_websocket_url(nursery, uri, max_message_size=MAX)

    async def send(self, data: bytes) -> None:
        if self.impl in ("tcp.trio", "ws_stream.trio"):
            await self.s.send_all(data)
        elif self.impl == "websockets.trio":
            await self.s.send(data)
        else:
            await self.s.send_message(data)

    async def recv_exactly(self, n: int) -> None:
        got = 0
        while got < n:
            if self.impl in ("tcp.trio", "ws_stream.trio"):
                got += len(await self.s.receive_some(n - got))
            elif self.impl == "websockets.trio":
                got += len(await self.s.recv())
            else:
                got += len(await self.s.get_message())

    async def close(self) -> None:
        if self.impl == "tcp.trio":
            await self.s.send_eof()
            while await self.s.receive_some():
                pass
            await self.s.aclose()
        elif self.impl == "websockets.trio":
            await self._cm.__aexit__(None, None, None)
        else:
            await self.s.aclose()


# ---- client operations: one call each, on the implementation's own runtime ------


def run_client(impl: str, port: int, op: str, **kw: Any) -> Any:
    impl = split_impl(impl)[0]
    runtime = IMPLS[impl]
    if runtime == "sync":
        return _sync_op(impl, port, op, kw)
    if runtime == "trio":
        return trio.run(_trio_op, impl, port, op, kw)
    coro = _asyncio_op(impl, port, op, kw)
    if runtime == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


async def _asyncio_op(impl: str, port: int, op: str, kw: dict[str, Any]) -> Any:
    if op == "idle":
        return await _asyncio_idle(impl, port, kw["count"], kw["hold"])
    client = AsyncioClient(impl)
    await client.open(port)
    return await _op(client, op, kw)


async def _trio_op(impl: str, port: int, op: str, kw: dict[str, Any]) -> Any:
    async with trio.open_nursery() as nursery:
        if op == "idle":
            result = await _trio_idle(impl, port, kw["count"], kw["hold"], nursery)
        else:
            client = TrioClient(impl)
            await client.open(port, nursery)
            result = await _op(client, op, kw)
        nursery.cancel_scope.cancel()
    return result


async def _op(client: Any, op: str, kw: dict[str, Any]) -> Any:
    if op == "bulk":
        chunk = os.urandom(kw["size"])
        t0 = time.perf_counter()
        for _ in range(kw["total"] // kw["size"]):
            await client.send(chunk)
        await client.close()  # returns once the peer read everything
        return time.perf_counter() - t0
    if op == "rtt":
        msg = os.urandom(64)
        out = []
        for _ in range(kw["rounds"]):
            t0 = time.perf_counter()
            await client.send(msg)
            await client.recv_exactly(64)
            out.append(time.perf_counter() - t0)
        await client.close()
        return out
    raise ValueError(op)


async def _asyncio_idle(impl: str, port: int, count: int, hold: Callable[[], None]) -> float:
    clients = [AsyncioClient(impl) for _ in range(count)]
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(100)

    async def one(c: AsyncioClient) -> None:
        async with sem:
            await c.open(port)

    await asyncio.gather(*(one(c) for c in clients))
    rate = count / (time.perf_counter() - t0)
    await asyncio.to_thread(hold)  # the suite samples the server's memory now
    for c in clients:
        if c.impl in ("websockets.asyncio", "naive_pump"):
            c.ws.transport.abort()
        elif c.impl == "picows":
            c.pw.disconnect(graceful=False)
        else:
            c.writer.transport.abort()
    return rate


async def _trio_idle(
    impl: str, port: int, count: int, hold: Callable[[], None], nursery: trio.Nursery
) -> float:
    clients = [TrioClient(impl) for _ in range(count)]
    t0 = time.perf_counter()
    if impl == "websockets.trio":
        # Its connect() opens a nursery in the calling task: connections are
        # opened one after the other, each nested in the same task.
        async with contextlib.AsyncExitStack() as stack:
            for c in clients:
                await c.open(port, nursery)
                stack.push_async_exit(c._cm)
            rate = count / (time.perf_counter() - t0)
            await trio.to_thread.run_sync(hold)
        return rate  # (the stack closed them, gracefully, one by one)
    limiter = trio.CapacityLimiter(100)

    async def one(c: TrioClient) -> None:
        async with limiter:
            await c.open(port, nursery)

    async with trio.open_nursery() as opening:
        for c in clients:
            opening.start_soon(one, c)
    rate = count / (time.perf_counter() - t0)
    await trio.to_thread.run_sync(hold)
    return rate


if __name__ == "__main__":
    impl, mode = sys.argv[1], sys.argv[2]
    runtime = IMPLS[split_impl(impl)[0]]
    if runtime == "sync":
        _sync_server(impl, mode)
    elif runtime == "trio":
        trio.run(_trio_server, impl, mode)
    elif runtime == "uvloop":
        import uvloop

        uvloop.run(_asyncio_server(impl, mode))
    else:
        asyncio.run(_asyncio_server(impl, mode))
