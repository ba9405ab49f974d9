"""Sphinx directives that generate ws_stream's reference pages from the code itself.

``.. ws-stream-cli:: [SUBCOMMAND]`` renders one command of
``ws_stream.cli.args.build_parser()`` (none: the top-level ``ws-stream``): its
usage, description, every option (as Sphinx ``option`` entries, so
``:option:`ws-stream serve --to``` links work) grouped as ``--help`` groups
them, and its epilog. When the build ends, every sub-command of the parser
must have been rendered, else the build warns (an error with ``-W``): a new
sub-command cannot be left out of the reference.

``.. public-api:: MODULE`` documents every name of ``MODULE.__all__`` with
autodoc, in ``__all__`` order. An object already documented earlier on the
page (``ws_stream.asyncio.WsStream`` is ``ws_stream.WsStream``) gets a short
entry pointing to it instead of a second copy. ``:names: A B`` documents
only those names (for modules without ``__all__``, or a single public name
of an internal module). When the build ends, every module listed in
``ws_stream_public_modules`` (conf.py) must have been rendered.

Both directives produce reStructuredText: use them inside ``{eval-rst}``
blocks of MyST pages.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import os
import re
import sys
import types
import typing
from collections.abc import Iterator
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.errors import PycodeError
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

#: Width of the generated usage lines (argparse reads $COLUMNS).
USAGE_WIDTH = 88

# RST inline markup characters escaped in help texts (outside `code`).
_RST_SPECIAL = re.compile(r"([\\*_|<>\[\]`])")


# reStructuredText from argparse's plain text


def inline(text: str) -> str:
    """Help text as RST: `x` becomes ``x``, every other markup character is escaped."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backquote: escape everything
        return _RST_SPECIAL.sub(r"\\\1", text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"``{part}``" if part.strip() else part)
        else:
            out.append(_RST_SPECIAL.sub(r"\\\1", part))
    return "".join(out)


def prose(text: str) -> list[str]:
    """Raw argparse text (description, epilog) as RST lines.

    Runs of unindented lines are paragraphs; runs of indented lines (the
    examples argparse prints as they are) are ``text`` code blocks.
    """
    lines: list[str] = []
    block: list[str] = []
    kind = ""

    def flush() -> None:
        nonlocal block, kind
        if not block:
            return
        if kind == "code":
            width = min(len(line) - len(line.lstrip()) for line in block)
            lines.extend([".. code-block:: text", ""])
            lines.extend("   " + line[width:] for line in block)
        else:
            lines.append(inline(" ".join(line.strip() for line in block)))
        lines.append("")
        block = []
        kind = ""

    for line in text.splitlines():
        if not line.strip():
            flush()
            continue
        this = "code" if line[:1].isspace() else "text"
        if this != kind:
            flush()
            kind = this
        block.append(line)
    flush()
    return lines


@contextlib.contextmanager
def _columns(width: int) -> Iterator[None]:
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help(formatter: argparse.HelpFormatter, action: argparse.Action) -> str:
    if not action.help:
        return ""
    return formatter._expand_help(action)


def command_rst(parser: argparse.ArgumentParser) -> list[str]:
    """One command's reference as RST lines (no title: the page gives it)."""
    with _columns(USAGE_WIDTH):
        usage = parser.format_usage()
        formatter = parser._get_formatter()
    lines = [".. program:: " + parser.prog, "", ".. code-block:: text", ""]
    lines += ["   " + line for line in usage.rstrip().splitlines()]
    lines.append("")
    if parser.description:
        lines += prose(parser.description)
    for group in parser._action_groups:
        actions = [
            action for action in group._group_actions if action.help is not argparse.SUPPRESS
        ]
        if not actions:
            continue
        title = group.title or "options"
        lines += [".. rubric:: " + inline(title[:1].upper() + title[1:]), ""]
        if group.description:
            lines += prose(group.description)
        for action in actions:
            if isinstance(action, argparse._SubParsersAction):
                lines += _subcommands_rst(action)
                continue
            lines += [".. option:: " + formatter._format_action_invocation(action), ""]
            text = _help(formatter, action)
            if action.choices and not isinstance(action, argparse._SubParsersAction):
                listed = ", ".join(f"``{choice}``" for choice in action.choices)
                text_rst = inline(text) + (" " if text else "") + f"(one of {listed})"
            else:
                text_rst = inline(text)
            if text_rst:
                lines += ["   " + text_rst, ""]
    if parser.epilog:
        lines += prose(parser.epilog)
    return lines


