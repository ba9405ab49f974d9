"""Which proxy a ``ws-stream`` client goes through: decided once, at start-up, without I/O.

Owns: the ``--proxy URL`` argument type, the choice between ``--proxy``,
``--no-proxy`` and the environment (:func:`choose_proxy`), and the text that
documents the environment variables. The proxy is fixed before the first
connection: every connection of ``forward`` and ``cat`` goes through the same
one (or none), and the logs say which.

The environment is read the way websockets reads it (``websockets.proxy.get_proxy``,
on :func:`urllib.request.getproxies`), so that ``ws-stream`` and the library
agree: for a ``wss://`` URI ``wss_proxy``, then ``socks_proxy``, then
``https_proxy``; for a ``ws://`` URI ``ws_proxy``, then ``socks_proxy``,
``https_proxy``, then ``http_proxy``; a host listed in ``no_proxy`` is reached
directly. Upper-case names work too (lower case wins). ``all_proxy`` is not
read. How a proxy that fails is reported is decided in
:mod:`ws_stream._failures`, for the library and the command alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from websockets.exceptions import InvalidProxy, InvalidURI
from websockets.proxy import get_proxy, parse_proxy
from websockets.uri import parse_uri

from .._failures import redact

__all__ = ["DIRECT", "ENVIRONMENT_HELP", "SCHEMES", "ProxyChoice", "choose_proxy", "proxy_url"]

#: The proxy URL schemes ``--proxy`` takes.
SCHEMES = ("http", "https", "socks5", "socks5h")

#: The epilog paragraph of the client commands about proxies.
ENVIRONMENT_HELP = """\
Without --proxy, the proxy comes from the environment, as the websockets
library reads it: for wss:// URIs wss_proxy, else socks_proxy, else
https_proxy; for ws:// URIs ws_proxy, else socks_proxy, else https_proxy, else
http_proxy (upper-case names work too; all_proxy is not read); hosts listed in
no_proxy (comma-separated, `*` for all) are reached directly. --no-proxy
ignores all of these. A socks_proxy of the form http://HOST:PORT means
socks5h://HOST:PORT. Proxy credentials (USER:PASSWORD@) are never logged.
"""


def proxy_url(text: str) -> str:
    """The ``--proxy`` argument type: a proxy URL websockets accepts.

    Raises :class:`argparse.ArgumentTypeError` (exit 2) with the URL shown
    without its password.
    """
    shown = redact(text)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        # urllib's message may quote a piece of the password: not shown.
        raise argparse.ArgumentTypeError(
            f"invalid proxy URL {shown!r}: expected SCHEME://[USER:PASSWORD@]HOST:PORT "
            "with a port from 0 to 65535"
        ) from None
    if parts.scheme.lower() not in SCHEMES:
        raise argparse.ArgumentTypeError(
            f"expected a proxy URL http://HOST:PORT, https://HOST:PORT, socks5://HOST:PORT or "
            f"socks5h://HOST:PORT (with USER:PASSWORD@ before HOST if the proxy wants them), "
            f"got {shown!r}"
        )
    try:
        parse_proxy(text)
    except InvalidProxy as exc:
        raise argparse.ArgumentTypeError(f"invalid proxy URL {shown!r}: {exc.msg}") from None
    if parts.scheme.lower().startswith("socks") and port is None:
        raise argparse.ArgumentTypeError(
            f"give the port of the SOCKS proxy (usually 1080): {shown!r}"
        )
    return text


@dataclass(frozen=True)
class ProxyChoice:
    """The proxy of every connection: ``url`` (None: direct) and where it came from."""

    #: May hold ``user:password@``: shown only through :func:`~.report.redact`.
    url: str | None = field(repr=False)
    #: ``--proxy``, ``$NAME`` of the environment variable, or ``the environment``
    #: (empty when ``url`` is None), for logs.
    source: str = ""

    def describe(self) -> str:
        """`` through the proxy URL (from SOURCE)``, or nothing without a proxy."""
        if self.url is None:
            return ""
        return f" through the proxy {redact(self.url)} (from {self.source})"


#: No proxy: every connection goes directly to the server.
DIRECT = ProxyChoice(None)


def _variable(url: str, environ: Mapping[str, str]) -> str:
    """``$name`` of the environment variable that set proxy ``url``, for messages."""
    # websockets turns socks_proxy=http://HOST:PORT into socks5h://HOST:PORT.
    values = {url, "http://" + url.removeprefix("socks5h://")}
    names = sorted(k for k, v in environ.items() if k.lower().endswith("_proxy") and v in values)
    return f"${names[0]}" if names else "the environment"


def choose_proxy(
    uri: str,
    given: str | None,
    *,
    use_environment: bool,
    environ: Mapping[str, str] | None = None,
) -> ProxyChoice:
    """The proxy for ``uri``: ``given`` (``--proxy``), else the environment's unless
    ``use_environment`` is false (``--no-proxy``).

    The environment's proxy is the one websockets would pick (from
    :data:`os.environ`, through :func:`urllib.request.getproxies`);
    ``environ`` (default :data:`os.environ`) only names its variable in logs.

    Raises:
        ValueError: the environment names a proxy websockets cannot use (its
            message says which variable to fix), or a SOCKS proxy while the
            ``python-socks`` package is missing.
    """
    environ = os.environ if environ is None else environ
    if given is not None:
        choice = ProxyChoice(given, "--proxy")
    elif not use_environment:
        return DIRECT
    else:
        try:
            url = get_proxy(parse_uri(uri))
        except InvalidURI:  # the URI was checked by its argument type already
            url = None
        if url is None:
            return DIRECT
        source = _variable(url, environ)
        try:
            parse_proxy(url)
        except InvalidProxy as exc:
            reason = exc.msg
            if urlsplit(url).scheme.lower() not in (*SCHEMES, "socks4", "socks4a"):
                reason = "expected http://, https://, socks5:// or socks5h:// then HOST:PORT"
            raise ValueError(
                f"the proxy {redact(url)} from {source} is invalid ({reason}): fix the "
                "variable (see --help), or pass --no-proxy or --proxy URL"
            ) from None
        choice = ProxyChoice(url, source)
    assert choice.url is not None
    scheme = urlsplit(choice.url).scheme.lower()
    if scheme.startswith("socks") and importlib.util.find_spec("python_socks") is None:
        raise ValueError(
            f"the SOCKS proxy {redact(choice.url)} (from {choice.source}) needs the "
            "python-socks package: pip install 'ws-stream[socks]'"
        )
    return choice
