"""``--ping-interval`` and ``--ping-timeout`` on serve, forward and cat.

The options reach websockets' keepalive on both sides: a raw peer that never
answers pings sees the pings come at the interval it was given, and then the
close with 1011 once the timeout passed. Through a real proxy (nginx) the
pings keep an idle tunnel open: tests/cli/test_deploy_nginx.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable

import pytest

from ws_stream.cli.args import ClientConfig, ServeConfig, parse_config

from ..rawpeer import CLOSE, PING, RawServer, connect_raw
from .helpers import ROOT, Cli, cli_env, command, run, run_cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--ping-interval", "soon"], "expected a number of seconds >= 0, got 'soon'"),
        (["serve", "--ping-interval", "-1"], "expected a number of seconds >= 0"),
        (["cat", "--ping-timeout", "nan", "ws://h/"], "expected a number of seconds >= 0"),
        (["forward", "--listen", "0", "--ping-interval", "inf", "ws://h/"], "seconds >= 0"),
        (
            ["serve", "--ping-interval", "0", "--ping-timeout", "5"],
            "--ping-timeout needs pings: with --ping-interval 0 none are sent",
        ),
        (
            ["cat", "--ping-interval", "0", "--ping-timeout", "0", "ws://h/"],
            "--ping-timeout needs pings",
        ),
    ],
)
def test_bad_keepalive_options_exit_2(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr.decode()


def test_keepalive_options_are_documented() -> None:
    for sub in ("serve", "forward", "cat"):
        out = run_cli(sub, "--help").stdout.decode()
        assert "--ping-interval S" in out and "--ping-timeout S" in out
        assert "(default: 20; 0: no pings)" in out


@pytest.mark.parametrize(
    ("args", "interval", "timeout"),
    [
        ([], 20.0, 20.0),  # the library's defaults, as before the options existed
        (["--ping-interval", "2"], 2.0, 20.0),
        (["--ping-interval", "2.5", "--ping-timeout", "1"], 2.5, 1.0),
        (["--ping-interval", "0"], None, 20.0),  # no pings (the timeout is moot)
        (["--ping-timeout", "0"], 20.0, None),  # pings, and wait for the pong forever
    ],
)
def test_keepalive_values(args: list[str], interval: float | None, timeout: float | None) -> None:
    for argv in (
        ["serve", *args],
        ["cat", *args, "ws://h/"],
        ["forward", "--listen", "0", *args, "ws://h/"],
    ):
        config = parse_config(argv)
        assert isinstance(config, ServeConfig | ClientConfig)
        assert (config.ping_interval, config.ping_timeout) == (interval, timeout), argv


def test_serve_pings_at_its_interval_and_closes_1011_without_a_pong(
    cli: Callable[..., Cli],
) -> None:
    server = cli("serve", "--port", "0", "--ping-interval", "0.5", "--ping-timeout", "1")
    port = server.port()

    async def body() -> tuple[float, int, str]:
        peer = await connect_raw(port)  # answers nothing, pings included
        started = time.monotonic()
        frame = await peer.recv_frame(timeout=5)
        assert frame.opcode == PING, frame
        first_ping = time.monotonic() - started
        code, reason = await peer.recv_close(timeout=5)
        return first_ping, code, reason

    first_ping, code, reason = run(body(), timeout=20)
    assert first_ping < 4  # a generous bound: the default interval (20 s) would fail this
    assert (code, reason) == (1011, "keepalive ping timeout")
    server.wait_for(r"connection closed: .*close_sent=1011", timeout=10)


@pytest.mark.parametrize("sub", ["cat", "forward"])
def test_clients_ping_at_their_interval_and_fail_without_a_pong(
    sub: str, cli: Callable[..., Cli]
) -> None:
    async def body() -> None:
        async with RawServer() as raw:
            if sub == "cat":
                proc = subprocess.Popen(
                    command("cat", "--ping-interval", "0.5", "--ping-timeout", "1", raw.uri),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env=cli_env(),
                    cwd=ROOT,
                )
            else:
                fwd: Cli = cli(
                    "forward",
                    "--listen",
                    "0",
                    "--ping-interval",
                    "0.5",
                    "--ping-timeout",
                    "1",
                    raw.uri,
                )
                port = await asyncio.to_thread(fwd.port)
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            peer = await raw.accept(timeout=10)
            started = time.monotonic()
            frame = await peer.recv_frame(timeout=5)
            assert frame.opcode == PING, frame
            assert time.monotonic() - started < 4
            frame = await peer.recv_frame(timeout=5)
            while frame.opcode == PING:  # websockets pings again only after a pong
                frame = await peer.recv_frame(timeout=5)
            assert frame.opcode == CLOSE and frame.payload[:2] == (1011).to_bytes(2, "big")
            peer.close_tcp()  # no closing handshake: the client need not wait --close-timeout
            if sub == "cat":
                try:
                    _, err = await asyncio.to_thread(proc.communicate, None, 10)
                finally:
                    proc.kill()
                assert proc.returncode == 1, err
                assert b"the WebSocket failed" in err, err
            else:
                # the tunnel failed: the local client is reset, never a clean EOF
                with pytest.raises(ConnectionResetError):
                    async with asyncio.timeout(10):
                        while await reader.read(65536):
                            pass
                writer.close()
                await asyncio.to_thread(fwd.wait_for, r"closed after .*1011", 10)

    run(body(), timeout=30)
