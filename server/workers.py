"""``overlaystore serve --workers N``: N server processes sharing one port.

* **Processes.** The parent (a supervisor that serves nothing itself) starts
  N workers with multiprocessing's *spawn* method (fresh interpreters: no
  thread, lock or event loop is inherited). Each runs the application of the
  single-process server (:func:`server.app.make_app`) on its own listening
  socket bound with ``SO_REUSEPORT``, so the kernel spreads new connections
  over them. Before spawning, the parent checks that the address is free
  with a socket *without* ``SO_REUSEPORT``: two servers must never silently
  share a port. Responses carry ``X-Overlaystore-Worker: <1..N>``.
* **One start line**, from the parent, once every worker listens (with the
  workers' pids). Worker log lines carry ``[worker <n>]``.
* **A worker that dies is fatal.** If a worker exits (or fails to start)
  while the server is not shutting down, the parent logs it, stops the other
  workers gracefully and exits with status 1: the service manager (systemd,
  a container runtime) restarts the whole server and the failure is visible.
  Workers are never restarted silently.
* **Shutdown.** SIGTERM or SIGINT to the parent is forwarded (as SIGTERM) to
  every worker, which stops accepting, lets in-flight requests finish (up to
  :data:`server.serving.SHUTDOWN_TIMEOUT_S`) and exits; the parent exits 0 once
  all have exited cleanly. A worker still running
  :data:`KILL_MARGIN_S` after that is killed (exit status 1). A worker acts on
  the first signal only (a terminal's Ctrl-C reaches every process of the
  group *and* is forwarded by the parent); a worker whose parent vanished
  (SIGKILL) shuts itself down within :data:`PARENT_CHECK_S`.
* **Watching.** The supervisor runs the store watchers, once for all
  workers, and reports what they see through the change counters below
  (:mod:`server.worker_watch`); workers run none.
* **Metrics.** ``GET /-/metrics`` on any worker answers every worker's
  series, labelled ``worker`` (:mod:`server.worker_metrics`).
* **Coherence.** Each worker keeps its own composed LRU. A write bumps the
  package's counter in the shared :class:`~overlaystore.changes.ChangeCounters`
  before it is acknowledged, and every LRU hit checks it, so a publish
  acknowledged by one worker is visible to the very next request on any
  other (read-your-writes). The watcher still covers changes made by other
  programs. With one worker none of this runs: ``workers = 1`` is the plain
  single-process server.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from aiohttp import web

from overlaystore.errors import OverlayStoreError

from .allocator import tune_allocator
from .app import describe, make_app
from .config import Config
from .keys import METRICS, WORKER, WORKER_HEADER, WORKER_METRICS
from .log_setup import configure_logging
from .serving import SHUTDOWN_TIMEOUT_S, new_event_loop, serve
from .worker_metrics import WorkerMetrics
from .worker_watch import WorkerWatch

log = logging.getLogger("overlaystore.server")

#: Extra seconds a worker gets beyond the graceful shutdown timeout before it is killed.
KILL_MARGIN_S = 10.0
#: How often a worker checks that its parent is still there.
PARENT_CHECK_S = 1.0
#: How often the parent wakes up while waiting (signals are also handled in between).
_TICK_S = 0.5

def _check_address_free(host: str, port: int) -> None:
    """Bind (without SO_REUSEPORT) every address the workers will bind: it
    fails if anything, another overlaystore included, listens there."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OverlayStoreError(f"cannot resolve {host}: {exc.strerror}") from None
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise OverlayStoreError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------ a worker


