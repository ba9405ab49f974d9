"""Many streams over one byte stream: the yamux protocol (``ws_stream.mux``).

One WebSocket (or any asyncio byte stream) carries any number of independent,
flow-controlled streams, each a real ``StreamReader``/``StreamWriter`` pair::

    stream = await ws_stream.connect_stream("ws://127.0.0.1:8765/")
    session = await ws_stream.mux.open_session(stream.reader, stream.writer, client=True)
    reader, writer = await session.open_stream()

The wire format is HashiCorp's yamux (version 0), so Go (hashicorp/yamux),
Node (yamux-js) and Rust (yamux) peers interoperate. The protocol lives in
:mod:`._machine` (pure, tested by feeding bytes); :mod:`.asyncio` is the
asyncio shell.
"""

from __future__ import annotations

from ._machine import DEFAULT_WINDOW, GoAwayCode, MuxError
from .asyncio import MuxTransport, Session, open_session

__all__ = ["DEFAULT_WINDOW", "GoAwayCode", "MuxError", "MuxTransport", "Session", "open_session"]
