"""ws-stream behind a real nginx: the configuration the deployment guide shows, run as it is.

nginx (Debian package ``nginx-light`` or ``nginx``; ``.ci/run`` installs it)
runs in the foreground as a subprocess of the test, with its own prefix, pid
file and logs under ``tmp_path``, listening on 127.0.0.1. Its configuration
is ``examples/nginx/ws-stream.conf`` (the file the deployment guide includes), rendered with
the test's port, upstream and, for the idle test, ``proxy_read_timeout``; a
line of that file that the test cannot find fails the test, so the file and
the test cannot drift apart.

* SSH-like traffic: ``forward`` -> nginx -> ``serve --to`` -> a TCP echo, with
  nginx's upstream on TCP and on a Unix socket (``serve --unix``): small
  request/answer exchanges, then 64 MiB each way at once, checked by
  checksum, then a half-close that ends the tunnel cleanly.
* Keepalive: with ``proxy_read_timeout 5s`` an idle tunnel survives 15 s when
  either side pings every 2 s (``serve --ping-interval 2``, or
  ``forward --ping-interval 2``), and nginx cuts it when neither pings more
  often than the default 20 s: the control that proves the test can fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..ports import free_port
from .helpers import ROOT, Cli, run, start_tcp_echo

#: The nginx configuration the deployment guide includes; the tests run it.
NGINX_CONF = ROOT / "examples" / "nginx" / "ws-stream.conf"

BULK = 64 * 2**20

# What the test puts in place of the template's values: (line in the file, with a slot).
_LISTEN = ("    listen 80;", "    listen 127.0.0.1:{};")
_UPSTREAM = ("    server 127.0.0.1:8765;", "    server {};")
_READ_TIMEOUT = ("        proxy_read_timeout 60s;", "        proxy_read_timeout {};")


def render(port: int, upstream: str, read_timeout: str | None = None) -> str:
    """``NGINX_CONF`` listening on 127.0.0.1:``port``, proxying to ``upstream``.

    ``upstream``: ``127.0.0.1:PORT`` or ``unix:PATH``. Fails when the file no
    longer has a line the test replaces (the deployment guide includes the file itself).
    """
    text = NGINX_CONF.read_text()
    changes = [(_LISTEN, port), (_UPSTREAM, upstream)]
    if read_timeout is not None:
        changes.append((_READ_TIMEOUT, read_timeout))
    for (line, slot), value in changes:
        assert text.count(line + "\n") + text.count(line + " ") == 1, (
            f"{NGINX_CONF} no longer has the line {line.strip()!r} exactly once: "
            "update this test (the deployment guide includes the file)"
        )
        text = text.replace(line, slot.format(value))
    return text


def _main_conf(prefix: Path) -> str:
    """nginx's main configuration around the rendered file: everything under ``prefix``."""
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{
    worker_connections 64;
}}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/ws-stream.conf;
}}
"""


class Nginx:
    """A foreground nginx on 127.0.0.1 with ``NGINX_CONF``, everything under ``prefix``.

    One process (``master_process off``): no worker changes user, so a Unix
    upstream under pytest's private tmp_path stays reachable, and killing
    the process stops everything.
    """

    def __init__(
        self, binary: str, prefix: Path, upstream: str, read_timeout: str | None = None
    ) -> None:
        self.prefix = prefix
        prefix.mkdir(parents=True)
        (prefix / "nginx.conf").write_text(_main_conf(prefix))
        self.proc: subprocess.Popen[bytes] | None = None
        for _ in range(5):  # free_port() can race with another process: try another port
            self.port = free_port()
            (prefix / "ws-stream.conf").write_text(render(self.port, upstream, read_timeout))
            if self._start(binary):
                return
        raise AssertionError(f"nginx did not start; its error log:\n{self.error_log()}")

    def _start(self, binary: str) -> bool:
        conf = f"{self.prefix}/nginx.conf"
        with open(self.prefix / "stderr.log", "ab") as stderr:
            self.proc = subprocess.Popen(
                [binary, "-p", f"{self.prefix}/", "-e", f"{self.prefix}/error.log", "-c", conf],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "Address already in use" in self.error_log():
                    return False
                raise AssertionError(f"nginx exited {self.proc.returncode}:\n{self.error_log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return True
            time.sleep(0.05)
        raise AssertionError(f"nginx is not accepting after 10 s:\n{self.error_log()}")

    def uri(self, path: str = "/ssh") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def error_log(self) -> str:
        text = ""
        for name in ("stderr.log", "error.log"):
            with contextlib.suppress(FileNotFoundError):
                text += (self.prefix / name).read_text(errors="replace")
        return text

    def access_log(self) -> str:
        return (self.prefix / "access.log").read_text(errors="replace")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def nginx_binary() -> str:
    """The nginx executable; skips when it is missing (Debian's sbin is not on every PATH)."""
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        pytest.skip("nginx is not installed: install the Debian package nginx-light (or nginx)")
    return binary


@pytest.fixture
def nginx(nginx_binary: str, tmp_path: Path) -> Iterator[Callable[..., Nginx]]:
    """Start nginx: ``nginx(upstream, read_timeout=None)``; every one is stopped at the end."""
    started: list[Nginx] = []

    def start(upstream: str, read_timeout: str | None = None) -> Nginx:
        server = Nginx(nginx_binary, tmp_path / f"nginx{len(started)}", upstream, read_timeout)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def test_the_template_renders_every_value() -> None:
    """The lines the tests replace are in the file the deployment guide includes (no nginx)."""
    text = render(5000, "unix:/run/x.sock", "5s")
    assert "listen 127.0.0.1:5000;" in text
    assert "    server unix:/run/x.sock;" in text
    assert "proxy_read_timeout 5s;" in text
    assert "proxy_set_header Upgrade $http_upgrade;" in text


# SSH-like traffic


async def ssh_like_session(port: int) -> None:
    """Through the tunnel at 127.0.0.1:``port`` to an echo: what an SSH session does.

    Small exchanges first (version lines, key exchange, keystrokes: each
    answer awaited), then 64 MiB each way at once in packet-sized writes
    (a file copy), both checked by SHA-256, then a half-close and EOF.
    """
    rng = random.Random(15)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for size in [21, 1000, 1500, 48, 2000] + [rng.randint(1, 4096) for _ in range(60)]:
            message = os.urandom(size)
            writer.write(message)
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(size), 10) == message

        sent = hashlib.sha256()

        async def upload() -> None:
            left = BULK
            while left:
                packet = os.urandom(min(left, rng.randint(1, 32768)))
                sent.update(packet)
                writer.write(packet)
                await writer.drain()
                left -= len(packet)

        async def download() -> bytes:
            received, left = hashlib.sha256(), BULK
            while left:
                data = await reader.read(min(left, 2**18))
                assert data, f"EOF with {left} bytes still to come"
                received.update(data)
                left -= len(data)
            return received.digest()

        uploading = asyncio.create_task(upload())
        digest = await download()
        await uploading
        assert digest == sent.digest(), "the bytes that came back differ from those sent"
        # The client half-closes; the echo ends its side: a clean end all along the way.
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 15) == b""
    finally:
        writer.close()


