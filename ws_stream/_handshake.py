"""What a failed opening handshake means to the user: one mapping for every shell.

No I/O. Each runtime shell (asyncio, trio, blocking) opens its connection its own
way, then hands whatever went wrong to :func:`handshake_failure`, which decides the
exception the user sees and how it is worded, once:

- an invalid URI or proxy is a :class:`ValueError` (retrying cannot help);
- an HTTP refusal is a :class:`~ws_stream.exceptions.HandshakeError` whose message
  says what the status means and what to do (503: the server is full, try later;
  401: credentials; 404: the path ...), with ``.status`` set;
- a TLS handshake that breaks (not a certificate rejection) on a ``wss://`` URI is a
  :class:`HandshakeError` that says the server may not speak TLS;
- anything else is left as it is (refused connections, timeouts, certificate errors).

Messages never show the credentials of a URI (``user:password@`` is hidden).
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

from websockets.exceptions import InvalidHandshake, InvalidProxy, InvalidStatus, InvalidURI

from .exceptions import HandshakeError

__all__ = ["handshake_failure", "redact", "status_advice", "tls_failure"]


def redact(uri: str) -> str:
    """``uri`` with any ``user:password@`` hidden, for messages and logs."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}"


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
    """The error for a TLS handshake to ``uri`` that broke off (not a rejected certificate)."""
    detail = str(exc) or type(exc).__name__
    parts = urlsplit(uri)
    where = parts.netloc.rpartition("@")[2] or redact(uri)
    return HandshakeError(
        f"the TLS handshake with {where} failed ({detail}); the server may not speak TLS: "
        "if it is a plain WebSocket server, use ws:// instead of wss://"
    )


def handshake_failure(exc: BaseException, uri: str) -> BaseException | None:
    """The exception to raise for ``exc``, raised while opening ``uri``.

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
    if isinstance(exc, InvalidStatus):
        response = exc.response
        status = response.status_code
        return HandshakeError(
            f"the server at {shown} refused the WebSocket handshake with HTTP {status} "
            f"{response.reason_phrase}; {status_advice(status)}",
            status=status,
        )
    if isinstance(exc, InvalidHandshake):
        return HandshakeError(f"the WebSocket handshake with {shown} failed: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return None
    secure = uri.lower().startswith("wss:")
    if secure and isinstance(
        exc, ssl.SSLError | ConnectionResetError | ConnectionAbortedError | BrokenPipeError
    ):
        return tls_failure(uri, exc)
    return None
