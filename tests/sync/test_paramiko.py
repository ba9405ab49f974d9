"""paramiko's SSH client and server over a WebSocket, both ends through ws_stream.sync."""

from __future__ import annotations

import os
import queue
import threading

import paramiko  # type: ignore[import-untyped]
import pytest

from ws_stream.sync import WsSocket

from .helpers import connect, stream_server


@pytest.fixture(scope="module")
def host_key() -> paramiko.RSAKey:
    return paramiko.RSAKey.generate(2048)


class SshServer(paramiko.ServerInterface):  # type: ignore[misc]
    def __init__(self) -> None:
        self.exec_requests: queue.Queue[tuple[paramiko.Channel, bytes]] = queue.Queue()

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED  # type: ignore[no-any-return]
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED  # type: ignore[no-any-return]

    def get_allowed_auths(self, username: str) -> str:
        return "password"

    def check_auth_password(self, username: str, password: str) -> int:
        if (username, password) == ("alice", "s3cret"):
            return paramiko.AUTH_SUCCESSFUL  # type: ignore[no-any-return]
        return paramiko.AUTH_FAILED  # type: ignore[no-any-return]

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.exec_requests.put((channel, command))
        return True


def test_ssh_exec_command_round_trip_over_a_websocket(host_key: paramiko.RSAKey) -> None:
    served: list[bytes] = []

    def ssh_server(sock: WsSocket) -> None:
        transport = paramiko.Transport(sock)
        try:
            transport.add_server_key(host_key)
            server = SshServer()
            transport.start_server(server=server)
            channel = transport.accept(10)
            assert channel is not None
            chan, command = server.exec_requests.get(timeout=10)
            served.append(command)
            chan.settimeout(10)
            data = bytearray()
            while chunk := chan.recv(65536):  # stdin until the client's EOF
                data += chunk
            chan.sendall(bytes(data).upper() if command == b"upper" else b"?")
            chan.sendall_stderr(b"%d bytes\n" % len(data))
            chan.send_exit_status(0)
            chan.close()
            # Wait for the client to close the session.
            transport.join(10)
        finally:
            transport.close()

    payload = os.urandom(2**20).hex().encode()[: 2**20]
    with stream_server(ssh_server) as uri:
        sock = connect(uri)
        client = paramiko.SSHClient()
        client.get_host_keys().add("ws-host", host_key.get_name(), host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                "ws-host",
                sock=sock,
                username="alice",
                password="s3cret",
                look_for_keys=False,
                allow_agent=False,
                timeout=10,
                banner_timeout=10,
                auth_timeout=10,
            )
            stdin, stdout, stderr = client.exec_command("upper", timeout=10)
            writer = threading.Thread(
                target=lambda: (stdin.write(payload), stdin.channel.shutdown_write())
            )
            writer.start()
            out = stdout.read()
            writer.join(10)
            assert stdout.channel.recv_exit_status() == 0
            assert out == payload.upper()
            assert stderr.read() == b"%d bytes\n" % len(payload)
        finally:
            client.close()
    assert served == [b"upper"]
    assert sock._closed and sock.stats.bytes_sent > len(payload)
