"""Watcher: file changes under the store roots → names of changed packages.

Keeps the composed view coherent with writes made *outside* this process
(another worker, an operator restoring a backup, ``rm -rf`` of the cache).
In-process writes invalidate synchronously and do not rely on it.

One task per root reads the batches of a child process
(:mod:`overlaystore.watch_child`) watching that root with watchfiles
(inotify, or polling with ``force_polling`` for filesystems without change
notification). Why a process: setting up a recursive watch holds the GIL for
as long as it adds one inotify watch per directory (~3 s for 100,000
packages), which in this process would freeze the event loop, at start-up and
on every restart of the watch. Paths map
to package names: ``<root>/<name>/…`` and ``<root>/@scope/<name>/…``.
Ignored: hidden entries anywhere in the path (``.locks``, ``.tmp.*`` temp
files: their final ``rename`` produces its own event; ``.trash.*``),
``*.tgz`` files (tarballs do not contribute to the composed document), and
anything that is not a valid package name. A scope directory that appears
is listed (its packages may predate the watch on it); one that vanishes as
a whole counts as a reset, since its package names are no longer known.

Invariants:

* ``on_change(names)`` is called from the event loop, once per debounced
  batch (``debounce_ms``/``step_ms``), with a non-empty set.
* A root that disappears (or is replaced by another directory) stops its
  watch; the task polls until the root exists again, then restarts the watch
  and calls ``on_reset()`` when the new child's first line arrives (it is sent
  once the watch exists), before handling any batch, so no change can fall
  between the reset and the watch.
  ``on_reset()`` is also called when the root vanishes, after a watch error
  (events may have been missed), and, while the root is missing, whenever
  its parent directory changes (the root may have appeared, been read and
  vanished again between two polls). A root missing at :meth:`start` is
  waited for the same way. The watcher never creates a root itself (an
  operator restoring a backup with ``mv`` must find the path free).
* Polling (``force_polling``) sees mtimes with one-second resolution, so a
  change in the same second as the previous one can go unreported: every
  name it reports is reported once more :data:`POLL_MTIME_GRANULARITY_S`
  later, and one reset follows the initial scan by as much. Polling delays
  are therefore up to ``poll_ms`` for most changes, ~1.3 s for such repeats.
* Callbacks that raise are logged; the watcher keeps running.
* :meth:`start` returns once every existing root is being watched (a child
  that fails before that does not hold it up). ``start(wait=False)`` returns
  at once, for a server that must answer while the watches are set up: then
  the first watch of each root also begins with ``on_reset()``, since the
  view may have been filled from it before the watch existed.
* :meth:`stop` ends every task (via a stop event, not cancellation: each
  child gets EOF on its stdin and exits, and is killed if it does not
  within :data:`_CHILD_GRACE_S`: it ignores SIGTERM) and leaves nothing running, no process
  either. A child whose parent dies sees EOF too and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from watchfiles import Change

from ._types import PackageName
from .errors import InvalidName
from .names import parse_name

log = logging.getLogger(__name__)

DEFAULT_DEBOUNCE_MS = 30
DEFAULT_STEP_MS = 10
#: How often the watch thread wakes up without events, to re-check the root.
DEFAULT_CHECK_MS = 1000
#: Poll interval of the polling backend, and of waiting for a missing root.
DEFAULT_POLL_MS = 100
_MAX_BACKOFF_S = 1.0
#: The polling backend's mtime resolution is one second (plus a margin).
POLL_MTIME_GRANULARITY_S = 1.1
#: How long a child may take to exit after EOF on its stdin before it is
#: killed: it only looks between two ``step_ms`` sleeps, or, while it is
#: still setting up its watch, not at all.
_CHILD_GRACE_S = 0.5
#: Longest line (one batch) read from a child. A longer one, from a burst of
#: hundreds of thousands of changes, fails the watch, which then restarts with
#: a reset: the right answer to such a burst anyway.
_CHILD_LINE_LIMIT = 64 * 1024 * 1024
#: Children are reaped by polling (see :class:`_Child`), this often.
_CHILD_REAP_POLL_S = 0.005
#: Run as a script with ``-P`` rather than ``-m overlaystore.watch_child``:
#: importing the package would double the child's memory (16 → 28 MB) and
#: add ~0.3 s to its start; ``-P`` keeps the package's directory, whose module
#: names could shadow others, off ``sys.path``.
_CHILD_SCRIPT = str(Path(__file__).with_name("watch_child.py"))


def _name_of(prefix: str, path: str) -> tuple[str | None, str | None]:
    """(package name, bare scope) for ``path`` under ``prefix``; both None if ignored."""
    if not path.startswith(prefix):
        return None, None
    parts = path[len(prefix):].split(os.sep)
    if any(not part or part.startswith(".") for part in parts):
        return None, None
    if parts[-1].endswith(".tgz"):
        return None, None
    if parts[0].startswith("@"):
        if len(parts) < 2:
            return None, parts[0]
        raw = f"{parts[0]}/{parts[1]}"
    else:
        raw = parts[0]
    try:
        return parse_name(raw), None
    except InvalidName:
        return None, None


def names_from_paths(root: str, paths: Iterable[str]) -> set[PackageName]:
    """Package names for changed ``paths`` under ``root`` (see module docstring)."""
    prefix = root.rstrip(os.sep) + os.sep
    names: set[PackageName] = set()
    for path in paths:
        name, _scope = _name_of(prefix, path)
        if name is not None:
            names.add(PackageName(name))
    return names


def names_from_changes(root: str, changes: Iterable[tuple[Change, str]]) -> tuple[set[PackageName], bool]:
    """Package names for a batch of changes under ``root``, and whether some
    changes could not be attributed (a scope directory that vanished as a
    whole, e.g. renamed away by a cache wipe: every name in it changed).

    A scope directory that appeared is listed: inotify may report only the
    scope directory when ``@scope/name/…`` is created in one go, because the
    packages' directories can appear before the watch on the scope does.
    """
    prefix = root.rstrip(os.sep) + os.sep
    names: set[PackageName] = set()
    lost = False
    for change, path in changes:
        name, scope = _name_of(prefix, path)
        if name is not None:
            names.add(PackageName(name))
        elif scope is not None:
            try:
                with os.scandir(path) as entries:
                    subdirs = [e.name for e in entries if not e.name.startswith(".")]
            except OSError:
                lost = lost or change == Change.deleted or not os.path.exists(path)
                continue
            for sub in subdirs:
                try:
                    names.add(parse_name(f"{scope}/{sub}"))
                except InvalidName:
                    continue
    return names, lost


def _dir_state(path: str) -> tuple[int, int, int] | None:
    # Creating or removing an entry updates a directory's mtime; with the
    # kernel's fine-grained timestamps after a stat, even within one tick.
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _identity(root: str) -> tuple[int, int] | None:
    try:
        st = os.stat(root)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class WatchChildError(RuntimeError):
    """A watch child failed, or ended without being asked to."""


class _Child:
    """One :mod:`overlaystore.watch_child` process, read as batches of changes.

    Started with :class:`subprocess.Popen`, not the event loop's subprocess
    API: under uvloop (libuv) a child would inherit every inheritable
    descriptor of the server, among them a worker's multiprocessing sentinel,
    so that its supervisor would not see the worker die until the child had
    exited too. It is reaped by polling, so no child watcher is involved.
    """

    def __init__(
        self, proc: subprocess.Popen[bytes], stdout: asyncio.StreamReader, transport: asyncio.BaseTransport,
    ) -> None:
        self._proc = proc
        self._stdout = stdout
        self._transport = transport

    @classmethod
    async def spawn(
        cls, root: str, *, debounce_ms: int, step_ms: int, timeout_ms: int, polling: bool, poll_ms: int,
    ) -> _Child:
        args = [root, "--debounce", str(debounce_ms), "--step", str(step_ms), "--timeout", str(timeout_ms)]
        if polling:
            args += ["--polling", "--poll-delay", str(poll_ms)]
        # Blocks the loop for the fork and exec only (vfork: about a millisecond).
        proc = subprocess.Popen(
            [sys.executable, "-P", _CHILD_SCRIPT, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            stdout = asyncio.StreamReader(limit=_CHILD_LINE_LIMIT)
            transport, _protocol = await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(stdout), proc.stdout,
            )
        except BaseException:
            proc.stdout.close()
            if proc.stdin is not None:
                proc.stdin.close()
            proc.kill()
            proc.wait()
            raise
        return cls(proc, stdout, transport)

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def next_batch(self) -> list[tuple[Change, str]] | None:
        """The next batch (empty on the child's timeouts); None once it has exited."""
        line = await self._stdout.readline()
        if not line:
            return None
        message = json.loads(line)
        if isinstance(message, dict):
            raise WatchChildError(str(message.get("error")))
        return [(Change(change), path) for change, path in message]

    async def _exited(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._proc.poll() is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_CHILD_REAP_POLL_S)
        return True

    async def close(self) -> int:
        """End the child (EOF on its stdin, then SIGKILL: it ignores SIGTERM),
        reap it and return its exit status; idempotent."""
        proc = self._proc
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            if not await self._exited(_CHILD_GRACE_S):
                proc.kill()
            while not await self._exited(_CHILD_GRACE_S):
                pass
        except BaseException:
            # Cancelled while waiting: never leave the child running, nor a zombie.
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise
        finally:
            self._transport.close()
        return proc.returncode


class Watcher:
    """Watches store roots and reports which packages changed."""

    def __init__(
        self,
        roots: Sequence[Path],
        on_change: Callable[[set[PackageName]], None],
        on_reset: Callable[[], None],
        *,
        force_polling: bool = False,
        debounce_ms: int = DEFAULT_DEBOUNCE_MS,
        step_ms: int = DEFAULT_STEP_MS,
        poll_ms: int = DEFAULT_POLL_MS,
        check_ms: int = DEFAULT_CHECK_MS,
    ) -> None:
        self._roots = [os.path.abspath(os.fspath(r)) for r in roots]
        self._on_change = on_change
        self._on_reset = on_reset
        self._force_polling = force_polling
        self._debounce_ms = debounce_ms
        self._step_ms = step_ms
        self._poll_ms = poll_ms
        self._check_ms = check_ms
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.resets = 0  # how many times on_reset was called (diagnostics)

    @property
    def force_polling(self) -> bool:
        return self._force_polling

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not all(t.done() for t in self._tasks)

    async def start(self, *, wait: bool = True) -> None:
        """Start watching; returns when every existing root is watched, or at
        once with ``wait=False`` (see the module docstring)."""
        if self._tasks:
            raise RuntimeError("Watcher already started")
        self._stop = asyncio.Event()
        ready: list[asyncio.Event] = []
        for root in self._roots:
            event = asyncio.Event()
            ready.append(event)
            task = asyncio.create_task(self._watch_root(root, event, reset_first=not wait), name=f"watch {root}")
            self._tasks.append(task)
        if wait:
            await asyncio.gather(*(e.wait() for e in ready))

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop every watch task and wait for them to finish."""
        if self._stop is None:
            return
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:  # a watch thread stuck in a syscall: last resort
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        self._stop = None

    async def __aenter__(self) -> Watcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- internals ---------------------------------------------------------
    def _reset(self) -> None:
        log.debug("watcher reset")
        self.resets += 1
        try:
            self._on_reset()
        except Exception:
            log.exception("watcher on_reset callback failed")

    def _changed(self, names: set[PackageName]) -> None:
        try:
            self._on_change(names)
        except Exception:
            log.exception("watcher on_change callback failed")

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> bool:
        """Sleep unless stopped first; True if stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        return stop.is_set()

    async def _watch_root(self, root: str, ready: asyncio.Event, *, reset_first: bool) -> None:
        try:
            await self._watch_root_until_stopped(root, ready, reset_first=reset_first)
        finally:
            ready.set()  # stopped before the first watch: start() must not hang

    async def _watch_root_until_stopped(self, root: str, ready: asyncio.Event, *, reset_first: bool) -> None:
        stop = self._stop
        assert stop is not None
        parent = os.path.dirname(root)
        needs_reset = False  # whether a watch of this root existed, then lapsed
        missing_since: tuple[int, int, int] | None = None  # parent state when last checked
        missing = False
        backoff = 0.0
        while not stop.is_set():
            identity = _identity(root)
            if identity is None:
                ready.set()  # start() does not wait for a missing root
                state = _dir_state(parent)
                if missing and state != missing_since:
                    # The root may have come and gone between two polls, and
                    # been read meanwhile: nothing watched it, so reset.
                    self._reset()
                elif not missing and needs_reset:
                    # It vanished: whatever was composed from it is void.
                    self._reset()
                missing, missing_since = True, state
                needs_reset = True
                if await self._sleep(stop, self._poll_ms / 1000):
                    return
                continue
            missing = False
            # Without a start() that waited for it, even the first watch may
            # follow reads of the root.
            reset = needs_reset or reset_first
            reset_first = False
            needs_reset = True  # any later restart follows a possible gap
            log.debug("watching %s (inode %s)", root, identity[1])
            try:
                await self._watch(root, identity, stop, functools.partial(self._established, ready, reset))
                log.debug("watch of %s ended", root)
                backoff = 0.0
            except Exception:
                ready.set()  # start() does not wait for a watch that fails
                log.exception("watching %s failed; restarting", root)
                backoff = min(_MAX_BACKOFF_S, backoff * 2 or 0.05)
                if await self._sleep(stop, backoff):
                    return

    def _established(self, ready: asyncio.Event, reset: bool) -> None:
        if reset:
            self._reset()
        ready.set()

    async def _close_when_stopped(self, stop: asyncio.Event, child: _Child) -> None:
        await stop.wait()
        await child.close()

    async def _watch(
        self, root: str, identity: tuple[int, int], stop: asyncio.Event, established: Callable[[], None],
    ) -> None:
        """Watch ``root`` until stopped or until it vanishes or is replaced;
        ``established()`` once the watch exists, before its first batch."""
        polling = self._force_polling
        child = await _Child.spawn(
            root,
            debounce_ms=self._debounce_ms,
            step_ms=self._step_ms,
            # Polling needs timely wake-ups for its echoes (see below).
            timeout_ms=min(self._check_ms, 250) if polling else self._check_ms,
            polling=polling,
            poll_ms=self._poll_ms,
        )
        stopper = asyncio.create_task(self._close_when_stopped(stop, child), name=f"watch child {child.pid}")
        # The polling backend compares mtimes in whole seconds: a second
        # change within the same second as the last one it saw (or as the
        # initial scan) goes unreported. So, when polling, every reported name
        # is reported again once that second is surely over, and the whole
        # view is reset once after the initial scan.
        echoes: dict[PackageName, float] = {}
        reset_at: float | None = None
        first = True
        try:
            while (changes := await child.next_batch()) is not None:
                if first:
                    first = False
                    established()
                    if polling:
                        reset_at = time.monotonic() + POLL_MTIME_GRANULARITY_S
                root_gone = any(path == root and change == Change.deleted for change, path in changes)
                names, lost = names_from_changes(root, changes)
                if changes:
                    log.debug("%s: %d changes -> %s%s", root, len(changes), names, " (lost)" if lost else "")
                if polling:
                    now = time.monotonic()
                    due = {name for name, at in echoes.items() if at <= now}
                    for name in due:
                        del echoes[name]
                    for name in names:
                        echoes[name] = now + POLL_MTIME_GRANULARITY_S
                    names |= due
                    if reset_at is not None and now >= reset_at:
                        reset_at = None
                        self._reset()
                if names:
                    self._changed(names)
                if lost and not root_gone:
                    self._reset()
                if root_gone or _identity(root) != identity:
                    return
            if not stop.is_set():
                raise WatchChildError(f"watch child of {root} exited with status {await child.close()}")
        finally:
            await child.close()
            stopper.cancel()
            await asyncio.gather(stopper, return_exceptions=True)


__all__ = [
    "DEFAULT_CHECK_MS",
    "DEFAULT_DEBOUNCE_MS",
    "DEFAULT_POLL_MS",
    "DEFAULT_STEP_MS",
    "POLL_MTIME_GRANULARITY_S",
    "WatchChildError",
    "Watcher",
    "names_from_changes",
    "names_from_paths",
]
