"""noVNC in a real browser, through ``ws-stream serve --web --targets``, to a real VNC server.

TigerVNC's Xtigervnc listens on a Unix socket (``vnc.py``); ``ws-stream serve``
serves Debian's noVNC (``/usr/share/novnc``) and tunnels the page's WebSocket to the
target named in its path; headless Chromium opens ``vnc.html`` and is driven over
the DevTools protocol (``cdp.py``) until noVNC says it is connected and the canvas
shows the VNC server's screen. With ``--bearer-file``, the page URL carries the
token (the web files then set a cookie for the sub-resources) and without it
nothing is served and the VNC server sees no connection.

Debian packages: ``chromium``, ``tigervnc-standalone-server``, ``novnc`` (``.ci/run``
installs them; a missing one makes these tests skip, naming it) and, optionally,
``x11-xserver-utils`` (``xsetroot`` paints the desktop, checked pixel by pixel) and
``x11-utils`` (``xmessage`` puts a window on it, for the screenshot).
When ``WS_STREAM_SCREENSHOT`` names a file, the connected page's screenshot is
copied there (that is how ``docs/gateway/novnc.png`` is made).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from ..cli.helpers import Cli
from .cdp import CHROMIUM, Cdp, chromium, wait_until
from .vnc import PACKAGE, XTIGERVNC, VncServer, message, paint, vnc_server

NOVNC = Path("/usr/share/novnc")
SCREENSHOT_ENV = "WS_STREAM_SCREENSHOT"
#: xsetroot's colour for the desktop, and the pixel the canvas must show for it.
COLOR = "#336699"
RGBA = [0x33, 0x66, 0x99, 255]
#: Every wait for the page; a test takes a few seconds when all goes well.
PAGE_TIMEOUT = 30.0

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Chromium is not installed (Debian package `chromium`; .ci/run installs it)",
    ),
    pytest.mark.skipif(
        XTIGERVNC is None,
        reason=f"Xtigervnc is not installed (Debian package `{PACKAGE}`; .ci/run installs it)",
    ),
    pytest.mark.skipif(
        not (NOVNC / "vnc.html").is_file(),
        reason="noVNC is not installed (Debian package `novnc`; .ci/run installs it)",
    ),
]

CONNECTED = "document.documentElement.classList.contains('noVNC_connected')"
STATUS = "document.getElementById('noVNC_status').textContent"
#: The pixel in the middle of noVNC's canvas (RGBA), null before the canvas exists.
CENTER_PIXEL = """(() => {
    const canvas = document.querySelector('#noVNC_container canvas');
    if (!canvas || !canvas.width) return null;
    const x = Math.floor(canvas.width / 2), y = Math.floor(canvas.height / 2);
    return Array.from(canvas.getContext('2d').getImageData(x, y, 1, 1).data);
})()"""
NO_TRANSITIONS = """document.head.appendChild(document.createElement('style')).textContent =
    '*, *::before, *::after { transition: none !important; animation: none !important; }'"""
PAGE_STATE = f"({{status: {STATUS}, classes: document.documentElement.className}})"

#: serve's log line at the end of a WebSocket connection (GATEWAY.md "The log line").
CLOSED = r"connection closed: .*\btarget=desk\b"
FIELD = re.compile(r'(\w+)=("[^"]*"|\S+)')

#: Plain HTTP to 127.0.0.1, never through a proxy of the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fields(line: str) -> dict[str, str]:
    return {name: value.strip('"') for name, value in FIELD.findall(line)}


@pytest.fixture
def vnc(tmp_path: Path) -> Iterator[tuple[VncServer, bool]]:
    """A VNC server on a Unix socket, and whether its desktop is painted ``COLOR``."""
    with (
        vnc_server(tmp_path / "Xtigervnc.log") as server,
        message(server.display, "A VNC desktop,\nseen through ws-stream serve"),
    ):
        yield server, paint(server.display, COLOR)


def start_serve(
    cli: Callable[..., Cli], tmp_path: Path, vnc: VncServer, *options: str
) -> tuple[Cli, str]:
    """``ws-stream serve --web /usr/share/novnc --targets FILE`` (desk: the VNC server)."""
    targets = tmp_path / "targets"
    targets.write_text(f"# noVNC test\ndesk: unix:{vnc.socket}\n")
    serve = cli("serve", "--port", "0", "--web", str(NOVNC), "--targets", str(targets), *options)
    return serve, f"http://127.0.0.1:{serve.port()}"


async def connect_novnc(
    page: Cdp,
    url: str,
    serve: Cli,
    vnc: VncServer,
    painted: bool,
    shot: Path,
    *,
    publish: bool = False,
) -> None:
    """Open noVNC at ``url``; check it connects and shows the desktop; save a screenshot.

    With ``publish``, the screenshot is also copied to $WS_STREAM_SCREENSHOT, if set.
    """
    await page.navigate(url)
    try:
        await wait_until(page, CONNECTED, PAGE_TIMEOUT, describe=PAGE_STATE)
        status = await page.evaluate(STATUS)
        assert status == f"Connected (unencrypted) to {vnc.name}", status
        # The desktop's pixels came through the tunnel: xsetroot's colour in the middle
        # of the canvas (or at least an opaque pixel: the canvas starts transparent).
        await wait_pixel(page, RGBA if painted else None)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nserve stderr:\n{serve.stderr}\nXtigervnc log:\n{vnc.log_text()[-2000:]}"
        ) from None
    # The screenshot shows the end state of noVNC's sliding bars, not a frame of them.
    await page.evaluate(NO_TRANSITIONS)
    shot.write_bytes(await page.screenshot())
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    if publish and (target := os.environ.get(SCREENSHOT_ENV)):
        shutil.copyfile(shot, target)


async def wait_pixel(page: Cdp, want: list[int] | None) -> None:
    """Wait until the canvas's middle pixel is ``want`` (None: any opaque colour)."""
    deadline = asyncio.get_running_loop().time() + PAGE_TIMEOUT
    while True:
        pixel = await page.evaluate(CENTER_PIXEL)
        if pixel and (pixel == want if want else pixel[3] == 255):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the canvas's middle pixel is {pixel}, not {want or 'opaque'}")
        await asyncio.sleep(0.1)


