"""``serve --workers N``: N processes on one port, stopped, counted and limited as one.

Which worker served a connection is read from the worker's own log lines
(``ws-stream serve worker I: PEER: connected`` with ``-v``, ``... connection closed:``
by default): each line names the worker, and its peer address names the
client's connection, which the test knows. The workers' pids come from the
first line (``...; 2 workers, pids A, B)``).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import ws_stream
from ws_stream.cli.args import workers_problem
from ws_stream.events import CloseReceived

from ..ports import free_port
from ..rawpeer import connect_raw
from .helpers import Cli, run, run_cli, start_tcp_echo

Start = Callable[..., Cli]

pytestmark = pytest.mark.skipif(
    workers_problem(2, unix=False) is not None, reason="--workers needs Linux's SO_REUSEPORT"
)

FIRST_LINE = re.compile(
    r"^ws-stream serve: listening on ws://127\.0\.0\.1:(\d+)/ "
    r"\((.*); (\d+) workers, pids ([\d, ]+)\)$"
)
CONNECTED = r"ws-stream serve worker (\d+): 127\.0\.0\.1:(\d+): connected"
CLOSED = re.compile(r"^ws-stream serve worker (\d+): connection closed: peer=127\.0\.0\.1:(\d+) ")


def _start(cli: Start, *args: str) -> tuple[Cli, int, list[int]]:
    """``serve --port 0 ARGS``: the process, its port, its workers' pids (from the first line)."""
    serve = cli("serve", "--port", "0", *args)
    port = serve.port()
    match = FIRST_LINE.match(serve.lines[0])
    assert match, serve.lines[0]
    pids = [int(pid) for pid in match.group(4).split(", ")]
    assert int(match.group(3)) == len(pids)
    return serve, port, pids


def _workers_by_client_port(serve: Cli, count: int) -> dict[int, int]:
    """Client port -> worker index, from ``count`` ``connected`` lines (``-v``)."""
    serve.wait_for(CONNECTED, count=count)
    return {
        int(m.group(2)): int(m.group(1))
        for m in map(re.compile(CONNECTED).search, serve.lines)
        if m
    }


def _served_by(serve: Cli) -> collections.Counter[int]:
    """Connections ended per worker index."""
    return collections.Counter(int(m.group(1)) for m in map(CLOSED.match, serve.lines) if m)


