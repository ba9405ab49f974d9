"""A real VNC server for the noVNC tests: TigerVNC's ``Xtigervnc`` on a Unix socket.

Debian package ``tigervnc-standalone-server`` (``.ci/run`` installs it); without it
the tests that need it are skipped and say so. The X server picks a free display
itself (``-displayfd``), so parallel runs do not race for a display number, and
it speaks RFB on a Unix socket only (``-rfbport -1``): no TCP port to race for
either. ``xsetroot`` (``x11-xserver-utils``), when installed, paints the root
window so that a screenshot shows something else than black, and ``xmessage``
(``x11-utils``), when installed, shows a small window on it.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

XTIGERVNC = shutil.which("Xtigervnc")
XSETROOT = shutil.which("xsetroot")
XMESSAGE = shutil.which("xmessage")
PACKAGE = "tigervnc-standalone-server"

#: What Xtigervnc logs for each RFB connection it accepts.
ACCEPTED = re.compile(r"Connections: accepted: (\S+)")


@dataclass
class VncServer:
    proc: subprocess.Popen[bytes]
    display: int
    socket: Path
    log: Path
    name: str

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def accepted(self) -> list[str]:
        """The peers of every RFB connection Xtigervnc accepted so far."""
        return ACCEPTED.findall(self.log_text())

    def wait_accepted(self, count: int = 1, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(peers := self.accepted()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"Xtigervnc accepted {len(peers)} of {count} connections in {timeout} s; "
                    f"its log:\n{self.log_text()[-3000:]}"
                )
            time.sleep(0.05)
        return peers


def _read_display(fd: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> int:
    """The display number Xtigervnc writes to ``-displayfd`` once it is ready."""
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(remaining, 0))
        chunk = os.read(fd, 64) if ready else b""
        if not chunk:
            state = f"exited with {proc.poll()}" if ready else f"silent for {timeout} s"
            raise AssertionError(
                f"Xtigervnc reported no display ({state}); its log:\n"
                f"{log.read_text(errors='replace')[-3000:]}"
            )
        data += chunk
    return int(data)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(5)
            return
        except subprocess.TimeoutExpired:
            continue


def _x_env(display: int) -> dict[str, str]:
    env = {**os.environ, "DISPLAY": f":{display}"}
    env.pop("XAUTHORITY", None)
    return env


def paint(display: int, color: str = "#336699") -> bool:
    """Paint the root window (with ``xsetroot``, when installed); True when it was."""
    if XSETROOT is None:
        return False
    done = subprocess.run(
        [XSETROOT, "-solid", color],
        env=_x_env(display),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=10,
    )
    return done.returncode == 0


@contextlib.contextmanager
def message(display: int, text: str, geometry: str = "-48-48") -> Iterator[None]:
    """Show ``text`` in a small window (with ``xmessage``, when installed) while in the block.

    Decoration only (for the screenshot): nothing waits for the window to appear.
    """
    if XMESSAGE is None:
        yield
        return
    proc = subprocess.Popen(
        [XMESSAGE, "-geometry", geometry, "-buttons", "", text],
        env=_x_env(display),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        _stop(proc)


@contextlib.contextmanager
def vnc_server(
    log: Path, *, name: str = "ws-stream-novnc", geometry: str = "1024x640", timeout: float = 15.0
) -> Iterator[VncServer]:
    """Run Xtigervnc without authentication on a fresh Unix socket; stop it after.

    ``log`` receives its stderr (where it logs each accepted connection).
    """
    assert XTIGERVNC is not None, f"Xtigervnc is not installed (Debian package `{PACKAGE}`)"
    # A short directory of its own: a Unix socket path must fit in 108 bytes.
    with (
        tempfile.TemporaryDirectory(prefix="vnc-", ignore_cleanup_errors=True) as directory,
        log.open("wb") as stderr,
    ):
        sock = Path(directory) / "vnc.sock"
        read_end, write_end = os.pipe()
        try:
            proc = subprocess.Popen(
                [
                    XTIGERVNC,
                    "-displayfd",
                    str(write_end),
                    "-rfbunixpath",
                    str(sock),
                    "-rfbport",
                    "-1",
                    "-SecurityTypes",
                    "None",
                    "-geometry",
                    geometry,
                    "-depth",
                    "24",
                    "-desktop",
                    name,
                    "-nolisten",
                    "tcp",
                    "-AlwaysShared",
                ],
                pass_fds=[write_end],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        finally:
            os.close(write_end)
        try:
            try:
                display = _read_display(read_end, proc, log, timeout)
            finally:
                os.close(read_end)
            deadline = time.monotonic() + timeout
            while not sock.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"Xtigervnc :{display} made no socket {sock} "
                        f"(exit status {proc.poll()}); its log:\n{log.read_text(errors='replace')}"
                    )
                time.sleep(0.02)
            yield VncServer(proc, display, sock, log, name)
        finally:
            _stop(proc)
