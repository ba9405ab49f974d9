"""A length-prefixed JSON RPC over a WebSocket byte stream.

Each message is a record: a 4-byte big-endian length, then that many bytes of
UTF-8 JSON. This is a classic TCP framing, and it works unchanged over
ws_stream: the reader returns bytes regardless of how they were split into
WebSocket frames, so ``readexactly()`` reassembles every record, and several
records written in a row may share one frame.

A request is ``{"id": 1, "method": "add", "params": [1, 2]}``; its response is
``{"id": 1, "result": 3}`` or ``{"id": 1, "error": "..."}``. The client sends
requests without waiting (pipelining) and matches responses by id.

Run::

    python examples/length_prefixed_rpc.py demo     # server and client in one process
    python examples/length_prefixed_rpc.py serve --port 8766
    python examples/length_prefixed_rpc.py call ws://127.0.0.1:8766/ add 1 2
    python examples/length_prefixed_rpc.py call ws://127.0.0.1:8766/ upper '"hello"'

``call`` parses each parameter as JSON when it can, else passes it as a string.
``demo`` starts a server on a free port of 127.0.0.1, makes a few calls
(including a failing one and pipelined ones), prints the results and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import struct
import sys
from collections.abc import Callable
from typing import Any

import ws_stream

HEADER = struct.Struct(">I")  # 4-byte big-endian unsigned length
MAX_RECORD = 1 << 20  # refuse records over 1 MiB: a length is not a promise


class RpcError(Exception):
    """The server answered a call with an error."""


# Framing: the same two functions would work over asyncio.open_connection().


async def read_record(reader: asyncio.StreamReader) -> Any | None:
    """Read one record and decode its JSON; None at a clean end of stream."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None  # EOF between records: the peer closed cleanly
        raise ConnectionError("the stream ended inside a record header") from exc
    (length,) = HEADER.unpack(header)
    if length > MAX_RECORD:
        raise ConnectionError(f"record of {length} bytes is over the {MAX_RECORD} byte limit")
    body = await reader.readexactly(length)
    return json.loads(body)


def write_record(writer: asyncio.StreamWriter, message: Any) -> None:
    """Encode ``message`` as JSON and write it as one record (call drain() after)."""
    body = json.dumps(message, separators=(",", ":")).encode()
    writer.write(HEADER.pack(len(body)) + body)


# Server


def _divide(a: float, b: float) -> float:
    return a / b  # b == 0 raises ZeroDivisionError: sent back as an error


METHODS: dict[str, Callable[..., Any]] = {
    "add": lambda *numbers: sum(numbers),
    "divide": _divide,
    "upper": lambda text: text.upper(),
    "echo": lambda *params: list(params),
}


def dispatch(request: Any) -> dict[str, Any]:
    """Run one request and build its response."""
    if not isinstance(request, dict) or "method" not in request:
        return {"id": None, "error": "a request is an object with id, method and params"}
    call_id = request.get("id")
    method = METHODS.get(request["method"])
    if method is None:
        return {"id": call_id, "error": f"unknown method {request['method']!r}"}
    try:
        return {"id": call_id, "result": method(*request.get("params", []))}
    except Exception as exc:
        return {"id": call_id, "error": f"{type(exc).__name__}: {exc}"}


async def handle_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer requests in order until the client closes."""
    try:
        while (request := await read_record(reader)) is not None:
            write_record(writer, dispatch(request))
            await writer.drain()
    except (ConnectionError, ValueError) as exc:  # ValueError: bad JSON
        print(f"server: dropping client: {exc}", file=sys.stderr, flush=True)
    finally:
        writer.close()
        # As with TCP, wait_closed() raises the error that ended the connection.
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def start(host: str, port: int) -> tuple[ws_stream.Server, str]:
    """Start the RPC server; return it and its ws:// URI."""
    server = await ws_stream.start_server(handle_client, host, port)
    bound_port = server.sockets[0].getsockname()[1]
    return server, f"ws://{host}:{bound_port}/"


