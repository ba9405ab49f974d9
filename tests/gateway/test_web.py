"""``ws-stream serve --web DIR`` (issue 16): static files on the tunnel's port.

Requests are written by hand (no client library normalises their paths). A
secret file lies next to DIR, and symlinks in DIR point at it: no request may
ever get its bytes. The WebSocket tunnel keeps working on the same port, and
with ``--bearer-file`` the files need the token too (``?token=`` logs a page in
with a cookie that then works alone, also for the page's WebSocket).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
import trustme

from ..cli.helpers import Cli, run, start_tcp_echo
from .helpers import Reply, assert_no_leak, http, round_trip, tls_files

Start = Callable[..., Cli]

MTIME = 1_700_000_000  # the files' modification time: Tue, 14 Nov 2023 22:13:20 GMT

FILES = {
    "index.html": (b"<!doctype html><title>home</title>", "text/html; charset=utf-8"),
    "app.js": (b"console.log('app');\n", "text/javascript; charset=utf-8"),
    "mod.mjs": (b"export const x = 1;\n", "text/javascript; charset=utf-8"),
    "style.css": (b"body { color: red }\n", "text/css; charset=utf-8"),
    "logo.svg": (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"),
    "blob.qqq": (os.urandom(3000), "application/octet-stream"),
    "sub/index.html": (b"<p>sub</p>", "text/html; charset=utf-8"),
}


@dataclass
class Site:
    root: Path
    secret: bytes


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """DIR (``www``) with its files; outside it, secrets that symlinks in DIR point to."""
    secret = b"SECRET-" + secrets.token_hex(16).encode()
    (tmp_path / "secret.txt").write_bytes(secret)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret2.txt").write_bytes(secret)
    (tmp_path / "www2").mkdir()  # a sibling whose name starts with DIR's
    (tmp_path / "www2" / "secret3.txt").write_bytes(secret)
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "empty" / "listed.txt").write_bytes(b"not for listings")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(secret)
    (root / ".hidden").write_bytes(secret)
    for name, (content, _) in FILES.items():
        (root / name).write_bytes(content)
        os.utime(root / name, (MTIME, MTIME))
    (root / "leak").symlink_to(tmp_path / "secret.txt")
    (root / "leak.html").symlink_to("../secret.txt")
    (root / "leakdir").symlink_to(tmp_path / "outside")
    (root / "sib").symlink_to("../www2")
    (root / "alias.js").symlink_to("app.js")  # inside DIR: served
    with (root / "big.bin").open("wb") as big:  # sparse: 17 MiB
        big.truncate(17 * 2**20)
    return Site(root, secret)


TRAVERSALS = [
    "/../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt",
    "/%2E%2E%2Fsecret.txt",
    "/%2e%2e%2fsecret.txt",
    "/.%2e/secret.txt",
    "/%2e./secret.txt",
    "/..%2fsecret.txt",
    "/..%2f..%2fetc/passwd",
    "/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/sub/../../secret.txt",
    "/sub/%2e%2e/%2e%2e/secret.txt",
    "/sub%2f..%2f..%2fsecret.txt",
    "//etc/passwd",
    "//../secret.txt",
    "/%2fetc/passwd",
    "/..\\secret.txt",
    "/sub\\..\\..\\secret.txt",
    "/%5c..%5csecret.txt",
    "/sub%5C..%5C..%5Csecret.txt",
    "/leak",
    "/leak.html",
    "/leakdir/secret2.txt",
    "/leakdir/",
    "/sib/secret3.txt",
    "/.hidden",
    "/%2ehidden",
    "/.git/config",
    "/sub/../.hidden",
    "/index.html%00",
    "/index.html%00.txt",
    "/%00/../secret.txt",
    "/./.hidden",
]

ABSOLUTE_FORMS = [
    "http://x/etc/passwd",
    "http://x/../secret.txt",
    "http://127.0.0.1/%2e%2e/secret.txt",
    "http://x//etc/passwd",
    "file:///etc/passwd",
]


async def web(
    port: int,
    path: str,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    context: ssl.SSLContext | None = None,
) -> Reply:
    return await http(port, path, method=method, headers=headers, context=context)


def test_traversal_symlinks_and_hidden_files_never_leak(
    cli: Start, site: Site, tmp_path: Path
) -> None:
    passwd = Path("/etc/passwd").read_bytes()[:20]

    async def main() -> None:
        server, target, accepted = await start_tcp_echo()
        async with server:
            serve = cli(
                "serve", "--port", "0", "--to", f"127.0.0.1:{target}", "--web", str(site.root),
            )  # fmt: skip
            port = await asyncio.to_thread(serve.port)
            leaks, wrong = [], []
            for path in TRAVERSALS + ABSOLUTE_FORMS:
                for method in ("GET", "HEAD"):
                    reply = await web(port, path, method)
                    if site.secret in reply.raw or (passwd and passwd in reply.raw):
                        leaks.append(f"{method} {path}: {reply}")
                    allowed = (400, 403, 404) if path in ABSOLUTE_FORMS else (403, 404)
                    if reply.status not in allowed:
                        wrong.append(f"{method} {path}: {reply.status} {reply.reason}")
            assert leaks == [], "\n".join(leaks)
            assert wrong == [], "\n".join(wrong)
            # Still serving, and nothing reached the tunnel's target.
            assert (await web(port, "/app.js")).body == FILES["app.js"][0]
            assert accepted == []
        assert "Traceback" not in serve.stderr

    run(main())


def test_files_types_head_index_redirect_methods_and_the_tunnel(cli: Start, site: Site) -> None:
    async def main() -> None:
        server, target, accepted = await start_tcp_echo(prefix=b"T:")
        async with server:
            serve = cli(
                "serve", "--port", "0", "--to", f"127.0.0.1:{target}", "--web", str(site.root),
            )  # fmt: skip
            port = await asyncio.to_thread(serve.port)
            for name, (content, content_type) in FILES.items():
                got = await web(port, f"/{name}")
                assert got.status == 200, got
                assert got.body == content, name
                assert got.header("Content-Type") == content_type, got
                assert got.header("Content-Length") == str(len(content)), got
                assert got.header("X-Content-Type-Options") == "nosniff", got
                assert got.header("Cache-Control") == "no-cache", got
                modified = got.header("Last-Modified")
                assert modified and parsedate_to_datetime(modified).timestamp() == MTIME, got
                head = await web(port, f"/{name}", "HEAD")
                assert head.status == 200 and head.body == b"", head
                for header in ("Content-Type", "Content-Length", "Last-Modified"):
                    assert head.header(header) == got.header(header), (header, head)

            index = FILES["index.html"][0]
            assert (await web(port, "/")).body == index
            assert (await web(port, "/?autoconnect=1&x=y")).body == index
            assert (await web(port, "/sub/")).body == FILES["sub/index.html"][0]
            assert (await web(port, "/alias.js")).body == FILES["app.js"][0]
            moved = await web(port, "/sub")
            assert moved.status == 301, moved
            location = moved.header("Location") or ""
            assert location in ("/sub/", f"http://127.0.0.1:{port}/sub/"), moved
            listing = await web(port, "/empty/")
            assert listing.status == 404 and b"listed.txt" not in listing.raw, listing
            assert (await web(port, "/missing.js")).status == 404
            assert (await web(port, "/sub/missing/")).status == 404
            big = await web(port, "/big.bin")
            assert big.status == 500 and len(big.body) < 2**20, big.status
            await asyncio.to_thread(serve.wait_for, r"/big\.bin.*status=500|status=500.*big\.bin")
            for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
                refused = await web(port, "/app.js", method, headers=[("Content-Length", "0")])
                assert refused.status == 405, (method, refused)
                allow = {m.strip() for m in (refused.header("Allow") or "").split(",")}
                assert allow == {"GET", "HEAD"}, refused
            assert accepted == []

            # The WebSocket tunnel on the same port, at any path.
            await round_trip(f"ws://127.0.0.1:{port}/", b"T:")
            await round_trip(f"ws://127.0.0.1:{port}/websockify", b"T:")
            assert len(accepted) == 2
        assert "Traceback" not in serve.stderr

    run(main())


def test_web_files_need_the_token_and_the_cookie_works_alone(
    cli: Start, site: Site, tmp_path: Path
) -> None:
    secret, wrong = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{secret} browser\n")
    cookie = f"ws_stream_token={secret}"

    async def main() -> Cli:
        server, target, accepted = await start_tcp_echo(prefix=b"T:")
        async with server:
            serve = cli(
                "serve", "--port", "0", "--to", f"127.0.0.1:{target}", "--web", str(site.root),
                "--bearer-file", str(tokens), "-vv",
            )  # fmt: skip
            port = await asyncio.to_thread(serve.port)
            for path, headers in [
                ("/", []),
                ("/app.js", []),
                ("/sub/", []),
                (f"/?token={wrong}", []),
                ("/app.js", [("Cookie", f"ws_stream_token={wrong}")]),
                ("/app.js", [("Authorization", f"Bearer {wrong}")]),
                ("/missing", []),
                ("/../secret.txt", []),
            ]:
                reply = await web(port, path, headers=headers)
                assert reply.status == 401, (path, headers, reply)
                assert reply.header("WWW-Authenticate") == 'Bearer realm="ws-stream"', reply
                assert not reply.all("Set-Cookie"), reply
                assert FILES["app.js"][0] not in reply.body and site.secret not in reply.raw

            login = await web(port, f"/?token={secret}")
            assert login.status == 200 and login.body == FILES["index.html"][0], login
            assert login.all("Set-Cookie") == [f"{cookie}; Path=/; HttpOnly; SameSite=Strict"]
            # The cookie alone: the page's files, and its WebSocket.
            for name in ("app.js", "style.css", "sub/index.html"):
                reply = await web(port, f"/{name}", headers=[("Cookie", cookie)])
                assert reply.status == 200 and reply.body == FILES[name][0], reply
                assert not reply.all("Set-Cookie"), reply
            header = await web(port, "/app.js", headers=[("Authorization", f"Bearer {secret}")])
            assert header.status == 200 and not header.all("Set-Cookie"), header
            assert accepted == []
            await round_trip(
                f"ws://127.0.0.1:{port}/", b"T:", additional_headers={"Cookie": cookie}
            )
            assert len(accepted) == 1
            reply = await http(port, "/", upgrade=True)
            assert reply.status == 401, reply
            assert len(accepted) == 1
        return serve

    serve = run(main())
    for token in (secret, wrong):
        assert_no_leak(token, serve.stderr)


def test_the_cookie_is_secure_over_tls(cli: Start, site: Site, tmp_path: Path) -> None:
    secret = secrets.token_urlsafe(24)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{secret}\n")
    files = tls_files(tmp_path / "tls", trustme.CA(), "127.0.0.1")
    serve = cli(
        "serve", "--port", "0", "--cert", files.chain, "--key", files.key, "--web",
        str(site.root), "--bearer-file", str(tokens),
    )  # fmt: skip
    port = serve.port()
    context = ssl.create_default_context(cafile=files.ca)

    async def main() -> None:
        refused = await web(port, "/", context=context)
        assert refused.status == 401, refused
        login = await web(port, f"/?token={secret}", context=context)
        assert login.status == 200, login
        assert login.all("Set-Cookie") == [
            f"ws_stream_token={secret}; Path=/; HttpOnly; SameSite=Strict; Secure"
        ], login
        files_ = await web(
            port, "/app.js", context=context, headers=[("Cookie", f"ws_stream_token={secret}")]
        )
        assert files_.status == 200 and files_.body == FILES["app.js"][0], files_

    run(main())