def _subcommands_rst(action: argparse._SubParsersAction[Any]) -> list[str]:
    """The sub-commands of a parser, each with its one-line help."""
    helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
    lines = []
    for name in action.choices:
        lines += [f"``{name}``", f"   {inline(helps.get(name, ''))}", ""]
    return lines


def _load_parser(spec: str) -> argparse.ArgumentParser:
    module_name, _, function = spec.partition(":")
    parser = getattr(importlib.import_module(module_name), function)()
    if not isinstance(parser, argparse.ArgumentParser):
        raise TypeError(f"{spec} did not return an ArgumentParser")
    return parser


class CliDirective(SphinxDirective):
    """``.. ws-stream-cli:: [SUBCOMMAND]``: a command of the CLI, from its parser."""

    optional_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        parser = _load_parser(self.config.ws_stream_cli_parser)
        name = self.arguments[0] if self.arguments else ""
        if name:
            commands = _subparsers(parser)
            if name not in commands:
                raise self.error(
                    f"{parser.prog} has no sub-command {name!r} (it has {', '.join(commands)})"
                )
            parser = commands[name]
        _documented(self.env, "cli").setdefault(name, self.env.docname)
        return _parse(self, command_rst(parser))


def _parse(directive: SphinxDirective, lines: list[str]) -> list[nodes.Node]:
    """Parse generated reStructuredText in the directive's place."""
    container = nodes.container()
    source, _ = directive.get_source_info()
    content = StringList(lines, source=f"{source} (generated)")
    nested_parse_with_titles(directive.state, content, container)
    return list(container.children)


# The API reference


def _kind(obj: Any) -> str:
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "function"
    return "data"


def _doc_comment(module_name: str, name: str, obj: Any) -> list[str]:
    """The ``#:`` comment of a module-level name, where the package defines it."""
    package = module_name.split(".")[0]
    defining = sorted(
        loaded
        for loaded, module in list(sys.modules.items())
        if loaded.startswith(package + ".") and getattr(module, name, None) is obj
    )
    candidates = [module_name, *defining]
    for candidate in candidates:
        try:
            docs = ModuleAnalyzer.for_module(candidate).find_attr_docs()
        except PycodeError:
            continue
        if ("", name) in docs:
            return list(docs["", name])
    return []


def _data_rst(module_name: str, name: str, obj: Any) -> list[str]:
    """A module-level constant or type alias (autodoc would show its type's docstring)."""
    lines = [f".. py:data:: {name}"]
    if isinstance(obj, int | float | str | bytes | bool) or obj is None:
        lines.append(f"   :value: {obj!r}")
    lines.append("")
    if isinstance(obj, types.UnionType | typing._UnionGenericAlias):  # type: ignore[attr-defined]
        members = " | ".join(
            f":py:class:`~{arg.__module__}.{arg.__qualname__}`" for arg in typing.get_args(obj)
        )
        lines += [f"   Any of {members}.", ""]
    lines += ["   " + line if line else "" for line in _doc_comment(module_name, name, obj)]
    lines.append("")
    return lines


