"""``writer.wait_closed()`` returns once TCP is closed, not when the close frame arrives.

The stream's protocol hears at the peer's close frame that the byte stream is
over; asyncio's ``StreamWriter.wait_closed()`` returned there, before TCP
ended. A program that then ended its loop left its socket open (CLOSE-WAIT),
and the server waited its whole close timeout for the end of TCP (a 10 s log
line: ``tests/cli/test_unix.py`` was flaky for that). Runs on asyncio's default
loop and on uvloop (conftest).
"""

from __future__ import annotations

import asyncio

import ws_stream


async def test_wait_closed_returns_after_tcp_closed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        writer.close()  # the server closes first

    async with await ws_stream.start_server(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        for _ in range(20):
            reader, writer = await ws_stream.open_connection(f"ws://127.0.0.1:{port}/")
            stream = writer.get_extra_info("ws_stream")
            assert await reader.read() == b"bye"
            async with asyncio.timeout(5):
                await writer.wait_closed()
            # TCP is closed now: the stream's own wait returns without waiting.
            waiting = asyncio.ensure_future(stream.wait_closed())
            await asyncio.sleep(0)
            assert waiting.done(), "writer.wait_closed() returned before TCP was closed"
