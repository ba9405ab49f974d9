"""What a failed opening handshake means to the user: one mapping for every shell.

No I/O. Each runtime shell (asyncio, trio, blocking) opens its connection its own
way, then hands whatever went wrong to :func:`handshake_failure`, which decides the
exception the user sees and how it is worded, once:

- an invalid URI or proxy is a :class:`ValueError` (retrying cannot help);
- an HTTP refusal is a :class:`~ws_stream.exceptions.HandshakeError` whose message
  says what the status means and what to do (503: the server is full, try later;
  401: credentials; 404: the path ...), with ``.status`` set;
- a TLS handshake that breaks (not a certificate rejection) on a ``wss://`` URI is a
  :class:`HandshakeError` that says the server may not speak TLS, or, when the
  server answered with a TLS alert, that it wants a client certificate it trusts
  (as does a ``wss://`` server that closes without answering the upgrade: what
  TLS 1.3 servers requiring a client certificate do);
- a failure of the proxy the connection goes through names that proxy (its
  credentials hidden) and says how it failed: it cannot be reached (an
  :class:`OSError` of the same kind: refused, unreachable, unknown host), it
  refused the tunnel (a :class:`HandshakeError` whose ``.status`` is the
  proxy's HTTP status: 407 or 401 for credentials, 403 for its rules, 5xx for a
  server it cannot reach), a SOCKS error (a :class:`HandshakeError` with the
  proxy's reply: authentication failure, connection refused by the destination
  ...), or a timeout (still a :class:`TimeoutError`);
- a server that closes the connection before answering the upgrade (a
  :class:`~websockets.exceptions.ConnectionClosed` or an EOF at the status line
  from websockets) is a :class:`HandshakeError` that says so;
- anything else is left as it is (refused connections, timeouts, certificate errors).

Messages never show the credentials of a URI or a proxy (``user:password@`` is hidden).
"""

from __future__ import annotations

import errno
import os
import re
import socket
import ssl
from urllib.parse import urlsplit

from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidProxy,
    InvalidProxyMessage,
    InvalidProxyStatus,
    InvalidStatus,
    InvalidURI,
    ProxyError,
)

from .exceptions import HandshakeError

__all__ = [
    "handshake_failure",
    "proxy_status_advice",
    "redact",
    "status_advice",
    "tls_failure",
]


#: Query parameters that carry a credential (a browser's WebSocket cannot set
#: headers, so gateways take the token there): their values are hidden.
_QUERY_TOKEN = re.compile(r"([?&](?:token|access_token)=)[^&#]*", re.IGNORECASE)


#: Longest part of a refusal's body that a message quotes.
_SAID_MAX = 200


