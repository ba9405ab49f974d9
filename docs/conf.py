"""Sphinx configuration of ws_stream's documentation.

Build (warnings are errors)::

    .venv/bin/pip install -r docs/requirements.txt
    .venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

The pages are MyST Markdown; the CLI reference and the API reference are
generated from the code at build time by ``docs/_ext/ws_stream_docs.py``.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # the package of this checkout, even when not installed

import ws_stream  # noqa: E402

project = "ws_stream"
author = "the ws_stream authors"
copyright = "public domain (The Unlicense)"
try:
    release = metadata.version("ws-stream")
except metadata.PackageNotFoundError:
    release = getattr(ws_stream, "__version__", "unknown")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "ws_stream_docs",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "_ext",
    "requirements.txt",
    # included by bench.md, not pages of their own
    "bench/*.md",
]

# Option names such as --ping-interval must stay two hyphens, not an en dash.
smartquotes = False

# MyST: heading anchors for links like [text](cli.md#ws-stream-serve).
myst_heading_anchors = 4
myst_enable_extensions = ["deflist"]

# autodoc + napoleon: the docstrings are Google style ("Args:", "Raises:").
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autoclass_content = "class"

# What the CLI and API references must cover (docs/_ext/ws_stream_docs.py checks).
ws_stream_cli_parser = "ws_stream.cli.args:build_parser"
ws_stream_public_modules = [
    "ws_stream",
    "ws_stream.asyncio",
    "ws_stream.trio",
    "ws_stream.sync",
    "ws_stream.asgi",
    "ws_stream.aiohttp",
    "ws_stream.mux",
    "ws_stream.mux.trio",
    "ws_stream.events",
    "ws_stream.exceptions",
    "ws_stream.stats",
    "ws_stream.reconnect",
]

html_theme = "furo"
html_title = f"ws_stream {release}"
html_static_path: list[str] = []
