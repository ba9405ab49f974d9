"""``ws-stream serve --workers N``: N processes serving one TCP port, run and stopped as one.

Owns the process management of ``--workers``; what each worker does is
:func:`~.serve.serve`, unchanged, with :class:`WorkerLink` as its hooks.

* **One port.** The parent binds (without listening) one socket per address
  of ``--host`` with ``SO_REUSEPORT``, picking the port there when ``--port``
  is 0: a port in use is reported once, before any worker starts, and the
  port stays reserved until the parent exits. Each worker then listens on
  that port with its own ``SO_REUSEPORT`` sockets, and Linux spreads new
  connections over the listening sockets (by a hash of the client's address
  and port). :func:`~.args.workers_problem` refuses other systems.
* **Forked, in their own process group.** Workers are forked before the
  parent starts an event loop or a thread. Each one is the leader of its own
  process group, so that a Ctrl-C at the terminal reaches the parent only,
  which forwards it: every worker hears each signal exactly once.
* **A pipe each** (a socketpair): JSON lines up (``listening``, ``counts``),
  commands down (``stop``, ``force``). The parent prints the listening line
  (once, when every worker listens), and the ``--stats`` lines and summary
  from the sums of the workers' latest counts (each worker sends its counts
  every :data:`_REPORT_EVERY` seconds with ``--stats``, and always at its end).
* **Signals.** The parent's first SIGINT/SIGTERM/SIGHUP becomes ``stop`` for
  every worker (each closes its connections with 1001 within
  ``--close-timeout``, as a single process does), a second one ``force``.
  A worker turns a command into a SIGTERM to itself, so the shutdown is
  :class:`~.lifecycle.Shutdown`'s own, and one that already stops (it got a
  signal directly) ignores ``stop``. A worker whose parent is gone (its pipe
  ends) stops by itself.
* **Exit status.** 0 when every worker stopped cleanly after a signal. A
  worker that exits before the parent told it to stop is reported (its
  status, or the signal that killed it); the parent stops the others and
  exits 1. A worker that exits with 1 while stopping (a second signal) also
  makes it 1.
* **--max-connections** is one total over all workers: a semaphore in shared
  memory (:class:`SharedLimit`) that every worker takes a place from before
  a handshake and gives back when the TCP connection is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from .args import ServeConfig
from .lifecycle import EXIT_ERROR, EXIT_OK, STOP_SIGNALS, Sessions, Shutdown
from .report import addr, configure_logging, describe, stats_output
from .serve import serve

__all__ = ["SharedLimit", "WorkerLink", "run_workers"]

logger = logging.getLogger(__name__)

#: Seconds between a worker's counts to the parent, with ``--stats`` (at
#: most; never more than the ``--stats-interval``).
_REPORT_EVERY = 0.5


# The shared --max-connections


class SharedLimit:
    """``--max-connections`` over all workers: a process-shared semaphore.

    Created in the parent before the workers are forked (they inherit it).
    :meth:`acquire` never blocks: a full server answers 503 at once.
    """

    def __init__(self, limit: int) -> None:
        self._semaphore = multiprocessing.get_context("fork").BoundedSemaphore(limit)

    def acquire(self) -> bool:
        """Take a place; False when all ``limit`` are taken (by any worker)."""
        return self._semaphore.acquire(block=False)

    def release(self) -> None:
        """Give a place back."""
        self._semaphore.release()


# In a worker


class WorkerLink:
    """A worker's side of its pipe: the hooks :func:`~.serve.serve` runs with.

    ``limit``: the shared ``--max-connections``, or None.
    """

    def __init__(
        self, sock: socket.socket, limit: SharedLimit | None, report_every: float | None
    ) -> None:
        self._sock = sock
        self.limit = limit
        self._report_every = report_every

    @contextlib.asynccontextmanager
    async def running(
        self, urls: Sequence[str], what: str, shutdown: Shutdown, sessions: Sessions
    ) -> AsyncIterator[None]:
        """While serving: tell the parent where we listen, report counts, obey its commands.

        At the end, the final counts go up, whatever happened.
        """
        reader, writer = await asyncio.open_unix_connection(sock=self._sock)
        _send(writer, {"listening": list(urls), "what": what})
        tasks = [asyncio.create_task(self._obey(reader, shutdown))]
        # From now on the pipe's end tells of the parent's death (see _obey).
        _parent_death_signal(0)
        if self._report_every is not None:
            tasks.append(asyncio.create_task(self._report(writer, sessions, self._report_every)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            _send(writer, {"counts": _counts(sessions)})
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()

    @staticmethod
    async def _obey(reader: asyncio.StreamReader, shutdown: Shutdown) -> None:
        while True:
            try:
                line = await reader.readline()
            except Exception:  # the pipe broke (EPIPE on a write): as its end
                break
            if not line:
                break
            command = line.strip()
            if command == b"stop" and not shutdown.requested.done():
                os.kill(os.getpid(), signal.SIGTERM)  # Shutdown's first signal
            elif command == b"force" and not shutdown.forced:
                os.kill(os.getpid(), signal.SIGTERM)  # its second
        if not shutdown.requested.done():
            logger.warning("the parent process is gone: stopping")
            os.kill(os.getpid(), signal.SIGTERM)

    @staticmethod
    async def _report(writer: asyncio.StreamWriter, sessions: Sessions, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            _send(writer, {"counts": _counts(sessions)})
            await writer.drain()


def _counts(sessions: Sessions) -> list[int]:
    received, sent = sessions.totals()
    return [sessions.opened, sessions.open, received, sent]


def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    if not writer.is_closing():
        writer.write(json.dumps(message).encode() + b"\n")


def _worker_main(
    index: int, sock: socket.socket, config: ServeConfig, limit: SharedLimit | None
) -> int:
    """The whole life of worker ``index`` (from 1), in the forked child; its exit status."""
    os.setpgid(0, 0)  # terminal signals reach the parent only; it forwards them
    configure_logging(f"{config.prog} worker {index}", logging.INFO, config.verbose, config.quiet)
    interval = config.stats_interval
    report_every = None if interval is None else min(_REPORT_EVERY, interval)
    # The parent prints --stats; the worker reports its counts instead.
    own = dataclasses.replace(config, stats_interval=None)
    link = WorkerLink(sock, limit, report_every)

    async def run() -> int:
        try:
            return await serve(own, link)
        except asyncio.CancelledError:
            return EXIT_ERROR  # a second signal

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:  # before the signal handlers were installed
        return EXIT_OK


def _parent_death_signal(sig: int) -> None:
    """Have Linux send ``sig`` (0: none) to this process when its parent dies."""
    if sys.platform != "linux":
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


_PR_SET_PDEATHSIG = 1


# In the parent


@dataclasses.dataclass(eq=False)
class _Worker:
    """The parent's view of one worker."""

    index: int
    pid: int
    sock: socket.socket
    writer: asyncio.StreamWriter | None = None
    #: From its ``listening`` message.
    urls: list[str] | None = None
    what: str = ""
    #: opened, open, received, sent: its latest ``counts``.
    counts: tuple[int, int, int, int] = (0, 0, 0, 0)
    listening: asyncio.Future[None] | None = None
    #: Its exit status (:func:`os.waitstatus_to_exitcode`); None while it runs.
    status: int | None = None
    #: Sent a SIGTERM by the parent (to stop before it listened).
    killed: bool = False

    @property
    def name(self) -> str:
        return f"worker {self.index} (pid {self.pid})"

    def command(self, command: bytes) -> None:
        """Send ``stop`` or ``force``; nothing if it is gone."""
        if self.writer is not None and not self.writer.is_closing():
            with contextlib.suppress(OSError):
                self.writer.write(command + b"\n")


