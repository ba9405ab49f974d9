"""What ``ws-stream`` tells the user on stderr, and how it words it.

Owns: the logging set-up (levels from ``-v``/``-q``, websockets' own logger
held at WARNING so that ``-v`` never shows handshake headers), the
``ws-stream CMD: [level: ]message`` format, the ``--stats`` lines and the
summary at exit, the line that ends each connection, and the small formatters
everything else uses to show things (addresses, byte counts, URIs without
their password, exceptions).

Nothing here decides what happens to a connection; it only says what did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any, Protocol

from ..asyncio import WsStream

__all__ = [
    "SessionCounts",
    "addr",
    "configure_logging",
    "describe",
    "fields",
    "human",
    "log_connection",
    "log_end",
    "stats_output",
]

logger = logging.getLogger(__name__)


# Logging


class _Formatter(logging.Formatter):
    """``ws-stream serve: message``; warnings and errors say so."""

    def __init__(self, prog: str) -> None:
        super().__init__()
        self._prog = prog

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else record.levelname.lower() + ": "
        text = f"{self._prog}: {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(prog: str, default: int, verbose: int, quiet: int) -> None:
    """Log to stderr as ``prog`` at ``default``: a level lower per ``-v``, higher per ``-q``."""
    level = min(max(default + 10 * (quiet - verbose), logging.DEBUG), logging.CRITICAL + 10)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(prog))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.WARNING))
    logging.getLogger("ws_stream").setLevel(level)
    # websockets' debug log shows handshake headers, Authorization included:
    # it stays at WARNING whatever -v says.
    logging.getLogger("websockets").setLevel(max(level, logging.WARNING))


# How things are shown


def human(n: float) -> str:
    """``n`` bytes in B, kB, MB or GB (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def addr(sockname: Any) -> str:
    """A socket address as ``host:port`` (``[v6]:port``); anything else as ``str()``."""
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host = str(sockname[0])
        return f"[{host}]:{sockname[1]}" if ":" in host else f"{host}:{sockname[1]}"
    return str(sockname)


def describe(exc: BaseException) -> str:
    """An exception's message, or its type's name when it has none."""
    return str(exc) or type(exc).__name__


def fields(**values: object) -> str:
    """``key=value`` pairs for a log line that tools can parse.

    A value with spaces, quotes, ``=`` or nothing at all is written in double
    quotes, with ``"`` and ``\\`` escaped; None is ``-``.
    """
    parts = []
    for key, value in values.items():
        text = "-" if value is None else str(value)
        if not text or any(c in text for c in ' "=\\\t\n'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def log_end(who: str, stream: WsStream, duration: float, error: str | None) -> None:
    """The line that ends a connection: info when it ended cleanly, a warning with ``error``."""
    sent = stream.close_code_sent
    sent_code = "-" if sent is None else sent
    level = logging.INFO if error is None else logging.WARNING
    logger.log(
        level,
        "%s: closed after %.2f s: received %d bytes, sent %d bytes; close code sent %s, "
        "received %s%s",
        who,
        duration,
        stream.bytes_received,
        stream.bytes_sent,
        sent_code,
        stream.close_code,
        "" if error is None else f"; {error}",
    )


def log_connection(
    peer: str,
    stream: WsStream,
    duration: float,
    error: str | None,
    *,
    target: str,
    identity: str | None = None,
    cert: str | None = None,
) -> None:
    """``serve``'s line that ends a connection, as ``key=value`` fields (:func:`fields`).

    Who (``peer``, ``identity``: the bearer token's label or the Basic user,
    ``cert``: the client certificate's subject with ``--client-ca``), where
    (``target``: its name, its address, or ``echo``), how long, the bytes both
    ways and the close codes; ``error`` when it failed (then a warning).
    """
    extra: dict[str, object] = {} if cert is None else {"cert": cert}
    if error is not None:
        extra["error"] = error
    logger.log(
        logging.INFO if error is None else logging.WARNING,
        "connection closed: %s",
        fields(
            peer=peer,
            target=target,
            identity=identity,
            duration=f"{duration:.2f}s",
            received=stream.bytes_received,
            sent=stream.bytes_sent,
            close_sent=stream.close_code_sent,
            close_received=stream.close_code,
            **extra,
        ),
    )


# --stats


class SessionCounts(Protocol):
    """What ``--stats`` reads: the live-session registry (:class:`~.lifecycle.Sessions`)."""

    @property
    def opened(self) -> int:
        """WebSockets opened so far."""
        ...

    @property
    def open(self) -> int:
        """WebSockets open now."""
        ...

    @property
    def started(self) -> float:
        """When counting began (:func:`time.monotonic`)."""
        ...

    def totals(self) -> tuple[int, int]:
        """Payload bytes (received, sent) over WebSockets so far."""
        ...


def _stats_line(
    sessions: SessionCounts, prog: str, last: tuple[float, int, int]
) -> tuple[float, int, int]:
    now = time.monotonic()
    received, sent = sessions.totals()
    dt = max(now - last[0], 1e-9)
    print(
        f"{prog}: stats: {sessions.open} open, {sessions.opened} total; "
        f"received {human(received)} ({human((received - last[1]) / dt)}/s), "
        f"sent {human(sent)} ({human((sent - last[2]) / dt)}/s)",
        file=sys.stderr,
        flush=True,
    )
    return now, received, sent


def _summary(sessions: SessionCounts, prog: str) -> None:
    elapsed = max(time.monotonic() - sessions.started, 1e-9)
    received, sent = sessions.totals()
    print(
        f"{prog}: summary: {sessions.opened} connection{'' if sessions.opened == 1 else 's'} "
        f"in {elapsed:.1f} s; "
        f"received {received} bytes ({human(received / elapsed)}/s), "
        f"sent {sent} bytes ({human(sent / elapsed)}/s)",
        file=sys.stderr,
        flush=True,
    )


async def _print_stats(sessions: SessionCounts, prog: str, interval: float) -> None:
    last = (sessions.started, 0, 0)
    while True:
        await asyncio.sleep(interval)
        last = _stats_line(sessions, prog, last)


@contextlib.contextmanager
def stats_output(sessions: SessionCounts, prog: str, interval: float | None) -> Iterator[None]:
    """``--stats``: a line on stderr every ``interval`` seconds, and the summary on the way out.

    ``interval`` None (no ``--stats``): nothing. The summary is printed
    however the block ends, so it is always the last line of a run.
    """
    task = (
        asyncio.create_task(_print_stats(sessions, prog, interval))
        if interval is not None
        else None
    )
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            _summary(sessions, prog)
