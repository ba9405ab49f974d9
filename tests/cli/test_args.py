"""The command line itself: help, exit status 2 for bad arguments, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..ports import refused_port
from .helpers import ROOT, cli_env, run_cli


@pytest.mark.parametrize("command", [[], ["serve"], ["forward"], ["cat"]])
def test_help_of_each_command(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert out.startswith(f"usage: ws-stream {' '.join(command)}".rstrip())
    assert "exit status: 0" in out
    if command == ["serve"]:
        assert "listening on ws://HOST:PORT/" in out  # how tests and scripts find --port 0
        assert "never an open proxy" in out
    if command == ["cat"]:
        assert "--linger" in out and "ProxyCommand" in out


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "ws-stream"
    assert script.exists(), "pip install -e . creates the ws-stream console script"
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, timeout=30, env=cli_env(), cwd=ROOT
    )
    assert result.returncode == 0
    assert result.stdout.decode().startswith("ws-stream ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["nope"], "invalid choice: 'nope'"),
        (["serve", "--port", "http"], "expected a port number 0-65535, got 'http'"),
        (["serve", "--port", "70000"], "expected a port number 0-65535"),
        # A port is ASCII digits only (int() alone takes these too).
        (["serve", "--port", "+80"], "expected a port number 0-65535"),
        (["serve", "--port", "8_0"], "expected a port number 0-65535"),
        (["serve", "--port", " 80"], "expected a port number 0-65535"),
        (["serve", "--mux", "--allow-reverse", "127.0.0.1:9000-"], "expected IP:PORT or IP:LOW"),
        (["serve", "--mux", "--allow-reverse", "127.0.0.1:+9000"], "expected IP:PORT or IP:LOW"),
        (["serve", "--mux", "--allow-reverse", "127.0.0.1:9_000"], "expected IP:PORT or IP:LOW"),
        (["serve", "--mux", "--allow-reverse", "127.0.0.1:9000-+9001"], "expected IP:PORT"),
        (["serve", "--to", "127.0.0.1"], "the port is missing"),
        (["serve", "--to", "127.0.0.1:"], "the port is missing"),
        (["serve", "--to", ":5900"], "the host is missing"),
        (["serve", "--to", "127.0.0.1:0"], "the target port cannot be 0"),
        (["serve", "--cert", "cert.pem"], "--cert and --key go together"),
        (["serve", "--max-connections", "0"], "expected a whole number >= 1"),
        (["serve", "--close-timeout", "-1"], "expected a number of seconds >= 0"),
        (["serve", "--workers", "5000"], "expected at most 256 workers"),
        (["serve", "--workers", "257"], "expected at most 256 workers"),
        (["serve", "--path", "noslash"], "expected a request path starting with /"),
        (["serve", "--path", "/vnc?x=1"], "without query"),
        (["serve", "--origin", ""], "the origin is empty"),
        (["serve", "--origin", "null"], "`null` is not allowed"),
        (["serve", "--origin", "https://vnc.example/"], "no path, query or trailing /"),
        (["serve", "--origin", "https://Vnc.example"], "browsers send the host in lowercase"),
        (["serve", "--origin", "https://vnc.example:443"], "write https://vnc.example"),
        (["serve", "--origin", "https://a..b"], "cannot have an empty label"),
        (
            ["serve", "--to", "127.0.0.1:1", "--to-tls", "--to-server-name", "a..b:443"],
            "expected a host name or an IP address, got 'a..b:443': no port",
        ),
        (
            ["serve", "--to", "127.0.0.1:1", "--to-tls", "--to-server-name", "a..b"],
            "cannot have an empty label",
        ),
        (
            ["serve", "--to", "127.0.0.1:1", "--to-tls", "--to-server-name", "a" * 64 + ".b"],
            "is not 1-63 letters, digits, - or _",
        ),
        (
            ["serve", "--to", "127.0.0.1:1", "--to-tls", "--to-server-name", "a." * 127 + "b"],
            "at most 253 are allowed",
        ),
        (["serve", "--ping-interval", "1e-7"], "expected 0 (off) or a number of seconds >= 0.1"),
        (["serve", "--ping-timeout", "0.01"], "expected 0 (off) or a number of seconds >= 0.1"),
        (["cat", "--ping-interval", "1e-7", "ws://h/"], "seconds >= 0.1"),
        (["serve", "--host", ""], "use 0.0.0.0 (IPv4) or :: (IPv6) to listen on every"),
        (["serve", "--workers", "2", "--host", ""], "expected an address to listen on"),
        (["forward", "ws://127.0.0.1:1/"], "forward needs --listen ADDRESS, or --reverse tunnels"),
        (["forward", "--listen", "127.0.0.1:x", "ws://h/"], "expected a port number"),
        (["cat"], "the following arguments are required: URI"),
        (["cat", "http://127.0.0.1/"], "expected a ws:// or wss:// URI"),
        (["cat", "ws://127.0.0.1:99999/"], "invalid port"),
        (["cat", "--header", "no colon", "ws://h/"], "expected 'Name: value'"),
        (["cat", "--max-bytes", "0", "ws://h/"], "expected a whole number >= 1"),
        (["cat", "--idle-timeout", "0", "ws://h/"], "expected a number of seconds > 0"),
        (["cat", "--linger", "soon", "ws://h/"], "expected a number of seconds >= 0"),
        (["cat", "--cafile", "ca.pem", "ws://h/"], "--cafile applies to wss:// URIs only"),
        (["cat", "--cafile", "/nonexistent.pem", "wss://h/"], "--cafile: cannot load"),
        (
            ["cat", "--bearer", "t", "--header", "Authorization: x", "ws://h/"],
            "use either --bearer",
        ),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(args: list[str], message: str) -> None:
    result = run_cli(*args)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "usage: ws-stream" in stderr
    assert message in stderr
    assert "Traceback" not in stderr


def test_a_bad_bearer_token_is_refused_without_echoing_it() -> None:
    result = run_cli("cat", "ws://127.0.0.1:1/", env=cli_env(WS_STREAM_BEARER="se cret"))
    stderr = result.stderr.decode()
    assert result.returncode == 2
    assert "printable ASCII" in stderr
    assert "se cret" not in stderr


def test_unreachable_uri_is_a_clear_runtime_error() -> None:
    port = refused_port()
    result = run_cli("cat", f"ws://127.0.0.1:{port}/")
    stderr = result.stderr.decode()
    assert result.returncode == 1
    assert stderr.startswith(f"ws-stream cat: error: cannot open ws://127.0.0.1:{port}/:")
    assert "Traceback" not in stderr


def test_credentials_in_the_uri_are_not_logged() -> None:
    port = refused_port()
    result = run_cli("cat", f"ws://user:hunter2@127.0.0.1:{port}/")
    stderr = result.stderr.decode()
    assert result.returncode == 1
    assert "hunter2" not in stderr
    assert f"ws://***@127.0.0.1:{port}/" in stderr


def test_port_in_use_is_a_clear_runtime_error() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "--port", str(port))
        forward = run_cli("forward", "--listen", f"127.0.0.1:{port}", "ws://127.0.0.1:1/")
    for res in (result, forward):
        stderr = res.stderr.decode()
        assert res.returncode == 1, stderr
        assert f"error: cannot listen on 127.0.0.1:{port}:" in stderr
        assert "Traceback" not in stderr


def test_the_configuration_never_shows_the_token_or_the_password() -> None:
    from ws_stream.cli.args import ForwardConfig, HostPort, parse_config

    config = parse_config(
        ["forward", "--listen", "5901", "--bearer", "s3cret", "ws://user:hunter2@127.0.0.1/"]
    )
    assert isinstance(config, ForwardConfig)
    assert config.listen == HostPort("127.0.0.1", 5901)
    assert ("Authorization", "Bearer s3cret") in config.headers
    assert "s3cret" not in repr(config) and "hunter2" not in repr(config)


def test_the_tightened_options_still_accept_good_values() -> None:
    from ws_stream.cli.args import ServeConfig, parse_config

    config = parse_config(
        [
            "serve",
            "--host", "::",
            "--workers", "256",
            "--path", "/vnc",
            "--origin", "https://vnc.example",
            "--origin", "http://[::1]:8080",
            "--to", "127.0.0.1:5900",
            "--to-tls",
            "--to-server-name", "vnc_target.internal",
            "--ping-interval", "0.1",
            "--ping-timeout", "0",
        ]
    )  # fmt: skip
    assert isinstance(config, ServeConfig)
    assert (config.host, config.workers, config.path) == ("::", 256, "/vnc")
    assert config.origins == ("https://vnc.example", "http://[::1]:8080")
    assert config.target_tls is not None
    assert config.target_tls.server_name == "vnc_target.internal"
    assert (config.ping_interval, config.ping_timeout) == (0.1, None)
    for name in ("10.0.0.1", "::1", "db"):
        config = parse_config(
            ["serve", "--to", "127.0.0.1:1", "--to-tls", "--to-server-name", name]
        )
        assert isinstance(config, ServeConfig) and config.target_tls is not None
        assert config.target_tls.server_name == name
