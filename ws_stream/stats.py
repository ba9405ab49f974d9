"""Per-stream counters, kept by every runtime shell (``stream.stats``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StreamStats"]


@dataclass(slots=True)
class StreamStats:
    """Counters of one connection; updated in place by the shell that owns it.

    ``bytes_*`` count stream payload bytes; ``frames_received`` counts every
    frame (data and control) from the peer, ``frames_sent`` the data frames we
    sent. ``last_latency`` is the round trip of the latest answered ping, in
    seconds (None before one). ``last_frame_at`` is the time (the runtime's
    monotonic clock) of the latest frame from the peer; ``read_resumed_at``
    the time the stream last resumed reading the connection after read
    backpressure (the application had let the buffer pass ``limit``): no frame
    could arrive before it, which is not the peer's silence.
    """

    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    pings_sent: int = 0
    pongs_received: int = 0
    last_latency: float | None = None
    last_frame_at: float | None = None
    read_resumed_at: float | None = None
