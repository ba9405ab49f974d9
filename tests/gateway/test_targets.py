"""``ws-stream serve --targets`` (issue 16): the client names its target, from a fixed list.

Two echo targets that answer with different prefixes, so that each round trip
(random bytes, compared by SHA-256) proves which target it reached. Names that
are not in the list - and everything that looks like a path trick or an
address - get 404 and reach no target at all (each target counts its
connections). Also: the targets file edited while serving, a directory of
files, ``unix:`` targets, ``--path``, ``--bearer-file`` with names, and the
``connection closed:`` log line of each kind of target.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import ws_stream

from ..cli.helpers import Cli, run, run_cli, start_tcp_echo
from ..ports import refused_port
from .helpers import (
    closed_fields,
    fields,
    http,
    rewrite_in_place,
    round_trip,
    start_unix_echo,
    write_atomic,
)

Start = Callable[..., Cli]


async def not_found(port: int, target: str, status: int = 404) -> None:
    reply = await http(port, target, upgrade=True)
    assert reply.status == status, f"GET {target}: expected {status}, got:\n{reply}"


def test_each_name_reaches_its_target_and_nothing_else_reaches_any(
    cli: Start, tmp_path: Path
) -> None:
    async def main() -> Cli:
        a_server, a_port, a_accepted = await start_tcp_echo(prefix=b"A:")
        b_server, b_port, b_accepted = await start_tcp_echo(prefix=b"B:")
        async with a_server, b_server:
            targets = tmp_path / "targets"
            targets.write_text(
                f"# websockify's format\n\nalpha: 127.0.0.1:{a_port}\n"
                f"beta.2_x~y-z: 127.0.0.1:{b_port}\n"
            )
            serve = cli("serve", "--port", "0", "--targets", str(targets), "-v")
            port = await asyncio.to_thread(serve.port)
            base = f"ws://127.0.0.1:{port}"
            beta = "beta.2_x~y-z"

            for path in [
                "/gamma",
                "/..",
                "/.",
                "/%2e%2e",
                "/%2E%2E",
                "/%2F",
                "/a%2Fb",
                "/alpha%2F..",
                "/alpha%2f",
                "/%61lpha",  # taken raw: not "alpha"
                "/alpha%00",
                "/alpha;x",
                f"/127.0.0.1:{a_port}",
                f"/localhost:{a_port}",
                f"/alpha:{b_port}",
                f"/vnc/127.0.0.1:{b_port}",
                "/",
                "/vnc/",
                "/?token=",
                "/?token=..",
                "/?token=gamma",
                f"/?token=127.0.0.1:{a_port}",
                f"/?token=localhost:{a_port}",
                f"/?token=127.0.0.1%3A{a_port}",
                "/?token=alpha%2F..",
                "/?token=%2e%2e",
            ]:
                await not_found(port, path)
            assert a_accepted == [] and b_accepted == [], "a refused name reached a target"

            locals_ = [
                await round_trip(f"{base}/alpha", b"A:"),
                await round_trip(f"{base}/vnc/{beta}", b"B:"),
                await round_trip(f"{base}/?token=alpha", b"A:"),
                await round_trip(f"{base}/websockify?token={beta}", b"B:"),
                await round_trip(f"{base}/deep/er/path/alpha?x=1", b"A:"),
                # The query's name comes first (websockify's way).
                await round_trip(f"{base}/{beta}?token=alpha", b"A:"),
            ]
            assert (len(a_accepted), len(b_accepted)) == (4, 2)
            names = ["alpha", beta, "alpha", beta, "alpha", "alpha"]
            for count, (local, name) in enumerate(zip(locals_, names, strict=True), 1):
                line = await closed_fields(serve, count)
                assert (line["peer"], line["target"]) == (f"127.0.0.1:{local}", name), line
        return serve

    serve = run(main())
    assert "Traceback" not in serve.stderr


def test_targets_file_edited_while_serving(cli: Start, tmp_path: Path) -> None:
    async def main() -> None:
        a_server, a_port, a_accepted = await start_tcp_echo(prefix=b"A:")
        b_server, b_port, b_accepted = await start_tcp_echo(prefix=b"B:")
        async with a_server, b_server:
            targets = tmp_path / "targets"
            targets.write_text(f"alpha: 127.0.0.1:{a_port}\nbeta: 127.0.0.1:{b_port}\n")
            serve = cli("serve", "--port", "0", "--targets", str(targets))
            port = await asyncio.to_thread(serve.port)
            base = f"ws://127.0.0.1:{port}"
            await round_trip(f"{base}/beta", b"B:")

            # Replaced: gamma added (to A's server), beta gone, alpha moved to B's server.
            write_atomic(targets, f"gamma: 127.0.0.1:{a_port}\nalpha: 127.0.0.1:{b_port}\n")
            await round_trip(f"{base}/gamma", b"A:")
            await round_trip(f"{base}/alpha", b"B:")
            await not_found(port, "/beta")
            assert (len(a_accepted), len(b_accepted)) == (1, 2)

            # Rewritten in place, same size: the names swap servers again.
            await asyncio.sleep(0.05)  # past the file system's timestamp granularity
            rewrite_in_place(targets, f"gamma: 127.0.0.1:{b_port}\nalpha: 127.0.0.1:{a_port}\n")
            await round_trip(f"{base}/gamma", b"B:")
            await round_trip(f"{base}/alpha", b"A:")
            assert (len(a_accepted), len(b_accepted)) == (2, 3)

            # Invalid while serving: 503 for every name until fixed.
            rewrite_in_place(targets, f"gamma: 127.0.0.1:{b_port}\nthis is not a target line\n")
            for path in ("/gamma", "/alpha", "/?token=gamma"):
                await not_found(port, path, status=503)
            await asyncio.to_thread(serve.wait_for, r"--targets.*line 2")
            targets.unlink()
            await not_found(port, "/gamma", status=503)
            assert (len(a_accepted), len(b_accepted)) == (2, 3)
            write_atomic(targets, f"delta: 127.0.0.1:{a_port}\n")
            await round_trip(f"{base}/delta", b"A:")
            await not_found(port, "/gamma")
            assert (len(a_accepted), len(b_accepted)) == (3, 3)

    run(main())


def test_a_directory_of_target_files_and_unix_targets(cli: Start, tmp_path: Path) -> None:
    async def main() -> None:
        a_server, a_port, a_accepted = await start_tcp_echo(prefix=b"A:")
        u_server, u_accepted = await start_unix_echo(tmp_path / "u.sock", prefix=b"U:")
        async with a_server, u_server:
            directory = tmp_path / "targets.d"
            directory.mkdir()
            (directory / "one.conf").write_text(f"alpha: 127.0.0.1:{a_port}\n")
            (directory / "two.conf").write_text(f"# a Unix socket\nsock: unix:{tmp_path}/u.sock\n")
            serve = cli("serve", "--port", "0", "--targets", str(directory))
            port = await asyncio.to_thread(serve.port)
            base = f"ws://127.0.0.1:{port}"
            await round_trip(f"{base}/alpha", b"A:")
            await round_trip(f"{base}/sock", b"U:", size=1_000_000)
            await round_trip(f"{base}/?token=sock", b"U:")
            await not_found(port, "/later")
            assert (len(a_accepted), len(u_accepted)) == (1, 2)
            # A file added to the directory while serving.
            write_atomic(directory / "three.conf", f"later: unix:{tmp_path}/u.sock\n")
            await round_trip(f"{base}/later", b"U:")
            assert (len(a_accepted), len(u_accepted)) == (1, 3)
            assert (await closed_fields(serve, 2))["target"] == "sock"

    run(main())


def test_path_option_with_names(cli: Start, tmp_path: Path) -> None:
    async def main() -> None:
        server, target, accepted = await start_tcp_echo(prefix=b"A:")
        async with server:
            targets = tmp_path / "targets"
            targets.write_text(f"alpha: 127.0.0.1:{target}\n")
            serve = cli("serve", "--port", "0", "--targets", str(targets), "--path", "/vnc")
            port = await asyncio.to_thread(serve.port)
            for path in ("/alpha", "/other/alpha", "/vncalpha", "/vnc/x/alpha", "/vnc/beta"):
                await not_found(port, path)
            assert accepted == []
            await round_trip(f"ws://127.0.0.1:{port}/vnc/alpha", b"A:")
            await round_trip(f"ws://127.0.0.1:{port}/vnc?token=alpha", b"A:")
            assert len(accepted) == 2

    run(main())


def test_names_with_a_bearer_file(cli: Start, tmp_path: Path) -> None:
    """With --bearer-file, ``token=`` is the credential: the name comes from the path."""

    async def main() -> None:
        server, target, accepted = await start_tcp_echo(prefix=b"A:")
        async with server:
            targets, tokens = tmp_path / "targets", tmp_path / "tokens"
            targets.write_text(f"alpha: 127.0.0.1:{target}\n")
            tokens.write_text("s3cr3t-token viewer\n")
            serve = cli(
                "serve", "--port", "0", "--targets", str(targets), "--bearer-file", str(tokens),
            )  # fmt: skip
            port = await asyncio.to_thread(serve.port)
            base = f"ws://127.0.0.1:{port}"
            for path in ("/alpha", "/?token=alpha", "/alpha?token=alpha", "/alpha?token=wrong"):
                await not_found(port, path, status=401)
            for path in ("/gamma?token=s3cr3t-token", "/?token=s3cr3t-token"):
                await not_found(port, path)
            assert accepted == []
            await round_trip(f"{base}/alpha?token=s3cr3t-token", b"A:")
            await round_trip(
                f"{base}/vnc/alpha",
                b"A:",
                additional_headers={"Authorization": "Bearer s3cr3t-token"},
            )
            assert len(accepted) == 2
            line = await closed_fields(serve)
            assert (line["target"], line["identity"]) == ("alpha", "viewer"), line

    run(main())


def test_targets_usage_errors(tmp_path: Path) -> None:
    targets = tmp_path / "targets"
    targets.write_text("alpha: 127.0.0.1:5900\n")
    both = run_cli("serve", "--to", "127.0.0.1:5900", "--targets", str(targets), timeout=15)
    assert both.returncode == 2, both.stderr.decode()
    assert "--targets" in both.stderr.decode() and "--to" in both.stderr.decode()
    for bad in ("..: 127.0.0.1:5900", "a/b: 127.0.0.1:5900", "alpha 127.0.0.1:5900"):
        targets.write_text(f"# comment\n{bad}\n")
        result = run_cli("serve", "--port", "0", "--targets", str(targets), timeout=15)
        assert result.returncode == 2, (bad, result.stderr.decode())
        assert str(targets) in result.stderr.decode() and "line 2" in result.stderr.decode()


def test_the_connection_closed_line(cli: Start, tmp_path: Path) -> None:
    """`connection closed: key=value ...`: one per connection, for every kind of target."""
    dead = refused_port()

    async def main() -> None:
        server, target, accepted = await start_tcp_echo(prefix=b"A:")
        async with server:
            targets = tmp_path / "targets"
            targets.write_text(f"alpha: 127.0.0.1:{target}\ndead: 127.0.0.1:{dead}\n")
            named = cli("serve", "--port", "0", "--targets", str(targets))
            fixed = cli("serve", "--port", "0", "--to", f"127.0.0.1:{target}")
            echo = cli("serve", "--port", "0")
            ports = [await asyncio.to_thread(s.port) for s in (named, fixed, echo)]

            size = 12_345
            cases = [
                (named, f"ws://127.0.0.1:{ports[0]}/alpha", b"A:", "alpha"),
                (fixed, f"ws://127.0.0.1:{ports[1]}/", b"A:", f"127.0.0.1:{target}"),
                (echo, f"ws://127.0.0.1:{ports[2]}/", b"", "echo"),
            ]
            for serve, uri, prefix, name in cases:
                local = await round_trip(uri, prefix, size=size)
                line = await closed_fields(serve)
                assert line["peer"] == f"127.0.0.1:{local}", line
                assert line["target"] == name, line
                assert line["identity"] == "-", line
                assert re.fullmatch(r"\d+(\.\d+)?s", line["duration"]), line
                assert (line["received"], line["sent"]) == (str(size), str(size + len(prefix)))
                assert (line["close_sent"], line["close_received"]) == ("1000", "1000"), line
                assert "error" not in line, line
                assert sum("connection closed: " in text for text in serve.lines) == 1

            # An unreachable target: a warning with error="...", still key=value.
            stream = await ws_stream.connect_stream(f"ws://127.0.0.1:{ports[0]}/dead")
            async with asyncio.timeout(10):
                assert await stream.reader.read() == b""
                await stream.wait_closed()
            assert stream.close_code == 1014
            line = await closed_fields(named, 2)
            assert line["target"] == "dead" and line["close_sent"] == "1014", line
            assert line["error"], line
            text = named.wait_for("connection closed: ", count=2).string
            assert "warning" in text.lower(), text
            assert fields(text, "connection closed") == line
            assert len(accepted) == 2

    run(main())
