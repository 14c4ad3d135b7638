"""One set of watches for all workers (``overlaystore serve --workers N``).

A watcher per worker set up the same recursive watches N times: one child
process per root per worker, each with an inotify watch per directory. That is
N times the memory and the set-up work, and N times the inotify watches, whose
per-user limit (``fs.inotify.max_user_watches``: 192,536 on a 24 GB host here)
two workers and a cache of 100,000 packages already exceed, after which a
watch fails and restarts in a loop.

So with several workers the supervisor runs the watchers (one per root, in a
thread with its own event loop) and turns what they report into bumps of the
workers' shared change counters (:mod:`overlaystore.changes`), which every
worker's composed view and search index check on every use; a reset (a root
that vanished, a watch that lapsed) bumps every counter. The workers run no
watcher. Each changed name costs every worker a miss, including the worker
whose own write it was (the per-process echo filter of a single process,
``server.echoes``, cannot apply): one recomposition per cache refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable

from overlaystore._types import PackageName
from overlaystore.changes import ChangeCounters
from overlaystore.watch import Watcher

from .config import Config

log = logging.getLogger("overlaystore.server")

#: How long :meth:`WorkerWatch.stop` waits for the watch thread.
STOP_TIMEOUT_S = 10.0


class WorkerWatch:
    """The supervisor's watchers, reporting into the change counters."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._running = threading.Event()

    def start(self) -> None:
        """Start watching in a thread; returns once the watches are being
        set up (not once they exist: a recursive watch of a large store
        takes seconds, and the first one of each root bumps every counter)."""
        if self._thread is not None:
            raise RuntimeError("WorkerWatch already started")
        self._thread = threading.Thread(target=self._run, name="worker watch", daemon=True)
        self._thread.start()
        self._running.wait()

    def stop(self) -> None:
        """Stop the watchers (their children exit) and the thread; idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended: the watch failed
                loop.call_soon_threadsafe(stop.set)
        thread.join(STOP_TIMEOUT_S)
        if thread.is_alive():
            log.warning("the watch thread did not stop within %.0f s", STOP_TIMEOUT_S)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            log.exception("watching the stores for the workers failed: "
                          "changes made by other programs will not reach the workers' composed views")
        finally:
            self._running.set()  # start() must not hang on a watch that could not start

    async def _main(self) -> None:
        storage, watch = self._config.storage, self._config.watch
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        with ChangeCounters.for_store(storage.published) as changes:

            def bump(names: Iterable[PackageName]) -> None:
                for name in names:
                    changes.bump(name)

            watchers = [Watcher([root], on_change=bump, on_reset=changes.bump_all, force_polling=watch.polling)
                        for root in (storage.published, storage.cache)]
            try:
                for watcher in watchers:
                    await watcher.start(wait=False)
                self._running.set()
                await self._stop.wait()
            finally:
                for watcher in watchers:
                    await watcher.stop()


__all__ = ["STOP_TIMEOUT_S", "WorkerWatch"]
