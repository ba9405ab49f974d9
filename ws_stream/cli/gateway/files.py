"""Files the gateway reads again when they change (credentials, ``--targets``).

:class:`Watched` checks, at each request, whether the file (or, for
``--targets DIR``, any file of the directory) changed - its inode, size and
modification time - and parses it again when it did. One ``stat`` per
request (per file of a directory): cheap, and a change is seen by the very
next request, with no timer and no thread.

A file that turns unreadable or invalid while the server runs makes
:meth:`Watched.current` raise :class:`FileProblem` until it is valid again:
the gateway then refuses every request (fails closed) instead of going on
with contents the operator already changed. Reads are bounded
(:data:`MAX_FILE_SIZE` per file, :data:`MAX_DIRECTORY_FILES` per directory).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from typing import Final, Generic, NoReturn, TypeVar

__all__ = ["MAX_DIRECTORY_FILES", "MAX_FILE_SIZE", "FileProblem", "Watched", "read_text"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Largest file the gateway reads (a credentials or targets file).
MAX_FILE_SIZE: Final = 4 * 1024 * 1024
#: Most files read from a ``--targets`` directory.
MAX_DIRECTORY_FILES: Final = 10_000


class FileProblem(ValueError):
    """A watched file cannot be read or parsed; the message names the file (and line)."""


#: Whether the path is a directory, and (path, inode, size, mtime, ctime) of it
#: and, for a directory, of each of its files.
Signature = tuple[bool, tuple[tuple[str, int, int, int, int], ...]]


def _signature(path: str) -> Signature:
    """What changes when ``path`` (a file, or the files of a directory) changes."""
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        return False, ((path, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns),)
    names = sorted(os.listdir(path))
    if len(names) > MAX_DIRECTORY_FILES:
        raise FileProblem(
            f"{path}: {len(names)} entries; at most {MAX_DIRECTORY_FILES} files are read"
        )
    signature = [(path, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)]
    for name in names:
        child = os.path.join(path, name)
        try:
            entry = os.stat(child)
        except FileNotFoundError:
            continue  # removed since the listing
        if stat.S_ISREG(entry.st_mode) and not name.startswith("."):
            signature.append(
                (child, entry.st_ino, entry.st_size, entry.st_mtime_ns, entry.st_ctime_ns)
            )
    return True, tuple(signature)


def read_text(path: str) -> str:
    """The UTF-8 text of ``path``, at most :data:`MAX_FILE_SIZE` bytes.

    Raises:
        FileProblem: it cannot be read, is too big, or is not UTF-8.
    """
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise FileProblem(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_FILE_SIZE:
        raise FileProblem(f"{path} is bigger than {MAX_FILE_SIZE // (1024 * 1024)} MiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FileProblem(f"{path} is not UTF-8 text (byte {exc.start})") from exc


class Watched(Generic[T]):
    """The parsed contents of ``path``, parsed again whenever the file changes.

    ``parse(texts)`` gets ``[(file, text), ...]`` (one pair for a file, one per
    regular, non-hidden file of a directory, in name order) and raises
    :class:`FileProblem` for invalid contents. ``option`` (``--targets``...)
    is how log lines name the file.
    """

    def __init__(self, option: str, path: str, parse: Callable[[list[tuple[str, str]]], T]) -> None:
        self.option = option
        self.path = path
        self._parse = parse
        self._signature: Signature | None = None
        self._value: T | None = None
        self._problem: FileProblem | None = None
        self._reported: str | None = None  # the problem last logged
        self._loaded = False  # parsed once: later problems are logged

    def current(self) -> T:
        """The contents now: parsed again if the file changed since the last call.

        Raises:
            FileProblem: the file cannot be read or is invalid now (logged as
                an error once per problem, except before the first success:
                the caller reports that one).
        """
        try:
            signature = _signature(self.path)
        except OSError as exc:
            self._fail(None, FileProblem(f"cannot read {self.path}: {exc.strerror or exc}"))
        except FileProblem as problem:
            self._fail(None, problem)
        if signature == self._signature:
            if self._problem is not None:
                raise self._problem
            assert self._value is not None
            return self._value
        is_dir, entries = signature
        files = entries[1:] if is_dir else entries
        try:
            value = self._parse([(entry[0], read_text(entry[0])) for entry in files])
        except FileProblem as problem:
            self._fail(signature, problem)
        if self._loaded:
            logger.info("%s %s changed: read again", self.option, self.path)
        self._signature, self._value, self._problem = signature, value, None
        self._reported, self._loaded = None, True
        return value

    def _fail(self, signature: Signature | None, problem: FileProblem) -> NoReturn:
        if self._loaded and str(problem) != self._reported:
            logger.error(
                "%s: %s; every request is refused with 503 until the file is valid again",
                self.option,
                problem,
            )
            self._reported = str(problem)
        # None when stat failed: the next request looks again.
        self._signature, self._problem = signature, problem
        raise problem
