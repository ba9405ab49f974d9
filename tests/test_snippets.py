"""Every code block of README.md and docs/**/*.md runs as written.

The blocks are read when the tests are collected, so a block added to a page
is tested from then on; each test id is the block's ``FILE:LINE`` (the line of
its opening fence). ``python``/``py`` blocks (MyST's ```` ```{code-block} python
```` too), ``pycon`` blocks (run by doctest) and ``sh``/``bash``/``console``
blocks (``$ `` lines only) are collected; others (``text``, ``nginx``, untagged
output) are not code to run.

Python blocks
=============

Each block runs alone, as written, in a fresh subprocess (``python
snippet.py`` in an empty temporary directory, this checkout first on
``PYTHONPATH``, no proxy variables in the environment), and must exit 0
within 30 s with nothing on stderr (no traceback, no warning). A line
``print(...)  # LITERAL`` whose comment is a Python literal promises that
output: a printed line must end with ``str(LITERAL)`` (``print(line)  #
b'echo: hello\\n'``, ``print("got", n)  # 3``), in the order of the block.

Ports. Snippets use **port 8765** (``ws-stream serve``'s default) for their
server, and write it out (``ws://127.0.0.1:8765/``). The runner replaces that
number everywhere in the block with a free port before running it, so blocks
never collide with each other or with anything listening on 8765; nothing
else in the text changes.

A block that needs something running says so on its **first line**, a
comment the reader sees too::

    # needs: ws-stream serve
    # needs: ws-stream serve --mux
    # needs: tcp echo at 127.0.0.1:5900; ws-stream serve --to 127.0.0.1:5900

* ``ws-stream serve [OPTIONS]``: the runner starts ``ws-stream serve
  OPTIONS`` (a real subprocess) on 127.0.0.1 and a free port, which the
  block's ``8765`` becomes; ``--port``/``--host``/``--unix``/``--workers`` are
  the runner's (an error in a needs line). Files the options name that do not
  exist are made in the block's directory: ``--cert F --key K`` a certificate
  for ``127.0.0.1`` and ``localhost`` (trustme) with its CA in ``ca.pem``;
  ``--bearer-file F`` the token ``s3cret`` (user ``alice``).
* ``tcp echo at 127.0.0.1:PORT``: a plain TCP echo server on a free port,
  which every ``PORT`` of the block (and of the needs after it) becomes.
* Several needs: separated by ``;``, started in order.

A block that cannot run at all starts with ``# not run: REASON`` (the reason
is the skip message; keep these rare). Anything else on the first line is
ordinary code.

Shell blocks
============

Each command line (``\\`` continuations joined) is run in order in the block's
own temporary directory, with ``ws-stream`` from this environment on
``PATH``; port numbers are replaced as for Python (a ``serve`` without
``--port`` gets ``--port 0``, a ``--port N`` becomes ``--port 0``, ``forward
--listen HOST:N`` becomes ``HOST:0``, and every later ``N`` of the block
becomes the port it really listens on).

* ``ws-stream serve ...`` and ``ws-stream forward ...`` start in the
  background; their first stderr line must be ``listening on ...``. At the end
  of the block each gets SIGINT and must exit 0. A ``--to`` at a 127.0.0.1
  port gets a TCP echo server there (so the tunnel is an echo too); missing
  ``--bearer-file``/``--targets`` files are written first. A ``forward`` is
  then used once: a TCP client's ``hello`` must come back through it when
  its server is an echo.
* ``ws-stream cat URI``: its server is the block's earlier ``serve``, or else
  a ``ws-stream serve`` echo started for it. Stdin is ``hello`` unless the
  line redirects it (``< FILE``: a missing FILE is made of 4 KiB of binary
  data). It must exit 0, and against an echo its output (stdout or ``>
  FILE``) must be its input.
* ``ws-stream passwd USER``: stdin holds a password line; it must exit 0 and
  write ``USER:scrypt$...`` (to stdout or to the file it is redirected to).
* any ``ws-stream ... --help`` / ``--version``: must exit 0.
* ``echo``/``printf`` lines that write a file of the working directory run
  (they prepare files for the commands after them).

Not run, by rule (each is still parsed by ``ws-stream``'s own argument
parser, so its options must exist and its values be valid):

* commands that are not ``ws-stream`` (``pip``, ``python -m pytest``,
  ``uvicorn``, ``gunicorn``, ``ssh``, ``openssl``...);
* a URI whose host is not 127.0.0.1/localhost (``ws://gateway:8765/``), and
  any ``wss://`` URI (it needs a real certificate);
* ``--host`` other than a loopback address (``0.0.0.0``), a privileged
  ``--port`` (443), real certificate files (``--cert``, ``--key``,
  ``--client-ca``, ``--cafile``, ``--client-cert``, ``--client-key``,
  ``--to-tls``), ``--proxy``, ``--reverse``;
* ``--web DIR`` when DIR does not exist on this machine (``/usr/share/novnc``
  comes with Debian's ``novnc``), ``--unix`` outside the working directory.

Each sub-command's ``--help`` also runs (``test_cli_help``).

Run: ``python -m pytest -q -p no:randomly tests/test_snippets.py``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ws_stream.cli import build_parser

from .ports import free_port
from .snippets import (
    ROOT,
    SNIPPET_PORT,
    Block,
    Command,
    Need,
    TcpEcho,
    all_blocks,
    documents,
    expected_prints,
    find_blocks,
    shell_commands,
    substitute_ports,
)

BLOCKS = all_blocks()
PYTHON_BLOCKS = [b for b in BLOCKS if b.lang in ("python", "pycon")]
SHELL_BLOCKS = [b for b in BLOCKS if b.lang == "sh"]

RUN_TIMEOUT = 30.0  # one block, or one command that ends by itself
START_TIMEOUT = 15.0  # a server's "listening on" line
STOP_TIMEOUT = 15.0  # a server's exit after SIGINT
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
LISTENING = re.compile(r"listening on (?:wss?://)?(?:\[[^\]]+\]|[^\s:/\[]+):(\d+)")
PASSWORD = b"correct horse battery staple\n"
TOKEN_FILE = "s3cret alice\n"


def _env() -> dict[str, str]:
    """No proxy settings, no bearer token; this checkout and this environment first."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.pop("WS_STREAM_BEARER", None)
    env.pop("PYTHONASYNCIODEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _ids(blocks: list[Block]) -> list[str]:
    return [block.where for block in blocks]


# Servers.


class Background:
    """A ``ws-stream serve``/``forward`` subprocess; stderr goes to a file read for its port."""

    def __init__(self, argv: list[str], cwd: Path, what: str) -> None:
        self.what = what
        self.log = cwd / f".stderr-{time.monotonic_ns()}"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ws_stream", *argv],
                cwd=cwd,
                env=_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.port = self._wait_listening()

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            first = self.stderr().partition("\n")
            if first[1]:
                match = LISTENING.search(first[0])
                if not match:
                    self.kill()
                    pytest.fail(
                        f"{self.what}: the first stderr line is not 'listening on ...':\n"
                        f"{self.stderr()}"
                    )
                return int(match[1])
            if self.process.poll() is not None:
                pytest.fail(
                    f"{self.what}: exited {self.process.returncode} before listening:\n"
                    f"{self.stderr()}"
                )
            time.sleep(0.02)
        self.kill()
        pytest.fail(f"{self.what}: not listening within {START_TIMEOUT} s:\n{self.stderr()}")

    def stop(self) -> None:
        """SIGINT: the documented clean stop, exit 0."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.what}: still running {STOP_TIMEOUT} s after SIGINT")
        assert code == 0, f"{self.what}: exit {code} after SIGINT:\n{self.stderr()}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _write_missing_files(args: list[str], cwd: Path, echo_port: int | None) -> None:
    """Make the files a serve's options name and the block did not make."""

    def value(option: str) -> str | None:
        return args[args.index(option) + 1] if option in args[:-1] else None

    bearer = value("--bearer-file")
    if bearer and not (cwd / bearer).exists():
        (cwd / bearer).write_text(TOKEN_FILE, encoding="utf-8")
    targets = value("--targets")
    if targets and not (cwd / targets).exists():
        (cwd / targets).write_text(f"desk: 127.0.0.1:{echo_port or 9}\n", encoding="utf-8")
    cert, key = value("--cert"), value("--key")
    if cert and key and not (cwd / cert).exists():
        import trustme

        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        leaf.private_key_pem.write_to_path(str(cwd / key))
        leaf.cert_chain_pems[0].write_to_path(str(cwd / cert))
        for extra in leaf.cert_chain_pems[1:]:
            with (cwd / cert).open("ab") as f:
                f.write(extra.bytes())
        ca.cert_pem.write_to_path(str(cwd / "ca.pem"))


def _start_need(
    need: Need, ports: dict[int, int], cwd: Path, stack: ExitStack
) -> Background | None:
    if need.kind == "tcp-echo":
        echo = TcpEcho()
        stack.callback(echo.close)
        ports[need.port] = echo.port
        return None
    args = [substitute_ports(arg, ports) for arg in need.args]
    _write_missing_files(args, cwd, None)
    server = Background(["serve", "--port", "0", *args], cwd, "ws-stream serve (needs)")
    stack.callback(server.kill)
    ports[SNIPPET_PORT] = server.port
    return server


# Python blocks.


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=_ids(PYTHON_BLOCKS))
def test_python_block(block: Block, tmp_path: Path) -> None:
    run_python_block(block, tmp_path)