@pytest.mark.parametrize("upstream", ["tcp", "unix"])
def test_ssh_like_traffic_through_nginx(
    upstream: str, nginx: Callable[..., Nginx], cli: Callable[..., Cli], tmp_path: Path
) -> None:
    async def body() -> None:
        echo, echo_port, accepted = await start_tcp_echo()
        async with echo:
            if upstream == "tcp":
                server = cli("serve", "--port", "0", "--to", f"127.0.0.1:{echo_port}")
                address = f"127.0.0.1:{await asyncio.to_thread(server.port)}"
            else:
                path = tmp_path / "serve.sock"
                server = cli("serve", "--unix", str(path), "--to", f"127.0.0.1:{echo_port}")
                await asyncio.to_thread(server.wait_for, f"listening on unix:{path} ")
                address = f"unix:{path}"
            proxy = await asyncio.to_thread(nginx, address)
            forward = cli("forward", "--listen", "0", proxy.uri())
            await ssh_like_session(await asyncio.to_thread(forward.port))
            await asyncio.to_thread(
                forward.wait_for, r"closed after .*close code sent 1000, received 1000"
            )
            line = await asyncio.to_thread(server.wait_for, r"connection closed:")
            assert "close_sent=1000 close_received=1000" in line.string, server.stderr
            if upstream == "unix":
                assert "peer=unix-client#1 " in line.string
            assert accepted == [1]
        # It did go through nginx: the upgrade is in its access log.
        assert '"GET /ssh HTTP/1.1" 101' in proxy.access_log()

    run(body(), timeout=90)


