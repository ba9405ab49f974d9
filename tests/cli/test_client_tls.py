"""TLS and subprotocols of ``ws-stream forward`` and ``cat``.

Real certificates from trustme: ``--insecure`` against a ``serve --cert``
whose CA the client does not trust (it works, with a warning on every
connection; without it the certificate is refused); ``--client-cert`` /
``--client-key`` against a library server that requires client certificates
(mutual TLS); ``--subprotocol`` against ``serve --subprotocol``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

import ws_stream

from .helpers import LISTENING, ROOT, Cli, cli_env, command, run, run_cli
from .test_proxies import echo_through_forward

Start = Callable[..., Cli]

BLOB = os.urandom(1 << 20)
DIGEST = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str, str]:
    """A server certificate for 127.0.0.1: (chain, key, the CA's certificate) as PEM files."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key, cafile = tmp_path / "chain.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(cafile))
    return str(chain), str(key), str(cafile)


def start_wss_echo(cli: Start, chain: str, key: str, *extra: str) -> str:
    """``serve --cert --key`` (echo) on a random port; its wss:// URI."""
    serve = cli("serve", "--port", "0", "--cert", chain, "--key", key, *extra)
    return f"wss://127.0.0.1:{serve.port()}/"


def cat_echo(uri: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run_cli("cat", "-v", "--max-bytes", str(len(BLOB)), *args, uri, input=BLOB, timeout=60)


def assert_echoed(result: subprocess.CompletedProcess[bytes]) -> str:
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    out = result.stdout
    assert (len(out), hashlib.sha256(out).hexdigest()) == (len(BLOB), DIGEST), stderr
    return stderr


# --insecure


def test_insecure_accepts_an_untrusted_certificate_and_warns_on_every_connection(
    cli: Start, server_files: tuple[str, str, str]
) -> None:
    chain, key, cafile = server_files
    uri = start_wss_echo(cli, chain, key)

    refused = run_cli("cat", uri)  # the CA is not in the system's trust store
    stderr = refused.stderr.decode()
    assert refused.returncode == 1, stderr
    assert "certificate verify failed" in stderr, stderr

    warning = f"warning: the TLS certificate of {uri} was not verified (--insecure)"
    stderr = assert_echoed(cat_echo(uri, "--insecure"))
    assert stderr.count(warning) == 1, stderr

    forward = cli("forward", "--listen", "127.0.0.1:0", "--insecure", uri)
    port = forward.port()
    for count in (1, 2):
        echoed = echo_through_forward(port, BLOB)
        assert hashlib.sha256(echoed).hexdigest() == DIGEST, forward.stderr
        forward.wait_for(re.escape(warning), count=count)

    # Verified (--cafile): no warning.
    stderr = assert_echoed(cat_echo(uri, "--cafile", cafile))
    assert "warning" not in stderr, stderr


def test_insecure_also_skips_the_name_check(cli: Start, ca: trustme.CA, tmp_path: Path) -> None:
    cert = ca.issue_cert("other.example")  # not 127.0.0.1
    chain, key, cafile = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(cafile))
    uri = start_wss_echo(cli, str(chain), str(key))
    refused = run_cli("cat", "--cafile", str(cafile), uri)
    assert refused.returncode == 1
    assert "certificate verify failed" in refused.stderr.decode()
    assert_echoed(cat_echo(uri, "--insecure"))


# --client-cert / --client-key: a server that requires client certificates


@asynccontextmanager
async def mtls_server(ca: trustme.CA, server_files: tuple[str, str, str]) -> AsyncIterator[str]:
    """A library server that requires a client certificate signed by ``ca``.

    It answers each client with the names of its certificate, then closes.
    """
    chain, key, _ = server_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        names = dict(writer.get_extra_info("peercert")["subjectAltName"])
        writer.write(f"hello {names['DNS']}\n".encode())
        writer.close()

    server = await ws_stream.start_server(handler, "127.0.0.1", 0, ssl=context)
    async with server:
        yield f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}/"


