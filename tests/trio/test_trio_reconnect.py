"""ws_stream.trio.reconnecting against a real server stopped and restarted on one port."""

from __future__ import annotations

import functools

import pytest
import trio

import ws_stream
from ws_stream import Backoff, ReconnectPolicy, Status
from ws_stream.trio import WsStream, reconnecting, serve_websocket_stream

from ..ports import free_port, refused_port
from .helpers import TrioRawPeer, start_server

pytestmark = pytest.mark.trio


class Restartable:
    def __init__(self, nursery: trio.Nursery, port: int) -> None:
        self.nursery = nursery
        self.port = port
        self.count = 0
        self.scope: trio.CancelScope | None = None

    async def handler(self, stream: WsStream) -> None:
        self.count += 1
        await stream.send_all(f"hello {self.count}\n".encode())
        while data := await stream.receive_some():
            await stream.send_all(data)

    async def _serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self.scope:
            await serve_websocket_stream(
                self.handler,
                self.port,
                host="127.0.0.1",
                ping_interval=None,
                task_status=task_status,  # type: ignore[arg-type]
            )

    async def start(self) -> None:
        await self.nursery.start(self._serve)

    def stop(self) -> None:
        assert self.scope is not None
        self.scope.cancel()  # listeners and live connections go away


async def read_line(stream: WsStream) -> bytes:
    line = b""
    with trio.fail_after(5):
        while not line.endswith(b"\n"):
            chunk = await stream.receive_some(1)
            if not chunk:
                break
            line += chunk
    return line


async def test_fresh_stream_per_connection_and_on_connect(nursery: trio.Nursery) -> None:
    server = Restartable(nursery, free_port())
    await server.start()
    seen: list[WsStream] = []

    async def on_connect(stream: WsStream) -> None:
        seen.append(stream)

    policy = ReconnectPolicy(Backoff(0.1, 2.0, jitter=0, seed=3), on_connect=on_connect)
    greetings = []
    with trio.fail_after(20):
        async with reconnecting(
            f"ws://127.0.0.1:{server.port}/", policy=policy, ping_interval=None
        ) as conn:
            async for stream in conn:
                greetings.append(await read_line(stream))
                if len(greetings) == 3:
                    break
                server.stop()
                with pytest.raises(trio.BrokenResourceError):
                    while await stream.receive_some():
                        pass
                await server.start()
    assert greetings == [b"hello 1\n", b"hello 2\n", b"hello 3\n"]
    assert len(seen) == 3 and len({id(s) for s in seen}) == 3
    assert conn.state.status is Status.CLOSED
    assert conn.state.reconnect_count == 2
    assert conn.state.error_count >= 2  # two connections lost without a close frame


async def test_fatal_first_failure_and_max_attempts(nursery: trio.Nursery) -> None:
    async def echo(stream: WsStream) -> None:
        await trio.sleep_forever()

    uri = await start_server(nursery, echo, origins=["https://allowed.example"])
    with pytest.raises(ws_stream.HandshakeError) as info:
        async with reconnecting(uri, origin="https://other.example") as conn:
            async for _ in conn:
                raise AssertionError("refused")
    assert info.value.status == 403

    policy = ReconnectPolicy(Backoff(0.05, 1.0, jitter=0), max_attempts=3)
    with pytest.raises(OSError):
        async with reconnecting(f"ws://127.0.0.1:{refused_port()}/", policy=policy) as conn:
            async for _ in conn:
                raise AssertionError("nothing listens")
    assert conn.state.error_count == 3


async def test_idle_timeout_sends_1001(nursery: trio.Nursery) -> None:
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, silent_websocket_peer, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    policy = ReconnectPolicy(Backoff(0.1, jitter=0), idle_timeout=0.5, max_attempts=1)
    with trio.fail_after(10):
        async with reconnecting(
            f"ws://127.0.0.1:{port}/", policy=policy, close_timeout=0.5
        ) as conn:
            async for stream in conn:
                with pytest.raises(trio.BrokenResourceError):
                    await stream.receive_some()  # the silent peer never answers our 1001
                break
    assert isinstance(conn.state.last_error, ws_stream.IdleTimeoutError)
    assert CLOSES == [(1001, "idle timeout")]


CLOSES: list[tuple[int, str]] = []


async def silent_websocket_peer(tcp: trio.SocketStream) -> None:
    """Accept the handshake, then answer nothing (no pong, no close)."""
    from ws_stream._options import StreamOptions
    from ws_stream.trio.handshake import server_handshake

    result = await server_handshake(tcp, StreamOptions())
    assert result is not None
    peer = TrioRawPeer(tcp)
    CLOSES.append(await peer.recv_close())
    await trio.sleep(5)