async def disconnect_novnc(page: Cdp, serve: Cli) -> dict[str, str]:
    """Press noVNC's disconnect button; the fields of serve's log line for the tunnel."""
    await page.evaluate("document.getElementById('noVNC_disconnect_button').click()")
    await wait_until(page, f"!{CONNECTED}", PAGE_TIMEOUT, describe=PAGE_STATE)
    line = await asyncio.to_thread(serve.wait_for, CLOSED, PAGE_TIMEOUT)
    return fields(line.string)


def test_novnc_connects_through_named_target(
    cli: Callable[..., Cli], vnc: tuple[VncServer, bool], tmp_path: Path
) -> None:
    server, painted = vnc
    serve, base = start_serve(cli, tmp_path, server)
    url = f"{base}/vnc.html?autoconnect=true&path=vnc/desk&resize=off"

    async def main() -> dict[str, str]:
        async with chromium(tmp_path / "chromium.log") as page:
            await connect_novnc(page, url, serve, server, painted, tmp_path / "novnc.png")
            # Every file of the page came from serve --web (Debian's noVNC has no
            # package.json, which ui.js asks for its version: 404, harmless).
            failed = [
                (where, status)
                for where, status in page.responses()
                if status != 200 and not where.endswith("/package.json")
            ]
            assert not failed, failed
            return await disconnect_novnc(page, serve)

    log = asyncio.run(asyncio.wait_for(main(), 2 * PAGE_TIMEOUT))
    assert log["target"] == "desk", log
    assert log["identity"] == "-", log
    assert int(log["received"]) > 0 and int(log["sent"]) > 0, log
    assert "error" not in log, log
    assert len(server.accepted()) == 1, server.log_text()