def run_python_block(block: Block, cwd: Path) -> None:
    """Run one python/pycon block as the module docstring says; fail or skip with its place."""
    cwd.mkdir(parents=True, exist_ok=True)
    directive = block.directive
    assert not directive.errors, f"{block.where}: {'; '.join(directive.errors)}"
    if directive.not_run is not None:
        pytest.skip(f"{block.where}: not run: {directive.not_run}")
    with ExitStack() as stack:
        ports: dict[int, int] = {}
        servers = [_start_need(need, ports, cwd, stack) for need in directive.needs]
        ports.setdefault(SNIPPET_PORT, free_port())
        source = substitute_ports(block.source, ports)
        if block.lang == "pycon":
            _run_doctest(block, source, cwd)
            return
        script = cwd / "snippet.py"
        script.write_text(source, encoding="utf-8")
        try:
            result = subprocess.run(
                [sys.executable, script.name],
                cwd=cwd,
                env=_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{block.where}: still running after {RUN_TIMEOUT} s\n{exc.stderr!r}")
        for server in filter(None, servers):
            server.stop()  # its log is complete once it has exited
    shown = (
        f"{block.where} (ports {ports}):\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )
    assert result.returncode == 0, f"exit {result.returncode}: {shown}"
    assert result.stderr == "", f"stderr not empty: {shown}"
    _check_prints(block, result.stdout, shown)
    for server in filter(None, servers):
        log = server.stderr()
        assert " error=" not in log and "Traceback" not in log, (
            f"{block.where}: the server the block needs logged a failure:\n{log}"
        )


def _check_prints(block: Block, stdout: str, shown: str) -> None:
    """Each promised value ends a printed line, in the order of the block."""
    rest = stdout
    for expected in expected_prints(block.source):
        # the end of a line: print(x) or print("label", x); a str may span lines
        match = re.search(rf"{re.escape(expected)}$", rest, re.MULTILINE)
        assert match, (
            f"no printed line ends with {expected!r} (a print's comment), in order: {shown}"
        )
        rest = rest[match.end() :]


def _run_doctest(block: Block, source: str, cwd: Path) -> None:
    text = cwd / "snippet.txt"
    text.write_text(source, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "doctest", "-o", "ELLIPSIS", text.name],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert result.returncode == 0, f"{block.where}:\n{result.stdout}{result.stderr}"


# Shell blocks.


def _option(argv: tuple[str, ...] | list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE``, if given."""
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(name + "="):
            return word.partition("=")[2]
    return None


CERTIFICATE_OPTIONS = (
    "--cert",
    "--key",
    "--client-ca",
    "--cafile",
    "--client-cert",
    "--client-key",
    "--to-tls",
)


#: Why the commands of other programs that the pages show are not run here.
OTHER_PROGRAMS = {
    "pip": "pip installs packages",
    "python -m pip": "pip installs packages",
    "python -m pytest": "the whole suite",
    "python -m bench": "the benchmark (tests/test_bench.py runs its --quick mode)",
    "uvicorn": "an ASGI server (tests/frontends/test_tunnel_app.py runs TunnelApp under "
    "uvicorn --workers --factory)",
    "gunicorn": "an ASGI server (tests/frontends/test_deploy_gunicorn.py runs TunnelApp under it)",
    "ssh": "ssh needs an SSH server",
}


def why_not_run(command: Command, cwd: Path) -> str | None:
    """The rule that keeps a command from running here, or None: it runs."""
    argv = command.ws_stream
    if argv is None:
        if command.program in ("echo", "printf") and _writes_local_file(command):
            return None
        program = command.program
        return f"not a ws-stream command: {program}: {OTHER_PROGRAMS.get(program, 'not run')}"
    if "--help" in argv or "-h" in argv or "--version" in argv:
        return None
    for word in argv:
        if re.match(r"^wss?://", word):
            split = urlsplit(word)
            if split.hostname not in LOOPBACK:
                return f"needs the remote host {split.hostname}"
            if split.scheme == "wss":
                return f"{word}: wss:// needs a real certificate"
    host = _option(argv, "--host")
    if host is not None and host not in LOOPBACK:
        return f"listens on every interface (--host {host})"
    port = _option(argv, "--port")
    if port is not None and port.isdigit() and 0 < int(port) < 1024:
        return f"needs the privileged port {port}"
    for option in CERTIFICATE_OPTIONS:
        if option in argv or _option(argv, option) is not None:
            return f"needs real certificate files ({option})"
    if _option(argv, "--proxy") is not None:
        return "needs a proxy"
    if _option(argv, "--reverse") is not None:
        return "a reverse tunnel needs its gateway"
    web = _option(argv, "--web")
    if web is not None and not (cwd / web).is_dir():
        return f"needs the web files of {web}, not on this machine"
    unix = _option(argv, "--unix")
    if unix is not None and Path(unix).is_absolute():
        return f"listens on {unix}, outside the working directory"
    return None


def _writes_local_file(command: Command) -> bool:
    tokens = command.tokens
    for i, token in enumerate(tokens[:-1]):
        if token in (">", ">>"):
            target = tokens[i + 1]
            return not Path(target).is_absolute() and ".." not in Path(target).parts
    return False


def _parse_check(command: Command) -> None:
    """The command's options exist and their values are valid (argparse exits 2 otherwise)."""
    argv = command.ws_stream
    if argv is None or "--help" in argv or "-h" in argv or "--version" in argv:
        return
    try:
        build_parser().parse_args(list(argv))
    except SystemExit as exc:
        pytest.fail(
            f"line {command.line}: `{command.text}` is refused by ws-stream's parser "
            f"(exit {exc.code}); see the error above"
        )


class ShellBlock:
    """Runs the commands of one block in order; stops its servers at the end."""

    def __init__(self, block: Block, cwd: Path, stack: ExitStack) -> None:
        self.block = block
        self.cwd = cwd
        self.stack = stack
        self.ports: dict[int, int] = {}  # as written -> real
        self.echoes: set[int] = set()  # real ports of servers that echo
        self.background: list[Background] = []
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def where(self, command: Command) -> str:
        return f"{self.block.path.as_posix()}:{command.line}: `{command.text}`"

    def run(self, command: Command) -> None:
        reason = why_not_run(command, self.cwd)
        if reason is not None:
            self.skipped.append(f"{self.where(command)}: {reason}")
            return
        self.ran.append(command.text)
        argv = command.ws_stream
        if argv is None:
            self._bash(command, b"")
        elif "--help" in argv or "-h" in argv or "--version" in argv:
            result = self._bash(command, b"")
            assert result.stdout, f"{self.where(command)}: nothing on stdout"
        elif argv[0] == "serve":
            self._serve(command, list(argv))
        elif argv[0] == "forward":
            self._forward(command, list(argv))
        elif argv[0] == "cat":
            self._cat(command, argv)
        elif argv[0] == "passwd":
            self._passwd(command, argv)
        else:
            pytest.fail(
                f"{self.where(command)}: the runner does not know this command; "
                "teach tests/test_snippets.py, or mark the block `# not run: REASON`"
            )

    def _bash(self, command: Command, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
        text = substitute_ports(command.text, self.ports)
        result = subprocess.run(
            ["bash", "-c", text],
            cwd=self.cwd,
            env=_env(),
            input=stdin,
            capture_output=True,
            timeout=RUN_TIMEOUT,
        )
        assert result.returncode == 0, (
            f"{self.where(command)} (run as `{text}`): exit {result.returncode}\n"
            f"{result.stdout!r}\n{result.stderr.decode(errors='replace')}"
        )
        return result

    def _start(self, command: Command, argv: list[str]) -> Background:
        if command.redirected:
            pytest.fail(f"{self.where(command)}: the runner starts servers without redirections")
        server = Background(argv, self.cwd, self.where(command))
        self.stack.callback(server.kill)
        self.background.append(server)
        return server

    def _serve(self, command: Command, argv: list[str]) -> None:
        argv = [substitute_ports(word, self.ports) for word in argv]
        written = SNIPPET_PORT
        if "--port" in argv:
            i = argv.index("--port") + 1
            written = int(argv[i])
            argv[i] = "0"
        elif _option(argv, "--unix") is None:
            argv += ["--port", "0"]
        target = _option(argv, "--to")
        echo = target is None
        if target is not None:
            host, _, port = target.rpartition(":")
            if host in LOOPBACK and port.isdigit():
                tcp = TcpEcho()
                self.stack.callback(tcp.close)
                argv[argv.index(target)] = f"{host}:{tcp.port}"
                echo = True
        _write_missing_files(argv, self.cwd, None)
        server = self._start(command, argv)
        if _option(argv, "--unix") is None:
            self.ports[written] = server.port
            if echo:
                self.echoes.add(server.port)

    def _server_for(self, uri: str) -> tuple[str, bool]:
        """The URI with its real port, and whether its server echoes."""
        split = urlsplit(uri)
        written = split.port or 80
        if written not in self.ports:
            server = Background(["serve", "--port", "0"], self.cwd, f"echo server for {uri}")
            self.stack.callback(server.kill)
            self.background.append(server)
            self.ports[written] = server.port
            self.echoes.add(server.port)
        real = self.ports[written]
        return substitute_ports(uri, self.ports), real in self.echoes

    def _forward(self, command: Command, argv: list[str]) -> None:
        uri = next(word for word in argv if re.match(r"^wss?://", word))
        new_uri, echo = self._server_for(uri)
        argv = [new_uri if word == uri else substitute_ports(word, self.ports) for word in argv]
        listen = _option(argv, "--listen")
        assert listen is not None, f"{self.where(command)}: forward without --listen"
        host, _, port = listen.rpartition(":")
        if not port.isdigit():
            pytest.fail(f"{self.where(command)}: the runner forwards TCP ports only")
        argv[argv.index(listen)] = f"{host or '127.0.0.1'}:0"
        server = self._start(command, argv)
        self.ports[int(port)] = server.port
        if echo:
            with socket.create_connection(("127.0.0.1", server.port), timeout=RUN_TIMEOUT) as c:
                c.sendall(b"hello\n")
                c.shutdown(socket.SHUT_WR)
                received = b""
                while data := c.recv(65536):
                    received += data
            assert received == b"hello\n", f"{self.where(command)}: the echo was {received!r}"

    def _cat(self, command: Command, argv: tuple[str, ...]) -> None:
        uri = next(word for word in argv if re.match(r"^wss?://", word))
        _, echo = self._server_for(uri)
        tokens = command.tokens
        source = sink = None
        for i, token in enumerate(tokens[:-1]):
            if token == "<":
                source = self.cwd / tokens[i + 1]
            elif token in (">", ">>"):
                sink = self.cwd / tokens[i + 1]
        if source is not None and not source.exists():
            source.write_bytes(bytes(range(256)) * 16)
        data = source.read_bytes() if source is not None else b"hello\n"
        piped = "|" in tokens[: tokens.index(argv[0])]
        result = self._bash(command, b"" if source is not None else data)
        if echo and not piped:
            output = sink.read_bytes() if sink is not None else result.stdout
            assert output == data, (
                f"{self.where(command)}: sent {data[:64]!r}..., got back "
                f"{output[:64]!r}... ({len(output)} bytes)"
            )

    def _passwd(self, command: Command, argv: tuple[str, ...]) -> None:
        user = argv[-1]
        result = self._bash(command, PASSWORD)
        sink = None
        for i, token in enumerate(command.tokens[:-1]):
            if token in (">", ">>"):
                sink = self.cwd / command.tokens[i + 1]
        output = sink.read_text() if sink is not None else result.stdout.decode()
        assert re.search(rf"^{re.escape(user)}:scrypt\$\S+$", output, re.M), (
            f"{self.where(command)}: no `{user}:scrypt$...` line in {output!r}"
        )

    def stop(self) -> None:
        for server in reversed(self.background):
            server.stop()
            log = server.stderr()
            assert " error=" not in log and "Traceback" not in log, (
                f"{server.what} logged a failure:\n{log}"
            )


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=_ids(SHELL_BLOCKS))
def test_shell_block(block: Block, tmp_path: Path) -> None:
    runner = run_shell_block(block, tmp_path)
    if not runner.ran:
        pytest.skip(f"{block.where}: nothing runs here: " + "; ".join(runner.skipped))


def run_shell_block(block: Block, cwd: Path) -> ShellBlock:
    """Run one shell block's commands as the module docstring says; return what ran."""
    cwd.mkdir(parents=True, exist_ok=True)
    directive = block.directive
    assert not directive.errors, f"{block.where}: {'; '.join(directive.errors)}"
    commands = list(shell_commands(block))
    for command in commands:
        _parse_check(command)
    if directive.not_run is not None:
        pytest.skip(f"{block.where}: not run: {directive.not_run}")
    assert not directive.needs, f"{block.where}: `# needs:` is for Python blocks"
    with ExitStack() as stack:
        runner = ShellBlock(block, cwd, stack)
        for command in commands:
            runner.run(command)
        runner.stop()
    return runner


# The command itself.


def _sub_commands() -> list[str]:
    parser = build_parser()
    for action in parser._actions:  # argparse has no public walk of its sub-commands
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):
            return sorted(choices)
    return []


@pytest.mark.parametrize("command", ["", *_sub_commands()])
def test_cli_help(command: str) -> None:
    """``ws-stream [COMMAND] --help`` exits 0 and shows that command's usage."""
    argv = [command, "--help"] if command else ["--help"]
    result = subprocess.run(
        [sys.executable, "-m", "ws_stream", *argv],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: ws-stream {command}".rstrip()), result.stdout[:200]


def test_cli_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ws_stream", "--version"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"ws-stream \S+\n", result.stdout), result.stdout


# The collector itself.


def test_the_readme_blocks_are_found() -> None:
    """README's quickstarts are collected: a collector that finds nothing would pass."""
    readme = [b for b in BLOCKS if b.path.as_posix() == "README.md"]
    assert any(b.lang == "python" and "import ws_stream" in b.source for b in readme)
    assert any(b.lang == "sh" and "ws-stream serve" in b.source for b in readme)
    assert len(PYTHON_BLOCKS) >= 5
    assert all(path.exists() for path in documents())


def test_myst_blocks_are_found(tmp_path: Path) -> None:
    page = "\n".join(
        [
            "# A page",
            "```{code-block} python",
            ":caption: with options",
            ":linenos:",
            "print(1)  # 1",
            "```",
            "````{note}",
            "Inside a note:",
            "```python",
            "print(2)",
            "```",
            "````",
            "- a list item",
            "",
            "  ```sh",
            "  ws-stream serve \\",
            "      --port 0  # a comment",
            "  ```",
            "```text",
            "not code",
            "```",
            "```console",
            "$ ws-stream --version",
            "ws-stream 0.1.0",
            "```",
        ]
    )
    blocks = find_blocks(Path("page.md"), page)
    assert [(b.line, b.lang, b.source) for b in blocks] == [
        (2, "python", "print(1)  # 1\n"),
        (9, "python", "print(2)\n"),
        (15, "sh", "ws-stream serve \\\n    --port 0  # a comment\n"),
        (22, "sh", "$ ws-stream --version\nws-stream 0.1.0\n"),
    ]
    assert expected_prints(blocks[0].source) == ["1"]
    assert blocks[0].first == 5
    serve, version = (next(shell_commands(blocks[i])) for i in (2, 3))
    assert (serve.line, serve.ws_stream) == (16, ("serve", "--port", "0"))
    assert version.ws_stream == ("--version",)
    with pytest.raises(ValueError, match=r"page\.md:1: this code fence is never closed"):
        find_blocks(Path("page.md"), "```python\nprint(1)\n")


def test_needs_lines_are_understood() -> None:
    from .snippets import directive_of

    assert directive_of("# needs: ws-stream serve --mux\nx = 1\n").needs == (
        Need("serve", args=("--mux",)),
    )
    both = directive_of("# needs: tcp echo at 127.0.0.1:5900; ws-stream serve --to 127.0.0.1:5900")
    assert both.needs == (Need("tcp-echo", port=5900), Need("serve", ("--to", "127.0.0.1:5900")))
    assert directive_of("# needs: a VNC server").errors
    assert directive_of("# needs: ws-stream serve --port 1").errors
    assert directive_of("# not run: needs a VNC server").not_run == "needs a VNC server"
    assert directive_of("import ws_stream").needs == ()
    assert substitute_ports("ws://127.0.0.1:8765/ 18765 8765", {8765: 4242}) == (
        "ws://127.0.0.1:4242/ 18765 4242"
    )


def _block(lang: str, source: str) -> Block:
    return Block(path=Path("test.md"), line=1, lang=lang, source=source, first=2)


def test_the_runner_can_fail(tmp_path: Path) -> None:
    """A wrong promise, a warning on stderr, a refused option and a failing command fail."""
    fail = pytest.fail.Exception
    with pytest.raises(AssertionError, match="no printed line ends with"):
        run_python_block(_block("python", "print(b'hi')  # b'ho'\n"), tmp_path / "a")
    with pytest.raises(AssertionError, match="stderr not empty"):
        run_python_block(_block("python", "import warnings; warnings.warn('x')\n"), tmp_path / "b")
    with pytest.raises(fail, match="refused by ws-stream's parser"):
        run_shell_block(_block("sh", "ws-stream serve --no-such-option\n"), tmp_path / "c")
    with pytest.raises(AssertionError, match="exit 1"):
        source = "ws-stream serve --path /x\nws-stream cat ws://127.0.0.1:8765/y  # 404\n"
        run_shell_block(_block("sh", source), tmp_path / "d")
    with pytest.raises(AssertionError, match="logged a failure"):
        # the block drops TCP without a closing handshake: serve logs error=...
        source = (
            "# needs: ws-stream serve\n"
            "import socket, base64, os\n"
            "s = socket.create_connection(('127.0.0.1', 8765))\n"
            "key = base64.b64encode(os.urandom(16)).decode()\n"
            "s.sendall(f'GET / HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\n'\n"
            "          f'Connection: Upgrade\\r\\nSec-WebSocket-Key: {key}\\r\\n'\n"
            "          'Sec-WebSocket-Version: 13\\r\\n\\r\\n'.encode())\n"
            "s.recv(4096); s.close()\n"
        )
        run_python_block(_block("python", source), tmp_path / "e")


def test_the_runner_runs_servers_and_clients(tmp_path: Path) -> None:
    """serve, cat (echo compared), forward (a TCP round trip) and passwd really run."""
    source = (
        "ws-stream serve --to 127.0.0.1:5900          # a TCP echo stands at 5900\n"
        "ws-stream forward --listen 127.0.0.1:5901 ws://127.0.0.1:8765/\n"
        "printf 'abc' > in.bin\n"
        "ws-stream cat ws://127.0.0.1:8765 < in.bin > out.bin\n"
        "ws-stream passwd bob > users\n"
    )
    runner = run_shell_block(_block("sh", source), tmp_path)
    assert len(runner.ran) == 5
    assert (tmp_path / "out.bin").read_bytes() == b"abc"
    assert (tmp_path / "users").read_text().startswith("bob:scrypt$")
    python = "# needs: tcp echo at 127.0.0.1:5900; ws-stream serve --to 127.0.0.1:5900\n" + (
        "import ws_stream.sync\n"
        "with ws_stream.sync.connect('ws://127.0.0.1:8765/') as sock:\n"
        "    sock.sendall(b'x\\n')\n"
        "    print(sock.makefile('rb').readline())  # b'x\\n'\n"
    )
    run_python_block(_block("python", python), tmp_path / "p")
    run_python_block(_block("pycon", ">>> 1 + 1\n2\n"), tmp_path / "q")
    tls = "# needs: ws-stream serve --cert cert.pem --key key.pem\n" + (
        "import ssl, ws_stream.sync\n"
        "ctx = ssl.create_default_context(cafile='ca.pem')\n"
        "with ws_stream.sync.connect('wss://localhost:8765/', ssl=ctx) as sock:\n"
        "    sock.sendall(b'over TLS\\n')\n"
        "    print(sock.makefile('rb').readline())  # b'over TLS\\n'\n"
    )
    run_python_block(_block("python", tls), tmp_path / "t")
    with pytest.raises(AssertionError, match="Failed example"):
        run_python_block(_block("pycon", ">>> 1 + 1\n3\n"), tmp_path / "r")
