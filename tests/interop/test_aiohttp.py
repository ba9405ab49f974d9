"""aiohttp (client and server) against our asyncio shell.

aiohttp is in the ``test`` extra; without it these tests are skipped and say so.
aiohttp runs in the same event loop as our side, over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import pytest

from .matrix import CHUNK, PEER_CLOSE, PING, SIZE, TEXT, params
from .ours import READY, STEP_TIMEOUT, asyncio_client_case, asyncio_server_case, check

aiohttp = pytest.importorskip(
    "aiohttp", reason="aiohttp is not installed: pip install -e '.[test]'"
)
from aiohttp import web  # noqa: E402


async def play(ws: Any, case: str) -> dict[str, Any]:
    """The peer's side of ``case`` on an aiohttp WebSocket (client or server response)."""
    if case == "bulk":
        data = os.urandom(SIZE)
        received = hashlib.sha256()
        recv_len = 0

        async def send() -> None:
            for start in range(0, SIZE, CHUNK):
                await ws.send_bytes(data[start : start + CHUNK])

        async def receive() -> None:
            nonlocal recv_len
            while recv_len < SIZE:
                msg = await ws.receive()
                assert msg.type is aiohttp.WSMsgType.BINARY, msg
                received.update(msg.data)
                recv_len += len(msg.data)

        await asyncio.gather(send(), receive())
        await ws.close(code=1000)
        return {
            "sent_sha": hashlib.sha256(data).hexdigest(),
            "recv_sha": received.hexdigest(),
            "recv_len": recv_len,
        }
    if case == "our_close":
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        return {"close_code": msg.data, "close_reason": msg.extra}
    ready = await ws.receive()
    assert (ready.type, ready.data) == (aiohttp.WSMsgType.BINARY, READY), ready
    if case == "ping":
        await ws.ping(PING)  # autoping is off: the pong comes out of receive()
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.PONG, msg
        await ws.close(code=1000)
        return {"pong": bytes(msg.data).hex()}
    if case == "text":
        await ws.send_str(TEXT)
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        return {"close_code": msg.data, "close_reason": msg.extra}
    if case == "peer_close":
        code, reason = PEER_CLOSE
        await ws.close(code=code, message=reason.encode())
        return {"close_code": ws.close_code}
    raise AssertionError(f"unknown case {case}")


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 2 * STEP_TIMEOUT))


@pytest.mark.parametrize("case", params("aiohttp-client"))
def test_aiohttp_client(case: str) -> None:
    async def peer(uri: str) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(uri, autoping=case != "ping") as ws,
        ):
            return await play(ws, case)

    async def main() -> None:
        ours, report = await asyncio_server_case(case, peer)
        check(case, ours, report)

    run(main())


@pytest.mark.parametrize("case", params("aiohttp-server"))
def test_aiohttp_server(case: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        report: asyncio.Future[dict[str, Any]] = loop.create_future()

        async def handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(autoping=case != "ping")
            await ws.prepare(request)
            try:
                report.set_result(await play(ws, case))
            except Exception as exc:
                report.set_exception(exc)
            return ws

        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            ours = await asyncio_client_case(case, f"ws://127.0.0.1:{port}/")
            async with asyncio.timeout(STEP_TIMEOUT):
                peer = await report
        finally:
            await runner.cleanup()
        check(case, ours, peer)

    run(main())