def _said(body: bytes | bytearray | None) -> str | None:
    """The first line of a refusal's text body, quoted, for the message; None if none.

    Servers often say why (``serve`` does: which credential, which address);
    control characters are dropped and the line is cut at :data:`_SAID_MAX`.
    """
    if not body:
        return None
    try:
        text = body[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return None
    line = "".join(c for c in text.strip().splitlines()[0] if c.isprintable()).strip()
    if not line:
        return None
    if len(line) > _SAID_MAX:
        line = line[:_SAID_MAX] + "..."
    return f'"{line}"'


def redact(uri: str) -> str:
    """``uri`` with any ``user:password@`` and ``token=`` values hidden, for messages and logs.

    Also without a scheme (a mistyped proxy such as ``user:password@host:port``).
    Everything up to the *last* ``@`` is hidden: a password typed with a
    ``/``, ``?`` or ``#`` in it must not show, and hiding a little too much
    (a path that holds an ``@``) only costs detail. The values of the query
    parameters ``token`` and ``access_token`` show as ``***``.
    """
    uri = _QUERY_TOKEN.sub(r"\1***", uri)
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "", uri
    if "@" not in rest:
        return uri
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"


# What an HTTP status answered to an upgrade request means, and what to do.
_ADVICE: dict[int, str] = {
    400: "the server found the request malformed; check the URI and the headers",
    401: "the server wants authentication; check the credentials",
    403: "the server forbids this client; check the credentials and the Origin",
    404: "there is no WebSocket endpoint at that path; check the URI path",
    405: "the server does not accept a WebSocket at that path; check the URI path",
    410: "the endpoint is gone; check the URI path",
    426: "the server wants another protocol version or subprotocol",
    429: "the server is rate-limiting this client; try again later",
    502: "a proxy in front of the server could not reach it; try again later",
    503: "the server is full or unavailable (for example its connection limit is reached); "
    "try again later",
    504: "a proxy in front of the server timed out; try again later",
}


def status_advice(status: int) -> str:
    """What HTTP ``status`` in answer to a WebSocket upgrade means to the user."""
    advice = _ADVICE.get(status)
    if advice is not None:
        return advice
    if 500 <= status < 600:
        return "the server failed; see its logs, or try again later"
    if 300 <= status < 400:
        return "the server redirects elsewhere; use the URI it points to"
    return "check the URI path and credentials"


def tls_failure(uri: str, exc: BaseException) -> HandshakeError:
    """The error for a TLS handshake to ``uri`` that broke off (not a rejected certificate).

    A server that answered with a TLS alert speaks TLS and refused this client:
    most often for want of a client certificate it trusts (mutual TLS). One
    that broke off without an alert may not speak TLS at all.
    """
    detail = str(exc) or type(exc).__name__
    where = _where(uri)
    reason = getattr(exc, "reason", None) or ""
    if isinstance(exc, ssl.SSLError) and "ALERT" in reason:
        if any(alert in reason for alert in _CLIENT_CERTIFICATE_ALERTS):
            what = "it wants a TLS client certificate it trusts"
        else:
            what = "most often it wants a TLS client certificate it trusts, or other TLS versions"
        return HandshakeError(
            f"the server at {where} refused the TLS handshake ({detail}): {what}; give a "
            "client certificate (ws-stream: --client-cert/--client-key; the library: "
            "load_cert_chain() on the ssl context)"
        )
    return HandshakeError(
        f"the TLS handshake with {where} failed ({detail}); the server may not speak TLS (if "
        "it is a plain WebSocket server, use ws:// instead of wss://), or may want a client "
        "certificate (ws-stream: --client-cert; the library: load_cert_chain() on the ssl "
        "context)"
    )


# TLS alerts a server sends about the client's certificate: none was given
# (TLS 1.3's certificate_required), or not one it trusts.
_CLIENT_CERTIFICATE_ALERTS = (
    "CERTIFICATE_REQUIRED",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_UNKNOWN_CA",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_UNSUPPORTED_CERTIFICATE",
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_CERTIFICATE_REVOKED",
)


# Proxies


def _proxy_kind(proxy: str) -> str:
    """``HTTP``, ``HTTPS`` or ``SOCKS``: how messages name the proxy."""
    scheme = proxy.partition("://")[0].lower()
    return "SOCKS" if scheme.startswith("socks") else scheme.upper() or "HTTP"


def _has_credentials(proxy: str) -> bool:
    return "@" in urlsplit(proxy).netloc


def _where(uri: str) -> str:
    """``host:port`` of ``uri``, without credentials (the URI itself if it has no host)."""
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port
    except ValueError:
        return redact(uri)
    if not host:
        return redact(uri)
    if port is None:
        port = 443 if parts.scheme.lower() in ("wss", "https") else 80
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def proxy_status_advice(status: int, *, credentials: bool) -> str:
    """What an HTTP proxy's ``status`` in answer to ``CONNECT`` means, and what to do.

    ``credentials``: whether the proxy URL carried ``user:password@``.
    """
    if status in (401, 407):
        # 407 is the standard answer; some proxies (tinyproxy) answer a wrong
        # password with 401.
        if credentials:
            return "it rejected the credentials of the proxy URL; check the user name and password"
        return "it wants credentials: give them in the proxy URL (http://USER:PASSWORD@HOST:PORT)"
    if status == 403:
        return (
            "it forbids this client or this destination; check its access rules "
            "(for example the ports it allows CONNECT to)"
        )
    if status in (400, 405, 501):
        return "it does not open tunnels (CONNECT) for this client; check that it is an HTTP proxy"
    if 500 <= status < 600:
        return (
            "it could not reach the server; check the URI's host and port, that the server "
            "runs, and the proxy's logs"
        )
    return "check the proxy's address and its logs"


# SOCKS5 reply codes (RFC 1928) that mean: the proxy could not reach the target.
_SOCKS_UNREACHABLE = {3, 4, 5, 6}


def _socks_failure(exc: ProxyError, where: str, shown: str, *, credentials: bool) -> HandshakeError:
    """The error for a SOCKS proxy that failed: python-socks' reason is the cause of ``exc``."""
    cause = exc.__cause__
    detail = str(cause) if cause is not None and str(cause) else str(exc)
    code = getattr(cause, "error_code", None)
    lowered = detail.lower()
    if "authentication" in lowered:
        if credentials:
            advice = "check the user name and password of the proxy URL"
        else:
            advice = (
                "give a user name and password in the proxy URL (socks5h://USER:PASSWORD@HOST:PORT)"
            )
        return HandshakeError(
            f"the SOCKS proxy{shown} refused the authentication ({detail}); {advice}"
        )
    if "closed unexpectedly" in lowered:
        return HandshakeError(
            f"the SOCKS proxy{shown} closed the connection during the SOCKS handshake for "
            f"{where} ({detail}): it may have rejected the credentials or this client, or not "
            "be a SOCKS5 proxy; check the proxy URL and the proxy's logs"
        )
    if code in _SOCKS_UNREACHABLE:
        return HandshakeError(
            f"the SOCKS proxy{shown} could not reach {where} ({detail}); check the URI's host "
            "and port and that the server runs (with socks5h:// the proxy resolves the host "
            "name, with socks5:// this machine does)"
        )
    if code == 2:
        return HandshakeError(
            f"the SOCKS proxy{shown} does not allow a connection to {where} ({detail}); "
            "check its rules"
        )
    return HandshakeError(
        f"the SOCKS proxy{shown} failed to open a tunnel to {where} ({detail}); "
        "check the proxy URL and the proxy's logs"
    )


# Errors of connecting to a host (rather than of a connection that was open).
_CONNECT_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL}
)


