"""Every option of ``ws-stream --help`` (and of each sub-command's) is documented in prose.

The CLI reference of the docs is generated from the parser, so it lists every
option by construction; this test asks more: that README.md or a page of
docs/ says something about each option in words, so an option added without a
sentence fails here. The parser is the one the command uses.
"""

from __future__ import annotations

import argparse
import re

import pytest

from ws_stream.cli import build_parser

from .helpers import ROOT

PROSE = "\n".join(
    path.read_text(encoding="utf-8")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    if "_build" not in path.parts
)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse offers no public walk of sub-commands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option not in ("--help", "--version")
    }


COMMANDS = _subparsers(build_parser())


def test_the_command_has_its_sub_commands() -> None:
    assert {"serve", "forward", "cat"} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_is_in_the_prose(command: str) -> None:
    missing = sorted(
        option
        for option in _options(COMMANDS[command])
        if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", PROSE)
    )
    assert not missing, f"`ws-stream {command}` options missing from README.md and docs/: {missing}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help_text(command: str) -> None:
    bare = sorted(
        option
        for action in COMMANDS[command]._actions
        for option in action.option_strings
        if option.startswith("--") and not action.help
    )
    assert not bare, f"`ws-stream {command}` options without --help text: {bare}"


def test_the_docs_show_the_tested_nginx_configuration() -> None:
    """The deployment guide includes the very file the nginx tests run (it cannot drift)."""
    guide = (ROOT / "docs" / "guides" / "deployment.md").read_text(encoding="utf-8")
    assert "```{literalinclude} ../../examples/nginx/ws-stream.conf" in guide
    assert (ROOT / "examples" / "nginx" / "ws-stream.conf").is_file()
    # No other nginx block elsewhere that could drift from the tested file.
    assert "```nginx" not in PROSE