async def cat(*args: str) -> tuple[int, bytes, str]:
    """``ws-stream cat ARGS`` while this event loop serves."""
    proc = await asyncio.create_subprocess_exec(
        *command("cat", *args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        cwd=ROOT,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, stdout, stderr.decode()


def client_files(ca: trustme.CA, tmp_path: Path, name: str) -> tuple[str, str]:
    cert = ca.issue_cert(name)
    chain, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    return str(chain), str(key)


def test_client_certificates(
    ca: trustme.CA, server_files: tuple[str, str, str], tmp_path: Path
) -> None:
    cafile = server_files[2]
    chain, key = client_files(ca, tmp_path, "client.example")
    combined = tmp_path / "combined.pem"
    combined.write_bytes(Path(chain).read_bytes() + Path(key).read_bytes())
    stranger = client_files(trustme.CA(), tmp_path, "stranger.example")

    async def main() -> None:
        async with mtls_server(ca, server_files) as uri:
            status, out, err = await cat("--cafile", cafile, uri)
            assert status == 1, err
            assert "client certificate" in err, err

            status, out, err = await cat(
                "--cafile", cafile, "--client-cert", chain, "--client-key", key, uri
            )
            assert (status, out) == (0, b"hello client.example\n"), err

            status, out, err = await cat("--cafile", cafile, "--client-cert", str(combined), uri)
            assert (status, out) == (0, b"hello client.example\n"), err

            status, out, err = await cat(
                "--cafile", cafile, "--client-cert", stranger[0], "--client-key", stranger[1], uri
            )
            assert status == 1, err
            assert "client certificate" in err, err

            # forward: each client's WebSocket presents the certificate.
            proc = await asyncio.create_subprocess_exec(
                *command(
                    "forward",
                    "--listen",
                    "127.0.0.1:0",
                    "--cafile",
                    cafile,
                    "--client-cert",
                    chain,
                    "--client-key",
                    key,
                    uri,
                ),
                stderr=subprocess.PIPE,
                env=cli_env(),
                cwd=ROOT,
            )
            try:
                assert proc.stderr is not None
                first = (await asyncio.wait_for(proc.stderr.readline(), 10)).decode()
                match = LISTENING.search(first)
                assert match, first
                port = int(match.group(1))
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert await asyncio.wait_for(reader.read(), 10) == b"hello client.example\n"
                writer.close()
            finally:
                proc.terminate()
                await proc.wait()

    run(main())


def encrypted_key(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    chain, key = client_files(ca, tmp_path, "locked.example")
    private = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
    Path(key).write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    return chain, key


def test_client_tls_arguments_exit_2_with_the_file_named(ca: trustme.CA, tmp_path: Path) -> None:
    chain, key = client_files(ca, tmp_path, "client.example")
    _, other_key = client_files(ca, tmp_path, "other.example")
    locked_chain, locked_key = encrypted_key(ca, tmp_path)
    missing = str(tmp_path / "missing.pem")
    cases = [
        (["--client-cert", missing], f"--client-cert: cannot read {missing}: No such file"),
        (
            ["--client-cert", chain, "--client-key", missing],
            f"--client-key: cannot read {missing}: No such file",
        ),
        (["--client-key", key], "--client-key goes with --client-cert"),
        (["--client-cert", chain], f"--client-cert: cannot load the certificate {chain}"),
        (
            ["--client-cert", chain, "--client-key", other_key],
            f"cannot load the certificate {chain} with the key {other_key}",
        ),
        (
            ["--client-cert", locked_chain, "--client-key", locked_key],
            "the private key is encrypted",
        ),
        (["--insecure", "--cafile", chain], "--insecure (no certificate check) and --cafile"),
    ]
    for args, message in cases:
        result = run_cli("cat", *args, "wss://127.0.0.1:1/")
        stderr = result.stderr.decode()
        assert result.returncode == 2, (args, stderr)
        assert message in stderr, (args, stderr)
        assert "Traceback" not in stderr
    for option in (["--insecure"], ["--client-cert", chain]):
        result = run_cli("cat", *option, "ws://127.0.0.1:1/")
        assert result.returncode == 2
        assert f"{option[0]} applies to wss:// URIs only" in result.stderr.decode()


# --subprotocol


def test_subprotocol_offered_and_the_selected_one_logged(cli: Start) -> None:
    serve = cli("serve", "--port", "0", "--subprotocol", "chat.v2")
    uri = f"ws://127.0.0.1:{serve.port()}/"
    stderr = assert_echoed(cat_echo(uri, "--subprotocol", "nope", "--subprotocol", "chat.v2"))
    assert f"connected to {uri}; the server selected the subprotocol chat.v2" in stderr, stderr

    forward = cli("forward", "-v", "--listen", "127.0.0.1:0", "--subprotocol", "chat.v2", uri)
    echoed = echo_through_forward(forward.port(), BLOB)
    assert hashlib.sha256(echoed).hexdigest() == DIGEST
    forward.wait_for(f"tunnel open to {uri}; the server selected the subprotocol chat.v2")

    # serve refuses a client that offers none of its subprotocols.
    refused = run_cli("cat", "--subprotocol", "nope", uri)
    assert refused.returncode == 1
    assert "HTTP 400" in refused.stderr.decode()
    bad = run_cli("cat", "--subprotocol", "two words", uri)
    assert bad.returncode == 2
    assert "expected a subprotocol name" in bad.stderr.decode()


def test_a_server_that_selects_no_subprotocol_is_logged() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hi")
        writer.close()

    async def main() -> None:
        server = await ws_stream.start_server(handler, "127.0.0.1", 0)
        async with server:
            uri = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
            status, out, err = await cat("-v", "--subprotocol", "chat.v2", uri)
        assert (status, out) == (0, b"hi"), err
        assert "the server selected none of the subprotocols offered" in err, err

    run(main())
