"""The gateway's pure decisions, fed directly: credentials, names, web paths, watched files."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.datastructures import Headers
from websockets.http11 import Request

from ws_stream.cli.args import HostPort, UnixAddress
from ws_stream.cli.gateway.access import (
    BasicUsers,
    BearerTokens,
    Granted,
    PasswordHash,
    Refused,
    Remembered,
    Verify,
    decide,
    hash_password,
    verified,
)
from ws_stream.cli.gateway.files import FileProblem, Watched
from ws_stream.cli.gateway.targets import Targets, UnknownTarget, target_name
from ws_stream.cli.gateway.web import (
    NotServed,
    Read,
    Redirect,
    WebFile,
    locate,
    response,
    segments,
)

TOKENS = BearerTokens.parse([("tokens", "# a comment\n\nsecret-1 alice\nsecret+2/x==\n")])


def headers(**values: str) -> Headers:
    return Headers([(name.replace("_", "-"), value) for name, value in values.items()])


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# Bearer tokens


def test_a_token_is_found_in_the_header_the_query_or_the_cookie() -> None:
    remembered = Remembered()
    by_header = decide(headers(Authorization="Bearer secret-1"), "", TOKENS, None, remembered)
    assert by_header == Granted("alice", None)
    by_query = decide(headers(), "a=1&token=secret%2B2%2Fx%3D%3D", TOKENS, None, remembered)
    assert by_query == Granted("token#4", "secret+2/x==")  # the cookie to set
    by_cookie = decide(
        headers(Cookie="x=1; ws_stream_token=secret-1"), "", TOKENS, None, remembered
    )
    assert by_cookie == Granted("alice", None)


@pytest.mark.parametrize(
    ("request_headers", "query", "reason"),
    [
        ({}, "", "no credentials"),
        ({"Authorization": "Bearer secret-3"}, "", "a bearer token that is not listed"),
        ({}, "token=secret-1x", "a bearer token that is not listed"),
        ({"Authorization": "Bearer"}, "", "malformed"),
        ({"Authorization": "Bearer secret 1"}, "", "malformed"),
        ({"Authorization": "Token secret-1"}, "", "malformed"),
        ({"Authorization": "secret-1-sent-without-its-scheme"}, "", "malformed"),
        ({"Authorization": "Bearer " + "a" * 5000}, "", "too long"),
        ({"Authorization": basic("alice", "pw")}, "", "a scheme this server does not accept"),
        ({}, "&".join(["x=1"] * 100), "too many query parameters"),
    ],
)
def test_refusals_say_why_and_challenge(
    request_headers: dict[str, str], query: str, reason: str
) -> None:
    decision = decide(Headers(request_headers), query, TOKENS, None, Remembered())
    assert isinstance(decision, Refused)
    assert decision.status == 401
    assert reason in decision.reason
    assert decision.challenges == ('Bearer realm="ws-stream"',)
    assert "secret" not in decision.reason


def test_two_authorization_headers_are_malformed() -> None:
    two = Headers([("Authorization", "Bearer secret-1"), ("Authorization", "Bearer secret-1")])
    decision = decide(two, "", TOKENS, None, Remembered())
    assert isinstance(decision, Refused) and "more than one" in decision.reason


@pytest.mark.parametrize("text", ["to ken", "tok\u00e9n", "tok;en", 'tok"en', "=token", "tok=en"])
def test_a_token_outside_b64token_is_a_file_error(text: str) -> None:
    with pytest.raises(FileProblem, match="tokens line 1: a token may contain only") as info:
        BearerTokens.parse([("tokens", text.replace(" ", "\t") + "\n")])
    assert text not in str(info.value)  # a token is never shown


def test_a_file_without_tokens_is_an_error() -> None:
    with pytest.raises(FileProblem, match="lists no token"):
        BearerTokens.parse([("tokens", "# nothing\n")])


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_only_listed_tokens_identify(candidate: str) -> None:
    expected = {"secret-1": "alice", "secret+2/x==": "token#4"}.get(candidate)
    assert TOKENS.identify(candidate) == expected


# Basic users


def test_passwd_hashes_verify_and_refuse() -> None:
    line = hash_password("correct horse")
    assert line.startswith("scrypt$15$8$1$")
    hashed = PasswordHash.parse(line)
    assert hashed.verify(b"correct horse")
    assert not hashed.verify(b"correct horse ")
    assert hash_password("correct horse") != line  # a new salt each time


def test_django_pbkdf2_hashes_verify() -> None:
    digest = hashlib.pbkdf2_hmac("sha256", b"pw", b"saltsalt", 1000)
    text = f"pbkdf2_sha256$1000$saltsalt${base64.b64encode(digest).decode()}"
    hashed = PasswordHash.parse(text)
    assert hashed.verify(b"pw") and not hashed.verify(b"pW")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("alice:secret", "plain-text passwords are refused"),
        ("alice", "expected USER:HASH"),
        ("al ice:scrypt$15$8$1$c2FsdHNhbHQ$" + "A" * 43, "expected USER:HASH"),
        ("alice:scrypt$30$8$1$c2FsdHNhbHQ$" + "A" * 43, "out of range"),
        ("alice:scrypt$20$64$1$c2FsdHNhbHQ$" + "A" * 43, "MiB per verification"),
        ("alice:scrypt$15$8$1$c2FsdA$" + "A" * 43, "salt of 8+ bytes"),
        ("alice:scrypt$15$8$1$!!!$" + "A" * 43, "invalid base64"),
        ("alice:pbkdf2_sha256$10$saltsalt$" + "A" * 43, "PBKDF2 iterations"),
    ],
)
def test_bad_basic_lines_are_file_errors(line: str, message: str) -> None:
    with pytest.raises(FileProblem, match="users line 2: ") as info:
        BasicUsers.parse([("users", "# users\n" + line + "\n")])
    assert message in str(info.value)


def test_a_user_listed_twice_is_an_error() -> None:
    line = "bob:" + hash_password("x")
    with pytest.raises(FileProblem, match="listed twice"):
        BasicUsers.parse([("users", f"{line}\n{line}\n")])


def test_basic_credentials_need_a_verification_then_are_remembered() -> None:
    users = BasicUsers.parse([("users", "bob:" + hash_password("hunter2") + "\n")])
    remembered = Remembered()
    first = decide(headers(Authorization=basic("bob", "hunter2")), "", None, users, remembered)
    assert isinstance(first, Verify) and first.known
    assert verified(first, first.hashed.verify(b"hunter2"), None, users, remembered) == Granted(
        "bob"
    )
    again = decide(headers(Authorization=basic("bob", "hunter2")), "", None, users, remembered)
    assert again == Granted("bob")  # no second key derivation
    wrong = decide(headers(Authorization=basic("bob", "hunter3")), "", None, users, remembered)
    assert isinstance(wrong, Verify)
    refused = verified(wrong, wrong.hashed.verify(b"hunter3"), None, users, remembered)
    assert isinstance(refused, Refused) and "a wrong password" in refused.reason
    assert refused.challenges == ('Basic realm="ws-stream", charset="UTF-8"',)


def test_an_unknown_user_costs_a_verification_too() -> None:
    users = BasicUsers.parse([("users", "bob:" + hash_password("hunter2") + "\n")])
    decision = decide(
        headers(Authorization=basic("eve", "hunter2")), "", TOKENS, users, Remembered()
    )
    assert isinstance(decision, Verify) and not decision.known
    assert decision.hashed.scheme == "scrypt"
    matched = decision.hashed.verify(b"hunter2")
    refused = verified(decision, matched, TOKENS, users, Remembered())
    assert isinstance(refused, Refused) and "an unknown user" in refused.reason
    assert len(refused.challenges) == 2  # Bearer and Basic


def test_a_changed_hash_forgets_what_was_remembered() -> None:
    remembered = Remembered(size=2)
    old = PasswordHash.parse(hash_password("pw"))
    remembered.add("bob", "pw", old)
    assert ("bob", "pw", old) in remembered
    assert ("bob", "pw", PasswordHash.parse(hash_password("pw"))) not in remembered
    remembered.add("a", "1", old)
    remembered.add("b", "2", old)
    assert ("bob", "pw", old) not in remembered  # bounded: the oldest went first


@pytest.mark.parametrize("value", ["Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()])
def test_malformed_basic_headers(value: str) -> None:
    users = BasicUsers.parse([("users", "bob:" + hash_password("x") + "\n")])
    decision = decide(headers(Authorization=value), "", None, users, Remembered())
    assert isinstance(decision, Refused) and "malformed Basic" in decision.reason


# Named targets


def test_targets_parse_websockify_token_files() -> None:
    targets = Targets.parse(
        [
            ("a", "# comment\ndesk: 127.0.0.1:5900\n  db :  [::1]:5432 \n"),
            ("b", "sock: unix:/run/x.sock\nold: unix_socket:/run/y.sock\n"),
        ]
    )
    assert targets.by_name == {
        "desk": HostPort("127.0.0.1", 5900),
        "db": HostPort("::1", 5432),
        "sock": UnixAddress("/run/x.sock"),
        "old": UnixAddress("/run/y.sock"),
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("desk 127.0.0.1:5900", "may contain only"),
        ("desk:", "expected NAME: HOST:PORT"),
        ("de/sk: 127.0.0.1:1", "may contain only"),
        ("..: 127.0.0.1:1", "may contain only"),
        ("desk: 127.0.0.1", "the port is missing"),
        ("desk: 127.0.0.1:0", "cannot be 0"),
        ("desk: 127.0.0.1:1\ndesk: 127.0.0.1:2", "listed twice"),
        ("# only a comment", "lists no target"),
    ],
)
def test_bad_targets_files(text: str, message: str) -> None:
    with pytest.raises(FileProblem, match=message):
        Targets.parse([("targets", text)])


@pytest.mark.parametrize(
    ("path", "query", "prefix", "by_query", "expected"),
    [
        ("/desk", "", None, True, "desk"),
        ("/vnc/desk", "", None, True, "desk"),
        ("/websockify", "token=desk", None, True, "desk"),
        ("/websockify", "token=desk", None, False, "websockify"),
        ("/vnc/desk", "", "/vnc", True, "desk"),
        ("/vnc", "token=desk", "/vnc", True, "desk"),
    ],
)
def test_target_names(
    path: str, query: str, prefix: str | None, by_query: bool, expected: str
) -> None:
    assert target_name(path, query, prefix=prefix, by_query=by_query) == expected


@pytest.mark.parametrize(
    ("path", "query", "prefix"),
    [
        ("/", "", None),
        ("/vnc/", "", None),
        ("/..", "", None),
        ("/%2e%2e", "", None),
        ("/a%2Fb", "", None),
        ("/127.0.0.1:22", "", None),
        ("/localhost:5900", "", None),
        ("/x", "token=127.0.0.1:22", None),
        ("/x", "token=a&token=b", None),
        ("/other/desk", "", "/vnc"),
        ("/vnc/a/desk", "", "/vnc"),
        ("/other", "token=desk", "/vnc"),
    ],
)
def test_what_names_no_target(path: str, query: str, prefix: str | None) -> None:
    assert isinstance(target_name(path, query, prefix=prefix, by_query=True), UnknownTarget)


# Web paths


@pytest.mark.parametrize(
    "target",
    [
        "/../etc/passwd",
        "/%2e%2e/etc/passwd",
        "/%2E%2E%2Fetc",
        "/..%2f..%2fetc/passwd",
        "/a/%2e%2e/%2e%2e/etc",
        "//etc/passwd",
        "http://x/etc/passwd",
        "*",
        "/a\\..\\b",
        "/a%5c..%5cb",
        "/a%00b",
        "/.git/config",
        "/a//b",
        "/%ff",
    ],
)
def test_paths_that_never_name_a_file(target: str) -> None:
    found = segments(target, "GET")
    assert isinstance(found, NotServed) and found.status == 404


def test_only_get_and_head() -> None:
    assert segments("/", "HEAD") == [""]
    assert segments("/a/b.js?x=1", "GET") == ["a", "b.js"]
    assert segments("/", "POST") == NotServed(405, "method POST (only GET and HEAD)")


@pytest.fixture
def web(tmp_path: Path) -> tuple[str, Path]:
    root = tmp_path / "web"
    (root / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "index.html").write_text("<p>home</p>")
    (root / "sub" / "index.html").write_text("<p>sub</p>")
    (root / "app.JS").write_text("x")
    (root / "data.bin").write_bytes(b"\0")
    (tmp_path / "secret").write_text("secret")
    (root / "out").symlink_to(tmp_path / "secret")
    (root / "outdir").symlink_to(tmp_path)
    (root / "in").symlink_to(root / "index.html")
    return os.path.realpath(root), root


def test_locate(web: tuple[str, Path]) -> None:
    root, path = web

    def find(target: str) -> object:
        parts = segments(target, "GET")
        assert isinstance(parts, list)
        return locate(root, parts, target)

    assert find("/") == WebFile(str(path / "index.html"), "text/html; charset=utf-8")
    assert find("/sub/") == WebFile(str(path / "sub" / "index.html"), "text/html; charset=utf-8")
    assert find("/sub?token=x") == Redirect("/sub/?token=x")
    assert find("/app.JS") == WebFile(str(path / "app.JS"), "text/javascript; charset=utf-8")
    assert find("/data.bin") == WebFile(str(path / "data.bin"), "application/octet-stream")
    assert find("/in") == WebFile(str(path / "index.html"), "text/html; charset=utf-8")
    for outside in ("/out", "/outdir/secret", "/outdir/"):
        assert find(outside) == NotServed(404, "a path that leads out of --web DIR")
    assert find("/empty/") == NotServed(404, "no such file")
    assert find("/missing.css") == NotServed(404, "no such file")


def test_responses() -> None:
    get = Request("/a.css", Headers(), "GET")
    file = WebFile("/x/a.css", "text/css; charset=utf-8")
    answer = response(get, file, Read(b"body", 1_700_000_000))
    assert (answer.status_code, answer.body) == (200, b"body")
    assert answer.headers["Content-Type"] == "text/css; charset=utf-8"
    assert answer.headers["Content-Length"] == "4"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    since = Request("/a.css", Headers([("If-Modified-Since", answer.headers["Last-Modified"])]))
    assert response(since, file, Read(b"body", 1_700_000_000)).status_code == 304
    older = Request("/a.css", Headers([("If-Modified-Since", "Tue, 14 Nov 2023 00:00:00 GMT")]))
    assert response(older, file, Read(b"body", 1_700_000_000)).status_code == 200
    odd = Request("/a.css", Headers([("If-Modified-Since", "yesterday")]))
    assert response(odd, file, Read(b"body", 1_700_000_000)).status_code == 200
    refused = response(get, NotServed(405, "POST"), None)
    assert refused.status_code == 405 and refused.headers["Allow"] == "GET, HEAD"
    moved = response(get, Redirect("/sub/"), None)
    assert moved.status_code == 301 and moved.headers["Location"] == "/sub/"


# Watched files


def test_a_watched_file_is_read_again_when_it_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text("one\n")
    watched = Watched("--bearer-file", str(path), BearerTokens.parse)
    first = watched.current()
    assert watched.current() is first  # unchanged: not parsed again
    path.write_text("two three\n")  # in place
    assert watched.current().identify("two") == "three"
    replacement = tmp_path / "new"
    replacement.write_text("four\n")
    replacement.replace(path)  # atomically
    assert watched.current().identify("four") == "token#1"
    caplog.set_level(logging.INFO)
    path.write_text("bad token here is fine\nbad\u00e9\n")
    for _ in range(3):
        with pytest.raises(FileProblem, match="line 2"):
            watched.current()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "refused with 503" in errors[0].getMessage()  # logged once
    path.unlink()
    with pytest.raises(FileProblem, match="cannot read"):
        watched.current()
    path.write_text("five\n")
    assert watched.current().identify("five") == "token#1"  # valid again


def test_a_watched_directory(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x: 127.0.0.1:1\n")
    (tmp_path / ".hidden").write_text("garbage\n")
    watched = Watched("--targets", str(tmp_path), Targets.parse)
    assert set(watched.current().by_name) == {"x"}
    (tmp_path / "b").write_text("y: unix:/run/y\n")
    assert set(watched.current().by_name) == {"x", "y"}
    (tmp_path / "a").write_text("x: 127.0.0.1:2\n")
    assert watched.current().by_name["x"] == HostPort("127.0.0.1", 2)
    (tmp_path / "b").write_text("x: 127.0.0.1:3\n")
    with pytest.raises(FileProblem, match="listed twice"):
        watched.current()


def test_a_big_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_bytes(b"a" * (4 * 1024 * 1024 + 1))
    with pytest.raises(FileProblem, match="bigger than 4 MiB"):
        Watched("--bearer-file", str(path), BearerTokens.parse).current()
