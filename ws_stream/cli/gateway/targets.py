"""Named targets (``serve --targets``): the file, and which target a request names.

Pure. The file has websockify's token-file format, so existing files work:
``NAME: HOST:PORT`` or ``NAME: unix:/path`` per line, ``#`` comments and
blank lines ignored; a directory holds any number of such files.

Decided here, once: **a request can only name a target, never describe
one.** The name is the query parameter ``token=`` (websockify's way; not when
bearer tokens are the credential, which then use that parameter) or the last
segment of the request path, taken raw (no percent-decoding), and it must be
a listed name: a host, a port, a path, ``..`` or an encoded separator is
simply an unknown name, answered 404, and no connection is ever opened for
it.
"""

from __future__ import annotations

import argparse
import re
from typing import Final, NamedTuple
from urllib.parse import parse_qsl

from ..args import HostPort, UnixAddress, parse_target
from .files import FileProblem

__all__ = ["NAME", "Targets", "UnknownTarget", "target_name"]

#: What a target name may be (besides not being ``.`` or ``..``).
NAME: Final = re.compile(r"[A-Za-z0-9_.~-]{1,128}")
#: websockify's spelling of a Unix-socket target in token files.
_WEBSOCKIFY_UNIX: Final = "unix_socket:"


class UnknownTarget(NamedTuple):
    """The request names no listed target: 404; ``reason`` is logged."""

    reason: str


class Targets(NamedTuple):
    """The names of ``--targets`` and their addresses."""

    by_name: dict[str, HostPort | UnixAddress]

    @classmethod
    def parse(cls, texts: list[tuple[str, str]]) -> Targets:
        """Read ``NAME: HOST:PORT`` / ``NAME: unix:/path`` lines.

        Raises:
            FileProblem: a malformed line, an invalid name or address, a name
                listed twice, or no target at all (the message names file and line).
        """
        by_name: dict[str, HostPort | UnixAddress] = {}
        for file, text in texts:
            for number, raw in enumerate(text.splitlines(), 1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                where = f"{file} line {number}"
                name, sep, address = line.partition(":")
                name, address = name.strip(), address.strip()
                if not sep or not address:
                    raise FileProblem(f"{where}: expected NAME: HOST:PORT or NAME: unix:/path")
                if not is_name(name):
                    raise FileProblem(
                        f"{where}: the name {name[:64]!r} may contain only letters, digits "
                        "and _.~- (and cannot be . or ..)"
                    )
                if name in by_name:
                    raise FileProblem(f"{where}: the name {name!r} is listed twice")
                if address.startswith(_WEBSOCKIFY_UNIX):
                    address = "unix:" + address.removeprefix(_WEBSOCKIFY_UNIX)
                try:
                    by_name[name] = parse_target(address)
                except argparse.ArgumentTypeError as exc:
                    raise FileProblem(f"{where}: {exc}") from None
        if not by_name:
            raise FileProblem(f"{texts[0][0] if texts else 'the targets file'} lists no target")
        return cls(by_name)


def is_name(text: str) -> bool:
    """Whether ``text`` can be a target name."""
    return NAME.fullmatch(text) is not None and text not in (".", "..")


def target_name(
    path: str, query: str, *, prefix: str | None, by_query: bool
) -> str | UnknownTarget:
    """The name a request's ``path`` and ``query`` give (not yet looked up).

    ``prefix``: ``--path``: the request path must be ``PREFIX/NAME`` (or
    ``PREFIX`` with ``?token=NAME``). ``by_query``: ``?token=NAME`` may name
    the target (False when bearer tokens use that parameter).
    """
    if by_query:
        try:
            names = [
                v
                for k, v in parse_qsl(query, keep_blank_values=True, max_num_fields=64)
                if k == "token"
            ]
        except ValueError:
            return UnknownTarget("too many query parameters")
        if len(names) > 1:
            return UnknownTarget("more than one token= parameter")
        if names:
            if prefix is not None and path != prefix:
                return UnknownTarget(f"the path {path[:100]!r} is not --path {prefix}")
            return names[0] if is_name(names[0]) else UnknownTarget("not a target name")
    if prefix is not None:
        base = prefix.rstrip("/") + "/"
        if not path.startswith(base):
            return UnknownTarget(f"the path {path[:100]!r} is not {base}NAME")
        segment = path[len(base) :]
    else:
        segment = path.rpartition("/")[2]
    if not segment:
        return UnknownTarget("the request names no target (/NAME or ?token=NAME)")
    if not is_name(segment):
        return UnknownTarget("not a target name")
    return segment
