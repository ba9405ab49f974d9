"""The blocking shell stands on websockets' public Sans-I/O API only (ARCHITECTURE.md)."""

from __future__ import annotations

import re
from pathlib import Path

SYNC = Path(__file__).resolve().parents[2] / "ws_stream" / "sync"

#: websockets' private internals the old threading-based shell used.
PRIVATE = re.compile(
    r"\.recv_frame\b|\.events_received *=|\.parser_exc\b|\.close_rcvd\b|\.close_sent\b"
    r"|\.writes\b|\.connection_lost_waiter|\.send_data\(|\.recv_messages\b|\.protocol_mutex"
    r"|\.recv_flow_control|\.close_deadline|\.connection_exc|\.recv_events\b|\.keepalive_task"
)
THREADING_FLAVOUR = re.compile(r"^\s*(from|import)\s+websockets\.(sync|legacy)\b", re.MULTILINE)


def test_no_private_websockets_attribute_and_no_websockets_sync() -> None:
    sources = sorted(SYNC.glob("*.py"))
    assert len(sources) >= 5
    for path in sources:
        text = path.read_text()
        assert not PRIVATE.findall(text), f"{path.name} uses {PRIVATE.findall(text)}"
        assert not THREADING_FLAVOUR.findall(text), f"{path.name} imports websockets.sync"
