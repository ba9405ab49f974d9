"""Every option of ``ws-stream --help`` (and of each sub-command's) is documented in README.md.

The parser is the one the command uses, so an option added without its README
row fails here.
"""

from __future__ import annotations

import argparse
import re

import pytest

from ws_stream.cli import build_parser

from .helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


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
def test_every_option_is_in_the_readme(command: str) -> None:
    missing = sorted(
        option
        for option in _options(COMMANDS[command])
        if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", README)
    )
    assert not missing, f"`ws-stream {command}` options missing from README.md: {missing}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help_text(command: str) -> None:
    bare = sorted(
        option
        for action in COMMANDS[command]._actions
        for option in action.option_strings
        if option.startswith("--") and not action.help
    )
    assert not bare, f"`ws-stream {command}` options without --help text: {bare}"


def _directives(text: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def test_the_readme_shows_the_tested_nginx_configuration() -> None:
    """README's nginx block has the directives of the file the nginx tests run."""
    tested = (ROOT / "examples" / "nginx" / "ws-stream.conf").read_text(encoding="utf-8")
    match = re.search(r"```nginx\n(.*?)```", README, re.S)
    assert match, "README.md has no ```nginx block"
    assert _directives(match.group(1)) == _directives(tested)
