"""Release packaging: what ``python -m build`` makes, and that the wheel works alone.

The source tree is copied (without .git, virtualenvs and caches at its root) and
salted with the junk tools leave behind (``npm ci``'s node_modules, a docs build,
bench results, bytecode, hypothesis' database); ``python -m build`` then makes
the sdist, and the wheel from that sdist, exactly as a release would. The
checks: both archives carry UNLICENSE and the SPDX license metadata, the sdist
holds the tests and examples and none of the junk, ``twine check --strict``
passes, every version agrees with ``ws_stream.__version__``, and the Python
versions the classifiers name are the ones noxfile.py tests.

Then the wheel alone is installed into a new virtualenv (no system site
packages, no checkout on ``sys.path``; its dependencies come from the package
index, so pip's cache makes it quick): ``ws-stream --version`` names the
metadata's version, an example of the sdist runs against the installed
package, and ``ws-stream serve`` + ``ws-stream cat`` tunnel a line.

Needs ``build``, ``twine`` and ``trove-classifiers`` (the test extra) and the
package index (the build's own ``setuptools``, the wheel's dependencies).
"""

from __future__ import annotations

import ast
import email.parser
import email.policy
import os
import queue
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO

import pytest
import trove_classifiers

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60.0  # one step (a build, an install, a program); the whole module takes ~10 s
pytestmark = pytest.mark.timeout(120)  # a test that sets up a fixture also pays for it

