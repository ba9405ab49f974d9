"""``ws-stream serve``: echo, the bridge's guarantees, shutdown, refusals."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

import ws_stream
from ws_stream.events import Closed, CloseReceived

from ..ports import refused_port
from ..rawpeer import connect_raw
from .helpers import Cli, run, run_cli, start_tcp_echo

Start = Callable[..., Cli]


def test_echo_and_cat_round_trip_8_mib(cli: Start) -> None:
    serve = cli("serve", "--port", "0")
    port = serve.port()
    data = os.urandom(8 * 2**20)
    # The echo server never closes: --max-bytes says how much comes back, a
    # clean end (--linger alone would end it early: exit 1, see test_cat).
    result = run_cli(
        "cat", "--max-bytes", str(len(data)), f"ws://127.0.0.1:{port}", input=data, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()
    assert len(result.stdout) == len(data)
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()
    assert result.stderr == b""  # cat logs warnings only by default
    line = serve.wait_for(r"connection closed: .* received=(\d+) sent=(\d+)")
    assert line.groups() == (str(len(data)), str(len(data)))
    assert "close_sent=1000 close_received=1000" in line.string


def test_cat_reads_and_writes_regular_files(cli: Start, tmp_path: Path) -> None:
    port = cli("serve", "--port", "0").port()
    source, sink = tmp_path / "in.bin", tmp_path / "out.bin"
    source.write_bytes(os.urandom(300_000))
    with source.open("rb") as stdin, sink.open("wb") as stdout:
        cat = cli(
            "cat", "--max-bytes", "300000", f"ws://127.0.0.1:{port}", stdin=stdin, stdout=stdout
        )
        assert cat.wait(30) == 0, cat.stderr
    assert sink.read_bytes() == source.read_bytes()


def test_origin_allow_list_refuses_others_with_403(cli: Start) -> None:
    port = cli("serve", "--port", "0", "--origin", "https://good.example").port()
    uri = f"ws://127.0.0.1:{port}/"

    async def main() -> None:
        with pytest.raises(ws_stream.HandshakeError) as refused:
            await ws_stream.connect_stream(uri, origin="https://evil.example")
        assert refused.value.status == 403
        for origin in ("https://good.example", None):  # no Origin: not a browser
            stream = await ws_stream.connect_stream(uri, origin=origin)
            stream.writer.write(b"ping")
            assert await stream.reader.readexactly(4) == b"ping"
            await stream.close()

    run(main())
    result = run_cli("cat", "--header", "Origin: https://evil.example", uri)
    assert result.returncode == 1
    assert "HTTP 403" in result.stderr.decode()


def test_a_client_cannot_choose_the_target(cli: Start) -> None:
    """Path, query and headers naming another target change nothing: not an open proxy."""

    async def main() -> None:
        a_server, a_port, a_accepted = await start_tcp_echo(prefix=b"A:")
        b_server, b_port, b_accepted = await start_tcp_echo(prefix=b"B:")
        async with a_server, b_server:
            serve = cli("serve", "--port", "0", "--to", f"127.0.0.1:{a_port}")
            port = await asyncio.to_thread(serve.port)
            b = f"127.0.0.1:{b_port}"
            attempts = [
                f"ws://127.0.0.1:{port}/{b}",
                f"ws://127.0.0.1:{port}/?target={b}&host=127.0.0.1&port={b_port}",
                f"ws://127.0.0.1:{port}/websockify?token={b}",
            ]
            headers = {"X-Target": b, "X-Forwarded-Host": b, "Forwarded": f"host={b}"}
            for uri in attempts:
                stream = await ws_stream.connect_stream(uri, additional_headers=headers)
                stream.writer.write(b"hi")
                assert await stream.reader.readexactly(4) == b"A:hi"
                await stream.close()
            assert len(a_accepted) == len(attempts)
            assert b_accepted == []

    run(main())


def test_unreachable_target_closes_with_1014_and_a_clear_log(cli: Start) -> None:
    target = refused_port()
    serve = cli("serve", "--port", "0", "--to", f"127.0.0.1:{target}")
    port = serve.port()

    async def main() -> None:
        stream = await ws_stream.connect_stream(f"ws://127.0.0.1:{port}/")
        async with asyncio.timeout(10):
            assert await stream.reader.read() == b""
            await stream.wait_closed()
        assert stream.close_code == 1014
        assert stream.close_reason == "cannot reach the target"  # and not which one

    run(main())
    line = serve.wait_for("cannot connect to the target")
    assert f"cannot connect to the target 127.0.0.1:{target}: " in line.string
    assert "close_sent=1014" in line.string
    assert "Traceback" not in serve.stderr
    result = run_cli("cat", f"ws://127.0.0.1:{port}/")
    assert result.returncode == 1
    assert "the peer closed with 1014 (cannot reach the target)" in result.stderr.decode()


def test_sigterm_closes_with_1001_and_exits_0(cli: Start) -> None:
    serve = cli("serve", "--port", "0", "--close-timeout", "3")
    port = serve.port()

    async def main() -> None:
        streams = [await ws_stream.connect_stream(f"ws://127.0.0.1:{port}/") for _ in range(3)]
        events = [stream.events() for stream in streams]
        for stream in streams:  # the sessions are running
            stream.writer.write(b"x")
            assert await stream.reader.readexactly(1) == b"x"
        serve.signal(signal.SIGTERM)
        for stream, subscription in zip(streams, events, strict=True):
            async with asyncio.timeout(10):
                assert await stream.reader.read() == b""
                seen = [event async for event in subscription]
                await stream.wait_closed()
            assert CloseReceived(1001, "going away") in seen
            assert seen[-1] == Closed(1001, "going away", True)

    run(main())
    assert serve.wait(10) == 0
    assert serve.stderr.count("close_sent=1001 close_received=1001") == 3


def test_sigterm_with_a_client_that_never_answers_exits_within_the_close_timeout(
    cli: Start,
) -> None:
    close_timeout = 1.0
    serve = cli("serve", "--port", "0", "--close-timeout", str(close_timeout), "-v")
    port = serve.port()

    async def main() -> float:
        peer = await connect_raw(port)  # a hand-made client that will not answer
        await asyncio.to_thread(serve.wait_for, "connected")
        serve.signal(signal.SIGINT)
        started = time.monotonic()
        assert await peer.recv_close(timeout=10) == (1001, "going away")
        status = await asyncio.to_thread(serve.wait, close_timeout + 5)
        assert status == 0
        peer.close_tcp()
        return time.monotonic() - started

    elapsed = run(main())
    assert elapsed < close_timeout + 5  # generous: the bound is close_timeout (+ 1.5 s)
    assert "close_sent=1001 close_received=1006" in serve.stderr


def test_a_second_signal_drops_everything_at_once(cli: Start) -> None:
    serve = cli("serve", "--port", "0", "--close-timeout", "60", "-v")
    port = serve.port()

    async def main() -> None:
        peer = await connect_raw(port)  # will not answer the close: 60 s to wait
        await asyncio.to_thread(serve.wait_for, "connected")
        serve.signal(signal.SIGTERM)
        assert await peer.recv_close(timeout=10) == (1001, "going away")
        serve.signal(signal.SIGINT)
        assert await asyncio.to_thread(serve.wait, 10) == 1
        peer.close_tcp()

    run(main())
    assert "warning: second signal: dropping every connection now" in serve.stderr


def test_binary_subprotocol_accepted_others_refused(cli: Start) -> None:
    port = cli("serve", "--port", "0", "--subprotocol", "chat").port()
    uri = f"ws://127.0.0.1:{port}/"

    async def main() -> None:
        cases: list[tuple[list[Subprotocol] | None, str | None]] = [
            ([Subprotocol("binary"), Subprotocol("base64")], "binary"),  # what noVNC offers
            ([Subprotocol("chat")], "chat"),
            (None, None),
        ]
        for offered, chosen in cases:
            async with connect(uri, subprotocols=offered) as ws:
                assert ws.subprotocol == chosen
        with pytest.raises(InvalidStatus) as refused:
            async with connect(uri, subprotocols=[Subprotocol("base64")]):
                pass
        assert refused.value.response.status_code == 400
        assert b"unsupported subprotocol base64" in refused.value.response.body

    run(main())


def test_path_and_max_connections(cli: Start) -> None:
    serve = cli("serve", "--port", "0", "--path", "/tunnel", "--max-connections", "2")
    port = serve.port()
    assert serve.lines[0].endswith(f"listening on ws://127.0.0.1:{port}/tunnel (echo)")
    uri = f"ws://127.0.0.1:{port}/tunnel"

    async def main() -> None:
        with pytest.raises(ws_stream.HandshakeError) as wrong_path:
            await ws_stream.connect_stream(f"ws://127.0.0.1:{port}/other")
        assert wrong_path.value.status == 404
        first = await ws_stream.connect_stream(uri + "?query=ignored")
        second = await ws_stream.connect_stream(uri)
        with pytest.raises(ws_stream.HandshakeError) as full:
            await ws_stream.connect_stream(uri)
        assert full.value.status == 503
        # What a user of the command reads: the server is full, not "check the path".
        refused = await asyncio.to_thread(run_cli, "cat", uri, input=b"", timeout=30)
        assert refused.returncode == 1
        message = refused.stderr.decode()
        assert "HTTP 503" in message and "full" in message and "try again later" in message
        assert "check the URI path" not in message
        await first.close()
        async with asyncio.timeout(10):
            while True:  # the slot is free once the server saw the TCP end
                try:
                    third = await ws_stream.connect_stream(uri)
                    break
                except ws_stream.HandshakeError:
                    await asyncio.sleep(0.05)
        third.writer.write(b"ok")
        assert await third.reader.readexactly(2) == b"ok"
        await third.close()
        await second.close()

    run(main())
    assert "refused with 503: --max-connections 2 reached" in serve.stderr


def test_tls_with_cert_and_cafile(cli: Start, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    ca.cert_pem.write_to_path(ca_file)
    serve = cli("serve", "--port", "0", "--cert", str(cert_file), "--key", str(key_file))
    port = serve.port()
    assert f"listening on wss://127.0.0.1:{port}/" in serve.lines[0]
    data = os.urandom(200_000)
    result = run_cli(
        "cat",
        "--max-bytes",
        "200000",
        "--cafile",
        str(ca_file),
        f"wss://127.0.0.1:{port}/",
        input=data,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == data
    untrusted = run_cli("cat", f"wss://127.0.0.1:{port}/")
    assert untrusted.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr.decode()


def test_stats_and_summary(cli: Start) -> None:
    serve = cli("serve", "--port", "0", "--stats", "--stats-interval", "0.2")
    port = serve.port()
    data = os.urandom(100_000)
    cat = cli(
        "cat",
        "--stats",
        "--stats-interval",
        "0.2",
        f"ws://127.0.0.1:{port}/",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert cat.proc.stdin is not None and cat.proc.stdout is not None
    cat.proc.stdin.write(data)
    cat.proc.stdin.flush()
    time.sleep(1)  # several intervals with the session open
    cat.proc.stdin.close()  # the echo ends after echoing everything: a clean end
    assert cat.proc.stdout.read() == data
    assert cat.wait(20) == 0, cat.stderr
    stderr = cat.stderr
    assert "ws-stream cat: stats: " in stderr
    assert cat.lines[-1].startswith("ws-stream cat: summary: 1 connection in "), stderr
    assert "received 100000 bytes" in stderr and "sent 100000 bytes" in stderr
    serve.wait_for(r"stats: 0 open, 1 total; received 100\.0 kB")
    serve.signal(signal.SIGTERM)
    assert serve.wait() == 0
    assert "summary: 1 connection in" in serve.lines[-1]
    assert "received 100000 bytes" in serve.lines[-1]


def test_quiet_and_verbose(cli: Start) -> None:
    quiet = cli("serve", "--port", "0", "-q")
    loud = cli("serve", "--port", "0", "-v")
    port = loud.port()
    result = run_cli("cat", "-v", f"ws://127.0.0.1:{port}/", input=b"hi")
    assert result.stdout == b"hi"
    assert result.stderr.decode().startswith(f"ws-stream cat: connected to ws://127.0.0.1:{port}/")
    loud.wait_for(r"127\.0\.0\.1:\d+: connected \(subprotocol None\)")
    quiet.signal(signal.SIGTERM)
    assert quiet.wait() == 0
    assert quiet.lines == []
