"""``ws-stream cat``: client options, how it ends, exit status."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import ws_stream
from ws_stream.events import Closed, CloseReceived

from .helpers import ROOT, Cli, cli_env, command, run, run_cli

Start = Callable[..., Cli]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def ws_server(handle: Handler) -> AsyncIterator[str]:
    """An in-process ws_stream server on a random port; yields its URI."""
    server = await ws_stream.start_server(handle, "127.0.0.1", 0, ping_interval=None)
    async with server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"


async def cat(
    *args: str, input: bytes = b"", env: dict[str, str] | None = None
) -> tuple[int, bytes, str]:
    """Run ``ws-stream cat ARGS`` while this event loop keeps serving."""
    proc = await asyncio.create_subprocess_exec(
        *command("cat", *args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env or cli_env(),
        cwd=ROOT,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(input), 30)
    assert proc.returncode is not None
    return proc.returncode, stdout, stderr.decode()


async def show_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = writer.get_extra_info("request")
    writer.write("".join(f"{k}: {v}\n" for k, v in request.headers.raw_items()).encode())
    writer.close()


def test_headers_and_bearer_token_which_is_never_logged() -> None:
    async def main() -> None:
        async with ws_server(show_headers) as uri:
            status, out, err = await cat(
                "-vv", "--bearer", "s3cret-T0KEN", "--header", "X-Trace: 42", uri
            )
            assert status == 0, err
            assert "Authorization: Bearer s3cret-T0KEN\n" in out.decode()
            assert "X-Trace: 42\n" in out.decode()
            assert "connected to" in err  # -vv logs, but not the token
            assert "s3cret" not in err

            status, out, err = await cat("-vv", uri, env=cli_env(WS_STREAM_BEARER="from-env"))
            assert status == 0, err
            assert "Authorization: Bearer from-env\n" in out.decode()
            assert "from-env" not in err

    run(main())


def test_send_on_connect_comes_first() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    async def main() -> None:
        async with ws_server(echo) as uri:
            # The echo never closes: --max-bytes (10) is a clean end, --linger would not be.
            status, out, err = await cat(
                "--max-bytes", "10", "--send-on-connect", r"GET\t\xff\n", uri, input=b"rest"
            )
            assert status == 0, err
            assert out == b"GET\t\xff\nrest"

    run(main())


def test_linger_keeps_reading_after_stdin_ends() -> None:
    """The server answers 1 s after the request: cat's default linger (2 s) waits for it."""

    async def slow_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readexactly(7)
        await asyncio.sleep(1.0)
        writer.write(b"answer to " + request)
        if request == b"and end":
            writer.close()  # the server's close: a clean end
        else:
            assert await reader.read() == b""  # until cat closes

    async def main() -> None:
        async with ws_server(slow_answer) as uri:
            status, out, err = await cat(uri, input=b"and end")
            assert (status, out) == (0, b"answer to and end"), err
            # The server never closes: after --linger without data, cat closes
            # early, and says so (the answer may be incomplete).
            status, out, err = await cat(uri, input=b"request")
            assert (status, out) == (1, b"answer to request"), err
            assert "error: the server sent nothing for 2 s" in err
            assert "closed early (--linger)" in err
            # --linger 0: the close follows stdin's EOF at once, the answer never comes.
            status, out, err = await cat("--linger", "0", uri, input=b"request")
            assert (status, out) == (0, b""), err

    run(main())


def test_max_bytes_stops_after_exactly_n_bytes() -> None:
    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = bytes(range(256)) * 256
        try:
            while not writer.is_closing():
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass

    async def main() -> None:
        async with ws_server(firehose) as uri:
            status, out, err = await cat("--max-bytes", "100001", uri)
            assert status == 0, err
            assert out == (bytes(range(256)) * 400)[:100001]

    run(main())


def test_idle_timeout_closes_a_silent_session(cli: Start) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        events = writer.get_extra_info("ws_stream").events()
        assert await reader.read() == b""
        seen.extend([event async for event in events])

    seen: list[object] = []

    async def main() -> None:
        async with ws_server(silent) as uri:
            # stdin stays open: only the idle timeout can end this; an early
            # end (the server had not closed), so an error.
            proc = cli("cat", "-v", "--idle-timeout", "0.5", uri, stdin=subprocess.PIPE)
            assert await asyncio.to_thread(proc.wait, 10) == 1
            assert "error: no data for 0.5 s and the server had not closed" in proc.stderr
            assert "closed early (--idle-timeout)" in proc.stderr
            assert proc.proc.stdin is not None
            proc.proc.stdin.close()

    run(main())
    assert CloseReceived(1000, "idle timeout") in seen


def test_sigterm_closes_cat_with_1001_and_exits_0(cli: Start) -> None:
    async def main() -> None:
        accepted: asyncio.Queue[ws_stream.WsStream] = asyncio.Queue()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accepted.put(writer.get_extra_info("ws_stream"))

        async with ws_server(handle) as uri:
            proc = cli("cat", "--close-timeout", "3", uri, stdin=subprocess.PIPE)
            stream = await asyncio.wait_for(accepted.get(), 10)
            events = stream.events()
            proc.signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                assert await stream.reader.read() == b""
                seen = [event async for event in events]
            assert seen[-1] == Closed(1001, "going away", True)
            assert await asyncio.to_thread(proc.wait, 10) == 0
            assert proc.proc.stdin is not None
            proc.proc.stdin.close()

    run(main())


def test_a_closed_stdout_ends_cat_quietly() -> None:
    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not writer.is_closing():
                writer.write(os.urandom(65536))
                await writer.drain()
        except ConnectionError:
            pass

    async def main() -> None:
        async with ws_server(firehose) as uri:
            # `ws-stream cat URI | head -c 1000`
            read_fd, write_fd = os.pipe()
            proc = await asyncio.create_subprocess_exec(
                *command("cat", uri),
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=subprocess.PIPE,
                env=cli_env(),
                cwd=ROOT,
            )
            os.close(write_fd)
            with os.fdopen(read_fd, "rb") as head:
                assert len(await asyncio.to_thread(head.read, 1000)) == 1000
            _, stderr = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 0, stderr
            assert stderr == b""

    run(main())


def test_cat_exit_status_1_when_the_server_closes_with_an_error() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await writer.get_extra_info("ws_stream").close(1008, "not allowed")

    async def main() -> None:
        async with ws_server(refuse) as uri:
            status, out, err = await cat(uri, input=b"x")
            assert status == 1
            assert err == "ws-stream cat: error: the peer closed with 1008 (not allowed)\n"

    run(main())


def test_no_websocket_at_the_uri() -> None:
    async def main() -> None:
        async def http_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            writer.close()

        server = await asyncio.start_server(http_only, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            status, _, err = await cat(f"ws://127.0.0.1:{port}/nothing")
            assert status == 1
            assert "HTTP 404" in err
            assert "Traceback" not in err

    run(main())


def test_quiet_errors() -> None:
    result = run_cli("cat", "-qq", "ws://127.0.0.1:1/")
    assert result.returncode == 1
    assert result.stderr == b""
