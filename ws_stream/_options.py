"""Options shared by every runtime shell: names, defaults and validation.

The names are websockets' where websockets has one. Whatever ws_stream does not
know passes through to websockets' ``connect`` / ``serve``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._policy import OnText

__all__ = ["DEFAULT_LIMIT", "DEFAULT_MAX_FRAME_SIZE", "StreamOptions"]

#: Reader buffer high-water mark: past it we stop reading the socket.
DEFAULT_LIMIT = 2**20
#: Largest frame we send. 64 KiB is far below every peer's default message
#: limit (websockets 1 MiB, aiohttp 4 MiB, Node ws 100 MiB) and lets a reader's
#: ``read(65536)`` hand frames over without copying them.
DEFAULT_MAX_FRAME_SIZE = 2**16


def _timeout(name: str, value: float | None) -> float | None:
    if value is not None and not value >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0 or None, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """The byte-stream options of one connection, validated."""

    open_timeout: float | None = 10.0
    close_timeout: float = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    max_size: int | None = 2**20
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    limit: int = DEFAULT_LIMIT
    compression: str | None = None
    on_text: OnText = "error"
    max_events: int = 256

    def __post_init__(self) -> None:
        _timeout("open_timeout", self.open_timeout)
        _timeout("ping_interval", self.ping_interval)
        _timeout("ping_timeout", self.ping_timeout)
        if self.close_timeout is None or not self.close_timeout >= 0:
            raise ValueError(
                f"close_timeout must be a number of seconds >= 0, not {self.close_timeout!r}"
                " (a close must be bounded)"
            )
        if self.max_size is not None and self.max_size < 1:
            raise ValueError(f"max_size must be >= 1 byte or None, not {self.max_size!r}")
        if self.max_frame_size < 1:
            raise ValueError(f"max_frame_size must be >= 1 byte, not {self.max_frame_size!r}")
        if self.limit < 1:
            raise ValueError(f"limit must be >= 1 byte, not {self.limit!r}")
        if self.compression not in (None, "deflate"):
            raise ValueError(f'compression must be None or "deflate", not {self.compression!r}')
        if self.on_text not in ("error", "bytes"):
            raise ValueError(f'on_text must be "error" or "bytes", not {self.on_text!r}')
        if self.max_events < 1:
            raise ValueError(f"max_events must be >= 1, not {self.max_events!r}")

    def websockets_kwargs(self) -> dict[str, Any]:
        """The options websockets' ``connect`` and ``serve`` take."""
        return {
            "open_timeout": self.open_timeout,
            "close_timeout": self.close_timeout,
            "ping_interval": self.ping_interval,
            "ping_timeout": self.ping_timeout,
            "max_size": self.websockets_max_size(),
            "compression": self.compression,
        }

    def websockets_max_size(self) -> int | tuple[None, int]:
        """``max_size`` for websockets; "no limit" still refuses an impossible frame.

        RFC 6455 requires the top bit of a 64-bit length to be 0; with no size
        limit websockets would wait for 2**63 bytes, so frames are capped there
        (the peer gets 1009).
        """
        return self.max_size if self.max_size is not None else (None, 2**63 - 1)


_FIELDS = frozenset(StreamOptions.__dataclass_fields__)


def split_options(options: dict[str, Any]) -> tuple[StreamOptions, dict[str, Any]]:
    """Split keyword options into ours (validated) and the rest for websockets."""
    ours = {k: options.pop(k) for k in list(options) if k in _FIELDS}
    return StreamOptions(**ours), options
