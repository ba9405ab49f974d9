"""``ws-stream serve`` as a gateway: who may connect, to which named target, and web files.

The decisions live in pure modules, each tested alone:

* :mod:`.access`: credentials (``--bearer-file``, ``--basic-auth-file``)
  and the decision for one request;
* :mod:`.targets`: ``--targets`` (websockify's token-file format) and which
  name a request gives;
* :mod:`.web`: which file of ``--web DIR`` a plain HTTP request gets;
* :mod:`.files`: files read again when they change.

:class:`Gateway` is the thin runtime part: it runs the decisions for each
request in ``serve``'s ``process_request`` hook, verifies Basic passwords in
a small thread pool (bounded: beyond :data:`MAX_PENDING_LOGINS` logins under
way, 503), reads web files off the event loop, and logs every refusal.
TLS client certificates (``--client-ca``) are checked by TLS itself; the
gateway names their subject.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, NamedTuple
from urllib.parse import urlsplit

from websockets.http11 import Request, Response

from ..args import HostPort, ServeConfig, UnixAddress
from ..report import fields
from .access import (
    TOKEN_COOKIE,
    BasicUsers,
    BearerTokens,
    Granted,
    Refused,
    Remembered,
    Verify,
    decide,
    verified,
)
from .files import FileProblem, Watched
from .reverse import MUX_SUBPROTOCOL, NotAllowed, reverse_request
from .targets import Targets, UnknownTarget, target_name
from .web import NotServed, WebFile, locate, read, refusal, response, segments

__all__ = ["MAX_PENDING_LOGINS", "Admission", "Gateway", "check_files"]

logger = logging.getLogger(__name__)

#: Basic logins whose password verification may be under way at once (more: 503).
MAX_PENDING_LOGINS: Final = 32
#: Threads verifying passwords (each scrypt verification takes 32 MiB and ~0.1 s).
_KDF_THREADS: Final = 2


class Admission(NamedTuple):
    """An accepted WebSocket: where it goes and who it is, for ``serve`` and its log line.

    ``target``: the named target; None: ``serve``'s own (``--to``, or the echo).
    """

    target: HostPort | UnixAddress | None
    name: str | None
    identity: str | None
    cert: str | None
    #: A reverse tunnel's address (``--allow-reverse``): listen there for this session.
    reverse: HostPort | None = None


def _watched(config: ServeConfig) -> dict[str, Watched[Any]]:
    found: dict[str, Watched[Any]] = {}
    if config.bearer_file is not None:
        found["tokens"] = Watched("--bearer-file", config.bearer_file, BearerTokens.parse)
    if config.basic_auth_file is not None:
        found["users"] = Watched("--basic-auth-file", config.basic_auth_file, BasicUsers.parse)
    if config.targets is not None:
        found["targets"] = Watched("--targets", config.targets, Targets.parse)
    return found


def check_files(config: ServeConfig) -> str | None:
    """Why the gateway's files cannot be used (at startup), or None."""
    for watched in _watched(config).values():
        try:
            watched.current()
        except FileProblem as problem:
            return f"{watched.option}: {problem}"
    if config.web is not None and not os.path.isdir(config.web):
        return f"--web: {config.web} is not a directory"
    return None


def _subject(cert: dict[str, Any] | None) -> str | None:
    """A certificate's subject as ``O=Example,CN=alice``, in the certificate's order."""
    if not cert:
        return None
    short = {
        "commonName": "CN",
        "organizationName": "O",
        "organizationalUnitName": "OU",
        "countryName": "C",
        "localityName": "L",
        "stateOrProvinceName": "ST",
    }
    parts = [
        f"{short.get(key, key)}={value}" for rdn in cert.get("subject", ()) for key, value in rdn
    ]
    return ",".join(parts) or None