# Client


class RpcClient:
    """A pipelining client: many calls may be in flight on one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._receiver = asyncio.create_task(self._receive())

    @classmethod
    async def connect(cls, uri: str) -> RpcClient:
        reader, writer = await ws_stream.open_connection(uri)
        return cls(reader, writer)

    async def call(self, method: str, *params: Any) -> Any:
        """Send one request and wait for its result (raises RpcError on an error)."""
        if self._receiver.done():
            raise ConnectionError("the connection to the RPC server is closed")
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            write_record(self._writer, {"id": call_id, "method": method, "params": list(params)})
            await self._writer.drain()  # raises if the connection is gone
            return await future
        finally:
            self._pending.pop(call_id, None)

    async def _receive(self) -> None:
        """Route each response to the call waiting for it."""
        error: BaseException = ConnectionError("the server closed the connection")
        try:
            while (response := await read_record(self._reader)) is not None:
                future = self._pending.pop(response["id"], None)
                if future is None or future.done():
                    continue
                if "error" in response:
                    future.set_exception(RpcError(response["error"]))
                else:
                    future.set_result(response["result"])
        except (ConnectionError, ValueError) as exc:
            error = exc
        finally:
            # Whatever is still pending will never be answered.
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):  # the failure, if any, was reported
            await self._writer.wait_closed()
        await self._receiver


# Commands


async def demo() -> None:
    server, uri = await start("127.0.0.1", 0)
    async with server:
        print(f"server listening on {uri}")
        client = await RpcClient.connect(uri)
        try:
            print(f"add(1, 2, 3) = {await client.call('add', 1, 2, 3)}")
            print(f"upper('hello') = {await client.call('upper', 'hello')!r}")
            try:
                await client.call("divide", 1, 0)
            except RpcError as exc:
                print(f"divide(1, 0) failed: {exc}")
            try:
                await client.call("nope")
            except RpcError as exc:
                print(f"nope() failed: {exc}")

            # Pipelining: all ten requests are written before any response is read.
            results = await asyncio.gather(*(client.call("add", i, i) for i in range(10)))
            print(f"pipelined add(i, i) for i in 0..9 = {results}")

            # A record much larger than one WebSocket frame (64 KiB by default).
            big = "x" * 200_000
            echoed = await client.call("echo", big)
            print(f"echo of a {len(big)} character string: {echoed == [big]}")
        finally:
            await client.close()
    print("demo done")


async def serve(host: str, port: int) -> None:
    server, uri = await start(host, port)
    async with server:
        print(f"listening on {uri}", flush=True)
        # Serve until Ctrl+C or SIGTERM (where the loop supports signals).
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # e.g. Windows
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def parse_param(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


async def call(uri: str, method: str, params: list[str]) -> None:
    client = await RpcClient.connect(uri)
    try:
        result = await client.call(method, *map(parse_param, params))
        print(json.dumps(result))
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run a server and a client in one process, then exit")
    serve_parser = commands.add_parser("serve", help="run the RPC server")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8766, help="0: any free port")
    call_parser = commands.add_parser("call", help="make one call and print its JSON result")
    call_parser.add_argument("uri", help="for example ws://127.0.0.1:8766/")
    call_parser.add_argument("method", help=", ".join(METHODS))
    call_parser.add_argument("params", nargs="*", help="parameters, as JSON or plain strings")
    args = parser.parse_args()

    try:
        if args.command == "demo":
            asyncio.run(demo())
        elif args.command == "serve":
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(serve(args.host, args.port))
        else:
            asyncio.run(call(args.uri, args.method, args.params))
    except RpcError as exc:
        sys.exit(f"error: {exc}")
    except (OSError, TimeoutError) as exc:
        sys.exit(f"cannot talk to the server: {exc}")


if __name__ == "__main__":
    main()