def _gone(pid: int) -> bool:
    """The process has exited (a zombie left to an init that does not reap counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_200_concurrent_tunnels_are_spread_over_both_workers(cli: Start) -> None:
    async def main() -> None:
        server, target, accepted = await start_tcp_echo()
        async with server:
            serve, port, pids = await asyncio.to_thread(
                _start, cli, "--workers", "2", "--to", f"127.0.0.1:{target}"
            )
            assert f"bridging every connection to 127.0.0.1:{target}; 2 workers" in serve.lines[0]
            assert len(set(pids)) == 2 and os.getpid() not in pids
            uri = f"ws://127.0.0.1:{port}/"
            # All 200 are open at once before any byte moves: truly concurrent.
            streams = await asyncio.gather(*(ws_stream.connect_stream(uri) for _ in range(200)))

            async def tunnel(stream: ws_stream.WsStream, size: int) -> None:
                data = os.urandom(size)
                stream.writer.write(data)
                echoed = await stream.reader.readexactly(size)
                assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
                await stream.close()

            await asyncio.gather(*(tunnel(s, 16_384 + 997 * i) for i, s in enumerate(streams)))
            await asyncio.to_thread(serve.wait_for, CLOSED.pattern, 30.0, 200)
            assert len(accepted) == 200
        served = _served_by(serve)
        assert sum(served.values()) == 200
        assert set(served) == {1, 2}, f"one worker served everything: {served}"
        assert "warning" not in serve.stderr and "error" not in serve.stderr
        serve.signal(signal.SIGTERM)
        assert await asyncio.to_thread(serve.wait, 15) == 0

    run(main(), timeout=120)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_one_signal_to_the_parent_stops_every_worker_with_1001_and_exit_0(
    cli: Start, sig: signal.Signals
) -> None:
    serve, port, pids = _start(cli, "--workers", "2", "--close-timeout", "3", "-v")

    async def main() -> None:
        uri = f"ws://127.0.0.1:{port}/"
        streams = await asyncio.gather(*(ws_stream.connect_stream(uri) for _ in range(24)))
        events = [stream.events() for stream in streams]
        for stream in streams:  # every session runs
            stream.writer.write(b"x")
            assert await stream.reader.readexactly(1) == b"x"
        where = await asyncio.to_thread(_workers_by_client_port, serve, 24)
        ours = {where[s.writer.get_extra_info("sockname")[1]] for s in streams}
        assert ours == {1, 2}, f"the held connections are not on both workers: {where}"
        serve.signal(sig)
        for stream, subscription in zip(streams, events, strict=True):
            async with asyncio.timeout(10):
                assert await stream.reader.read() == b""
                seen = [event async for event in subscription]
                await stream.wait_closed()
            assert CloseReceived(1001, "going away") in seen
            assert stream.close_code == 1001

    run(main())
    assert serve.wait(15) == 0
    assert serve.stderr.count("close_sent=1001 close_received=1001") == 24
    for index in (1, 2):  # each worker heard the signal once
        assert serve.stderr.count(f"worker {index}: stopping: closing every connection") == 1
    assert "second signal" not in serve.stderr
    assert all(_gone(pid) for pid in pids)


def test_a_second_signal_drops_everything_and_exits_1(cli: Start) -> None:
    serve, port, pids = _start(cli, "--workers", "2", "--close-timeout", "60", "-v")

    async def main() -> None:
        peer = await connect_raw(port)  # will not answer the close: 60 s to wait
        await asyncio.to_thread(serve.wait_for, "connected")
        serve.signal(signal.SIGTERM)
        assert await peer.recv_close(timeout=10) == (1001, "going away")
        await asyncio.sleep(0.2)
        serve.signal(signal.SIGTERM)
        assert await asyncio.to_thread(serve.wait, 10) == 1
        peer.close_tcp()

    run(main())
    assert "warning: second signal: dropping every connection now" in serve.stderr
    assert all(_gone(pid) for pid in pids)


def test_stats_sum_over_workers(cli: Start) -> None:
    serve, port, _ = _start(cli, "--workers", "2", "--stats", "--stats-interval", "0.3")
    sizes = [10_000 + 1_000 * i for i in range(30)]

    async def main() -> None:
        uri = f"ws://127.0.0.1:{port}/"

        async def echo(size: int) -> None:
            stream = await ws_stream.connect_stream(uri)
            data = os.urandom(size)
            stream.writer.write(data)
            assert await stream.reader.readexactly(size) == data
            await stream.close()

        await asyncio.gather(*(echo(size) for size in sizes))

    run(main())
    serve.wait_for(CLOSED.pattern, count=len(sizes))
    served = _served_by(serve)
    assert set(served) == {1, 2}, f"one worker served everything: {served}"
    total = sum(sizes)
    # A periodic line with every connection of both workers counted.
    serve.wait_for(rf"^ws-stream serve: stats: 0 open, {len(sizes)} total; ", timeout=10)
    serve.signal(signal.SIGTERM)
    assert serve.wait(15) == 0
    last = serve.lines[-1]
    assert last.startswith(f"ws-stream serve: summary: {len(sizes)} connections in "), last
    assert f"received {total} bytes" in last and f"sent {total} bytes" in last, last
    assert "worker" not in "\n".join(line for line in serve.lines if "stats:" in line)


def test_max_connections_is_a_total_over_all_workers(cli: Start) -> None:
    serve, port, _ = _start(cli, "--workers", "2", "--max-connections", "3", "-v")
    uri = f"ws://127.0.0.1:{port}/"

    async def main() -> None:
        held = [await ws_stream.connect_stream(uri) for _ in range(3)]
        for stream in held:
            stream.writer.write(b"x")
            assert await stream.reader.readexactly(1) == b"x"
        # With a limit per worker, one of them (holding at most one of the
        # three) would accept about half of these.
        refused = 0
        for _ in range(20):
            with pytest.raises(ws_stream.HandshakeError) as full:
                await ws_stream.connect_stream(uri)
            assert full.value.status == 503
            refused += 1
        assert refused == 20
        await held[0].close()
        async with asyncio.timeout(10):
            while True:  # a place is free again once the server saw the TCP end
                try:
                    again = await ws_stream.connect_stream(uri)
                    break
                except ws_stream.HandshakeError:
                    await asyncio.sleep(0.05)
        again.writer.write(b"ok")
        assert await again.reader.readexactly(2) == b"ok"
        with pytest.raises(ws_stream.HandshakeError):
            await ws_stream.connect_stream(uri)
        for stream in (again, *held[1:]):
            await stream.close()

    run(main())
    refusals = [line for line in serve.lines if "refused with 503: --max-connections 3" in line]
    assert len(refusals) >= 21  # 20, the one after the last place was taken, and retries
    serve.signal(signal.SIGTERM)
    assert serve.wait(15) == 0


def test_a_worker_that_dies_is_reported_and_the_others_stop_with_exit_1(cli: Start) -> None:
    serve, port, pids = _start(cli, "--workers", "2", "--close-timeout", "3", "-v")

    async def main() -> None:
        uri = f"ws://127.0.0.1:{port}/"
        streams = await asyncio.gather(*(ws_stream.connect_stream(uri) for _ in range(16)))
        where = await asyncio.to_thread(_workers_by_client_port, serve, 16)
        on = {s: where[s.writer.get_extra_info("sockname")[1]] for s in streams}
        assert set(on.values()) == {1, 2}, where
        os.kill(pids[1], signal.SIGKILL)  # worker 2
        for stream, index in on.items():
            async with asyncio.timeout(10):
                await stream.wait_closed()
            # Worker 1 closes its connections as at a signal; worker 2's just drop.
            assert stream.close_code == (1001 if index == 1 else 1006), (index, stream.close_code)

    run(main())
    assert serve.wait(15) == 1
    line = serve.wait_for("was killed by")
    assert line.string == (
        f"ws-stream serve: error: worker 2 (pid {pids[1]}) was killed by SIGKILL: "
        "stopping the others"
    )
    assert all(_gone(pid) for pid in pids)


def test_workers_stop_by_themselves_when_the_parent_is_killed(cli: Start) -> None:
    serve, port, pids = _start(cli, "--workers", "2", "--close-timeout", "3")

    async def main() -> None:
        stream = await ws_stream.connect_stream(f"ws://127.0.0.1:{port}/")
        stream.writer.write(b"x")
        assert await stream.reader.readexactly(1) == b"x"
        serve.proc.kill()
        async with asyncio.timeout(10):
            assert await stream.reader.read() == b""
            await stream.wait_closed()
        assert stream.close_code == 1001

    run(main())
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids):
        assert time.monotonic() < deadline, "workers still running after their parent died"
        time.sleep(0.05)
    assert serve.stderr.count("the parent process is gone: stopping") == 2


def test_a_port_in_use_is_reported_once_before_any_worker_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--workers", "2", "--port", str(port))
    stderr = result.stderr.decode()
    assert result.returncode == 1
    assert stderr.count(f"cannot listen on 127.0.0.1:{port}: ") == 1, stderr
    assert "worker" not in stderr


def test_a_worker_that_cannot_start_stops_the_others(cli: Start, tmp_path: Path) -> None:
    # The key does not match the certificate: checked by each worker as it starts.
    import trustme

    ca = trustme.CA()
    cert, other = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    other.private_key_pem.write_to_path(str(key_file))
    serve = cli(
        "serve", "--port", "0", "--workers", "2", "--cert", str(cert_file), "--key", str(key_file)
    )
    assert serve.wait(15) == 1
    assert "listening on" not in serve.stderr
    assert "cannot load the TLS certificate" in serve.stderr
    assert re.search(
        r"error: worker \d \(pid \d+\) exited with status 1 before listening", serve.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "expected a whole number >= 1"),
        (["--workers", "2", "--unix", "/tmp/ws.sock"], "cannot share the Unix socket of --unix"),
    ],
)
def test_bad_workers_options_exit_2(args: list[str], message: str) -> None:
    result = run_cli("serve", *args)
    assert result.returncode == 2
    assert message in result.stderr.decode()


def test_workers_need_linux_so_reuseport() -> None:
    assert workers_problem(1, unix=False, platform="darwin") is None
    assert workers_problem(4, unix=False, platform="linux") is None
    problem = workers_problem(2, unix=False, platform="darwin")
    assert problem is not None
    assert "SO_REUSEPORT" in problem and "(darwin)" in problem and "--workers 1" in problem
    assert "--unix" in (workers_problem(2, unix=True, platform="linux") or "")


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _processes_with(marker: str) -> list[int]:
    """The live processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and not _gone(int(entry.name)):
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_no_worker_is_left_when_the_parent_is_killed_as_it_starts(cli: Start) -> None:
    # Killed right after the listening line, and (three times) right after
    # its forks: before its workers' ``listening`` messages (their pipe then
    # breaks), or before they set their parent-death signal.
    serve, port, pids = _start(cli, "--workers", "2")
    serve.proc.kill()
    ports = {port: pids}
    for _ in range(3):
        port = free_port()
        serve = cli("serve", "--workers", "2", "--port", str(port))
        deadline = time.monotonic() + 10
        while len(kids := _children(serve.proc.pid)) < 2 and time.monotonic() < deadline:
            pass
        serve.proc.kill()
        ports[port] = kids
    deadline = time.monotonic() + 10
    for port, kids in ports.items():
        assert kids
        while not all(_gone(pid) for pid in kids):
            assert time.monotonic() < deadline, f"workers {kids} outlived their parent"
            time.sleep(0.05)
        assert _refuses(port)