class PublicApiDirective(SphinxDirective):
    """``.. public-api:: MODULE``: every name of ``MODULE.__all__``, with autodoc."""

    required_arguments = 1
    has_content = False
    option_spec = {"names": directives.unchanged_required}  # noqa: RUF012

    def run(self) -> list[nodes.Node]:
        module_name = self.arguments[0]
        module = importlib.import_module(module_name)
        if "names" in self.options:
            names = self.options["names"].split()
        else:
            names = list(getattr(module, "__all__", ()))
            if not names:
                raise self.error(f"{module_name} has no __all__: give :names:")
        # Objects documented earlier on this page (temp_data lives while one page is read).
        seen: dict[int, str] = self.env.temp_data.setdefault("ws_stream_api_seen", {})  # type: ignore[assignment]
        lines = [f".. automodule:: {module_name}", ""]
        if "names" in self.options:
            lines[0:2] = [f".. currentmodule:: {module_name}", ""]
        for name in names:
            if not hasattr(module, name):
                raise self.error(f"{module_name}.__all__ names {name!r}, which it lacks")
            obj = getattr(module, name)
            full = f"{module_name}.{name}"
            kind = _kind(obj)
            if kind == "module":
                lines += [
                    f".. py:data:: {name}",
                    "   :no-index:",
                    "   :no-contents-entry:",
                    "",
                    f"   The module :py:mod:`{obj.__name__}` (documented on this page).",
                    "",
                ]
                continue
            if id(obj) in seen and kind != "data":
                directive = "py:exception" if kind == "exception" else f"py:{kind}"
                role = "exc" if kind == "exception" else ("func" if kind == "function" else kind)
                lines += [
                    f".. {directive}:: {name}",
                    "   :no-index:",
                    "   :no-contents-entry:",
                    "",
                    f"   The same object as :py:{role}:`{seen[id(obj)]}`.",
                    "",
                ]
                continue
            seen[id(obj)] = full
            if kind in ("class", "exception"):
                lines += [
                    f".. auto{kind}:: {full}",
                    "   :members:",
                    "   :undoc-members:",
                    "   :show-inheritance:",
                    "",
                ]
            elif kind == "function":
                lines += [f".. autofunction:: {full}", ""]
            else:
                lines += _data_rst(module_name, name, obj)
        _documented(self.env, "api").setdefault(module_name, self.env.docname)
        return _parse(self, lines)


# Bookkeeping: what was rendered, checked when the build ends


def _documented(env: BuildEnvironment, what: str) -> dict[str, str]:
    store: dict[str, dict[str, str]] = env.__dict__.setdefault("ws_stream_documented", {})
    return store.setdefault(what, {})


def _purge(app: Sphinx, env: BuildEnvironment, docname: str) -> None:
    for table in env.__dict__.get("ws_stream_documented", {}).values():
        for key in [key for key, doc in table.items() if doc == docname]:
            del table[key]


def _merge(app: Sphinx, env: BuildEnvironment, docnames: set[str], other: BuildEnvironment) -> None:
    for what, table in other.__dict__.get("ws_stream_documented", {}).items():
        _documented(env, what).update(table)


def _check(app: Sphinx, env: BuildEnvironment) -> None:
    parser = _load_parser(app.config.ws_stream_cli_parser)
    cli = _documented(env, "cli")
    for name in ["", *_subparsers(parser)]:
        if name not in cli:
            shown = f"{parser.prog} {name}".strip()
            logger.warning("the CLI reference lacks %r: add `.. ws-stream-cli:: %s`", shown, name)
    api = _documented(env, "api")
    for module in app.config.ws_stream_public_modules:
        if module not in api:
            logger.warning("the API reference lacks %s: add `.. public-api:: %s`", module, module)


def _always_outdated(
    app: Sphinx, env: BuildEnvironment, added: set[str], changed: set[str], removed: set[str]
) -> list[str]:
    # The generated pages depend on the code, which Sphinx does not track.
    return [doc for doc in {*_documented(env, "cli").values(), *_documented(env, "api").values()}]


def _bases(app: Sphinx, name: str, obj: Any, options: Any, bases: list[type]) -> None:
    """``Bases: object`` says nothing: show bases only when there are real ones."""
    if bases == [object]:
        bases.clear()


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("ws_stream_cli_parser", "ws_stream.cli.args:build_parser", "env")
    app.add_config_value("ws_stream_public_modules", [], "env")
    app.add_directive("ws-stream-cli", CliDirective)
    app.add_directive("public-api", PublicApiDirective)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("env-check-consistency", _check)
    app.connect("env-get-outdated", _always_outdated)
    app.connect("autodoc-process-bases", _bases)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
