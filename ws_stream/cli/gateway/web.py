"""Static web files (``serve --web DIR``): which file a plain HTTP request gets, and its response.

Decided here, once:

* **Which paths are files of DIR.** :func:`segments` is pure: the request
  target must be an origin-form path (``/...``; not ``//...``, not an
  absolute URL); it is percent-decoded once, and refused when it holds an
  encoded ``/`` or ``\\`` (``%2f``, ``%5c``), a backslash, NUL, a ``.`` or
  ``..`` segment (so ``%2e%2e`` too, once decoded), a hidden name
  (``.git``), or an empty segment. :func:`locate` then follows symlinks and
  refuses anything whose real path is outside DIR. A refused path is 404,
  like a missing file: nothing tells which files exist outside DIR.
* **Directories.** ``DIR/sub/`` answers ``DIR/sub/index.html``; ``DIR/sub``
  (no slash) a 301 to ``DIR/sub/``, so that relative links work; no
  listings (a directory without ``index.html`` is 404).
* **Methods.** ``GET`` and ``HEAD`` (headers only); any other is 405 with
  ``Allow: GET, HEAD``.
* **Types and caching.** The content type comes from the extension
  (:data:`CONTENT_TYPES`, the same on every machine; unknown:
  ``application/octet-stream``), with ``X-Content-Type-Options: nosniff``;
  ``Cache-Control: no-cache`` with ``Last-Modified``, and ``304`` to an
  ``If-Modified-Since`` that is not older than the file.
* **Size.** Files are read whole into memory, at most :data:`MAX_WEB_FILE`
  bytes (a web UI's files are far smaller); a bigger file is 500 and logged.
"""

from __future__ import annotations

import email.utils
import os
import stat
from typing import Final, NamedTuple
from urllib.parse import unquote

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

__all__ = [
    "CONTENT_TYPES",
    "MAX_WEB_FILE",
    "NotServed",
    "Redirect",
    "WebFile",
    "locate",
    "read",
    "response",
    "segments",
]

#: Largest file ``--web`` serves.
MAX_WEB_FILE: Final = 16 * 1024 * 1024

#: Content types by extension (lower case).
CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".xml": "application/xml",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/vnd.microsoft.icon",
    ".wasm": "application/wasm",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".mp3": "audio/mpeg",
    ".oga": "audio/ogg",
    ".ogg": "audio/ogg",
    ".pdf": "application/pdf",
}
_DEFAULT_TYPE: Final = "application/octet-stream"
_ENCODED_SEPARATORS: Final = ("%2f", "%5c", "%00")


class NotServed(NamedTuple):
    """Answer ``status`` with a short text; ``reason`` is logged (not sent)."""

    status: int
    reason: str


class Redirect(NamedTuple):
    """A directory asked without its slash: 301 to ``location``."""

    location: str


class WebFile(NamedTuple):
    """The file to answer with: its real path and content type."""

    path: str
    content_type: str


def segments(target: str, method: str) -> list[str] | NotServed:
    """The decoded path segments of a request ``target`` (empty last one: a directory).

    Pure: refuses what can never name a file of DIR (see the module docstring).
    """
    if method not in ("GET", "HEAD"):
        return NotServed(405, f"method {method[:16]} (only GET and HEAD)")
    path = target.partition("?")[0].partition("#")[0]
    if not path.startswith("/") or path.startswith("//"):
        return NotServed(404, "not an origin-form path")
    if any(code in path.lower() for code in _ENCODED_SEPARATORS):
        return NotServed(404, "an encoded separator or NUL in the path")
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        return NotServed(404, "a path that is not UTF-8")
    if "\\" in decoded or "\0" in decoded:
        return NotServed(404, "a backslash or NUL in the path")
    parts = decoded.split("/")[1:]
    for index, part in enumerate(parts):
        if part.startswith("."):
            return NotServed(404, "a '.', '..' or hidden segment in the path")
        if not part and index != len(parts) - 1:
            return NotServed(404, "an empty segment in the path")
    return parts


def locate(root: str, parts: list[str], target: str) -> WebFile | Redirect | NotServed:
    """The file of ``root`` (a real path) that ``parts`` name; never one outside it."""
    candidate = os.path.realpath(os.path.join(root, *parts))
    if candidate != root and not candidate.startswith(root + os.sep):
        return NotServed(404, "a path that leads out of --web DIR")
    try:
        info = os.stat(candidate)
    except OSError:
        return NotServed(404, "no such file")
    if stat.S_ISDIR(info.st_mode):
        if parts and parts[-1] != "":
            path, _, query = target.partition("?")
            return Redirect(path + "/" + ("?" + query if query else ""))
        return locate(root, [*parts[:-1], "index.html"] if parts else ["index.html"], target)
    if not stat.S_ISREG(info.st_mode):
        return NotServed(404, "not a regular file")
    extension = os.path.splitext(candidate)[1].lower()
    return WebFile(candidate, CONTENT_TYPES.get(extension, _DEFAULT_TYPE))


class Read(NamedTuple):
    """A file's contents and modification time (seconds)."""

    body: bytes
    mtime: int


def read(path: str) -> Read | NotServed:
    """Read a located file (blocking: call it in a thread)."""
    try:
        with open(path, "rb") as file:
            info = os.fstat(file.fileno())
            if info.st_size > MAX_WEB_FILE:
                return NotServed(
                    500, f"a file of {info.st_size} bytes (--web serves at most {MAX_WEB_FILE})"
                )
            body = file.read(MAX_WEB_FILE + 1)
    except OSError as exc:
        return NotServed(404, f"cannot read the file: {exc.strerror or exc}")
    if len(body) > MAX_WEB_FILE:
        return NotServed(500, f"a file bigger than {MAX_WEB_FILE} bytes")
    return Read(body, int(info.st_mtime))


def _headers(content_type: str, length: int) -> Headers:
    return Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", content_type),
            ("Content-Length", str(length)),
            ("X-Content-Type-Options", "nosniff"),
        ]
    )


def response(
    request: Request, found: WebFile | Redirect | NotServed, file: Read | None
) -> Response:
    """The response to ``request``: the file (``file``: from :func:`read`), a redirect or 4xx."""
    if isinstance(found, Redirect):
        body = b"Moved Permanently\n"
        headers = _headers("text/plain; charset=utf-8", len(body))
        headers["Location"] = found.location
        return Response(301, "Moved Permanently", headers, body)
    if isinstance(found, NotServed):
        return refusal(found.status)
    assert file is not None
    headers = _headers(found.content_type, len(file.body))
    headers["Last-Modified"] = email.utils.formatdate(file.mtime, usegmt=True)
    headers["Cache-Control"] = "no-cache"
    since = request.headers.get("If-Modified-Since")
    if since is not None:
        try:
            when = email.utils.parsedate_to_datetime(since).timestamp()
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None and file.mtime <= when:
            del headers["Content-Length"]
            del headers["Content-Type"]
            return Response(304, "Not Modified", headers, b"")
    body = b"" if request.method == "HEAD" else file.body
    return Response(200, "OK", headers, body)


_PHRASES: Final = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def refusal(status: int, text: str | None = None) -> Response:
    """A short plain-text error response (405 carries ``Allow``)."""
    phrase = _PHRASES.get(status, "Error")
    body = ((text or phrase) + "\n").encode()
    headers = _headers("text/plain; charset=utf-8", len(body))
    if status == 405:
        headers["Allow"] = "GET, HEAD"
    return Response(status, phrase, headers, body)
