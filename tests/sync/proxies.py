"""Small proxies on 127.0.0.1 for the blocking client's tests: HTTP CONNECT (optionally
over TLS: an ``https://`` proxy) and SOCKS5, each relaying bytes between two plain
sockets. They share no code with ws_stream; each records what it was asked."""

from __future__ import annotations

import base64
import contextlib
import select
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Seen:
    """What a proxy was asked: the CONNECT heads, or the SOCKS destinations."""

    requests: list[bytes] = field(default_factory=list)
    destinations: list[tuple[str, int]] = field(default_factory=list)


def _pipe(client: socket.socket, upstream: socket.socket) -> None:
    """Relay both ways in this one thread until both sides ended (or 30 s idle), then close.

    One thread, never one per direction: ``client`` may be an :class:`ssl.SSLSocket`, which
    two threads must not use at once (OpenSSL's objects are not thread-safe; with a thread
    per direction, TLS records were corrupted under load, about 1 run in 40 of the
    TLS-in-TLS test). An EOF is passed on as a TCP half-close (``socket.socket``'s own
    shutdown: an SSLSocket's would also drop its TLS state).
    """
    other = {client: upstream, upstream: client}
    try:
        for sock in other:
            sock.settimeout(30)
        while other:
            # Bytes OpenSSL already decrypted are not in the kernel: select() cannot see them.
            ready = [s for s in other if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                ready, _, _ = select.select(list(other), [], [], 30)
                if not ready:
                    return  # idle for 30 s
            for source in ready:
                sink = other[source]
                if data := source.recv(65536):
                    sink.sendall(data)
                else:
                    socket.socket.shutdown(sink, socket.SHUT_WR)
                    del other[source]
    except OSError:
        pass
    finally:
        client.close()
        upstream.close()


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)  # byte by byte: nothing after the head is consumed
        if not chunk:
            raise EOFError("EOF in the request head")
        data += chunk
    return data


@contextlib.contextmanager
def _server(serve_one: object) -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()  # type: ignore[arg-type]

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)


@contextlib.contextmanager
def http_proxy(
    *, tls: ssl.SSLContext | None = None, credentials: str | None = None
) -> Iterator[tuple[str, Seen]]:
    """An HTTP CONNECT proxy; yields (its URL, what it saw).

    ``tls``: it speaks TLS (an https:// proxy for ``localhost``). ``credentials``
    ("user:password"): it answers 407 to a request without them.
    """
    seen = Seen()

    def serve_one(conn: socket.socket) -> None:
        client: socket.socket = conn
        try:
            conn.settimeout(10)
            if tls is not None:
                client = tls.wrap_socket(conn, server_side=True)
            head = _read_head(client)
            seen.requests.append(head)
            if credentials is not None:
                token = base64.b64encode(credentials.encode()).decode()
                if f"Proxy-Authorization: Basic {token}".encode() not in head:
                    client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                    client.close()
                    return
            target = head.split(b" ")[1].decode()
            host, _, port = target.rpartition(":")
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            _pipe(client, upstream)
        except (OSError, EOFError):
            client.close()

    with _server(serve_one) as port:
        scheme = "https" if tls is not None else "http"
        host = "localhost" if tls is not None else "127.0.0.1"
        auth = f"{credentials}@" if credentials is not None else ""
        yield f"{scheme}://{auth}{host}:{port}", seen


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("EOF in the SOCKS handshake")
        data += chunk
    return data


@contextlib.contextmanager
def socks5_proxy(
    *, credentials: tuple[str, str] | None = None, refuse: bool = False
) -> Iterator[tuple[int, Seen]]:
    """A SOCKS5 proxy (RFC 1928, and RFC 1929 with ``credentials``); yields (port, seen).

    ``refuse``: it answers every CONNECT with reply 5 (connection refused).
    """
    seen = Seen()

    def serve_one(conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            _, count = _exactly(conn, 2)
            methods = _exactly(conn, count)
            method = 2 if credentials is not None else 0
            if method not in methods:
                conn.sendall(b"\x05\xff")
                conn.close()
                return
            conn.sendall(bytes([5, method]))
            if credentials is not None:
                _, ulen = _exactly(conn, 2)
                user = _exactly(conn, ulen).decode()
                (plen,) = _exactly(conn, 1)
                password = _exactly(conn, plen).decode()
                ok = (user, password) == credentials
                conn.sendall(b"\x01\x00" if ok else b"\x01\x01")
                if not ok:
                    conn.close()
                    return
            _, cmd, _, atyp = _exactly(conn, 4)
            if atyp == 1:
                host = socket.inet_ntoa(_exactly(conn, 4))
            elif atyp == 3:
                (length,) = _exactly(conn, 1)
                host = _exactly(conn, length).decode()
            else:
                host = socket.inet_ntop(socket.AF_INET6, _exactly(conn, 16))
            (port,) = struct.unpack("!H", _exactly(conn, 2))
            seen.destinations.append((host, port))
            reply = b"\x00\x01" + socket.inet_aton("127.0.0.1") + b"\x00\x00"
            if refuse or cmd != 1:
                conn.sendall(b"\x05\x05" + reply)
                conn.close()
                return
            upstream = socket.create_connection((host, port), timeout=10)
            conn.sendall(b"\x05\x00" + reply)
            _pipe(conn, upstream)
        except (OSError, EOFError):
            conn.close()

    with _server(serve_one) as port:
        yield port, seen