# Keepalive through nginx


IDLE = 15.0


def test_idle_tunnel_through_nginx_survives_only_with_pings(
    nginx: Callable[..., Nginx], cli: Callable[..., Cli]
) -> None:
    """``proxy_read_timeout 5s``; each tunnel is idle for 15 s, three at once.

    * ``serve --ping-interval 2``: the server pings (forward does not), survives;
    * ``forward --ping-interval 2``: the client pings (serve does not), survives;
    * neither (the defaults: 20 s): nginx cuts the tunnel after 5 s idle, and
      forward resets its client: the test can fail.
    """
    setups = {
        "serve pings": (["--ping-interval", "2"], ["--ping-interval", "0"]),
        "forward pings": (["--ping-interval", "0"], ["--ping-interval", "2"]),
        "defaults": ([], []),
    }

    async def body() -> None:
        echo, echo_port, _ = await start_tcp_echo()
        async with echo:
            proxies: dict[str, Nginx] = {}
            forwards: dict[str, Cli] = {}
            for name, (serve_args, forward_args) in setups.items():
                server = cli("serve", "--port", "0", "--to", f"127.0.0.1:{echo_port}", *serve_args)
                address = f"127.0.0.1:{await asyncio.to_thread(server.port)}"
                proxies[name] = await asyncio.to_thread(nginx, address, "5s")
                forwards[name] = cli("forward", "--listen", "0", *forward_args, proxies[name].uri())
            streams = {}
            for name, forward in forwards.items():
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", await asyncio.to_thread(forward.port)
                )
                writer.write(b"hello\n")
                assert await asyncio.wait_for(reader.readexactly(6), 10) == b"hello\n"
                streams[name] = (reader, writer)
            idle_from = time.monotonic()

            async def watch(reader: asyncio.StreamReader) -> str:
                """What happens to a tunnel while nobody sends: the reader's end."""
                try:
                    data = await reader.read(1)
                except ConnectionResetError:
                    return "reset"
                return f"data {data!r}" if data else "EOF"

            watchers = {name: asyncio.create_task(watch(r)) for name, (r, _) in streams.items()}
            cut = await asyncio.wait_for(watchers["defaults"], IDLE)
            cut_after = time.monotonic() - idle_from
            await asyncio.sleep(max(0.0, IDLE - (time.monotonic() - idle_from)))

            # The control: nginx cut it (its own log says why), and forward reset
            # its client, since a tunnel cut in the middle is not a clean end.
            assert cut == "reset", cut
            assert cut_after > 4, f"cut after {cut_after:.1f} s: before nginx's 5 s timeout?"
            assert "upstream timed out" in proxies["defaults"].error_log()
            await asyncio.to_thread(forwards["defaults"].wait_for, r"closed after .*1006")

            # With pings, the tunnel is still the same and still works after 15 s.
            for name in ("serve pings", "forward pings"):
                assert not watchers[name].done(), (name, watchers[name].result())
                reader, writer = streams[name]
                writer.write(b"still here\n")
                got = await asyncio.wait_for(watchers[name], 10)
                assert got == "data b's'", (name, got)
                assert await asyncio.wait_for(reader.readexactly(10), 10) == b"till here\n"
                assert "timed out" not in proxies[name].error_log(), name
            for _, writer in streams.values():
                writer.close()

    run(body(), timeout=60)
