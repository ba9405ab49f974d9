"""Writes that cannot complete: bytes dropped with the connection are never reported as sent."""

from __future__ import annotations

import queue
import threading

from .rawpeer import raw_connection


def test_a_blocked_sendall_raises_when_the_peer_resets() -> None:
    """Bytes dropped with the connection are never reported as sent."""
    outcome: queue.Queue[BaseException | None] = queue.Queue()
    with raw_connection() as (sock, peer):  # the raw peer reads nothing

        def write() -> None:
            try:
                sock.sendall(b"x" * (64 * 2**20))
            except BaseException as exc:
                outcome.put(exc)
            else:
                outcome.put(None)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(0.5)
        assert writer.is_alive()  # blocked: TCP is full
        peer.reset_tcp()
        raised = outcome.get(timeout=10)
        assert isinstance(raised, ConnectionError), raised
