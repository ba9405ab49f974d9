"""Unix-socket files of the ``ws-stream`` command: ``serve --unix``, ``forward --listen unix:``.

Owns what is particular to listening on a socket *file*:

* a socket file left at the path by a process that died (nothing accepts on
  it: ``ECONNREFUSED``) is replaced; a live one (something accepts on it) is
  an error, as is any other kind of file: neither is ever removed;
* ``--mode`` is applied between ``bind()`` and ``listen()``, so no client can
  connect while the file still has the permissions the umask gave it;
* the file is removed when the command ends, if it is still the one this
  process created (same device and inode).

Connecting to a Unix socket (``serve --to unix:PATH``) and accepting on one
is :mod:`.endpoints`' job; a Unix stream socket has no reset, so where a TCP
endpoint would send RST to end a failed tunnel, the local peer of a Unix
socket sees EOF (the log line and the WebSocket close code still tell).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import stat

from .args import UnixAddress

__all__ = ["UnixListener", "unix_peer"]

logger = logging.getLogger(__name__)

#: The kernel's accept queue, as asyncio's own servers ask for.
_BACKLOG = 100

_peers = itertools.count(1)


def unix_peer() -> str:
    """A name for a client of a Unix socket in logs (it has no address): ``unix-client#N``."""
    return f"unix-client#{next(_peers)}"


class UnixListener:
    """A listening ``AF_UNIX`` stream socket bound to a file, ready for ``sock=``.

    :meth:`open` creates it; :meth:`remove` deletes the file at the end.
    """

    def __init__(self, address: UnixAddress, sock: socket.socket, identity: tuple[int, int]):
        self.address = address
        #: Bound, listening and non-blocking: give it to ``create_unix_server(sock=...)``.
        self.sock = sock
        self._identity = identity

    @classmethod
    def open(cls, address: UnixAddress, mode: int | None = None) -> UnixListener:
        """Bind and listen on ``address``, with permissions ``mode`` (None: the umask's).

        Raises:
            FileExistsError: a file that is not a socket is at the path.
            OSError: a live server accepts on the path (the message says so);
                any error of ``bind()`` (missing directory, no permission).
        """
        path = address.path
        _clear_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound = False
        try:
            sock.bind(path)
            bound = True
            info = os.stat(path)
            if mode is not None:
                os.chmod(path, mode)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            if bound:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
        return cls(address, sock, (info.st_dev, info.st_ino))

    def remove(self) -> None:
        """Delete the socket file if it is still ours (another process may have replaced it)."""
        path = self.address.path
        try:
            info = os.lstat(path)
            if (info.st_dev, info.st_ino) == self._identity:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("cannot remove the socket file %s: %s", path, exc)


def _clear_stale(path: str) -> None:
    """Remove a dead socket file at ``path``; refuse anything else that is there."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(
            f"{path} exists and is not a socket ({_kind(info.st_mode)}): "
            "remove it or choose another path",
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        logger.debug("%s: a stale socket file (nothing accepts on it): replacing it", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except FileNotFoundError:
        return
    except BlockingIOError:
        pass  # its accept queue is full: very much alive
    except OSError as exc:
        raise OSError(
            f"{path} is a socket, and whether a server still uses it cannot be checked "
            f"({exc.strerror or exc}): remove it or choose another path",
        ) from None
    finally:
        probe.close()
    raise OSError(
        f"another process is listening on {path}: stop it or choose another path",
    )


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a named pipe"),
    ):
        if test(mode):
            return name
    return "a special file"
