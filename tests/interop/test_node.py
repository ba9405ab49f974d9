"""Node.js ``ws`` (pinned in package.json) against our asyncio shell, both directions.

The peer is installed by ``npm ci --prefix tests/interop`` (``.ci/run`` does it);
without Node.js or without that install, these tests are skipped and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from .matrix import HERE, params, spec
from .ours import STEP_TIMEOUT, asyncio_client_case, asyncio_server_case, check

NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="Node.js is not installed (no `node` on PATH)"),
    pytest.mark.skipif(
        not (HERE / "node_modules" / "ws" / "package.json").exists(),
        reason="the Node.js peer is not installed: run `npm ci --prefix tests/interop`",
    ),
]


@contextlib.asynccontextmanager
async def node(script: str, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run ``node tests/interop/<script> args...``; kill it on the way out if still running."""
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE, str(HERE / script), *args, stdout=asyncio.subprocess.PIPE, cwd=HERE
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def read_json(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    """The next JSON line the Node.js peer prints."""
    assert proc.stdout is not None
    async with asyncio.timeout(STEP_TIMEOUT):
        line = await proc.stdout.readline()
    assert line, f"the Node.js peer exited ({await proc.wait()}) without a report"
    report: dict[str, Any] = json.loads(line)
    return report


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 2 * STEP_TIMEOUT))


@pytest.mark.parametrize("case", params("node-ws-client"))
def test_node_ws_client(case: str) -> None:
    async def peer(uri: str) -> dict[str, Any]:
        async with node("ws_client.js", uri, json.dumps(spec(case))) as proc:
            return await read_json(proc)

    async def main() -> None:
        ours, report = await asyncio_server_case(case, peer)
        check(case, ours, report)

    run(main())


@pytest.mark.parametrize("case", params("node-ws-server"))
def test_node_ws_server(case: str) -> None:
    async def main() -> None:
        async with node("ws_server.js", json.dumps(spec(case))) as proc:
            port = (await read_json(proc))["port"]
            ours = await asyncio_client_case(case, f"ws://127.0.0.1:{port}/")
            report = await read_json(proc)
        check(case, ours, report)

    run(main())