class _Totals:
    """The workers' counts summed: what ``--stats`` shows (a :class:`~.report.SessionCounts`)."""

    def __init__(self, workers: Sequence[_Worker], started: float) -> None:
        self._workers = workers
        self.started = started

    @property
    def opened(self) -> int:
        return sum(w.counts[0] for w in self._workers)

    @property
    def open(self) -> int:
        return sum(w.counts[1] for w in self._workers)

    def totals(self) -> tuple[int, int]:
        return sum(w.counts[2] for w in self._workers), sum(w.counts[3] for w in self._workers)


def run_workers(config: ServeConfig) -> int:
    """Run ``serve`` as ``config.workers`` processes on one port until a signal; the exit status.

    Call it instead of ``asyncio.run(serve(config))``, before any event loop
    or thread exists (the workers are forked). Returns 1 when the address
    cannot be reserved, or a worker failed.
    """
    try:
        reserved, port = _reserve(config.host, config.port)
    except OSError as exc:
        logger.error("cannot listen on %s: %s", addr((config.host, config.port)), describe(exc))
        return EXIT_ERROR
    # A stop signal while forking waits for the parent's handlers (in
    # _supervise): the parent would otherwise die, leaving the forked workers.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        limit = None if config.max_connections is None else SharedLimit(config.max_connections)
        config = dataclasses.replace(config, port=port)
        workers: list[_Worker] = []
        try:
            for index in range(1, config.workers + 1):
                workers.append(_fork(index, config, limit, workers, reserved, mask))
        except OSError as exc:
            logger.error("cannot start worker %d: %s", len(workers) + 1, describe(exc))
            for worker in workers:
                with contextlib.suppress(OSError):
                    os.kill(worker.pid, signal.SIGTERM)
                os.waitpid(worker.pid, 0)
            return EXIT_ERROR
        return asyncio.run(_supervise(config, workers, mask))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sock in reserved:
            sock.close()


