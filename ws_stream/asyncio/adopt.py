"""Taking over an already-open websockets asyncio connection.

``WsStream(websocket)`` wraps a connection that websockets' asyncio server or
client opened (in your own ``websockets.asyncio.server.serve`` handler, after
routing and authentication). This is the one module of ws_stream that touches
websockets' private attributes: websockets has no public way to hand a
connection's TCP transport over. Each touch says what it relies on, and
:func:`check_adoptable` fails loudly, naming the websockets version, if a
touched name is missing (tests/asyncio/test_adopt.py runs it on every
websockets version CI installs).

From the takeover on, websockets' ``Connection`` no longer receives anything:
the TCP transport's protocol is ws_stream's, which drives the same Sans-I/O
protocol object through the engine. When TCP closes, the connection is told
(its public ``connection_lost()``), so ``websocket.wait_closed()``, the state
and websockets' server bookkeeping (``Server.wait_closed()``) stay right.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from websockets.asyncio.connection import Connection
from websockets.frames import Close, Frame
from websockets.protocol import Protocol

__all__ = ["Adopted", "AdoptionError", "adopt", "check_adoptable"]

# The private attributes touched, per object (checked by check_adoptable).
_CONNECTION_ATTRIBUTES = ("transport", "recv_messages", "keepalive_task", "connection_lost_waiter")
_ASSEMBLER_ATTRIBUTES = ("frames", "paused")
_PROTOCOL_ATTRIBUTES = ("close_rcvd",)


class AdoptionError(RuntimeError):
    """This websockets version lacks what taking over a connection relies on."""


@dataclass
class Adopted:
    """What the asyncio shell needs to drive an adopted connection."""

    tcp: asyncio.Transport
    protocol: Protocol
    frames: list[Frame]  # received and queued by websockets, not read by anyone
    peer_close: Close | None  # the peer's close frame, if it came already
    lost: bool  # TCP is gone already
    extra: dict[str, Any]  # get_extra_info() names the connection answers
    on_lost: Callable[[Exception | None], None]  # tell websockets TCP is gone


def check_adoptable(websocket: Connection) -> None:
    """Raise :exc:`AdoptionError` if a name :func:`adopt` relies on is missing.

    Raises:
        AdoptionError: the installed websockets changed its internals.
    """
    missing = [name for name in _CONNECTION_ATTRIBUTES if not hasattr(websocket, name)]
    assembler = getattr(websocket, "recv_messages", None)
    missing += [f"recv_messages.{n}" for n in _ASSEMBLER_ATTRIBUTES if not hasattr(assembler, n)]
    frames = getattr(assembler, "frames", None)
    if frames is not None and not hasattr(frames, "queue"):
        missing.append("recv_messages.frames.queue")
    missing += [f"protocol.{n}" for n in _PROTOCOL_ATTRIBUTES if not hasattr(websocket.protocol, n)]
    if missing:
        raise AdoptionError(
            f"ws_stream cannot take over a connection of websockets {version('websockets')}: "
            f"it lacks {', '.join(missing)}. Use ws_stream.asyncio.open_connection() / "
            "start_server() instead of wrapping, or install a websockets version ws_stream "
            "supports (see its pyproject.toml)"
        )


def adopt(websocket: object) -> Adopted:
    """Stop websockets from handling ``websocket`` and return what it had.

    Raises:
        TypeError: ``websocket`` is not a websockets asyncio connection.
        AdoptionError: see :func:`check_adoptable`.
    """
    if not isinstance(websocket, Connection):
        raise TypeError(
            "WsStream wraps a websockets.asyncio connection (ClientConnection or "
            "ServerConnection), an accepted Starlette/FastAPI WebSocket or an aiohttp "
            f"WebSocketResponse / ClientWebSocketResponse, not {type(websocket).__name__}"
        )
    check_adoptable(websocket)
    # Connection.transport: the TCP transport, set in connection_made().
    tcp: asyncio.Transport = websocket.transport
    # Connection.keepalive_task: websockets' pings would race ours.
    task = websocket.keepalive_task
    if task is not None:
        task.cancel()
        websocket.keepalive_task = None
    # Connection.recv_messages (the Assembler): frames received and not read
    # yet are in .frames (a SimpleQueue, whose .queue is a deque). When it
    # paused the transport (its queue was full), it expects to resume it.
    assembler = websocket.recv_messages
    frames: list[Frame] = list(assembler.frames.queue)
    assembler.frames.queue.clear()
    if assembler.paused:
        assembler.paused = False
        tcp.resume_reading()
    # Protocol.close_rcvd: the peer's close frame, which websockets handled
    # (and echoed) before the takeover.
    peer_close: Close | None = websocket.protocol.close_rcvd
    # Connection.connection_lost_waiter: done once TCP is gone.
    lost = websocket.connection_lost_waiter.done()

    def on_lost(exc: Exception | None) -> None:
        if not websocket.connection_lost_waiter.done():
            websocket.connection_lost(exc)

    extra = {
        "websocket": websocket,
        "peername": websocket.remote_address,
        "sockname": websocket.local_address,
        "subprotocol": websocket.subprotocol,
        "request": websocket.request,
        "response": websocket.response,
    }
    return Adopted(tcp, websocket.protocol, frames, peer_close, lost, extra, on_lost)