# Left out of the copy, at the root only: never part of a distribution, and big.
_ROOT_SKIP = {".git", ".nox", ".tox", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
_ROOT_SKIP_PATTERNS = (".venv*", ".hypothesis", "*.egg-info", "build", "dist")

# Junk planted in the copy, as tools leave it: none of it may reach the sdist.
JUNK = [
    "tests/interop/node_modules/ws/index.js",
    "tests/mux/node/node_modules/yamux-js/package.json",
    "tests/__pycache__/test_packaging.cpython-311.pyc",
    "examples/__pycache__/line_echo_server.cpython-311.pyc",
    "ws_stream/__pycache__/__init__.cpython-311.pyc",
    "docs/_build/html/index.html",
    "bench/results/run.json",
    "tests/.hypothesis/examples/0/0",
    "tests/.pytest_cache/v/cache/lastfailed",
    "examples/stray.pyc",
]
# What marks a junk path in an archive, wherever it is.
JUNK_PATTERN = re.compile(
    r"(^|/)(node_modules|__pycache__|\.hypothesis|\.pytest_cache|\.mypy_cache|\.ruff_cache"
    r"|\.venv[^/]*|\.nox|\.git)(/|$)|\.py[cod]$|(^|/)docs/_build/|(^|/)bench/results/"
)


def _env() -> dict[str, str]:
    """The environment for the programs: no checkout on sys.path, pip quiet."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONASYNCIODEBUG"):
        env.pop(name, None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _run(*args: str | Path, cwd: Path, input: str | None = None) -> str:
    """Run a program that must succeed within TIMEOUT; return its stdout."""
    try:
        result = subprocess.run(
            [str(a) for a in args],
            cwd=cwd,
            env=_env(),
            input=input,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{args} took more than {TIMEOUT} s\n{exc.stdout!r}\n{exc.stderr!r}")
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def _metadata(text: str) -> Message:
    return email.parser.Parser(policy=email.policy.compat32).parsestr(text)


def _source_version() -> str:
    """``__version__`` of ws_stream/__init__.py, read as setuptools reads it."""
    tree = ast.parse((ROOT / "ws_stream" / "__init__.py").read_text())
    values = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
        and isinstance(node.value, ast.Constant)
    ]
    assert len(values) == 1, "ws_stream/__init__.py must assign __version__ a literal, once"
    version = values[0]
    assert isinstance(version, str)
    return version


@dataclass(frozen=True)
class Dists:
    source: Path  # the copy the archives were built from
    sdist: Path
    wheel: Path
    sdist_names: frozenset[str]  # members, without the "ws_stream-VERSION/" prefix
    wheel_names: frozenset[str]
    sdist_metadata: Message  # PKG-INFO
    wheel_metadata: Message  # *.dist-info/METADATA
    unpacked: Path  # the sdist, extracted


def _copy_source(destination: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        if Path(directory) != ROOT:
            return set()
        by_pattern = shutil.ignore_patterns(*_ROOT_SKIP_PATTERNS)(directory, names)
        return (set(names) & _ROOT_SKIP) | set(by_pattern)

    shutil.copytree(ROOT, destination, ignore=ignore, symlinks=True)
    for junk in JUNK:
        path = destination / junk
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("junk\n")


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    base = tmp_path_factory.mktemp("packaging")
    source, out = base / "source", base / "dist"
    _copy_source(source)
    # No --sdist/--wheel: build makes the sdist, then the wheel from the sdist,
    # so a file the sdist lacks breaks the wheel's build too.
    _run(sys.executable, "-m", "build", "--outdir", out, source, cwd=base)
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    sdist, wheel = sdists[0], wheels[0]

    with tarfile.open(sdist) as archive:
        members = archive.getnames()
        prefix = sdist.name.removesuffix(".tar.gz") + "/"
        assert all(m == prefix.rstrip("/") or m.startswith(prefix) for m in members), members
        pkg_info = archive.extractfile(prefix + "PKG-INFO")
        assert pkg_info is not None
        sdist_metadata = _metadata(pkg_info.read().decode())
        archive.extractall(base / "unpacked", filter="data")
    with zipfile.ZipFile(wheel) as archive:
        wheel_names = frozenset(archive.namelist())
        [metadata_name] = [n for n in wheel_names if n.endswith(".dist-info/METADATA")]
        wheel_metadata = _metadata(archive.read(metadata_name).decode())
    return Dists(
        source=source,
        sdist=sdist,
        wheel=wheel,
        sdist_names=frozenset(m.removeprefix(prefix) for m in members if m.startswith(prefix)),
        wheel_names=wheel_names,
        sdist_metadata=sdist_metadata,
        wheel_metadata=wheel_metadata,
        unpacked=base / "unpacked" / prefix.rstrip("/"),
    )


def test_both_archives_carry_the_unlicense(dists: Dists) -> None:
    license_text = (ROOT / "UNLICENSE").read_bytes()
    assert "UNLICENSE" in dists.sdist_names
    assert (dists.unpacked / "UNLICENSE").read_bytes() == license_text
    in_wheel = [n for n in dists.wheel_names if n.endswith(".dist-info/licenses/UNLICENSE")]
    assert len(in_wheel) == 1, sorted(dists.wheel_names)
    with zipfile.ZipFile(dists.wheel) as archive:
        assert archive.read(in_wheel[0]) == license_text
    for metadata in (dists.sdist_metadata, dists.wheel_metadata):
        # PEP 639: an SPDX expression and the file, no legacy License field or classifier.
        assert tuple(int(n) for n in metadata["Metadata-Version"].split(".")) >= (2, 4)
        assert metadata["License-Expression"] == "Unlicense"
        assert metadata.get_all("License-File") == ["UNLICENSE"]
        assert metadata["License"] is None
        assert not [c for c in metadata.get_all("Classifier", []) if c.startswith("License ::")]


def test_the_sdist_holds_the_tests_and_examples_and_no_junk(dists: Dists) -> None:
    junk = sorted(n for n in dists.sdist_names if JUNK_PATTERN.search(n))
    assert junk == []
    for planted in JUNK:
        assert planted not in dists.sdist_names

    # Every file of these directories is in it (the copy's junk aside).
    for directory in ("tests", "examples", "bench", "docs", "ws_stream"):
        files = {
            path.relative_to(dists.source).as_posix()
            for path in (dists.source / directory).rglob("*")
            if path.is_file()
        }
        wanted = {f for f in files if not JUNK_PATTERN.search(f)}
        assert wanted, f"{directory}/ is empty in the source tree"
        assert sorted(wanted - dists.sdist_names) == [], f"missing from the sdist: {directory}/"
    for name in (
        "README.md",
        "pyproject.toml",
        "CHANGELOG.md",
        "SECURITY.md",
        "CONTRIBUTING.md",
        "noxfile.py",
        "tests/test_packaging.py",
        "examples/line_echo_server.py",
        "examples/nginx/ws-stream.conf",
        "tests/interop/package-lock.json",
        "ws_stream/py.typed",
    ):
        assert name in dists.sdist_names


def test_the_wheel_holds_the_package_only(dists: Dists) -> None:
    tops = {name.split("/")[0] for name in dists.wheel_names}
    version = _source_version()
    assert tops == {"ws_stream", f"ws_stream-{version}.dist-info"}
    assert "ws_stream/py.typed" in dists.wheel_names  # Typing :: Typed
    assert not [n for n in dists.wheel_names if JUNK_PATTERN.search(n)]
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "ws_stream").rglob("*.py")}
    assert sorted(modules - dists.wheel_names) == []
    with zipfile.ZipFile(dists.wheel) as archive:
        entry_points = archive.read(f"ws_stream-{version}.dist-info/entry_points.txt").decode()
    assert "ws-stream = ws_stream.cli:main" in entry_points


def test_twine_check_passes(dists: Dists) -> None:
    out = _run(
        sys.executable, "-m", "twine", "check", "--strict", dists.sdist, dists.wheel, cwd=ROOT
    )
    assert out.count("PASSED") == 2, out


def test_one_version_everywhere(dists: Dists) -> None:
    version = _source_version()
    assert dists.sdist_metadata["Version"] == version
    assert dists.wheel_metadata["Version"] == version
    assert dists.sdist.name == f"ws_stream-{version}.tar.gz"
    assert dists.wheel.name == f"ws_stream-{version}-py3-none-any.whl"
    # Written once: pyproject.toml takes it from the package (no second copy).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    # A development version's changes are the changelog's "Unreleased" section.
    changelog = (ROOT / "CHANGELOG.md").read_text()
    dev = re.search(r"\.dev\d+$", version) is not None
    assert ("## [Unreleased]" if dev else f"## [{version}] - ") in changelog


def test_classifiers_name_what_is_tested(dists: Dists) -> None:
    """The Python versions of the classifiers are noxfile.py's, and they are valid."""
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    tested = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["PYTHONS"]
    ]
    assert len(tested) == 1, "noxfile.py: PYTHONS = [...] (the tested versions) not found"
    classifiers = dists.wheel_metadata.get_all("Classifier", [])
    named = [
        c.removeprefix("Programming Language :: Python :: ")
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    assert named == tested[0]
    assert dists.wheel_metadata["Requires-Python"] == f">={tested[0][0]}"
    invalid = [c for c in classifiers if c not in trove_classifiers.classifiers]
    deprecated = [c for c in classifiers if c in trove_classifiers.deprecated_classifiers]
    assert (invalid, deprecated) == ([], [])
    for needed in ("Framework :: AsyncIO", "Framework :: Trio", "Typing :: Typed"):
        assert needed in classifiers
    urls = {
        label.strip(): url.strip()
        for label, url in (u.split(",", 1) for u in dists.wheel_metadata.get_all("Project-URL", []))
    }
    assert {"Documentation", "Changelog", "Issues", "Source"} <= urls.keys()
    assert all(url.startswith("https://") for url in urls.values())


# --- the wheel alone, in a new virtualenv ---


@dataclass(frozen=True)
class Venv:
    python: Path
    bin: Path
    cwd: Path  # a directory with nothing importable in it


@pytest.fixture(scope="module")
def venv(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    base = tmp_path_factory.mktemp("venv")
    home, cwd = base / "venv", base / "elsewhere"
    cwd.mkdir()
    _run(sys.executable, "-m", "venv", home, cwd=cwd)
    python = home / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", dists.wheel, cwd=cwd)
    return Venv(python=python, bin=home / "bin", cwd=cwd)


def test_the_installed_wheel_is_what_runs(venv: Venv, dists: Dists) -> None:
    out = _run(
        venv.python,
        "-I",
        "-c",
        "import importlib.metadata, ws_stream; "
        "print(ws_stream.__file__); print(importlib.metadata.version('ws-stream'))",
        cwd=venv.cwd,
    )
    module_file, metadata_version = out.splitlines()
    assert Path(module_file).is_relative_to(venv.python.parent.parent), module_file
    assert metadata_version == dists.wheel_metadata["Version"]
    # The console script of the wheel, and `python -m ws_stream`.
    version = f"ws-stream {metadata_version}\n"
    assert _run(venv.bin / "ws-stream", "--version", cwd=venv.cwd) == version
    assert _run(venv.python, "-I", "-m", "ws_stream", "--version", cwd=venv.cwd) == version


def _lines(stream: IO[str]) -> tuple[queue.Queue[str], threading.Thread]:
    """The lines of a pipe, read by a thread (a plain readline() could block forever)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put("")  # EOF

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return lines, thread


@contextmanager
def _server(*args: str | Path, cwd: Path, pattern: str, stderr: bool) -> Iterator[str]:
    """Start a server; yield the URI from its first line on stdout (or stderr); stop it.

    It must stop on SIGTERM with status 0.
    """
    process = subprocess.Popen(
        [str(a) for a in args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    lines, pump = _lines(process.stderr if stderr else process.stdout)
    try:
        try:
            first = lines.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail(f"{args}: no first line within {TIMEOUT} s")
        if first == "":  # it ended without a word: say why
            process.wait(TIMEOUT)
            rest = (process.stdout if stderr else process.stderr).read()
            pytest.fail(f"{args} exited {process.returncode} at once\n{rest}")
        match = re.match(pattern, first)
        assert match is not None, f"{args}: first line {first!r}"
        yield match[1]
        process.terminate()
        process.wait(TIMEOUT)
        assert process.returncode == 0, f"{args} exited {process.returncode}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        pump.join(TIMEOUT)  # the pipe's EOF ends it
        process.stdout.close()
        process.stderr.close()


def test_an_example_of_the_sdist_runs_on_the_installed_wheel(venv: Venv, dists: Dists) -> None:
    examples = dists.unpacked / "examples"
    # -I: only the virtualenv's site-packages, never a checkout or the sdist's source.
    with _server(
        venv.python,
        "-I",
        examples / "line_echo_server.py",
        "--port",
        "0",
        cwd=venv.cwd,
        pattern=r"listening on (ws://127\.0\.0\.1:\d+/)$",
        stderr=False,
    ) as uri:
        lines = ["hello", "from a clean virtualenv"]
        out = _run(venv.python, "-I", examples / "line_echo_client.py", uri, *lines, cwd=venv.cwd)
    assert out.splitlines() == [f"{kind}: {line}" for line in lines for kind in ("sent", "echo")]


def test_the_command_tunnels_from_the_installed_wheel(venv: Venv) -> None:
    ws_stream = venv.bin / "ws-stream"
    with _server(
        ws_stream,
        "serve",
        "--port",
        "0",
        cwd=venv.cwd,
        pattern=r"ws-stream serve: listening on (ws://127\.0\.0\.1:\d+/)",
        stderr=True,
    ) as uri:
        # The echo server closes once it has echoed our end of input: exit 0.
        out = _run(ws_stream, "cat", uri, cwd=venv.cwd, input="one line\nand another\n")
    assert out == "one line\nand another\n"
