"""Nothing lost, nothing hanging, in the blocking shell (issue 12, items 6 and 11).

- Over ``wss://`` as over ``ws://``, :meth:`WsSocket.settimeout` bounds
  ``send``/``sendall`` against a peer that does not read: a timeout raises
  TimeoutError within about the timeout, non-blocking mode raises
  BlockingIOError at once, and the stream stays usable: what the peer
  finally reads is exactly the accepted prefixes, in order, then a clean EOF
  (no half frame, no broken TLS record).
- A script that ends without closing everything exits promptly with status
  0: finalizers never block or start threads, and nothing the blocking shell
  runs keeps the interpreter alive.
"""

from __future__ import annotations

import os
import queue
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from ws_stream.sync import WsSocket

from .helpers import connect, echo, stream_server, tls_contexts
from .rawpeer import RawServer

ROOT = Path(__file__).resolve().parents[2]

#: Bytes with the top bit clear / set: a prefix of one can never run into the other.
LOW = bytes(range(128)) * 2
HIGH = bytes(range(128, 256)) * 2
MARK = b"\xffEND"  # ends what the peer must receive


def _server_and_uri(scheme: str) -> tuple[dict[str, object], dict[str, object], str]:
    """(server options, client options, how to rewrite the server's ws:// URI)."""
    if scheme == "ws":
        return {}, {}, "ws://127.0.0.1"
    server_ctx, client_ctx = tls_contexts()
    return {"ssl": server_ctx}, {"ssl": client_ctx}, "wss://localhost"


def _stalled_peer() -> tuple[
    threading.Event, queue.Queue[bytes | BaseException], Callable[[WsSocket], None]
]:
    """A handler that reads nothing until released, then everything; and its two ends."""
    release = threading.Event()
    received: queue.Queue[bytes | BaseException] = queue.Queue()

    def not_reading_then_everything(sock: WsSocket) -> None:
        release.wait(60)  # not reading: its buffer (limit) and TCP fill up
        sock.settimeout(30)
        got = bytearray()
        try:
            while data := sock.recv(2**20):
                got += data
        except Exception as exc:  # a corrupted frame or TLS record ends up here
            received.put(exc)
        else:
            received.put(bytes(got))

    return release, received, not_reading_then_everything


def _bounded(
    call: Callable[[], object], bound: float, release: threading.Event
) -> tuple[object, float]:
    """Run ``call`` in a thread; fail if it has not returned or raised within ``bound`` s.

    Returns what it returned or raised, and how long it took. On failure the
    stalled peer is released, so the stuck call ends and the test does not hang.
    """
    outcome: list[tuple[object, float]] = []

    def run() -> None:
        start = time.monotonic()
        try:
            result: object = call()
        except BaseException as exc:
            result = exc
        outcome.append((result, time.monotonic() - start))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound)
    if thread.is_alive():
        release.set()
        thread.join(30)
        pytest.fail(f"still blocked after {bound} s (then ended with {outcome!r})")
    return outcome[0]