class _Stopper:
    """Turns the first SIGTERM/SIGINT (or the parent's disappearance) into
    aiohttp's graceful exit; later ones are ignored while shutting down."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parent = os.getppid()
        self._stopping = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.stop, sig.name)
        self._loop.call_later(PARENT_CHECK_S, self._check_parent)

    def stop(self, why: str) -> None:
        if self._stopping:
            log.debug("%s while stopping: ignored", why)
            return
        self._stopping = True
        log.debug("%s: shutting down", why)
        raise web.GracefulExit()  # out of run_until_complete: serve shuts down gracefully

    def _check_parent(self) -> None:
        if os.getppid() != self._parent:
            log.warning("the supervisor process is gone; shutting down")
            self.stop("parent exited")
        elif not self._stopping:
            self._loop.call_later(PARENT_CHECK_S, self._check_parent)


async def _name_worker(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[WORKER_HEADER] = str(request.app[WORKER])


def _worker_main(config: Config, index: int, ready: Connection, metrics_dir: Path) -> None:
    """One worker process (the target of a spawned Process)."""
    configure_logging(config, worker=index)
    tune_allocator()
    loop = new_event_loop()
    stopper = _Stopper(loop)
    stopper.install()
    app = make_app(config)
    app[WORKER] = index
    app.on_response_prepare.append(_name_worker)
    worker_metrics = WorkerMetrics(app[METRICS], metrics_dir, index, config.server.workers)
    app[WORKER_METRICS] = worker_metrics

    async def metrics_socket(_app: web.Application) -> AsyncIterator[None]:
        await worker_metrics.start()
        yield
        await worker_metrics.close()

    app.cleanup_ctx.append(metrics_socket)

    def listening() -> None:
        try:
            ready.send(os.getpid())
            ready.close()
        except OSError:  # the parent is gone: _Stopper notices
            pass

    try:
        serve(app, config, loop=loop, reuse_port=True, handle_signals=False, on_listening=listening)
    except OSError as exc:
        log.error("cannot serve on %s:%d: %s", config.server.host, config.server.port, exc.strerror or exc)
        raise SystemExit(1) from None
    except OverlayStoreError as exc:  # a store that cannot be opened (wrong role, newer format, ...)
        log.error("%s", exc)
        raise SystemExit(1) from None


# ------------------------------------------------------------------ the parent


class _Supervisor:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[BaseProcess] = []
        self._stopping_since: float | None = None
        self._failed = False
        self._watch: WorkerWatch | None = None

    def signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._stopping_since is None:
            log.info("%s: stopping %d workers", name, len(self._processes))
        self._stop()

    def _stop(self) -> None:
        if self._stopping_since is None:
            self._stopping_since = time.monotonic()
        for process in self._processes:
            if process.exitcode is None and process.pid is not None:
                try:
                    os.kill(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def run(self) -> int:
        # Where the workers answer each other's metrics scrapes (server.worker_metrics).
        metrics_dir = Path(tempfile.mkdtemp(prefix="overlaystore-metrics-"))
        try:
            return self._run(metrics_dir)
        finally:
            if self._watch is not None:
                self._watch.stop()
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _run(self, metrics_dir: Path) -> int:
        config = self._config
        count = config.server.workers
        readers: dict[Connection, int] = {}
        for index in range(1, count + 1):
            receive, send = self._context.Pipe(duplex=False)
            process = self._context.Process(
                target=_worker_main, args=(config, index, send, metrics_dir), name=f"overlaystore-worker-{index}"
            )
            process.start()
            send.close()
            self._processes.append(process)
            readers[receive] = index
            if self._stopping_since is not None:  # a signal arrived while starting
                self._stop()
        pids: dict[int, int] = {}
        # Sentinels only wake the loop: reading ``exitcode`` reaps a dead
        # worker, so exits are found by index, whichever read reaped them.
        handled: set[int] = set()
        while len(handled) < count:
            sentinels = [p.sentinel for i, p in enumerate(self._processes, 1) if i not in handled]
            for ready in wait([*readers, *sentinels], timeout=_TICK_S):
                if isinstance(ready, Connection):
                    index = readers.pop(ready)
                    try:
                        pids[index] = ready.recv()
                    except EOFError:  # it died before listening: its exit says more
                        pass
                    ready.close()
                    if len(pids) == count and self._stopping_since is None:
                        log.info("%s, %d workers (pids %s)", describe(config), count,
                                 ", ".join(str(pids[i]) for i in sorted(pids)))
                        if config.watch.enabled:  # the stores exist now: the workers opened them
                            self._watch = WorkerWatch(config)
                            self._watch.start()
            for index, process in enumerate(self._processes, 1):
                if index not in handled and process.exitcode is not None:
                    handled.add(index)
                    self._exited(index)
            if self._stopping_since is not None and time.monotonic() > self._stopping_since + SHUTDOWN_TIMEOUT_S + KILL_MARGIN_S:
                for index, process in enumerate(self._processes, 1):
                    if process.exitcode is None:
                        log.error("worker %d (pid %s) did not stop in time; killing it", index, process.pid)
                        process.kill()
                        process.join()
                self._failed = True
        for reader in readers:
            reader.close()
        return 1 if self._failed else 0

    def _exited(self, index: int) -> None:
        process = self._processes[index - 1]
        process.join()
        code = process.exitcode
        assert code is not None
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        if self._stopping_since is None:
            log.error("worker %d (pid %s) %s; stopping the server", index, process.pid, how)
            self._failed = True
            self._stop()
        elif code not in (0, -signal.SIGTERM, -signal.SIGINT):
            log.error("worker %d (pid %s) %s while stopping", index, process.pid, how)
            self._failed = True
        else:
            log.debug("worker %d (pid %s) %s", index, process.pid, how)


def serve_workers(config: Config) -> int:
    """Run ``config.server.workers`` worker processes until SIGTERM/SIGINT;
    returns the exit status (0: clean shutdown, 1: a worker failed)."""
    configure_logging(config)
    if config.server.port == 0:
        raise OverlayStoreError("several workers need a fixed port to share (listen on HOST:PORT, not port 0)")
    _check_address_free(config.server.host, config.server.port)
    supervisor = _Supervisor(config)
    previous = {sig: signal.signal(sig, supervisor.signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return supervisor.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["KILL_MARGIN_S", "PARENT_CHECK_S", "WORKER_HEADER", "serve_workers"]
