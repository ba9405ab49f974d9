"""Process-wide tuning of the ``ws-stream`` command (never of the library).

Owns two choices measured with ``bench/bench_tunnel.py``:

* **Frame size**: the command sends one WebSocket frame per local read
  (:data:`FRAME_SIZE`, 256 KiB) instead of the library's 64 KiB default: a
  quarter of the per-frame work on the bulk path. Every peer we know accepts
  it (websockets 1 MiB, aiohttp 4 MiB, Node ws 100 MiB, browsers no limit).
* **glibc malloc thresholds** (:func:`tune_malloc`): websockets' receive buffer
  and asyncio's reads allocate and free buffers of hundreds of KiB; with
  glibc's defaults each one is a fresh ``mmap`` whose pages fault in again, on
  every read. Raising ``M_MMAP_THRESHOLD`` keeps them in the heap, and raising
  ``M_TRIM_THRESHOLD`` keeps freed heap for reuse (at most 32 MiB per process
  after a burst). Nothing changes on other C libraries.
"""

from __future__ import annotations

import ctypes
import logging
import platform

from .endpoints import LOCAL_READ

__all__ = ["FRAME_SIZE", "tune_malloc"]

logger = logging.getLogger(__name__)

#: The largest frame the command sends: one local read.
FRAME_SIZE = LOCAL_READ

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = 4 * 2**20, trim_threshold: int = 32 * 2**20) -> bool:
    """Set glibc's malloc thresholds for this process; True if they were set.

    Call once, before any worker is forked (they inherit it). Does nothing
    (False) on another C library or if glibc refuses.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        done = bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
        )
    except (OSError, AttributeError) as exc:
        logger.debug("malloc tuning unavailable: %s", exc)
        return False
    return done