def _check_prefixes(got: bytes, first: bytes, second: bytes) -> None:
    """``got`` must be first[:i] + second[:j] + MARK, for some i, j."""
    assert got.endswith(MARK), f"the stream does not end with the marker: ...{got[-16:]!r}"
    body = got[: -len(MARK)]
    i = 0
    while i < len(body) and i < len(first) and body[i] < 128:
        i += 1
    assert body[:i] == first[:i], "the first write's bytes arrived corrupted or out of order"
    rest = body[i:]
    assert rest == second[: len(rest)], "the second write's bytes arrived corrupted"


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_write_timeouts_bound_sendall_and_lose_nothing(scheme: str) -> None:
    """Issue 12 item 6: the peer never reads; sendall honours settimeout(0.5) and (0)."""
    server_opts, client_opts, base = _server_and_uri(scheme)
    release, received, handler = _stalled_peer()
    first = os.urandom(64 * 2**20).translate(LOW)
    second = os.urandom(8 * 2**20).translate(HIGH)
    with stream_server(handler, limit=2**16, **server_opts) as uri:
        sock = connect(uri.replace("ws://127.0.0.1", base), **client_opts)
        try:
            sock.settimeout(0.5)
            raised, took = _bounded(lambda: sock.sendall(first), 5, release)
            assert isinstance(raised, TimeoutError), (
                f"settimeout(0.5): {raised!r} after {took:.1f} s"
            )

            sock.settimeout(0)
            raised, took = _bounded(lambda: sock.sendall(second), 1, release)
            assert isinstance(raised, BlockingIOError), (
                f"settimeout(0): {raised!r} after {took:.1f} s"
            )

            # The stream carries on: the peer reads everything accepted, in order.
            release.set()
            sock.settimeout(30)
            sock.sendall(MARK)
            sock.shutdown(socket.SHUT_WR)
            got = received.get(timeout=60)
        finally:
            release.set()
            sock.close()
    assert not isinstance(got, BaseException), f"the peer's read failed: {got!r}"
    _check_prefixes(got, first, second)


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_nonblocking_send_on_a_fresh_connection_never_blocks(scheme: str) -> None:
    """settimeout(0) from the start: send() accepts what fits, sendall() raises at once."""
    server_opts, client_opts, base = _server_and_uri(scheme)
    release, received, handler = _stalled_peer()
    data = os.urandom(64 * 2**20).translate(LOW)
    with stream_server(handler, limit=2**16, **server_opts) as uri:
        sock = connect(uri.replace("ws://127.0.0.1", base), **client_opts)
        try:
            sock.setblocking(False)
            accepted = 0

            def fill() -> int:
                nonlocal accepted
                accepted = sock.send(data[:1000])
                assert accepted == 1000  # a small write fits in an empty send buffer
                start = time.monotonic()
                while time.monotonic() - start < 4:  # until the send buffers are full
                    accepted += sock.send(data[accepted : accepted + 2**20])
                return accepted

            raised, took = _bounded(fill, 5, release)
            assert isinstance(raised, BlockingIOError), f"{raised!r} after {took:.1f} s"
            assert 1000 < accepted < len(data)
            release.set()
            sock.setblocking(True)
            sock.sendall(MARK)
            sock.shutdown(socket.SHUT_WR)
            got = received.get(timeout=60)
        finally:
            release.set()
            sock.close()
    assert got == data[:accepted] + MARK


# Issue 12 item 11: scripts that end without closing everything exit at once.

CLIENT_SCRIPTS = {
    "makefile-then-close": """
        c = connect_uri()
        f = c.makefile("rb")
        c.close()
    """,
    "makefile-then-close-and-del": """
        c = connect_uri()
        f = c.makefile("rb")
        c.close()
        del f  # the finalizer closes the connection: it must not block or spawn
        print("after del", flush=True)
    """,
    "makefile-in-a-cycle": """
        import gc
        c = connect_uri()
        f = c.makefile("rwb")
        f.cycle = [f]
        c.close()
        del f
        gc.collect()
        print("after gc", flush=True)
    """,
    "makefile-kept-never-closed": """
        c = connect_uri()
        f = c.makefile("rwb")
        f.write(b"hello")
        f.flush()
        assert f.read(5) == b"hello"
    """,
    "never-closed": """
        c = connect_uri()
        c.sendall(b"x")
    """,
    "timed-out-write-then-close-and-del": """
        c = connect_uri()
        f = c.makefile("rb")
        c.settimeout(0.2)
        try:
            c.sendall(bytes(64 * 2**20))  # the peer does not read
        except TimeoutError:
            pass
        c.close()
        del f
        print("after del", flush=True)
    """,
}

