"""``ws-stream forward`` and ``cat`` through real proxies, started here on 127.0.0.1.

- tinyproxy (Debian ``tinyproxy-bin``): an HTTP CONNECT proxy, without and with
  ``BasicAuth``;
- dante (Debian ``dante-server``): a SOCKS5 proxy without authentication (its
  username method checks system accounts, which a test does not create);
- pproxy (PyPI, the test extra): a SOCKS5 proxy with user:password
  authentication (``--auth 0``: pproxy otherwise lets an address that logged
  in once through without credentials for 30 days).

Data goes through each with checksums, against ``ws-stream serve`` (echo); the
proxy's own log shows the tunnel; a wrong password (and other proxy failures)
is a clear error naming the proxy without its password, and exit 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..ports import free_port, refused_port
from .helpers import Cli, cli_env, run_cli

Start = Callable[..., Cli]

BLOB = os.urandom(4 << 20)
DIGEST = hashlib.sha256(BLOB).hexdigest()
PASSWORD = "s3cret-Pw"


@dataclass
class Proxy:
    """A proxy running on 127.0.0.1."""

    scheme: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    def url(self, scheme: str | None = None, user: str | None = None, password: str = "") -> str:
        """Its URL (``scheme`` replaces its own: socks5h for socks5), with credentials."""
        auth = f"{user}:{password}@" if user is not None else ""
        return f"{scheme or self.scheme}://{auth}127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, text: str, count: int = 1, timeout: float = 10.0) -> str:
        """The proxy's log once it holds ``text`` ``count`` times (its writes may lag)."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log_text()
            if log.count(text) >= count or time.monotonic() > deadline:
                return log
            time.sleep(0.05)


