"""The application factory ``test_tunnel_app.py`` runs under ``uvicorn --workers 2 --factory``.

The target comes from the environment (``WS_STREAM_TEST_TARGET``), as a
deployment would configure it.
"""

from __future__ import annotations

import os

from ws_stream.asgi import TunnelApp


def make_app() -> TunnelApp:
    return TunnelApp(os.environ["WS_STREAM_TEST_TARGET"], close_timeout=3.0)