def _proxy_failure(exc: BaseException, uri: str, proxy: str | None) -> BaseException | None:
    """The error for ``exc``, raised opening ``uri`` through ``proxy``; None: not the proxy's.

    ``proxy`` None: a proxy failed, but the caller did not say which.
    """
    shown = f" {redact(proxy)}" if proxy else ""
    if proxy:
        kind = _proxy_kind(proxy)
    else:
        kind = "HTTP" if isinstance(exc, InvalidProxyStatus | InvalidProxyMessage) else "SOCKS"
    credentials = proxy is not None and _has_credentials(proxy)
    where = _where(uri)
    if isinstance(exc, InvalidProxyStatus):
        response = exc.response
        status = response.status_code
        advice = proxy_status_advice(status, credentials=credentials)
        return HandshakeError(
            f"the {kind} proxy{shown} refused the tunnel to {where} with HTTP {status} "
            f"{response.reason_phrase}; {advice}",
            status=status,
        )
    if isinstance(exc, InvalidProxyMessage):
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        return HandshakeError(
            f"the {kind} proxy{shown} did not answer the CONNECT request for {where} with "
            f"valid HTTP{cause}; check that it is an HTTP proxy (a SOCKS proxy is socks5:// "
            "or socks5h://)"
        )
    if isinstance(exc, ProxyError):
        return _socks_failure(exc, where, shown, credentials=credentials)
    if isinstance(exc, ImportError) and kind == "SOCKS":
        return ImportError(
            f"connecting through the SOCKS proxy{shown} needs the python-socks package: "
            "pip install 'ws-stream[socks]'"
        )
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return None  # the server's TLS, through the tunnel: not the proxy's
    if isinstance(exc, TimeoutError):
        return TimeoutError(
            f"timed out opening {redact(uri)} through the {kind} proxy{shown} "
            f"({exc or 'no answer'}): the proxy or the server did not answer in time"
        )
    if isinstance(exc, OSError) and _connecting_to_proxy(exc, kind):
        # python-socks wraps the OSError of its connect(): report that one.
        error = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        if isinstance(error.errno, int) and error.errno > 0:
            reason = os.strerror(error.errno)  # "Connection refused", not asyncio's wording
        else:
            reason = error.strerror or str(error) or type(error).__name__
        message = (
            f"cannot connect to the {kind} proxy{shown}: {reason}; check the proxy's address "
            "and that it runs"
        )
        if isinstance(error, socket.gaierror):
            return socket.gaierror(error.errno, message)
        return OSError(error.errno, message)  # OSError picks the subclass of the errno
    return None


