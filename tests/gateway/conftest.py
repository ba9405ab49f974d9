"""Fixtures of the gateway tests: ``cli`` (every ``ws-stream`` subprocess killed at the end)."""

from __future__ import annotations

from ..cli.conftest import cli

__all__ = ["cli"]
