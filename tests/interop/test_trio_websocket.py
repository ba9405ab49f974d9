"""wsproto through trio-websocket (client and server) against our trio shell.

trio-websocket is in the ``test`` extra; without it these tests are skipped
and say so. Our side is ``ws_stream.trio``: serve_websocket_stream for the
trio-websocket client, open_websocket_stream for the trio-websocket server.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any

import pytest
import trio

from ws_stream.trio import WsStream, open_websocket_stream, serve_websocket_stream

from .matrix import CHUNK, FRAGMENTS, PEER_CLOSE, PING, SIZE, TEXT, params
from .ours import READY, STEP_TIMEOUT, Ours, check, play_trio, received_frames

trio_websocket = pytest.importorskip(
    "trio_websocket", reason="trio-websocket is not installed: pip install -e '.[test]'"
)
wsproto_events = pytest.importorskip(
    "wsproto.events", reason="wsproto is not installed: pip install -e '.[test]'"
)

pytestmark = pytest.mark.trio
ConnectionClosed = trio_websocket.ConnectionClosed


async def play(ws: Any, case: str) -> dict[str, Any]:
    """The peer's side of ``case`` on a trio-websocket WebSocketConnection."""
    if case == "bulk":
        data = os.urandom(SIZE)
        received = hashlib.sha256()
        recv_len = 0

        async def send() -> None:
            for start in range(0, SIZE, CHUNK):
                await ws.send_message(data[start : start + CHUNK])

        async def receive() -> None:
            nonlocal recv_len
            while recv_len < SIZE:
                message = await ws.get_message()
                assert isinstance(message, bytes), message
                received.update(message)
                recv_len += len(message)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            nursery.start_soon(receive)
        await ws.aclose(1000)
        return {
            "sent_sha": hashlib.sha256(data).hexdigest(),
            "recv_sha": received.hexdigest(),
            "recv_len": recv_len,
        }
    if case == "fragmented":
        # trio-websocket sends whole messages only; its (private) _send() hands a
        # wsproto event to wsproto, which frames a message with
        # message_finished=False as a non-final frame: wsproto does the framing.
        parts = [os.urandom(size) for size in FRAGMENTS]
        for i, part in enumerate(parts):
            finished = i == len(parts) - 1
            await ws._send(wsproto_events.BytesMessage(data=part, message_finished=finished))
        await ws.aclose(1000)
        data = b"".join(parts)
        return {"sent_sha": hashlib.sha256(data).hexdigest(), "sent_len": len(data)}
    if case == "our_close":
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        return {"close_code": closed.value.reason.code, "close_reason": closed.value.reason.reason}
    assert await ws.get_message() == READY
    if case == "ping":
        await ws.ping(PING)  # returns when the pong with this payload arrives
        await ws.aclose(1000)
        return {"pong": PING.hex()}
    if case == "text":
        await ws.send_message(TEXT)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        return {"close_code": closed.value.reason.code, "close_reason": closed.value.reason.reason}
    if case == "peer_close":
        await ws.aclose(*PEER_CLOSE)
        return {"close_code": ws.closed.code}
    raise AssertionError(f"unknown case {case}")


@pytest.mark.parametrize("case", params("trio-websocket-client"))
async def test_trio_websocket_client(case: str) -> None:
    result: list[Ours] = []

    async def handler(stream: WsStream) -> None:
        result.append(await play_trio(stream, case))

    with received_frames() as frames, trio.fail_after(2 * STEP_TIMEOUT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(
                    serve_websocket_stream,
                    handler,
                    0,
                    host="127.0.0.1",
                    ping_interval=None,
                    # When our server closes (text, our_close), it half-closes TCP
                    # after the closing handshake, as websockets does, and waits for
                    # the client's FIN. trio-websocket 0.12's client never closes its
                    # socket then (its reader stops at EOF, and aclose() returns early
                    # once the WebSocket is closed), so our server drops TCP after
                    # close_timeout: keep it short.
                    close_timeout=2,
                )
            )
            port = listeners[0].socket.getsockname()[1]
            async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
                report = await play(ws, case)
            with trio.fail_after(STEP_TIMEOUT):
                while not result:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    ours = result[0]
    ours.frames = frames
    check(case, ours, report)


@pytest.mark.parametrize("case", params("trio-websocket-server"))
async def test_trio_websocket_server(case: str) -> None:
    reports: list[dict[str, Any]] = []

    async def handler(request: Any) -> None:
        ws = await request.accept()
        reports.append(await play(ws, case))

    with received_frames() as frames, trio.fail_after(2 * STEP_TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(
                    trio_websocket.serve_websocket, handler, "127.0.0.1", 0, ssl_context=None
                )
            )
            async with open_websocket_stream(
                f"ws://127.0.0.1:{server.port}/", ping_interval=None
            ) as stream:
                ours = await play_trio(stream, case)
            with trio.fail_after(STEP_TIMEOUT):
                while not reports:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    ours.frames = frames
    check(case, ours, reports[0])
