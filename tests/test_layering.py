"""The package stands on websockets' public API; one module may name its internals.

ARCHITECTURE.md: only ``ws_stream/asyncio/adopt.py`` (taking over an
already-open websockets connection) may touch a private websockets attribute,
and no shell is built on websockets' own asyncio, threading or legacy
connections (each drives the Sans-I/O protocol through the engine).
"""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ws_stream"
ADOPT = PACKAGE / "asyncio" / "adopt.py"

#: websockets' internals that earlier versions of the shells used.
PRIVATE = re.compile(
    r"\.recv_frame\b|\.events_received *=|\.parser_exc\b|\.close_rcvd\b|\.close_sent\b"
    r"|\.writes\b|\.connection_lost_waiter|\.send_data\(|\.recv_messages\b|\.protocol_mutex"
    r"|\.recv_flow_control|\.close_deadline|\.connection_exc|\.recv_events\b|\.keepalive_task"
)
#: websockets' own connection flavours (I/O included): only adopt.py wraps one.
CONNECTIONS = re.compile(
    r"^\s*(from|import)\s+websockets\.(sync|legacy|asyncio|trio)\b", re.MULTILINE
)


def _sources() -> list[Path]:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 30  # the package is where we think it is
    return sources


def test_no_private_websockets_name_outside_the_adopting_module() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): PRIVATE.findall(path.read_text())
        for path in _sources()
        if path != ADOPT and PRIVATE.findall(path.read_text())
    }
    assert not offenders
    assert PRIVATE.findall(ADOPT.read_text())  # the guard sees what it should


def test_no_shell_is_built_on_a_websockets_connection_flavour() -> None:
    wrapping = {ADOPT, PACKAGE / "asyncio" / "stream.py"}  # WsStream(websocket) names the type
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in _sources()
        if path not in wrapping and CONNECTIONS.findall(path.read_text())
    ]
    assert not offenders
