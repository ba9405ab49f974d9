"""Reverse tunnels (``serve --allow-reverse``): which listening addresses a client may ask for.

Pure. A ``forward --reverse`` client asks, in its handshake's
:data:`REVERSE_HEADER`, for ``serve`` to listen on ``HOST:PORT`` and to send
every connection made there back to it as a mux stream. Decided here, once:
the address must be an IP address and a port inside one of the
``--allow-reverse`` ranges (exactly that address: no name is resolved, no
wildcard widens it), and the connection must be a mux session (the
``yamux`` subprotocol); anything else is refused at the handshake (403 or
400), so the server never listens where the operator did not allow.
"""

from __future__ import annotations

import argparse
import ipaddress
from typing import Final, NamedTuple

from websockets.datastructures import Headers

from ..args import HostPort, port_number

__all__ = [
    "MUX_SUBPROTOCOL",
    "REVERSE_HEADER",
    "AllowedRange",
    "NotAllowed",
    "parse_allowed",
    "reverse_request",
]

#: The handshake header of a reverse tunnel's request: ``HOST:PORT``.
REVERSE_HEADER: Final = "X-WS-Stream-Reverse"
#: The subprotocol of a WebSocket that carries a yamux session.
MUX_SUBPROTOCOL: Final = "yamux"


class AllowedRange(NamedTuple):
    """``--allow-reverse HOST:LOW-HIGH`` (or ``HOST:PORT``)."""

    host: str
    low: int
    high: int

    def __str__(self) -> str:
        ports = str(self.low) if self.low == self.high else f"{self.low}-{self.high}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{ports}"


class NotAllowed(NamedTuple):
    """Refuse the handshake with ``status``; ``reason`` is logged and sent."""

    status: int
    reason: str


def _ip(text: str) -> str | None:
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def parse_allowed(text: str) -> AllowedRange:
    """``--allow-reverse``: ``IP:PORT`` or ``IP:LOW-HIGH``.

    Raises:
        argparse.ArgumentTypeError: anything else (the message says what).
    """
    host_text, sep, ports = text.rpartition(":")
    host = _ip(host_text)
    low_text, dash, high_text = ports.partition("-")
    low = port_number(low_text)
    high = port_number(high_text) if dash else low
    if not sep or host is None or low is None or high is None or not 1 <= low <= high <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected IP:PORT or IP:LOW-HIGH (for example 127.0.0.1:9000-9100; an IP "
            f"address, not a name; ports 1-65535), got {text!r}"
        )
    return AllowedRange(host, low, high)


def reverse_request(
    headers: Headers, allowed: tuple[AllowedRange, ...], *, mux: bool
) -> HostPort | NotAllowed | None:
    """The address a handshake asks ``serve`` to listen on, a refusal, or None (none asked)."""
    values = headers.get_all(REVERSE_HEADER)
    if not values:
        return None
    if len(values) > 1:
        return NotAllowed(400, f"more than one {REVERSE_HEADER} header")
    if not allowed:
        return NotAllowed(403, "this server allows no reverse tunnels (serve --allow-reverse)")
    if not mux:
        return NotAllowed(400, f"a reverse tunnel needs the {MUX_SUBPROTOCOL} subprotocol")
    text = values[0].strip()
    host_text, sep, port_text = text.rpartition(":")
    host = _ip(host_text)
    port = port_number(port_text)
    if not sep or host is None or port is None or not 1 <= port <= 65535:
        return NotAllowed(400, f"{REVERSE_HEADER} must be IP:PORT, got {text[:100]!r}")
    for entry in allowed:
        if entry.host == host and entry.low <= port <= entry.high:
            return HostPort(host, port)
    return NotAllowed(
        403,
        f"listening on {text[:100]} is not allowed (allowed: "
        + ", ".join(str(entry) for entry in allowed)
        + ")",
    )
