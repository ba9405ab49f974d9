"""Who may use the gateway: bearer tokens, Basic users, and the decision for one request.

Pure: no I/O, no clock, no threads. :func:`decide` reads a request's
credentials and answers :class:`Granted`, :class:`Refused` or, for a Basic
password that must go through its key-derivation function,
:class:`Verify` (the shell runs :meth:`PasswordHash.verify` off the event loop
and calls :func:`verified`).

Decided here, once:

* **Where a credential may be.** A bearer token in ``Authorization: Bearer
  TOKEN``, in the query parameter ``token=`` (browsers cannot set headers on a
  WebSocket) or in the cookie :data:`TOKEN_COOKIE` (set after a query-token
  login on a web file, so that the page's other files and its WebSocket are
  authenticated too); a Basic user in ``Authorization: Basic``.
* **How tokens compare.** In constant time: the SHA-256 of the candidate
  against the SHA-256 of every listed token, with no early exit.
* **Passwords are never stored or compared in plain text.** Lines of
  ``--basic-auth-file`` hold a scrypt or PBKDF2 hash (:class:`PasswordHash`);
  an unknown user costs the same key derivation as a known one (no user
  enumeration by timing). A password once verified is remembered
  (:class:`Remembered`: an HMAC under a per-process key, never the password)
  so that a browser's many requests do not each cost a key derivation.
* **What a refusal says.** 401 with one ``WWW-Authenticate`` challenge per
  enabled scheme; the reason (missing, wrong, malformed) goes to the log, the
  credential itself never does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, NamedTuple
from urllib.parse import parse_qsl

from websockets.datastructures import Headers

from .files import FileProblem

__all__ = [
    "REALM",
    "TOKEN_COOKIE",
    "BasicUsers",
    "BearerTokens",
    "Granted",
    "PasswordHash",
    "Refused",
    "Remembered",
    "Verify",
    "decide",
    "hash_password",
    "valid_user",
    "verified",
]

#: The realm of the ``WWW-Authenticate`` challenges.
REALM: Final = "ws-stream"
#: The cookie that carries a bearer token after a query-token login on a web file.
TOKEN_COOKIE: Final = "ws_stream_token"
#: RFC 6750's b64token: what a bearer token may contain (so it fits a header, a cookie, a URL).
_TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
#: A Basic user name: no colon (the separator), no spaces or control characters.
_USER: Final = re.compile(r"[^\s:\x00-\x1f\x7f]{1,128}")
#: Longest ``Authorization`` value read (a longer one is malformed).
_MAX_AUTHORIZATION: Final = 4096
#: The most query parameters read.
_MAX_QUERY_FIELDS: Final = 64
#: Bounds of the key-derivation parameters a hash line may ask for: one
#: verification uses at most this much memory, and a line cannot make every
#: request cost seconds of CPU.
_MAX_SCRYPT_MEMORY: Final = 128 * 1024 * 1024
_MAX_PBKDF2_ITERATIONS: Final = 5_000_000
#: scrypt's parameters for new hashes (``ws-stream passwd``): 32 MiB, about 0.1 s.
_SCRYPT_LOG_N: Final = 15
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


@dataclass(frozen=True)
class PasswordHash:
    """One password hash of ``--basic-auth-file``.

    ``scrypt$LOGN$R$P$SALT$HASH`` (base64 salt and hash; what
    :func:`hash_password` writes) or Django's ``pbkdf2_sha256$ITERATIONS$SALT$HASH``.
    """

    text: str
    scheme: str
    params: tuple[int, ...]
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        """Read a hash.

        Raises:
            ValueError: not a hash of a supported scheme, or parameters out of
                bounds (the message says which).
        """
        scheme, _, rest = text.partition("$")
        fields = rest.split("$")
        try:
            if scheme == "scrypt" and len(fields) == 5:
                log_n, r, p = (int(f) for f in fields[:3])
                if not (1 <= log_n <= 24 and 1 <= r <= 64 and 1 <= p <= 16):
                    raise ValueError("scrypt parameters out of range")
                if 128 * r * (2**log_n + p) > _MAX_SCRYPT_MEMORY:
                    raise ValueError(
                        f"scrypt parameters that need more than "
                        f"{_MAX_SCRYPT_MEMORY // 2**20} MiB per verification"
                    )
                salt, digest = _b64decode(fields[3]), _b64decode(fields[4])
                params: tuple[int, ...] = (log_n, r, p)
            elif scheme == "pbkdf2_sha256" and len(fields) == 3:
                iterations = int(fields[0])
                if not 1000 <= iterations <= _MAX_PBKDF2_ITERATIONS:
                    raise ValueError(
                        f"{iterations} PBKDF2 iterations (1000 to {_MAX_PBKDF2_ITERATIONS})"
                    )
                salt, digest = fields[1].encode(), _b64decode(fields[2])
                params = (iterations,)
            else:
                raise ValueError(
                    "not a password hash: expected scrypt$... (from `ws-stream passwd USER`) "
                    "or pbkdf2_sha256$ITERATIONS$SALT$HASH; plain-text passwords are refused"
                )
        except binascii.Error as exc:
            raise ValueError(f"invalid base64 in the {scheme} hash") from exc
        if len(salt) < 8 or not 16 <= len(digest) <= 64:
            raise ValueError(f"a {scheme} hash needs a salt of 8+ bytes and a 16-64 byte hash")
        return cls(text, scheme, params, salt, digest)

    def verify(self, password: bytes) -> bool:
        """Whether ``password`` has this hash: a key derivation (CPU and memory: run off-loop)."""
        if self.scheme == "scrypt":
            log_n, r, p = self.params
            derived = hashlib.scrypt(
                password,
                salt=self.salt,
                n=2**log_n,
                r=r,
                p=p,
                maxmem=_MAX_SCRYPT_MEMORY + 1024 * 1024,
                dklen=len(self.digest),
            )
        else:
            derived = hashlib.pbkdf2_hmac(
                "sha256", password, self.salt, self.params[0], dklen=len(self.digest)
            )
        return hmac.compare_digest(derived, self.digest)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A new scrypt hash of ``password``: a line of ``--basic-auth-file`` (``ws-stream passwd``)."""
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=2**_SCRYPT_LOG_N,
        r=_SCRYPT_R,
        p=_SCRYPT_P,
        maxmem=_MAX_SCRYPT_MEMORY + 1024 * 1024,
        dklen=32,
    )
    return f"scrypt${_SCRYPT_LOG_N}${_SCRYPT_R}${_SCRYPT_P}${_b64encode(salt)}${_b64encode(digest)}"


