"""``serve --to-tls``: TLS to the target, its certificate verified (websockify's ``--ssl-target``).

The targets are real TLS servers with trustme certificates on 127.0.0.1 (and
a Unix socket): an echo that records what it saw of each handshake (TLS
version, SNI). A certificate that the server refuses closes the WebSocket
with 1014, exactly as an unreachable target does, and the log says why.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

import ws_stream
from ws_stream.cli.args import TargetTls, parse_config

from .helpers import Cli, run, start_tcp_echo

Start = Callable[..., Cli]


@dataclass
class TlsTarget:
    """What a TLS echo target saw: one entry per connection."""

    versions: list[str] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    failed_handshakes: int = 0


def _server_context(cert: trustme.LeafCert, seen: TlsTarget) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)

    def sni(_: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
        seen.sni.append(name)

    context.sni_callback = sni
    return context


async def _echo(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: TlsTarget
) -> None:
    tls = writer.get_extra_info("ssl_object")
    seen.versions.append(tls.version() if tls is not None else "plain")
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


class _Target:
    """A TLS echo target on 127.0.0.1 (or a Unix socket) with a trustme certificate."""

    def __init__(self, cert: trustme.LeafCert) -> None:
        self.seen = TlsTarget()
        self.context = _server_context(cert, self.seen)
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _echo(reader, writer, self.seen)

    async def start_tcp(self) -> int:
        self.server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self.context, ssl_handshake_timeout=10
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def start_unix(self, path: Path) -> None:
        self.server = await asyncio.start_unix_server(
            self._handle, str(path), ssl=self.context, ssl_handshake_timeout=10
        )

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
def ca(tmp_path: Path) -> tuple[trustme.CA, Path]:
    """A private CA and its certificate in a PEM file."""
    authority = trustme.CA()
    path = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


async def _round_trips(uri: str, tunnels: int, size: int) -> None:
    """``tunnels`` concurrent WebSockets, each echoing ``size`` random bytes, checksums compared."""

    async def one() -> None:
        stream = await ws_stream.connect_stream(uri)
        data = os.urandom(size)

        async def send() -> None:
            view = memoryview(data)
            for start in range(0, size, 2**16):
                stream.writer.write(view[start : start + 2**16])
                await stream.writer.drain()

        sender = asyncio.create_task(send())
        echoed = await stream.reader.readexactly(size)
        await sender
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
        await stream.close()

    await asyncio.gather(*(one() for _ in range(tunnels)))


async def _refused(uri: str) -> None:
    """The WebSocket is closed with 1014, the client told nothing about the target."""
    stream = await ws_stream.connect_stream(uri)
    async with asyncio.timeout(15):
        assert await stream.reader.read() == b""
        await stream.wait_closed()
    assert stream.close_code == 1014
    assert stream.close_reason == "cannot reach the target"


def test_tls_target_verified_with_cafile_round_trips_with_checksums(
    cli: Start, ca: tuple[trustme.CA, Path]
) -> None:
    authority, ca_file = ca
    target = _Target(authority.issue_cert("127.0.0.1"))

    async def main() -> None:
        port = await target.start_tcp()
        try:
            serve = cli(
                "serve", "--port", "0", "--to", f"127.0.0.1:{port}",
                "--to-tls", "--to-cafile", str(ca_file),
            )  # fmt: skip
            ws_port = await asyncio.to_thread(serve.port)
            assert (
                f"bridging every connection to 127.0.0.1:{port} over TLS, "
                "certificate verified for 127.0.0.1"
            ) in serve.lines[0]
            await _round_trips(f"ws://127.0.0.1:{ws_port}/", tunnels=4, size=4 * 2**20)
            await asyncio.to_thread(serve.wait_for, "connection closed:", count=4)
            assert "warning" not in serve.stderr
        finally:
            await target.close()
        assert len(target.seen.versions) == 4
        assert all(v.startswith("TLSv1.") for v in target.seen.versions), target.seen.versions
        assert target.seen.sni == [None] * 4  # an IP address is not sent as SNI

    run(main(), timeout=120)


def test_a_certificate_from_an_untrusted_ca_is_refused_with_1014(
    cli: Start, ca: tuple[trustme.CA, Path], tmp_path: Path
) -> None:
    _, ca_file = ca
    stranger = trustme.CA()  # signs the target's certificate; nobody trusts it
    target = _Target(stranger.issue_cert("127.0.0.1"))

    async def main() -> None:
        port = await target.start_tcp()
        try:
            # Without --to-cafile: the system's CAs; with it: that CA only.
            for extra in ([], ["--to-cafile", str(ca_file)]):
                serve = cli("serve", "--port", "0", "--to", f"127.0.0.1:{port}", "--to-tls", *extra)
                ws_port = await asyncio.to_thread(serve.port)
                await _refused(f"ws://127.0.0.1:{ws_port}/")
                line = await asyncio.to_thread(serve.wait_for, "certificate was refused")
                assert line.string.startswith(
                    "ws-stream serve: warning: connection closed: peer=127.0.0.1:"
                )
                assert "close_sent=1014" in line.string
                assert (
                    f"cannot connect to the target 127.0.0.1:{port}: its TLS certificate was "
                    "refused: unable to get local issuer certificate "
                    "(--to-cafile FILE trusts the CA that signed it)"
                ) in line.string
                assert serve.stderr.count("certificate was refused") == 1  # one line
        finally:
            await target.close()
        assert target.seen.versions == []  # no handshake ever completed: no byte reached it

    run(main(), timeout=60)


def test_the_server_name_is_verified_and_sent_as_sni(
    cli: Start, ca: tuple[trustme.CA, Path]
) -> None:
    authority, ca_file = ca
    target = _Target(authority.issue_cert("target.internal"))  # not 127.0.0.1

    async def main() -> None:
        port = await target.start_tcp()
        try:
            common = ("serve", "--port", "0", "--to", f"127.0.0.1:{port}", "--to-tls")
            wrong = cli(*common, "--to-cafile", str(ca_file))
            ws_port = await asyncio.to_thread(wrong.port)
            await _refused(f"ws://127.0.0.1:{ws_port}/")
            line = await asyncio.to_thread(wrong.wait_for, "certificate was refused")
            assert (
                "its TLS certificate was refused: IP address mismatch, certificate is not "
                "valid for '127.0.0.1'. (--to-server-name NAME sets the name it must carry)"
            ) in line.string
            assert target.seen.versions == []

            named = cli(*common, "--to-cafile", str(ca_file), "--to-server-name", "target.internal")
            ws_port = await asyncio.to_thread(named.port)
            await _round_trips(f"ws://127.0.0.1:{ws_port}/", tunnels=2, size=2**20)
            assert target.seen.sni[-2:] == ["target.internal"] * 2
            assert len(target.seen.versions) == 2
        finally:
            await target.close()

    run(main(), timeout=60)


def test_a_target_that_does_not_speak_tls_is_1014_with_a_clear_log(cli: Start) -> None:
    async def main() -> None:
        server, port, accepted = await start_tcp_echo(prefix=b"SSH-2.0-OpenSSH_9.2\r\n")
        async with server:
            serve = cli("serve", "--port", "0", "--to", f"127.0.0.1:{port}", "--to-tls")
            ws_port = await asyncio.to_thread(serve.port)
            await _refused(f"ws://127.0.0.1:{ws_port}/")
            line = await asyncio.to_thread(serve.wait_for, "TLS handshake failed")
            assert f"cannot connect to the target 127.0.0.1:{port}: the TLS handshake " in (
                line.string
            )
            assert "(does the target speak TLS on that port?)" in line.string
            assert len(accepted) == 1

    run(main(), timeout=60)


def test_tls_to_a_unix_socket_target(
    cli: Start, ca: tuple[trustme.CA, Path], tmp_path: Path
) -> None:
    authority, ca_file = ca
    target = _Target(authority.issue_cert("target.internal"))
    path = tmp_path / "target.sock"

    async def main() -> None:
        await target.start_unix(path)
        try:
            serve = cli(
                "serve", "--port", "0", "--to", f"unix:{path}", "--to-tls",
                "--to-cafile", str(ca_file), "--to-server-name", "target.internal",
            )  # fmt: skip
            ws_port = await asyncio.to_thread(serve.port)
            await _round_trips(f"ws://127.0.0.1:{ws_port}/", tunnels=2, size=2**20)
        finally:
            await target.close()
        assert target.seen.sni == ["target.internal"] * 2

    run(main(), timeout=60)


# The options themselves (parsed in-process: exit 2 and the message)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to-cafile", "ca.pem"], "--to-cafile goes with --to-tls"),
        (["--to", "127.0.0.1:1", "--to-server-name", "x"], "--to-server-name goes with --to-tls"),
        (["--to-tls"], "--to-tls needs a target: --to HOST:PORT"),
        (["--to", "unix:/tmp/t.sock", "--to-tls"], "needs --to-server-name NAME"),
        (["--to", "127.0.0.1:1", "--to-tls", "--to-server-name", "a b"], "expected a host name"),
        (
            ["--to", "127.0.0.1:1", "--to-tls", "--to-cafile", "/nonexistent/ca.pem"],
            "--to-cafile: cannot load /nonexistent/ca.pem: ",
        ),
    ],
)
def test_bad_target_tls_options_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_config(["serve", *args])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_target_tls_defaults(tmp_path: Path, ca: tuple[trustme.CA, Path]) -> None:
    _, ca_file = ca
    plain = parse_config(["serve", "--to", "db.internal:5432"])
    assert getattr(plain, "target_tls", "missing") is None
    config = parse_config(["serve", "--to", "db.internal:5432", "--to-tls"])
    tls = getattr(config, "target_tls", None)
    assert isinstance(tls, TargetTls)
    assert tls.server_name == "db.internal"  # the --to host
    assert tls.context.verify_mode == ssl.CERT_REQUIRED and tls.context.check_hostname
    config = parse_config(
        ["serve", "--to", "10.0.0.5:5432", "--to-tls", "--to-cafile", str(ca_file),
         "--to-server-name", "db.internal"]
    )  # fmt: skip
    tls = getattr(config, "target_tls", None)
    assert isinstance(tls, TargetTls) and tls.server_name == "db.internal"
    assert len(tls.context.get_ca_certs()) == 1  # that CA only, not the system's
