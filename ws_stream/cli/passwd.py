"""``ws-stream passwd USER``: a ``USER:HASH`` line for ``serve --basic-auth-file``."""

from __future__ import annotations

import getpass
import sys

from .args import PasswdConfig
from .gateway.access import hash_password
from .lifecycle import EXIT_ERROR, EXIT_OK

__all__ = ["passwd"]


def passwd(config: PasswdConfig) -> int:
    """Read a password and print ``USER:HASH``; return the exit status.

    On a terminal the password is asked twice without echo; otherwise it is
    the first line of stdin (without its line ending). An empty password, or
    two that differ, exit with status 1 and say so on stderr.
    """
    if sys.stdin.isatty():
        try:
            password = getpass.getpass(f"password for {config.user}: ")
            again = getpass.getpass("again: ")
        except (EOFError, KeyboardInterrupt):
            print("ws-stream passwd: no password given", file=sys.stderr)
            return EXIT_ERROR
        if password != again:
            print("ws-stream passwd: the two passwords differ; nothing printed", file=sys.stderr)
            return EXIT_ERROR
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        print("ws-stream passwd: the password is empty; nothing printed", file=sys.stderr)
        return EXIT_ERROR
    print(f"{config.user}:{hash_password(password)}")
    return EXIT_OK