SERVER_SCRIPTS = {
    "handler-keeps-a-file": """
        import socket, threading
        files = []
        done = threading.Event()

        def handler(sock):
            files.append(sock.makefile("rb"))
            sock.close()
            done.set()

        server = ws_stream.sync.serve(handler, "127.0.0.1", 0, ping_interval=None)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        c = ws_stream.sync.connect(f"ws://127.0.0.1:{port}/", ping_interval=None)
        f = c.makefile("rb")
        assert done.wait(5)
        c.close()
    """,
    "shut-down-with-a-file-open": """
        import threading
        ready = threading.Event()

        def handler(sock):
            global f
            f = sock.makefile("rb")
            ready.set()
            f.read()  # until the client's close

        server = ws_stream.sync.serve(handler, "127.0.0.1", 0, ping_interval=None)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        c = ws_stream.sync.connect(f"ws://127.0.0.1:{port}/", ping_interval=None)
        g = c.makefile("rb")
        assert ready.wait(5)
        c.close()
        server.shutdown()
    """,
}


HEADER = """
import ssl
import ws_stream.sync

def connect_uri():
    if CAFILE:
        return ws_stream.sync.connect(URI, ssl=ssl.create_default_context(cafile=CAFILE))
    return ws_stream.sync.connect(URI)
"""


def _run_script(
    body: str, uri: str = "", cafile: str = "", timeout: float = 10.0
) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter; fail if it has not exited within ``timeout`` s."""
    code = f"URI = {uri!r}\nCAFILE = {cafile!r}\n{HEADER}\n{textwrap.dedent(body)}"
    code += "\nprint('end of script', flush=True)\n"
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail(
            f"the script did not exit within {timeout} s of starting "
            f"(stdout {out!r}, stderr {err[-2000:]!r})"
        )
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(params=["ws", "wss"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """An echo server; yields (URI, CA file for wss:// or "")."""
    if request.param == "ws":
        with stream_server(echo) as uri:
            yield uri, ""
        return
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    with stream_server(echo, ssl=server_ctx) as uri:
        yield uri.replace("ws://127.0.0.1", "wss://localhost"), str(cafile)


@pytest.mark.parametrize("name", list(CLIENT_SCRIPTS))
def test_client_script_exits_promptly(name: str, server: tuple[str, str]) -> None:
    uri, cafile = server
    result = _run_script(CLIENT_SCRIPTS[name], uri, cafile)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("end of script\n"), result.stdout
    assert "Exception ignored" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("name", list(SERVER_SCRIPTS))
def test_server_script_exits_promptly(name: str) -> None:
    result = _run_script(SERVER_SCRIPTS[name])
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("end of script\n"), result.stdout
    assert "Exception ignored" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_a_collected_file_still_closes_the_connection_cleanly() -> None:
    """The last file of a closed socket, garbage-collected: the peer gets a close frame.

    The finalizer does not wait for the closing handshake (it never blocks), but
    the close frame goes out and the connection ends: the peer reads a clean EOF.
    """
    ends: queue.Queue[bytes | BaseException] = queue.Queue()

    def reader(sock: WsSocket) -> None:
        sock.settimeout(10)
        try:
            ends.put(sock.recv(10))
        except Exception as exc:
            ends.put(exc)

    with stream_server(reader) as uri:
        sock = connect(uri)
        f = sock.makefile("rb")
        sock.close()
        start = time.monotonic()
        del f
        assert time.monotonic() - start < 1, "the finalizer blocked"
        assert ends.get(timeout=10) == b""  # a close frame: a clean EOF
        sock.websocket.reader_thread.join(10)
        assert not sock.websocket.reader_thread.is_alive()


def test_a_collected_file_never_waits_for_a_silent_peer() -> None:
    """The finalizer does not wait for the peer's close frame: it sends ours and drops TCP."""
    with RawServer() as raw:
        sock = connect(raw.uri, close_timeout=5)
        peer = raw.accept()
        try:
            f = sock.makefile("rb")
            sock.close()
            start = time.monotonic()
            del f
            took = time.monotonic() - start
            assert took < 1, f"the finalizer blocked {took:.1f} s (close_timeout=5)"
            assert peer.recv_close() == (1000, "")
            assert peer.wait_eof() == b""  # then TCP ends, without waiting for us
        finally:
            peer.close_tcp()