def test_a_port_served_by_another_workers_server_is_in_use(cli: Start) -> None:
    first, port, _ = _start(cli, "--workers", "2")
    result = run_cli("serve", "--workers", "2", "--port", str(port))
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert stderr.count(f"cannot listen on 127.0.0.1:{port}: ") == 1, stderr
    assert "worker" not in stderr

    async def main() -> None:  # the first one still serves every connection
        for _ in range(10):
            stream = await ws_stream.connect_stream(f"ws://127.0.0.1:{port}/")
            stream.writer.write(b"x")
            assert await stream.reader.readexactly(1) == b"x"
            await stream.close()

    run(main())
    first.signal(signal.SIGTERM)
    assert first.wait(15) == 0


def test_a_signal_while_the_workers_start_stops_everything_with_exit_0(cli: Start) -> None:
    for _ in range(3):
        marker = f"/starting-{os.getpid()}-{time.monotonic_ns()}"
        serve = cli("serve", "--workers", "4", "--port", "0", "--path", marker)
        deadline = time.monotonic() + 10
        while not _children(serve.proc.pid) and time.monotonic() < deadline:
            pass
        serve.signal(signal.SIGTERM)  # as it forks: before its listening line
        assert serve.wait(15) == 0, serve.stderr
        assert "error" not in serve.stderr
        deadline = time.monotonic() + 10
        while left := _processes_with(marker):
            assert time.monotonic() < deadline, f"processes left: {left}"
            time.sleep(0.05)