#: What an unknown user's password is checked against: the same cost as a
#: known user's (the hash of a random password, which nothing matches).
_NOBODY: Final = PasswordHash(
    "",
    "scrypt",
    (_SCRYPT_LOG_N, _SCRYPT_R, _SCRYPT_P),
    b"ws-stream-nobody",
    hashlib.sha256(b"nobody").digest(),
)


def valid_user(name: str) -> bool:
    """Whether ``name`` can be a Basic user name (no colon, no spaces, 1-128 characters)."""
    return _USER.fullmatch(name) is not None


def _lines(texts: list[tuple[str, str]]) -> list[tuple[str, int, str]]:
    """(file, line number, stripped line) of every line that is not blank or a comment."""
    return [
        (file, number, line.strip())
        for file, text in texts
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


@dataclass(frozen=True)
class BearerTokens:
    """The tokens of ``--bearer-file``: SHA-256 digests and who each one is."""

    digests: tuple[tuple[bytes, str], ...]

    @classmethod
    def parse(cls, texts: list[tuple[str, str]]) -> BearerTokens:
        """Read ``TOKEN`` or ``TOKEN LABEL`` lines (``#`` comments, blank lines ignored).

        Raises:
            FileProblem: a token with characters outside RFC 6750's b64token,
                or no token at all (the message never shows a token).
        """
        entries = []
        for file, number, line in _lines(texts):
            token, _, label = line.partition(" ")
            if _TOKEN.fullmatch(token) is None:
                raise FileProblem(
                    f"{file} line {number}: a token may contain only letters, digits and "
                    "-._~+/ (and = at its end), then optionally a space and a label"
                )
            identity = label.strip() or f"token#{number}"
            entries.append((hashlib.sha256(token.encode()).digest(), identity))
        if not entries:
            raise FileProblem(f"{texts[0][0] if texts else 'the file'} lists no token")
        return cls(tuple(entries))

    def identify(self, token: str) -> str | None:
        """Who ``token`` is (its label), or None; constant time in the token's value."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for known, identity in self.digests:
            if hmac.compare_digest(digest, known) and found is None:
                found = identity
        return found


@dataclass(frozen=True)
class BasicUsers:
    """The users of ``--basic-auth-file`` and their password hashes."""

    users: dict[str, PasswordHash]

    @classmethod
    def parse(cls, texts: list[tuple[str, str]]) -> BasicUsers:
        """Read ``USER:HASH`` lines.

        Raises:
            FileProblem: a line that is not ``USER:HASH``, a plain-text
                password, a user listed twice, or no user at all.
        """
        users: dict[str, PasswordHash] = {}
        for file, number, line in _lines(texts):
            user, sep, text = line.partition(":")
            where = f"{file} line {number}"
            if not sep or not valid_user(user):
                raise FileProblem(f"{where}: expected USER:HASH (from `ws-stream passwd USER`)")
            if user in users:
                raise FileProblem(f"{where}: the user {user!r} is listed twice")
            try:
                users[user] = PasswordHash.parse(text.strip())
            except ValueError as exc:
                raise FileProblem(f"{where}: {exc}") from None
        if not users:
            raise FileProblem(f"{texts[0][0] if texts else 'the file'} lists no user")
        return cls(users)


class Remembered:
    """Basic credentials verified lately (at most ``size``), so that repeats cost no KDF.

    Keys are HMACs under a random per-process key of the user, the password
    and the hash they matched: a changed hash in the file forgets them.
    """

    def __init__(self, size: int = 1024) -> None:
        self._key = secrets.token_bytes(32)
        self._size = size
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def _mac(self, user: str, password: str, hashed: PasswordHash) -> bytes:
        data = "\0".join((user, password, hashed.text)).encode("utf-8", "surrogateescape")
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def __contains__(self, item: tuple[str, str, PasswordHash]) -> bool:
        mac = self._mac(*item)
        if mac in self._seen:
            self._seen.move_to_end(mac)
            return True
        return False

    def add(self, user: str, password: str, hashed: PasswordHash) -> None:
        self._seen[self._mac(user, password, hashed)] = None
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)


class Granted(NamedTuple):
    """The request may go on. ``identity``: what the log names.

    ``cookie``: the token came in the query: a web file's response sets the
    :data:`TOKEN_COOKIE` to it.
    """

    identity: str
    cookie: str | None = None


class Refused(NamedTuple):
    """Answer ``status`` (401) with ``challenges`` as ``WWW-Authenticate``; ``reason`` is logged."""

    status: int
    reason: str
    challenges: tuple[str, ...] = ()


class Verify(NamedTuple):
    """Run ``hashed.verify(password)`` off the event loop, then :func:`verified`."""

    user: str
    password: str
    hashed: PasswordHash
    known: bool


class _Found(NamedTuple):
    bearer: list[tuple[str, str]]  # (where, token)
    basic: tuple[str, str] | None
    malformed: str | None


def _find(headers: Headers, query: str) -> _Found:
    bearer: list[tuple[str, str]] = []
    basic = None
    malformed = None
    values = headers.get_all("Authorization")
    if len(values) > 1:
        malformed = "more than one Authorization header"
    elif values:
        value = values[0]
        scheme, _, credential = value.strip().partition(" ")
        credential = credential.strip()
        if len(value) > _MAX_AUTHORIZATION:
            malformed = "an Authorization header too long"
        elif scheme.lower() == "bearer" and _TOKEN.fullmatch(credential):
            bearer.append(("header", credential))
        elif scheme.lower() == "basic" and credential:
            try:
                user, sep, password = _b64decode(credential).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                sep = ""
            if sep:
                basic = (user, password)
            else:
                malformed = "a malformed Basic Authorization header"
        else:
            # Never the value itself: a client may send a bare token or password.
            malformed = "a malformed or unsupported Authorization header (not Bearer nor Basic)"
    try:
        fields = parse_qsl(query, keep_blank_values=True, max_num_fields=_MAX_QUERY_FIELDS)
    except ValueError:
        fields = []
        malformed = malformed or "too many query parameters"
    bearer += [("query", value) for name, value in fields if name == "token"]
    for cookies in headers.get_all("Cookie"):
        for pair in cookies.split(";"):
            name, sep, value = pair.strip().partition("=")
            if sep and name == TOKEN_COOKIE:
                bearer.append(("cookie", value.strip('"')))
    return _Found(bearer, basic, malformed)


def challenges(tokens: BearerTokens | None, users: BasicUsers | None) -> tuple[str, ...]:
    """The ``WWW-Authenticate`` values of a 401: one per enabled scheme."""
    found = []
    if tokens is not None:
        found.append(f'Bearer realm="{REALM}"')
    if users is not None:
        found.append(f'Basic realm="{REALM}", charset="UTF-8"')
    return tuple(found)


def decide(
    headers: Headers,
    query: str,
    tokens: BearerTokens | None,
    users: BasicUsers | None,
    remembered: Remembered,
) -> Granted | Refused | Verify:
    """Whether a request carries a valid credential (at least one scheme is enabled).

    A listed bearer token anywhere it may be grants; otherwise Basic
    credentials need a verification (:class:`Verify`) unless remembered.
    """
    found = _find(headers, query)
    if tokens is not None:
        for where, token in found.bearer:
            identity = tokens.identify(token)
            if identity is not None:
                return Granted(identity, token if where == "query" else None)
    if users is not None and found.basic is not None:
        user, password = found.basic
        hashed = users.users.get(user)
        if hashed is not None and (user, password, hashed) in remembered:
            return Granted(user)
        return Verify(user, password, hashed or _NOBODY, hashed is not None)
    if found.malformed is not None:
        reason = found.malformed
    elif found.bearer and tokens is not None:
        reason = "a bearer token that is not listed"
    elif found.bearer or found.basic:
        reason = "credentials of a scheme this server does not accept"
    else:
        reason = "no credentials"
    return Refused(401, reason, challenges(tokens, users))


def verified(
    verify: Verify,
    matched: bool,
    tokens: BearerTokens | None,
    users: BasicUsers | None,
    remembered: Remembered,
) -> Granted | Refused:
    """What a finished verification means (``matched``: what ``verify.hashed.verify`` said)."""
    if matched and verify.known:
        remembered.add(verify.user, verify.password, verify.hashed)
        return Granted(verify.user)
    reason = "a wrong password" if verify.known else "an unknown user"
    return Refused(401, f"{reason} (Basic user {verify.user[:64]!r})", challenges(tokens, users))