def _start(
    argv: list[str], port: int, log: Path, tmp_path: Path, name: str
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group; return once it accepts on ``port``."""
    output = open(tmp_path / f"{name}.out", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        argv,
        stdout=output,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    output.close()
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            text = (tmp_path / f"{name}.out").read_text(errors="replace")
            if log.exists():
                text += "\n" + log.read_text(errors="replace")
            pytest.fail(f"{name} exited with {proc.returncode}:\n{text}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if time.monotonic() > deadline:
                _stop(proc)
                pytest.fail(f"{name} did not listen on 127.0.0.1:{port} within 15 s")
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End the proxy and the processes it forked (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # forked children that outlived it


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[dict[str, Callable[..., Proxy]]]:
    """Starters of the real proxies; every one started is stopped at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def tinyproxy(target_port: int, auth: bool = False) -> Proxy:
        binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
        if not os.access(binary, os.X_OK):
            pytest.skip("tinyproxy is missing: apt-get install tinyproxy-bin (.ci/run does)")
        port, log = free_port(), tmp_path / "tinyproxy.log"
        config = tmp_path / "tinyproxy.conf"
        config.write_text(
            f"Listen 127.0.0.1\nPort {port}\nAllow 127.0.0.1\nConnectPort {target_port}\n"
            f'Timeout 60\nMaxClients 20\nLogFile "{log}"\nLogLevel Info\n'
            + (f"BasicAuth user {PASSWORD}\n" if auth else "")
        )
        proc = _start([binary, "-d", "-c", str(config)], port, log, tmp_path, "tinyproxy")
        started.append(proc)
        return Proxy("http", port, log, proc)

    def danted() -> Proxy:
        binary = shutil.which("danted") or "/usr/sbin/danted"
        if not os.access(binary, os.X_OK):
            pytest.skip("dante's danted is missing: apt-get install dante-server (.ci/run does)")
        port, log = free_port(), tmp_path / "danted.log"
        config = tmp_path / "danted.conf"
        config.write_text(
            f"logoutput: {log}\n"
            f"internal: 127.0.0.1 port = {port}\n"
            "external: 127.0.0.1\n"
            "clientmethod: none\n"
            "socksmethod: none\n"
            "client pass {\n  from: 127.0.0.1/32 to: 0.0.0.0/0\n  log: connect error\n}\n"
            "socks pass {\n  from: 127.0.0.1/32 to: 127.0.0.1/32\n  log: connect error\n}\n"
        )
        argv = [binary, "-f", str(config), "-p", str(tmp_path / "danted.pid")]
        proc = _start(argv, port, log, tmp_path, "danted")
        started.append(proc)
        return Proxy("socks5", port, log, proc)

    def pproxy() -> Proxy:
        if importlib.util.find_spec("pproxy") is None:
            pytest.skip("pproxy is missing: pip install -e '.[test]'")
        port, log = free_port(), tmp_path / "pproxy.log"
        # pproxy fails to start when uvloop is importable: hide it.
        code = (
            "import sys; sys.modules['uvloop'] = None; from pproxy.server import main; "
            "sys.argv = ['pproxy', *sys.argv[1:]]; main()"
        )
        listen = f"socks5://127.0.0.1:{port}#user:{PASSWORD}"
        argv = [sys.executable, "-u", "-c", code, "-l", listen, "--auth", "0", "-v"]
        proc = _start(argv, port, log, tmp_path, "pproxy")
        started.append(proc)
        return Proxy("socks5", port, tmp_path / "pproxy.out", proc)

    try:
        yield {"tinyproxy": tinyproxy, "danted": danted, "pproxy": pproxy}
    finally:
        for proc in started:
            _stop(proc)


@pytest.fixture(autouse=True)
def _python_socks() -> None:
    if importlib.util.find_spec("python_socks") is None:
        pytest.skip("python-socks is missing: pip install -e '.[test]' (or ws-stream[socks])")


def start_echo(cli: Start) -> tuple[int, str]:
    """``ws-stream serve`` (echo) on a random port: its port and URI."""
    serve = cli("serve", "--port", "0")
    port = serve.port()
    return port, f"ws://127.0.0.1:{port}/"


def cat_through(proxy: str, uri: str, *extra: str, env: dict[str, str] | None = None) -> str:
    """``cat --proxy PROXY URI`` with BLOB: checks the echo; returns stderr."""
    args = ("--proxy", proxy) if proxy else ()
    result = run_cli(
        "cat",
        "-v",
        "--max-bytes",
        str(len(BLOB)),
        *args,
        *extra,
        uri,
        input=BLOB,
        timeout=60,
        env=env,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert (len(result.stdout), hashlib.sha256(result.stdout).hexdigest()) == (
        len(BLOB),
        DIGEST,
    ), stderr
    return stderr


def echo_through_forward(port: int, data: bytes) -> bytes:
    """Send ``data`` to ``forward`` on ``port`` while reading the echo back."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
        sender.start()
        received = bytearray()
        while len(received) < len(data):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            received += chunk
        sender.join(30)
    return bytes(received)


def forward_through(cli: Start, proxy: str, uri: str, connections: int = 2) -> Cli:
    """``forward --proxy PROXY URI``; ``connections`` clients, each with BLOB and checksums."""
    forward = cli("forward", "-v", "--listen", "127.0.0.1:0", "--proxy", proxy, uri)
    port = forward.port()
    for _ in range(connections):
        echoed = echo_through_forward(port, BLOB)
        assert (len(echoed), hashlib.sha256(echoed).hexdigest()) == (len(BLOB), DIGEST), (
            forward.stderr
        )
    forward.wait_for("tunnel open to .* through the proxy", count=connections)
    return forward


# HTTP CONNECT: tinyproxy


@pytest.mark.parametrize("auth", [False, True], ids=["no-auth", "basic-auth"])
def test_cat_and_forward_through_tinyproxy(
    cli: Start, proxies: dict[str, Callable[..., Proxy]], auth: bool
) -> None:
    port, uri = start_echo(cli)
    proxy = proxies["tinyproxy"](port, auth=auth)
    url = proxy.url(user="user", password=PASSWORD) if auth else proxy.url()
    shown = f"http://***@127.0.0.1:{proxy.port}" if auth else url

    stderr = cat_through(url, uri)
    assert f"connected to {uri} through the proxy {shown} (from --proxy)" in stderr
    forward = forward_through(cli, url, uri)
    assert f"tunnels to {uri} through the proxy {shown}" in forward.stderr

    # The proxy's own log: one CONNECT tunnel per connection (cat + 2 forward clients).
    connect = f"CONNECT 127.0.0.1:{port} HTTP/1.1"
    log = proxy.wait_log(connect, count=3)
    assert log.count(connect) == 3, log
    assert PASSWORD not in stderr + forward.stderr


def test_a_wrong_or_missing_password_for_tinyproxy_is_a_clear_error(
    cli: Start, proxies: dict[str, Callable[..., Proxy]]
) -> None:
    port, uri = start_echo(cli)
    proxy = proxies["tinyproxy"](port, auth=True)

    wrong = run_cli("cat", "--proxy", proxy.url(user="user", password="wrong-Pw"), uri)
    stderr = wrong.stderr.decode()
    assert wrong.returncode == 1, stderr
    # tinyproxy answers a wrong password with 401 (most proxies: 407).
    assert (
        f"error: cannot open {uri}: the HTTP proxy http://***@127.0.0.1:{proxy.port} refused "
        f"the tunnel to 127.0.0.1:{port} with HTTP 401"
    ) in stderr, stderr
    assert "rejected the credentials of the proxy URL" in stderr
    assert "wrong-Pw" not in stderr

    missing = run_cli("cat", "--proxy", proxy.url(), uri)
    stderr = missing.stderr.decode()
    assert missing.returncode == 1, stderr
    assert "HTTP 407 Proxy Authentication Required; it wants credentials" in stderr, stderr

    # forward: the client is reset, forward says why and keeps serving.
    forward = cli(
        "forward", "--listen", "127.0.0.1:0", "--proxy", proxy.url("http", "user", "wrong-Pw"), uri
    )
    with (
        pytest.raises(ConnectionResetError),  # at connect() if the RST is that fast
        socket.create_connection(("127.0.0.1", forward.port()), timeout=10) as sock,
    ):
        while sock.recv(1024):
            pass
    forward.wait_for(f"error: .*cannot open {uri}: the HTTP proxy http://\\*\\*\\*@127.0.0.1")
    assert forward.proc.poll() is None
    assert "wrong-Pw" not in forward.stderr


def test_the_environment_proxy_no_proxy_and_the_no_proxy_option(
    cli: Start, proxies: dict[str, Callable[..., Proxy]]
) -> None:
    port, uri = start_echo(cli)
    proxy = proxies["tinyproxy"](port)
    stderr = cat_through("", uri, env=cli_env(http_proxy=proxy.url()))
    assert f"through the proxy {proxy.url()} (from $http_proxy)" in stderr, stderr
    assert proxy.wait_log(f"CONNECT 127.0.0.1:{port} ").count("CONNECT 127.0.0.1") == 1

    # A proxy that does not run: used from the environment, it is the error ...
    dead = f"http://127.0.0.1:{refused_port()}"
    result = run_cli("cat", uri, env=cli_env(ws_proxy=dead))
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert f"cannot connect to the HTTP proxy {dead}: Connection refused" in stderr, stderr
    # ... --no-proxy and no_proxy bypass it.
    stderr = cat_through("", uri, "--no-proxy", env=cli_env(ws_proxy=dead))
    assert "proxy" not in stderr
    stderr = cat_through("", uri, env=cli_env(ws_proxy=dead, no_proxy="127.0.0.1"))
    assert "proxy" not in stderr
    assert proxy.log_text().count("CONNECT 127.0.0.1") == 1  # neither went through it


# SOCKS5 without authentication: dante


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
def test_cat_and_forward_through_dante(
    cli: Start, proxies: dict[str, Callable[..., Proxy]], scheme: str
) -> None:
    port, uri = start_echo(cli)
    proxy = proxies["danted"]()
    url = proxy.url(scheme)
    stderr = cat_through(url, uri)
    assert f"through the proxy {url} (from --proxy)" in stderr, stderr
    forward_through(cli, url, uri)
    # dante logs each SOCKS connect with the target's address as 127.0.0.1.PORT.
    target = f"127.0.0.1.{port}"
    log = proxy.wait_log(target, count=3)
    assert sum(target in line and "tcp/connect [" in line for line in log.splitlines()) == 3, log


def test_a_target_dante_cannot_reach_is_its_socks_error(
    proxies: dict[str, Callable[..., Proxy]],
) -> None:
    proxy = proxies["danted"]()
    dead = refused_port()
    result = run_cli("cat", "--proxy", proxy.url(), f"ws://127.0.0.1:{dead}/")
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert (
        f"the SOCKS proxy {proxy.url()} could not reach 127.0.0.1:{dead} "
        "(Connection refused by destination host)"
    ) in stderr, stderr


# SOCKS5 with user:password: pproxy


def test_cat_and_forward_through_pproxy_with_a_password(
    cli: Start, proxies: dict[str, Callable[..., Proxy]]
) -> None:
    port, _ = start_echo(cli)
    proxy = proxies["pproxy"]()
    # socks5h: the proxy resolves the name (its log shows it); socks5: this machine does.
    by_name = f"ws://localhost:{port}/"
    stderr = cat_through(proxy.url("socks5h", "user", PASSWORD), by_name)
    assert f"through the proxy socks5h://***@127.0.0.1:{proxy.port}" in stderr, stderr
    assert f"-> localhost:{port}" in proxy.wait_log(f"-> localhost:{port}")
    cat_through(proxy.url("socks5", "user", PASSWORD), by_name)
    assert f"-> 127.0.0.1:{port}" in proxy.wait_log(f"-> 127.0.0.1:{port}")
    forward = forward_through(cli, proxy.url("socks5h", "user", PASSWORD), by_name)
    log = proxy.wait_log(f"-> localhost:{port}", count=3)
    assert log.count(f"-> localhost:{port}") == 3, log
    assert PASSWORD not in stderr + forward.stderr


def test_a_wrong_socks_password_is_a_clear_error(
    cli: Start, proxies: dict[str, Callable[..., Proxy]]
) -> None:
    port, uri = start_echo(cli)
    proxy = proxies["pproxy"]()
    for url in (proxy.url("socks5h", "user", "wrong-Pw"), proxy.url("socks5h")):
        result = run_cli("cat", "--proxy", url, uri)
        stderr = result.stderr.decode()
        assert result.returncode == 1, stderr
        # pproxy drops the connection instead of answering "authentication failed".
        assert (
            f"error: cannot open {uri}: the SOCKS proxy {url.replace('user:wrong-Pw', '***')} "
            f"closed the connection during the SOCKS handshake for 127.0.0.1:{port}"
        ) in stderr, stderr
        assert "rejected the credentials" in stderr
        assert "wrong-Pw" not in stderr
    assert f"-> 127.0.0.1:{port}" not in proxy.log_text()  # no tunnel was opened


def test_a_socks_proxy_that_does_not_run_is_named(cli: Start) -> None:
    _, uri = start_echo(cli)
    url = f"socks5://user:{PASSWORD}@127.0.0.1:{refused_port()}"
    result = run_cli("cat", "--proxy", url, uri)
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "cannot connect to the SOCKS proxy socks5://***@127.0.0.1:" in stderr, stderr
    assert "Connection refused" in stderr and PASSWORD not in stderr


# Arguments


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--proxy", "ftp://h:21"], "expected a proxy URL http://HOST:PORT"),
        (["--proxy", "socks5://h"], "give the port of the SOCKS proxy"),
        (["--proxy", f"http://user:{PASSWORD}@h:1/path"], "path is meaningless"),
        (["--proxy", "http://user@h:1"], "username provided without password"),
        (["--proxy", "http://h:1", "--no-proxy"], "--proxy and --no-proxy exclude each other"),
    ],
)
def test_bad_proxy_arguments_exit_2(args: list[str], message: str) -> None:
    result = run_cli("cat", *args, "ws://127.0.0.1:1/")
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert message in stderr
    assert PASSWORD not in stderr
    assert "Traceback" not in stderr


def test_an_invalid_environment_proxy_exits_2_naming_the_variable() -> None:
    result = run_cli("cat", "ws://127.0.0.1:1/", env=cli_env(HTTP_PROXY=f"u:{PASSWORD}@h:1"))
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "from $HTTP_PROXY is invalid" in stderr and "--no-proxy" in stderr, stderr
    assert PASSWORD not in stderr
    result = run_cli(
        "cat",
        "--no-proxy",
        "--linger",
        "0",
        "ws://127.0.0.1:1/",
        env=cli_env(HTTP_PROXY=f"u:{PASSWORD}@h:1"),
    )
    assert result.returncode == 1  # ignored: a direct connection, refused
    assert "proxy" not in result.stderr.decode()