def test_novnc_with_bearer_token_in_page_url(
    cli: Callable[..., Cli], vnc: tuple[VncServer, bool], tmp_path: Path
) -> None:
    server, painted = vnc
    token = secrets.token_urlsafe(24)
    bearer = tmp_path / "bearer"
    bearer.write_text(f"# who may see the desk\n{token} novnc-viewer\n")
    serve, base = start_serve(cli, tmp_path, server, "--bearer-file", str(bearer))
    path = urllib.parse.quote(f"vnc/desk?token={token}", safe="/")
    url = f"{base}/vnc.html?token={token}&autoconnect=true&path={path}&resize=off"

    async def main() -> dict[str, str]:
        async with chromium(tmp_path / "chromium.log") as page:
            await connect_novnc(
                page, url, serve, server, painted, tmp_path / "novnc.png", publish=True
            )
            # Only vnc.html carried the token: the sub-resources (scripts, styles,
            # images) were authenticated by the cookie it set.
            responses = page.responses()
            assert len(responses) > 10, responses
            failed = [
                (where, status)
                for where, status in responses
                if status != 200 and not where.endswith("/package.json")
            ]
            assert not failed, failed
            cookies = (await page.send("Network.getCookies", urls=[base + "/"]))["cookies"]
            assert [(c["name"], c["value"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
                ("ws_stream_token", token, True, "Strict")
            ], cookies
            return await disconnect_novnc(page, serve)

    log = asyncio.run(asyncio.wait_for(main(), 2 * PAGE_TIMEOUT))
    assert log["target"] == "desk", log
    assert log["identity"] == "novnc-viewer", log
    assert int(log["received"]) > 0 and int(log["sent"]) > 0, log
    assert "error" not in log, log
    assert len(server.accepted()) == 1, server.log_text()
    assert token not in serve.stderr, "serve logged the bearer token"


def test_novnc_without_token_is_refused(
    cli: Callable[..., Cli], vnc: tuple[VncServer, bool], tmp_path: Path
) -> None:
    server, _ = vnc
    token = secrets.token_urlsafe(24)
    bearer = tmp_path / "bearer"
    bearer.write_text(f"{token} novnc-viewer\n")
    serve, base = start_serve(cli, tmp_path, server, "--bearer-file", str(bearer))
    port = base.rsplit(":", 1)[1]

    # Plain HTTP: the page, without a token and with a wrong one.
    for query in ("", "?token=" + secrets.token_urlsafe(24)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            OPENER.open(f"{base}/vnc.html{query}", timeout=10).close()
        assert refused.value.code == 401, (query, refused.value)
        assert "Bearer" in (refused.value.headers.get("WWW-Authenticate") or ""), (
            query,
            dict(refused.value.headers),
        )
        refused.value.close()

    async def main() -> None:
        # The browser: a fresh profile has no cookie, so vnc.html is refused.
        async with chromium(tmp_path / "chromium.log") as page:
            await page.navigate(f"{base}/vnc.html?autoconnect=true&path=vnc/desk&resize=off")
            await wait_until(
                page,
                "document.readyState === 'complete' && location.href.includes('vnc.html')",
                PAGE_TIMEOUT,
                describe="location.href",
            )
            statuses = [status for where, status in page.responses() if "/vnc.html" in where]
            assert statuses == [401], page.responses()
            assert not await page.evaluate(CONNECTED)
        # The WebSocket itself, as noVNC would open it, without and with a wrong token.
        for uri in (
            f"ws://127.0.0.1:{port}/vnc/desk",
            f"ws://127.0.0.1:{port}/vnc/desk?token={secrets.token_urlsafe(24)}",
        ):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(uri, proxy=None, subprotocols=["binary"], open_timeout=10):
                    pass
            assert refused.value.response.status_code == 401, uri

    asyncio.run(asyncio.wait_for(main(), 2 * PAGE_TIMEOUT))
    # The two refused handshakes are logged (GATEWAY.md: at info), none reached desk.
    serve.wait_for(r"refused: .*\bstatus=401\b", PAGE_TIMEOUT, count=2)
    assert not re.search(r"\btarget=desk\b", serve.stderr), serve.stderr
    assert server.accepted() == [], server.log_text()