def _reserve(host: str, port: int) -> tuple[list[socket.socket], int]:
    """Bind, without listening, one ``SO_REUSEPORT`` socket per address of ``host``.

    Returns them and the port (picked by the first bind when ``port`` is 0).
    A socket that is bound but not listening gets no connections: it only
    keeps the port. Raises OSError (the address cannot be resolved, or is in
    use by a socket that is not ours).

    ``SO_REUSEPORT`` would share a fixed port with another server that set
    it too (another ``--workers``): each address is first bound without it
    (as a single process binds), which fails when anything listens there.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    reserved: list[socket.socket] = []
    try:
        for family, type_, proto, _, sockaddr in dict.fromkeys(infos):
            if port != 0:
                with socket.socket(family, type_, proto) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    probe.bind((sockaddr[0], port, *sockaddr[2:]))
            sock = socket.socket(family, type_, proto)
            reserved.append(sock)
            # As asyncio's create_server(reuse_port=True) sets them in the workers.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((sockaddr[0], port, *sockaddr[2:]))
            port = sock.getsockname()[1]
    except OSError:
        for sock in reserved:
            sock.close()
        raise
    return reserved, port


def _fork(
    index: int,
    config: ServeConfig,
    limit: SharedLimit | None,
    started: Sequence[_Worker],
    reserved: Sequence[socket.socket],
    mask: Iterable[int],
) -> _Worker:
    """Fork worker ``index``; in the child, run it and exit (never returns there).

    ``mask``: the signal mask to restore in the child (the parent blocks the
    stop signals while it forks).
    """
    ours, theirs = socket.socketpair()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the worker
        status = EXIT_ERROR
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            # Until its pipe is watched (WorkerLink.running), a worker learns
            # of its parent's death (a SIGKILL) by this signal.
            _parent_death_signal(signal.SIGTERM)
            ours.close()
            for sock in (*(w.sock for w in started), *reserved):
                sock.close()  # another worker's pipe held here would hide the parent's end
            if os.getppid() == parent:  # else it died before the signal was set
                status = _worker_main(index, theirs, config, limit)
            else:
                status = EXIT_OK
        except BaseException:
            logger.exception("worker %d: internal error", index)
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(status)
    theirs.close()
    return _Worker(index, pid, ours)


async def _supervise(config: ServeConfig, workers: list[_Worker], mask: Iterable[int]) -> int:
    """The parent's event loop: listening line, ``--stats``, signals, the workers' ends.

    ``mask``: the signal mask to restore once the handlers are installed.
    """
    loop = asyncio.get_running_loop()
    totals = _Totals(workers, time.monotonic())
    stopping = False
    forced = False
    failed = False

    def stop(command: bytes) -> None:
        for worker in workers:
            if worker.status is not None:
                continue
            if worker.urls is None:
                # Not serving yet: it may not read its pipe; its own handlers
                # (or the default action) take a signal.
                with contextlib.suppress(OSError):
                    os.kill(worker.pid, signal.SIGTERM)
                    worker.killed = True
            else:
                worker.command(command)

    def on_signal() -> None:
        nonlocal stopping, forced
        if not stopping:
            stopping = True
            stop(b"stop")
        elif not forced:
            forced = True
            stop(b"force")

    for sig in STOP_SIGNALS:
        if sig == getattr(signal, "SIGHUP", None) and signal.getsignal(sig) == signal.SIG_IGN:
            continue  # nohup: kept, as a single process does
        loop.add_signal_handler(sig, on_signal)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a signal held back comes now

    async def watch(worker: _Worker) -> _Worker:
        reader, worker.writer = await asyncio.open_unix_connection(sock=worker.sock)
        assert worker.listening is not None
        try:
            while line := await reader.readline():
                _receive(worker, line)
        except (ConnectionError, ValueError) as exc:
            logger.error("%s: unreadable report: %s", worker.name, describe(exc))
        finally:
            if not worker.listening.done():
                worker.listening.set_result(None)
        worker.status = await _exit_status(worker.pid)
        worker.writer.close()
        return worker

    for worker in workers:
        worker.listening = loop.create_future()
    watchers = {asyncio.create_task(watch(worker)): worker for worker in workers}
    await asyncio.gather(*(w.listening for w in workers if w.listening is not None))
    first = next((w for w in workers if w.urls is not None), None)
    if first is not None and all(w.urls is not None for w in workers):
        logger.info(
            "listening on %s (%s; %d workers, pids %s)",
            ", ".join(first.urls or ()),
            first.what,
            len(workers),
            ", ".join(str(w.pid) for w in workers),
        )
    with stats_output(totals, config.prog, config.stats_interval):
        pending = set(watchers)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                worker = task.result()
                if not stopping:
                    failed = True
                    logger.error(
                        "%s %s%s: stopping the others",
                        worker.name,
                        _how(worker.status),
                        "" if worker.urls is not None else " before listening",
                    )
                    stopping = True
                    stop(b"stop")
                elif worker.status != EXIT_OK and not (
                    # Our SIGTERM came before its handlers: its default action.
                    worker.killed and worker.status == -signal.SIGTERM
                ):
                    failed = True
                    if not forced:
                        logger.error("%s %s while stopping", worker.name, _how(worker.status))
    for sig in STOP_SIGNALS:
        loop.remove_signal_handler(sig)
    return EXIT_ERROR if failed else EXIT_OK


def _receive(worker: _Worker, line: bytes) -> None:
    """One message of ``worker``. Raises ValueError for one that is not ours."""
    message = json.loads(line)
    if "listening" in message:
        worker.urls = [str(url) for url in message["listening"]]
        worker.what = str(message.get("what", ""))
        if worker.listening is not None and not worker.listening.done():
            worker.listening.set_result(None)
    elif "counts" in message:
        opened, open_, received, sent = (int(n) for n in message["counts"])
        worker.counts = (opened, open_, received, sent)
    else:
        raise ValueError(f"unknown message {line[:100]!r}")


def _how(status: int | None) -> str:
    """How a worker ended, from :func:`os.waitstatus_to_exitcode`."""
    if status is not None and status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with status {status}"


async def _exit_status(pid: int) -> int:
    """Wait for child ``pid`` to exit, without blocking the loop; its exit code (-N: signal N)."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3): a thread waits
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        return os.waitstatus_to_exitcode(status)
    try:
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await exited
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
