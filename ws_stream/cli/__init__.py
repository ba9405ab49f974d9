"""The ``ws-stream`` command: ``serve``, ``forward``, ``cat`` (and ``passwd``).

``serve`` accepts WebSockets and echoes them, or bridges each one to a new TCP
connection to a target fixed on the command line. ``forward`` is the client
half of that tunnel: each local TCP client gets its own WebSocket. ``cat``
joins stdin and stdout to one WebSocket.

This package exposes the entry points only: :func:`main` (the
``ws-stream`` console script and ``python -m ws_stream``) and
:func:`build_parser`. Its modules, one concept each:

* :mod:`.args`: argument types, the parser, and the frozen configuration
  (:class:`~.args.ServeConfig`, :class:`~.args.ClientConfig`,
  :class:`~.args.ForwardConfig`) every other module takes;
* :mod:`.rules`: the tunnel rules, pure (no I/O, no clock) and tested alone;
* :mod:`.endpoints`: the local side of a tunnel (TCP, stdin/stdout);
* :mod:`.tunnel`: the I/O driver of one tunnel, which feeds the rules;
* :mod:`.serve`: the ``serve`` sub-command;
* :mod:`.gateway`: ``serve``'s authentication, named targets and web files;
* :mod:`.passwd`: ``ws-stream passwd``, the hashes of ``--basic-auth-file``;
* :mod:`.workers`: ``serve --workers N``, N processes on one port;
* :mod:`.client`: ``forward``, ``cat`` and the dialer;
* :mod:`.lifecycle`: signals, shutdown, the registry of live sessions, exit
  statuses;
* :mod:`.report`: logging, ``--stats``, the line that ends a connection.

The *tunnel policy* (how the end of one side becomes the end of the other,
how errors travel, and how a shutdown closes every connection with 1001
within the close timeout) is decided in :mod:`.rules`; :mod:`.tunnel` does the
I/O. A WebSocket close is not a TCP half-close (the peer answers a close at
once and cannot send afterwards), so:

* the WebSocket peer closes with 1000, 1001 or no code: the local side gets
  EOF after every byte (TCP ``write_eof()``, then close once the local peer
  has closed too, at most ``--close-timeout`` later);
* the WebSocket fails (1006, protocol error) or closes with an error code:
  the local TCP connection is reset, so a truncated stream never looks
  complete; a local reset closes the WebSocket with 1011, which the other
  half of the tunnel turns back into a reset;
* the local side ends: on the server side (the target closed) the WebSocket
  is closed with 1000 at once, after the bytes before it; on the client side
  (``forward``, ``cat``), where EOF often means "my request is sent, now the
  answer", the close waits until the server closes (a clean end), or until
  it has sent nothing for ``--linger`` seconds - time spent waiting for the
  local side to take bytes is not silence. A close by ``--linger`` or
  ``--idle-timeout`` ends the tunnel before the server's close: what the
  server still had is unknown, so the local side is reset (``cat`` exits 1);
* a TCP reset after the session ended a direction (local EOF, a close
  received or sent) is a normal end, logged at info.

The target of ``serve --to`` comes from the command line only: nothing in a
request (path, query, headers) can choose where bytes go.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from .args import (
    ClientConfig,
    ForwardConfig,
    PasswdConfig,
    ServeConfig,
    build_parser,
    parse_config,
)
from .client import cat, forward
from .lifecycle import EXIT_ERROR, EXIT_OK, reserve_stdio
from .passwd import passwd
from .report import configure_logging
from .serve import serve
from .tuning import tune_malloc
from .workers import run_workers

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ws-stream`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Bad arguments exit with status 2 (``SystemExit``), as argparse does.
    """
    reserve_stdio()
    config = parse_config(argv)
    if isinstance(config, PasswdConfig):
        return passwd(config)
    tune_malloc()  # before any worker is forked
    # cat stays out of the way (an SSH ProxyCommand): warnings and errors only.
    default_level = logging.WARNING if config.command == "cat" else logging.INFO
    configure_logging(config.prog, default_level, config.verbose, config.quiet)
    try:
        if isinstance(config, ServeConfig) and config.workers > 1:
            return run_workers(config)  # forks: before any event loop exists
        return asyncio.run(_run(config))
    except KeyboardInterrupt:  # before the signal handlers were installed
        return EXIT_OK


async def _run(config: ServeConfig | ClientConfig) -> int:
    try:
        if isinstance(config, ServeConfig):
            return await serve(config)
        if isinstance(config, ForwardConfig):
            return await forward(config)
        return await cat(config)
    except asyncio.CancelledError:
        return EXIT_ERROR  # a second signal
