"""ChangeCounters: per-package change counters shared by the processes of one host.

The composed LRU of each worker process must not serve a packument that
another worker has just changed: a publish acknowledged by one worker must be
visible to the very next request, whichever worker takes it. The
:class:`~overlaystore.watch.Watcher` reports such changes too, but only after
its debounce (~15-30 ms), which is too late for read-your-writes.

So the processes share a small file of 64-bit counters, ``mmap``'d by each:

* the writer bumps the counter of a package (its *slot*: a stable xxh3 hash of
  the name modulo the slot count, so every process agrees on it) synchronously
  after the write and before it is acknowledged;
* a reader records the slot's value *before* it reads the stores to compose
  (together with the view's generation), and on every LRU hit compares the
  current value with the recorded one: a different value is a miss.

A hit costs one unlocked, aligned 8-byte load from shared memory (tens of
nanoseconds). A bump takes an ``fcntl`` byte-range lock on its slot, so
concurrent bumps from several processes never lose an increment (and a
process-wide thread lock, because POSIX record locks belong to the process:
two threads of one process would not exclude each other, and closing any
descriptor of the file drops them). Two names may share a slot; that only
costs the other name a miss.

Invariants:

* **Monotonic while the file lives.** A slot only ever increases, so a value
  recorded before a read differs from the value after any later bump.
* **Advisory.** The file holds no data: losing it, or resetting it, can only
  cost misses, provided every view drops what it validated against the old
  values. A missing file, or one of the wrong size, is replaced by a fresh
  zeroed one (a new inode, created under a directory lock, so concurrent
  openers agree on one file). :meth:`check` notices a replaced or removed file
  (one ``stat``) and switches to the current one; :meth:`bump` checks first,
  so writers always bump the file the other processes read. Every switch
  calls the ``on_reset`` callbacks (the view drops everything), and until a
  process has noticed a switch (the server checks every second) cross-process
  coherence falls back to the watcher.
* **Never modify the file by hand.** Readers map it: truncating it in place
  makes their next read fault (``SIGBUS``). Deleting it is safe.

Scope: one host. The file lives beside the published store,
``<published_root>/.overlaystore/changes`` (a hidden entry, which listings,
the watcher, and copies of the store skip). When the published store moves to
object storage, replicas on other hosts will need a change feed or
revalidation through the store itself; this counter then stays a mere
optimisation among the workers of one host. The watcher also stays, for
changes made by other programs (an operator's ``rm -rf``, a restore, the
``overlaystore`` CLI), which do not bump counters: with several workers it
runs once, in the supervisor, and bumps the counters of what it reports
(``server.worker_watch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import mmap
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

import xxhash

log = logging.getLogger(__name__)

#: Default number of slots (64 KiB of counters).
DEFAULT_SLOTS: Final = 8192
SLOT_BYTES: Final = 8
#: Where the counters live, relative to the published root.
CHANGES_DIR: Final = ".overlaystore"
CHANGES_FILE: Final = "changes"
#: How often a server checks that the file was not replaced (:meth:`ChangeCounters.keep_checked`).
CHECK_INTERVAL_S: Final = 1.0
_MAX = 2**64 - 1

# POSIX record locks belong to the process, not to a descriptor or a thread:
# one lock per process serializes bumps (and opening/closing) of every
# instance, so no thread can take a lock another thread holds, and no close()
# can drop a lock in the middle of a bump.
_process_lock = threading.Lock()


def counters_path(published_root: Path | str) -> Path:
    """The counters file of the store whose published root is ``published_root``."""
    return Path(published_root) / CHANGES_DIR / CHANGES_FILE


def slot_of(name: str, slots: int = DEFAULT_SLOTS) -> int:
    """The slot of ``name``: stable across processes, runs and platforms."""
    return xxhash.xxh3_64_intdigest(name.encode("utf-8")) & (slots - 1)


class ChangeCounters:
    """A file of per-package change counters shared by one host's processes."""

    def __init__(self, path: Path | str, *, slots: int = DEFAULT_SLOTS) -> None:
        if slots < 1 or slots & (slots - 1):
            raise ValueError(f"slots must be a power of two, got {slots}")
        self._path = Path(path)
        self._slots = slots
        self._size = slots * SLOT_BYTES
        self._fd = -1
        self._mm: mmap.mmap | None = None
        self._words: memoryview | None = None
        self._identity: tuple[int, int] | None = None
        self._on_reset: list[Callable[[], None]] = []
        self.resets = 0  # how many times the file was found replaced (diagnostics)
        with _process_lock:
            self._open_locked()

    @classmethod
    def for_store(cls, published_root: Path | str, *, slots: int = DEFAULT_SLOTS) -> ChangeCounters:
        """The counters beside the published store at ``published_root``."""
        return cls(counters_path(published_root), slots=slots)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def slots(self) -> int:
        return self._slots

    def on_reset(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever the file was replaced or removed:
        every value read before is void."""
        self._on_reset.append(callback)

    # --- the hot path -------------------------------------------------------
    def slot(self, name: str) -> int:
        return xxhash.xxh3_64_intdigest(name.encode("utf-8")) & (self._slots - 1)

    def read_slot(self, slot: int) -> int:
        """The counter of ``slot``: one unlocked aligned 8-byte load."""
        return self._words[slot]  # type: ignore[index]

    def read(self, name: str) -> int:
        """The counter of ``name``'s slot."""
        return self._words[self.slot(name)]  # type: ignore[index]

    # --- writes ---------------------------------------------------------------
    def bump(self, name: str) -> int:
        """Increment the counter of ``name``'s slot (never loses an increment
        to a concurrent bump, in this process or another); returns the new value."""
        return self.bump_slot(self.slot(name))

    def bump_slot(self, slot: int) -> int:
        if not 0 <= slot < self._slots:
            raise IndexError(f"slot {slot} out of range")
        return self._bump(slot, slot + 1)

    def bump_all(self) -> None:
        """Increment every slot (one lock over the whole file): the next
        hit of every reader, in every process, on any name is a miss. What a
        watcher reset means to processes that learn of changes only here."""
        self._bump(0, self._slots)

    def _bump(self, first: int, end: int) -> int:
        with _process_lock:
            try:
                reset = self._check_locked()
            except OSError as exc:  # bump the file we have: better than nothing
                log.warning("cannot check the change counters file %s: %s", self._path, exc)
                reset = False
            words = self._words
            assert words is not None
            offset, length = first * SLOT_BYTES, (end - first) * SLOT_BYTES
            fcntl.lockf(self._fd, fcntl.LOCK_EX, length, offset, os.SEEK_SET)
            try:
                for slot in range(first, end):
                    value = words[slot] + 1 if words[slot] < _MAX else 1
                    words[slot] = value
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, length, offset, os.SEEK_SET)
        if reset:
            self._reset()
        return value

    # --- file identity ------------------------------------------------------
    def check(self) -> bool:
        """Whether the file was removed, replaced or resized since it was
        opened. If so, switch to the current file (creating it), call the
        ``on_reset`` callbacks and return True. One ``stat`` otherwise."""
        with _process_lock:
            reset = self._check_locked()
        if reset:
            self._reset()
        return reset

    async def keep_checked(self, interval_s: float = CHECK_INTERVAL_S) -> None:
        """:meth:`check` every ``interval_s`` seconds, forever (run it as a task)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.check()
            except OSError:
                log.exception("cannot check the change counters file %s", self._path)

    def close(self) -> None:
        with _process_lock:
            self._close_locked()

    def __enter__(self) -> ChangeCounters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ----------------------------------------------------------
    def _reset(self) -> None:
        self.resets += 1
        log.warning("the change counters file %s was replaced or removed; dropping the composed view", self._path)
        for callback in list(self._on_reset):
            try:
                callback()
            except Exception:
                log.exception("change counters reset callback %r failed", callback)

    def _check_locked(self) -> bool:
        if self._fd < 0:
            raise ValueError("the change counters are closed")
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == self._identity and st.st_size == self._size:
            return False
        # Open the current file first: if that fails, the old mapping stays
        # (still valid memory), and the next check tries again. A store root
        # that is gone is not recreated (an operator may be about to move a
        # restored one into place).
        try:
            opened = self._map()
        except FileNotFoundError:
            return False
        self._close_locked()
        self._fd, self._mm, self._words, self._identity = opened
        return True

    def _open_locked(self) -> None:
        self._fd, self._mm, self._words, self._identity = self._map()

    def _map(self) -> tuple[int, mmap.mmap, memoryview, tuple[int, int]]:
        directory = self._path.parent
        directory.mkdir(exist_ok=True)  # not its parent: the store root is not ours to create
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # flock on the directory serializes creating/replacing the file
            # between processes (independent of the record locks of bumps).
            fcntl.flock(dir_fd, fcntl.LOCK_EX)
            try:
                fd = self._open_or_replace()
            finally:
                fcntl.flock(dir_fd, fcntl.LOCK_UN)
        finally:
            os.close(dir_fd)
        try:
            st = os.fstat(fd)
            mm = mmap.mmap(fd, self._size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        return fd, mm, memoryview(mm).cast("Q"), (st.st_dev, st.st_ino)

    def _open_or_replace(self) -> int:
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            pass
        else:
            size = os.fstat(fd).st_size
            if size == self._size:
                return fd
            os.close(fd)
            log.warning("the change counters file %s has %d bytes instead of %d; replacing it",
                        self._path, size, self._size)
        # A fresh zeroed file under a temp name, then renamed over: processes
        # that mapped the old one keep valid (if orphaned) memory, and notice
        # the new inode on their next check.
        tmp = self._path.with_name(f".tmp.{os.getpid()}.{secrets.token_hex(6)}.{self._path.name}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, self._size)
            os.replace(tmp, self._path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return fd

    def _close_locked(self) -> None:
        if self._words is not None:
            self._words.release()
            self._words = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._identity = None


__all__ = ["CHANGES_DIR", "CHECK_INTERVAL_S", "CHANGES_FILE", "DEFAULT_SLOTS", "ChangeCounters", "counters_path", "slot_of"]