class Gateway:
    """The gateway options of one ``serve`` process, applied to each request."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        watched = _watched(config)
        self._tokens: Watched[BearerTokens] | None = watched.get("tokens")
        self._users: Watched[BasicUsers] | None = watched.get("users")
        self._targets: Watched[Targets] | None = watched.get("targets")
        self._web_root = None if config.web is None else os.path.realpath(config.web)
        self._remembered = Remembered()
        self._pending = 0
        self._kdf: ThreadPoolExecutor | None = None
        self.secure = config.cert is not None

    @property
    def enabled(self) -> bool:
        """Whether any gateway option is given (else ``serve`` behaves as without them)."""
        c = self.config
        return c.mux or any(
            x is not None for x in (c.bearer_file, c.basic_auth_file, c.targets, c.web, c.client_ca)
        )

    def close(self) -> None:
        """Stop the password threads (at shutdown)."""
        if self._kdf is not None:
            self._kdf.shutdown(wait=False, cancel_futures=True)

    def _refuse(self, peer: str, status: int, reason: str, text: str | None = None) -> Response:
        logger.info("refused: %s", fields(peer=peer, status=status, reason=reason))
        return refusal(status, text)

    async def admit(
        self, peer: str, request: Request, peercert: dict[str, Any] | None
    ) -> Response | Admission | None:
        """Decide one request: a response to send, an :class:`Admission`, or None.

        None: not a WebSocket upgrade and no ``--web``: websockets answers (426).
        """
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if not upgrade and self._web_root is None:
            return None
        split = urlsplit(request.path)
        try:
            tokens = None if self._tokens is None else self._tokens.current()
            users = None if self._users is None else self._users.current()
            targets = None if self._targets is None else self._targets.current()
        except FileProblem as problem:
            return self._refuse(
                peer, 503, str(problem), "The server's configuration cannot be read; try later."
            )
        identity: str | None = None
        cookie: str | None = None
        if tokens is not None or users is not None:
            decision = decide(request.headers, split.query, tokens, users, self._remembered)
            if isinstance(decision, Verify):
                if self._pending >= MAX_PENDING_LOGINS:
                    return self._refuse(
                        peer, 503, "too many logins under way", "Too many logins; try again."
                    )
                decision = await self._verify(decision, tokens, users)
            if isinstance(decision, Refused):
                answer = self._refuse(peer, decision.status, decision.reason)
                for challenge in decision.challenges:
                    answer.headers["WWW-Authenticate"] = challenge
                return answer
            assert isinstance(decision, Granted)
            identity, cookie = decision.identity, decision.cookie
        cert = _subject(peercert) if self.config.client_ca is not None else None
        if not upgrade:
            return await self._web(peer, request, cookie)
        offered = ",".join(request.headers.get_all("Sec-WebSocket-Protocol"))
        mux = self.config.mux and MUX_SUBPROTOCOL in {p.strip() for p in offered.split(",")}
        reverse = reverse_request(request.headers, self.config.allow_reverse, mux=mux)
        if isinstance(reverse, NotAllowed):
            return self._refuse(peer, reverse.status, reverse.reason, reverse.reason)
        if targets is None:
            if self.config.path is not None and split.path != self.config.path:
                return self._refuse(peer, 404, f"the path {split.path[:100]!r} is not --path")
            return Admission(None, None, identity, cert, reverse)
        name = target_name(
            split.path, split.query, prefix=self.config.path, by_query=tokens is None
        )
        if isinstance(name, UnknownTarget):
            return self._refuse(peer, 404, name.reason, "No such target.")
        target = targets.by_name.get(name)
        if target is None:
            return self._refuse(peer, 404, f"no target named {name!r}", "No such target.")
        return Admission(target, name, identity, cert, reverse)

    async def _verify(
        self, verify: Verify, tokens: BearerTokens | None, users: BasicUsers | None
    ) -> Granted | Refused:
        if self._kdf is None:
            self._kdf = ThreadPoolExecutor(_KDF_THREADS, thread_name_prefix="ws-stream-kdf")
        self._pending += 1
        try:
            password = verify.password.encode("utf-8", "surrogateescape")
            matched = await asyncio.get_running_loop().run_in_executor(
                self._kdf, verify.hashed.verify, password
            )
        finally:
            self._pending -= 1
        assert users is not None
        return verified(verify, matched, tokens, users, self._remembered)

    async def _web(self, peer: str, request: Request, cookie: str | None) -> Response:
        assert self._web_root is not None
        parts = segments(request.path, request.method)
        found = (
            parts if isinstance(parts, NotServed) else locate(self._web_root, parts, request.path)
        )
        file = None
        if isinstance(found, WebFile):
            loaded = await asyncio.to_thread(read, found.path)
            if isinstance(loaded, NotServed):
                found = loaded
            else:
                file = loaded
        answer = response(request, found, file)
        if cookie is not None and answer.status_code == 200:
            answer.headers["Set-Cookie"] = (
                f"{TOKEN_COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict"
                + ("; Secure" if self.secure else "")
            )
        if request.method == "HEAD":
            answer.body = b""
        # The path only: the query may hold a token.
        where = fields(
            peer=peer, method=request.method[:16], path=urlsplit(request.path).path[:200]
        )
        if isinstance(found, NotServed):
            level = logging.WARNING if found.status >= 500 else logging.INFO
            logger.log(
                level, "web: %s", f"{where} {fields(status=found.status, reason=found.reason)}"
            )
        else:
            logger.debug("web: %s %s", where, fields(status=answer.status_code))
        return answer
