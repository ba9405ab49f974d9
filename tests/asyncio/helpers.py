"""Shared helpers for the asyncio tests: a ws_stream server on a random port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import ws_stream

Callback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def stream_server(cb: Callback, **options: Any) -> AsyncIterator[str]:
    """A ws_stream server on 127.0.0.1 with a random port; yields its ws:// URI."""
    options.setdefault("ping_interval", None)
    async with await ws_stream.start_server(cb, "127.0.0.1", 0, **options) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/"


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def stream_of(writer: asyncio.StreamWriter) -> ws_stream.WsStream:
    stream = writer.get_extra_info("ws_stream")
    assert isinstance(stream, ws_stream.WsStream)
    return stream


async def collect_events(stream: ws_stream.WsStream, timeout: float = 5.0) -> list[Any]:
    """Every event of a subscription made now, until Closed."""
    out = []
    async with asyncio.timeout(timeout):
        async for event in stream.events():
            out.append(event)
    return out


@contextlib.asynccontextmanager
async def accepting_server(
    **options: Any,
) -> AsyncIterator[tuple[int, asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]]:
    """A ws_stream server that queues each accepted (reader, writer); yields (port, queue)."""
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    done = asyncio.Event()

    async def cb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put((reader, writer))
        await done.wait()  # the test owns the connection

    options.setdefault("ping_interval", None)
    async with await ws_stream.start_server(cb, "127.0.0.1", 0, **options) as server:
        try:
            yield server.sockets[0].getsockname()[1], accepted
        finally:
            done.set()
