"""README's deployment line, run as written: gunicorn with uvicorn workers on a Unix
socket, serving ``TunnelApp`` from an application factory (nginx in front of such a
socket is tested in tests/cli/test_deploy_nginx.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

import ws_stream

from .helpers import STEP, stream_of
from .test_tunnel_app import ROOT, Target

pytestmark = pytest.mark.timeout(120)


async def test_gunicorn_uvicorn_workers_on_a_unix_socket(tmp_path: Path) -> None:
    if shutil.which("gunicorn", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("gunicorn is missing: pip install -e '.[test]'")
    path = str(tmp_path / "tunnel.sock")
    async with asyncio.timeout(100), Target() as target:
        env = dict(os.environ, WS_STREAM_TEST_TARGET=target.address)
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "gunicorn"),
            "-w",
            "2",
            "-k",
            "uvicorn.workers.UvicornWorker",
            "--bind",
            f"unix:{path}",
            "tests.frontends.tunnel_app:make_app()",
            cwd=ROOT,
            env=env,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        log: list[str] = []
        booted = asyncio.Event()

        async def read_log() -> None:
            assert proc.stderr is not None
            while line := await proc.stderr.readline():
                log.append(line.decode(errors="replace").rstrip())
                if sum("Application startup complete" in entry for entry in log) == 2:
                    booted.set()

        reading = asyncio.create_task(read_log())
        try:
            await asyncio.wait_for(booted.wait(), 40)
            opened = [
                await ws_stream.open_connection(
                    "ws://localhost/", unix=True, path=path, ping_interval=None
                )
                for _ in range(6)
            ]
            blobs = [os.urandom(256 * 1024) for _ in opened]
            for (_, writer), blob in zip(opened, blobs, strict=True):
                writer.write(blob)
            for (reader, _), blob in zip(opened, blobs, strict=True):
                assert await asyncio.wait_for(reader.readexactly(len(blob)), STEP) == blob
            for _, writer in opened:
                await asyncio.wait_for(stream_of(writer).close(), STEP)
            assert target.connections == 6
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()
            reading.cancel()
        assert proc.returncode == 0, "\n".join(log)