def _connecting_to_proxy(exc: OSError, kind: str) -> bool:
    """Whether ``exc`` is a failure to reach the proxy itself."""
    if kind == "SOCKS":
        # python-socks wraps the failures of reaching the proxy in its
        # ProxyConnectionError; any other OSError (a name this machine cannot
        # resolve with socks5://) concerns the server.
        return type(exc).__name__ == "ProxyConnectionError"
    # Through an HTTP proxy, the only connection this machine opens is to the proxy.
    return isinstance(exc, socket.gaierror) or exc.errno in _CONNECT_ERRNOS


def _closed_before_answering(exc: BaseException) -> bool:
    """Whether the server closed the connection before any HTTP response.

    websockets says so with an :class:`InvalidMessage` caused by an EOF at the
    status line, or, when the close comes while the request is being sent,
    with a :class:`ConnectionClosed`.
    """
    if isinstance(exc, ConnectionClosed):
        return True
    cause = exc.__cause__
    return (
        isinstance(exc, InvalidMessage)
        and isinstance(cause, EOFError)
        and "status line" in str(cause)
    )


def _tls_alert(exc: BaseException) -> ssl.SSLError | None:
    """The TLS alert from the server in ``exc``'s chain of causes, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError) and "ALERT" in (
            getattr(current, "reason", None) or ""
        ):
            return current
        current = current.__cause__ or current.__context__
    return None


def handshake_failure(
    exc: BaseException, uri: str, *, proxy: str | None = None
) -> BaseException | None:
    """The exception to raise for ``exc``, raised while opening ``uri``.

    ``proxy``: the proxy the connection went through (see :func:`ws_stream._handshake.proxy_for`),
    named in the message of a failure that is the proxy's.

    Returns None when ``exc`` should propagate as it is (raise it unchanged).
    Otherwise raise the result ``from exc``.
    """
    shown = redact(uri)
    if isinstance(exc, InvalidURI):
        return ValueError(f"{shown!r} is not a valid WebSocket URI: {exc.msg}")
    if isinstance(exc, InvalidProxy):
        return ValueError(
            f"invalid proxy {redact(exc.proxy)} for {shown}: {exc.msg} (check the *_proxy "
            "environment variables, or pass proxy=None)"
        )
    if isinstance(exc, ProxyError) or proxy is not None:
        mapped = _proxy_failure(exc, uri, proxy)
        if mapped is not None:
            return mapped
    if isinstance(exc, InvalidStatus):
        response = exc.response
        status = response.status_code
        said = _said(response.body)
        return HandshakeError(
            f"the server at {shown} refused the WebSocket handshake with HTTP {status} "
            f"{response.reason_phrase}; {status_advice(status)}"
            + (f"; the server said: {said}" if said else ""),
            status=status,
        )
    secure = uri.lower().startswith("wss:")
    alert = _tls_alert(exc) if secure else None
    if alert is not None and alert is not exc:
        return tls_failure(uri, alert)  # a TLS alert behind a websockets exception
    if _closed_before_answering(exc):
        hint = (
            " (a server that requires a TLS client certificate does this when it gets none, "
            "or one it does not trust)"
            if secure
            else ""
        )
        if proxy is not None:
            hint += (
                f" (through the {_proxy_kind(proxy)} proxy {redact(proxy)}, which may close it "
                "like this when it cannot reach the server)"
            )
        return HandshakeError(
            f"the server at {shown} closed the connection without answering the WebSocket "
            f"handshake{hint}"
        )
    if isinstance(exc, InvalidHandshake):
        return HandshakeError(f"the WebSocket handshake with {shown} failed: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return None
    if secure and isinstance(
        exc, ssl.SSLError | ConnectionResetError | ConnectionAbortedError | BrokenPipeError
    ):
        return tls_failure(uri, exc)
    return None
