"""Read the code blocks of README.md and docs/**/*.md, and the servers they need.

The conventions are written out in ``tests/test_snippets.py``, which runs the
blocks; this module only finds and parses them (no test lives here).

A block is a fenced code block (```` ``` ```` or ``~~~``, any length, indented or
not) whose info string names a language, plainly (```` ```python ````) or as a
MyST directive (```` ```{code-block} python ````, whose ``:option:`` lines and
``---`` front matter are not code). Other MyST directives (``{note}``,
``{tab-item}`` ...) hold markdown: the blocks inside them are found too.
"""

from __future__ import annotations

import ast
import re
import shlex
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The port snippets use for "the server": ``ws-stream serve``'s default.
SNIPPET_PORT = 8765

PYTHON = frozenset({"python", "py", "python3"})
PYCON = frozenset({"pycon"})
SHELL = frozenset({"sh", "bash", "shell", "console", "shell-session"})
#: MyST directives whose body is code in the language of their argument.
CODE_DIRECTIVES = frozenset({"code-block", "code", "sourcecode", "code-cell"})

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*?)[ \t]*$")
_DIRECTIVE = re.compile(r"^\{(?P<name>[\w:-]+)\}[ \t]*(?P<arg>.*)$")
_NEEDS = re.compile(r"^#[ \t]*needs:[ \t]*(?P<needs>.*?)[ \t]*$", re.IGNORECASE)
_NOT_RUN = re.compile(r"^#[ \t]*not run:[ \t]*(?P<reason>.*?)[ \t]*$", re.IGNORECASE)
_TCP_ECHO = re.compile(r"^tcp echo (?:server )?(?:at |on )?127\.0\.0\.1:(?P<port>\d+)$", re.I)
_PRINT_EXPECTING = re.compile(r"^\s*print\(.*\)\s*#\s*(?P<expected>.+?)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language and its text."""

    path: Path  # relative to ROOT
    line: int  # 1-based line of the opening fence
    lang: str  # "python", "pycon" or "sh"
    source: str  # the code, indentation of the fence removed
    first: int  # 1-based line of the first line of ``source``

    @property
    def where(self) -> str:
        return f"{self.path.as_posix()}:{self.line}"

    @property
    def directive(self) -> Directive:
        return directive_of(self.source)


@dataclass(frozen=True)
class Need:
    """One item of a ``# needs:`` line: ``ws-stream serve [ARGS]`` or ``tcp echo at ...``."""

    kind: str  # "serve" or "tcp-echo"
    args: tuple[str, ...] = ()  # serve: its options
    port: int = SNIPPET_PORT  # the port the snippet uses for it


@dataclass(frozen=True)
class Directive:
    """What a block's first line asks: servers to start, or not to run it at all."""

    needs: tuple[Need, ...] = ()
    not_run: str | None = None
    errors: tuple[str, ...] = field(default=())


def documents() -> list[Path]:
    """README.md and every markdown file under docs/ (not builds, not hidden folders)."""
    found = [ROOT / "README.md"]
    docs = ROOT / "docs"
    if docs.is_dir():
        for path in sorted(docs.rglob("*.md")):
            parts = path.relative_to(docs).parts
            if any(p.startswith((".", "_")) or p == "node_modules" for p in parts[:-1]):
                continue
            found.append(path)
    return found


def _language(info: str) -> tuple[str | None, bool]:
    """(the block's language if it is code we know, whether it is a markdown container)."""
    directive = _DIRECTIVE.match(info)
    if directive:
        name = directive.group("name").lower()
        if name not in CODE_DIRECTIVES:
            # eval-rst, math, mermaid ... are leaves; note, tip, tab-item ... hold markdown
            return None, name not in {"eval-rst", "math", "mermaid", "raw", "literalinclude"}
        words = directive.group("arg").split()
        lang = words[0].lower() if words else ""
    else:
        words = info.split()
        lang = words[0].lower() if words else ""
        lang = lang.removeprefix("{").removesuffix("}")
    if lang in PYTHON:
        return "python", False
    if lang in PYCON:
        return "pycon", False
    if lang in SHELL:
        return "sh", False
    return None, False


def _strip_directive_options(lines: list[str]) -> int:
    """How many leading lines of a MyST directive's body are options, not code."""
    if lines and lines[0].strip() == "---":
        for i, line in enumerate(lines[1:], start=1):
            if line.strip() == "---":
                return i + 1
        return 0
    n = 0
    while n < len(lines) and re.match(r"^:[\w-]+:", lines[n].strip()):
        n += 1
    return n


def find_blocks(path: Path, text: str | None = None) -> list[Block]:
    """Every python, pycon and shell block of one markdown file, in order.

    Raises ``ValueError`` for a code fence that is never closed (everything
    after it would silently stop being checked).
    """
    if text is None:
        text = path.read_text(encoding="utf-8")
    rel = path.relative_to(ROOT) if path.is_absolute() else path
    lines = text.splitlines()
    blocks: list[Block] = []
    containers: list[tuple[str, int]] = []  # open markdown-holding fences: (char, length)
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, info, indent = match["fence"], match["info"], len(match["indent"])
        if not info and containers:
            char, length = containers[-1]
            if fence[0] == char and len(fence) >= length:
                containers.pop()  # the end of a {note} ... fence
                i += 1
                continue
        lang, container = _language(info)
        if container:
            containers.append((fence[0], len(fence)))
            i += 1
            continue
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = _FENCE.match(lines[i])
            if (
                close
                and not close["info"]
                and close["fence"][0] == fence[0]
                and len(close["fence"]) >= len(fence)
            ):
                break
            body.append(lines[i])
            i += 1
        else:
            raise ValueError(f"{rel.as_posix()}:{start + 1}: this code fence is never closed")
        i += 1
        if lang is None:
            continue
        skip = _strip_directive_options(body) if _DIRECTIVE.match(info) else 0
        code = [_dedent(line, indent) for line in body[skip:]]
        blocks.append(
            Block(
                path=rel,
                line=start + 1,
                lang=lang,
                source="\n".join(code) + "\n",
                first=start + 2 + skip,
            )
        )
    if containers:
        raise ValueError(f"{rel.as_posix()}: a MyST directive fence is never closed")
    return blocks


def _dedent(line: str, indent: int) -> str:
    n = 0
    while n < indent and n < len(line) and line[n] in " \t":
        n += 1
    return line[n:]


def all_blocks() -> list[Block]:
    return [block for path in documents() for block in find_blocks(path)]


def directive_of(source: str) -> Directive:
    """Parse the block's first line: ``# needs: A; B`` or ``# not run: REASON``."""
    first = next((line.strip() for line in source.splitlines() if line.strip()), "")
    not_run = _NOT_RUN.match(first)
    if not_run:
        reason = not_run["reason"]
        return Directive(
            not_run=reason, errors=() if reason else ("`# not run:` without a reason",)
        )
    needs_line = _NEEDS.match(first)
    if not needs_line:
        return Directive()
    needs: list[Need] = []
    errors: list[str] = []
    for item in filter(None, (part.strip() for part in needs_line["needs"].split(";"))):
        echo = _TCP_ECHO.match(item)
        words = shlex.split(item)
        if echo:
            needs.append(Need("tcp-echo", port=int(echo["port"])))
        elif words[:2] == ["ws-stream", "serve"]:
            if any(w in ("--port", "--host", "--unix", "--workers") for w in words):
                errors.append(f"`{item}`: the runner chooses where serve listens (127.0.0.1:8765)")
            needs.append(Need("serve", args=tuple(words[2:])))
        else:
            errors.append(f"unknown need `{item}`")
    return Directive(needs=tuple(needs), errors=tuple(errors))


def substitute_ports(text: str, ports: dict[int, int]) -> str:
    """Replace each port number of ``ports`` (as a whole number) by its new value."""
    for old, new in ports.items():
        text = re.sub(rf"(?<![\w.]){old}(?!\d)", str(new), text)
    return text


def expected_prints(source: str) -> list[str]:
    """The lines ``print(...)  # LITERAL`` promise, in order (``str()`` of the literal)."""
    expected = []
    for line in source.splitlines():
        match = _PRINT_EXPECTING.match(line)
        if not match:
            continue
        try:
            value = ast.literal_eval(match["expected"])
        except (ValueError, SyntaxError):
            continue  # a comment in words, not a promised value
        expected.append(str(value))
    return expected


class TcpEcho:
    """A plain TCP echo server on 127.0.0.1 (threads; every byte back, then EOF after EOF)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


# Shell blocks.


@dataclass(frozen=True)
class Command:
    """One command of a shell block (continuation lines joined, prompt removed)."""

    line: int  # 1-based line in the markdown file
    text: str  # as written (comment included: bash drops it)
    tokens: tuple[str, ...]  # shell words and operators (<, >, >>, |, ;, &&), no comment

    @property
    def program(self) -> str:
        """The program run: ``python -m MODULE`` for a module; ``VAR=value`` prefixes skipped."""
        words = [t for t in self.tokens if not re.match(r"^\w+=", t)] or [""]
        if words[0] in ("python", "python3") and words[1:2] == ["-m"] and len(words) > 2:
            return f"python -m {words[2]}"
        return words[0]

    @property
    def redirected(self) -> bool:
        return any(_is_operator(token) for token in self.tokens)

    @property
    def ws_stream(self) -> tuple[str, ...] | None:
        """The arguments of the ``ws-stream`` in this command (a pipeline's part), if any."""
        segment: list[str] = []
        for token in (*self.tokens, ";"):
            if token in ("|", ";", "&&", "||", "&"):
                if segment[:1] == ["ws-stream"]:
                    return tuple(_before_redirection(segment[1:]))
                if segment[:3] == ["python", "-m", "ws_stream"]:
                    return tuple(_before_redirection(segment[3:]))
                segment = []
            else:
                segment.append(token)
        return None


def _is_operator(token: str) -> bool:
    return bool(token) and set(token) <= set("<>|;&()")


def _before_redirection(words: list[str]) -> list[str]:
    for i, word in enumerate(words):
        if _is_operator(word):
            return words[:i]
    return words


def shell_commands(block: Block) -> Iterator[Command]:
    """The commands of a sh/console block: console blocks only keep ``$ `` lines."""
    console = block.source.lstrip().startswith("$ ")
    lines = block.source.splitlines()
    i = 0
    while i < len(lines):
        number = block.first + i
        line = lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        if console:
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = tuple(lexer)
        if tokens:  # not blank, not only a comment
            yield Command(line=number, text=line.strip(), tokens=tokens)
