"""The suite on each Python the project supports, and with the oldest dependencies.

    nox -l                  # the sessions
    nox -s tests-3.13       # the suite on Python 3.13 (a virtualenv of its own)
    nox -s oldest           # the suite with the oldest versions pyproject.toml allows
    nox -s tests-3.12 -- tests/asyncio -x   # arguments after -- go to pytest

Interpreters are looked for, never installed: pyenv's versions first
(``pyenv root``/versions/3.X.*), then ``python3.X`` on PATH. A version this
machine lacks makes its session skip, saying so. 3.11 is the primary version:
only its session runs the interop tests and the benchmarks (tests/interop and
tests/test_bench*.py); the other sessions leave them out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import nox
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

nox.needs_version = ">=2025.5.1"  # download_python
nox.options.download_python = "never"  # use this machine's interpreters, install none

ROOT = Path(__file__).parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

PYTHONS = ["3.11", "3.12", "3.13"]
PRIMARY = "3.11"
# The interpreter `oldest` runs on: not the primary one, so that CI's three runs
# (3.11 newest, tests-3.13, oldest) use each supported Python once.
OLDEST_ON = "3.12"
# The interop peers (Node.js, Chromium) and the benchmarks run on the primary
# version only (issue 17 allows it); they take much of the suite's time.
PRIMARY_ONLY = [
    "tests/interop",
    "tests/test_bench.py",
    "tests/test_bench_tunnel.py",
    "tests/test_bench_frontends.py",
    "tests/test_bench_mux.py",
]
# The extras whose lower bounds `oldest` installs, beside `dependencies`.
OLDEST_EXTRAS = ["trio", "socks", "asgi", "aiohttp"]


def _version_of(python: str) -> str | None:
    """'3.12' if ``python`` runs and is a CPython 3.12, else None."""
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip() or None


def _patch_key(path: Path) -> tuple[int, ...]:
    """Sort key of pyenv's versions/3.12.4 directories (3.12.10 after 3.12.9)."""
    return tuple(int(n) for n in re.findall(r"\d+", path.name))


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` (e.g. '3.12') on this machine, or None."""
    candidates: list[str] = []
    pyenv = shutil.which("pyenv")
    root = os.environ.get("PYENV_ROOT")
    if pyenv and not root:
        try:
            root = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            root = None
    if root:
        # Release builds only (3.12.4, not 3.12-dev nor 3.13.0rc1).
        found = [
            p
            for p in (Path(root) / "versions").glob(f"{version}.*")
            if re.fullmatch(rf"{re.escape(version)}\.\d+", p.name)
        ]
        for directory in sorted(found, key=_patch_key, reverse=True):
            candidates.append(str(directory / "bin" / f"python{version}"))
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)  # pyenv's shim answers only for active versions: checked
    for candidate in candidates:
        if _version_of(candidate) == version:
            return candidate
    return None


INTERPRETERS = {version: find_python(version) for version in PYTHONS}


def _missing(session: nox.Session, version: str) -> None:
    session.skip(
        f"Python {version} is not on this machine (looked in pyenv's versions/{version}.* "
        f"and for python{version} on PATH); nothing is installed to get it"
    )


def _pytest(session: nox.Session, ignore: list[str]) -> None:
    args = [f"--ignore={path}" for path in ignore]
    session.run("python", "-m", "pytest", *args, *session.posargs)


def _lower_bounds() -> dict[str, str]:
    """name -> the lowest version pyproject.toml allows, runtime and OLDEST_EXTRAS."""
    project = PYPROJECT["project"]
    requirements = list(project["dependencies"])
    for extra in OLDEST_EXTRAS:
        requirements += project["optional-dependencies"][extra]
    bounds: dict[str, str] = {}
    for line in requirements:
        req = Requirement(line)
        lows = [s.version for s in req.specifier if s.operator in (">=", "~=", "==")]
        if not lows:
            raise ValueError(f"pyproject.toml: {line!r} states no lower bound to test")
        name = canonicalize_name(req.name)
        bounds[name] = max([*lows, bounds.get(name, lows[0])], key=Version)
    # The test extra must not ask for more than the floor, or the floor is untested.
    for line in project["optional-dependencies"]["test"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name in bounds and not req.specifier.contains(bounds[name], prereleases=True):
            raise ValueError(
                f"pyproject.toml: the test extra's {line!r} excludes {name} {bounds[name]}, "
                "the oldest version the package allows"
            )
    return bounds


def _make_tests(version: str) -> None:
    python = INTERPRETERS[version]
    ignore = [] if version == PRIMARY else PRIMARY_ONLY

    @nox.session(name=f"tests-{version}", python=python or False, download_python="never")
    def tests(session: nox.Session) -> None:
        if python is None:
            _missing(session, version)
        session.install("-e", ".[test]")
        _pytest(session, ignore)

    tests.__doc__ = f"The suite on Python {version}" + (
        " (all of it)" if version == PRIMARY else " (no interop tests, no benchmarks)"
    )


for _version in PYTHONS:
    _make_tests(_version)


_OLDEST_PYTHON = INTERPRETERS[OLDEST_ON]


@nox.session(python=_OLDEST_PYTHON or False, download_python="never")
def oldest(session: nox.Session) -> None:
    """The suite with the oldest websockets, trio, python-socks, starlette, aiohttp allowed.

    On Python 3.12; the test tools are the newest. No interop tests, no benchmarks.
    """
    if _OLDEST_PYTHON is None:
        _missing(session, OLDEST_ON)
    try:
        bounds = _lower_bounds()
    except ValueError as exc:
        session.error(str(exc))
    constraints = Path(session.create_tmp()) / "oldest-constraints.txt"
    constraints.write_text("".join(f"{name}=={low}\n" for name, low in sorted(bounds.items())))
    session.log("pinned to the lower bounds: " + ", ".join(f"{n}=={v}" for n, v in bounds.items()))
    extras = ",".join(["test", *OLDEST_EXTRAS])
    session.log(
        "if pip cannot install these with the test extra on this Python (no wheel, a failed "
        "build, a conflict it names), the lower bound it names is not testable: raise it "
        "in pyproject.toml"
    )
    session.install("-e", f".[{extras}]", "-c", str(constraints))
    # What was installed is what was pinned (pip honours -c; the log shows it).
    listed = session.run("python", "-m", "pip", "list", "--format=json", silent=True)
    installed: dict[str, str] = {
        canonicalize_name(p["name"]): p["version"] for p in json.loads(str(listed))
    }
    for name, low in sorted(bounds.items()):
        session.log(f"{name} {installed.get(name)}")
        if name not in installed or Version(installed[name]) != Version(low):
            session.error(f"{name}: {installed.get(name)} installed, {low} wanted")
    _pytest(session, PRIMARY_ONLY)
