"""Atomic, durable file writes and recovery of what a crash leaves behind.

Every file the filesystem backend creates goes through here:

1. the bytes are written to a temp file *in the destination directory*, named
   ``.tmp.<pid>.<rand>.<base>`` so that recovery can tell whose it is;
2. the temp file is fsync'd;
3. it is moved into place with ``os.link`` (no-replace: fails if the name
   exists, which is what makes published keys write-once) or ``os.replace``
   (replace), both atomic: a reader sees the old file, the new file or no
   file, never a torn one;
4. the temp name is unlinked and the directory fsync'd, so the new name
   survives a power cut.

A directory that vanishes mid-write (``rm -rf`` of a cache root, a concurrent
wipe) is recreated and the move retried from the still-open temp file (a few
times, if wipes keep racing the write).

:func:`recover` removes temp files whose writer is dead (or that are older
than an hour, which covers pid reuse) and trash directories left by an
interrupted wipe. :func:`translate` is the one place where ``OSError`` becomes
a :class:`~overlaystore.errors.StorageError`.

All functions here block; callers run them off the event loop.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from .errors import StorageError, StorageFull

TEMP_PREFIX: Final = ".tmp."
TRASH_PREFIX: Final = ".trash."
#: A temp file older than this is garbage even if its pid is alive (pid reuse).
STALE_AFTER: Final = 3600.0

_COPY_CHUNK = 1 << 20
# How often a write retries when its directory keeps vanishing (each retry
# means a concurrent wipe made progress, so a small bound suffices).
_ATTEMPTS = 32


def temp_name(base: str) -> str:
    """A fresh temp file name for destination file name ``base``."""
    return f"{TEMP_PREFIX}{os.getpid()}.{secrets.token_hex(6)}.{base}"


def trash_name() -> str:
    """A fresh name for a directory whose contents are about to be deleted."""
    return f"{TRASH_PREFIX}{os.getpid()}.{secrets.token_hex(6)}"


def parse_temp_name(name: str) -> int | None:
    """The writer pid encoded in a temp (or trash) name, or None if ``name`` is not one."""
    for prefix in (TEMP_PREFIX, TRASH_PREFIX):
        if name.startswith(prefix):
            pid, _, _ = name[len(prefix) :].partition(".")
            return int(pid) if pid.isdigit() else None
    return None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux-aware)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill()
    # The state letter follows the parenthesised command name, which may itself
    # contain spaces or parentheses, hence rpartition.
    state = stat.rpartition(")")[2].split()[:1]
    return state not in (["Z"], ["X"])


def translate(exc: OSError, what: str) -> StorageError:
    """The library error for an ``OSError`` raised while doing ``what``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"no space left on the storage device while {what}")
    return StorageError(f"storage failure while {what}: {exc.strerror or exc}")


def fsync_dir(directory: Path) -> None:
    """Make the directory entries of ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A file being written under a temp name; invisible until :meth:`commit`.

    ``AtomicFile(path).write(...); .commit(replace=...)``. Exactly one of
    :meth:`commit` / :meth:`abort` ends it; both close the temp file. Raises
    ``OSError`` (callers translate), and :class:`FileExistsError` from a
    no-replace commit onto an existing name (the temp file is removed).
    """

    __slots__ = ("_file", "_path", "_temp")

    def __init__(self, path: Path) -> None:
        self._path = path
        self._temp, self._file = self._open_temp()

    def _open_temp(self) -> tuple[Path, IO[bytes]]:
        directory = self._path.parent
        for attempt in range(_ATTEMPTS):
            temp = directory / temp_name(self._path.name)
            try:
                # "+": readable, to copy the bytes over if the directory is wiped
                return temp, open(temp, "x+b")  # noqa: SIM115 - closed in commit/abort
            except FileNotFoundError:
                if attempt == _ATTEMPTS - 1:
                    raise
                directory.mkdir(parents=True, exist_ok=True)
        raise AssertionError("unreachable")

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def commit(self, *, replace: bool) -> int:
        """Flush, fsync, move into place, fsync the directory. Returns the
        inode number the file now has at its path."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            for attempt in range(_ATTEMPTS):
                try:
                    self._move(replace=replace)
                    inode = os.fstat(self._file.fileno()).st_ino
                    break
                except FileNotFoundError:
                    # The directory vanished under us (wipe / rm -rf) and took
                    # the temp name with it; the open file still holds the bytes.
                    if attempt == _ATTEMPTS - 1:
                        raise
                    self._recreate_temp()
        finally:
            self._discard()
        try:
            fsync_dir(self._path.parent)
        except FileNotFoundError:
            pass  # wiped right after the move: as if the wipe came later
        return inode

    def _move(self, *, replace: bool) -> None:
        if replace:
            os.replace(self._temp, self._path)
        else:
            os.link(self._temp, self._path)

    def _recreate_temp(self) -> None:
        old = self._file
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._temp, self._file = self._open_temp()
        try:
            old.seek(0)
            shutil.copyfileobj(old, self._file, _COPY_CHUNK)
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            old.close()

    def abort(self) -> None:
        """Throw the temp file away; the destination is untouched."""
        self._discard()

    def _discard(self) -> None:
        try:
            # close() flushes what is still buffered; on a full disk that
            # fails again (the fd is closed all the same). The bytes are being
            # thrown away: the temp file must go, or it keeps the space taken.
            self._file.close()
        except OSError:
            pass
        try:
            os.unlink(self._temp)
        except FileNotFoundError:
            pass  # replaced into place, or wiped with its directory


def write_file(path: Path, data: bytes, *, replace: bool) -> int:
    """Atomically create (``replace=False``: FileExistsError if present) or
    replace ``path`` with ``data``, durably. Creates missing parent
    directories. Returns the file's inode number."""
    atomic = AtomicFile(path)
    try:
        atomic.write(data)
    except BaseException:
        atomic.abort()
        raise
    return atomic.commit(replace=replace)


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What :func:`recover` removed."""

    temp_files: int = 0
    trash_dirs: int = 0


def recover(root: Path, *, now: float | None = None, stale_after: float = STALE_AFTER) -> RecoveryReport:
    """Remove leftover temp files and trash directories under ``root``.

    A temp file is removed when its writer pid is dead, or when it is older
    than ``stale_after`` seconds. Temp files of live writers (other workers
    sharing the store) are left alone. Missing ``root`` is not an error.
    """
    now = time.time() if now is None else now
    temps = trash = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for dirname in list(dirnames):
            if dirname.startswith(TRASH_PREFIX):
                dirnames.remove(dirname)
                if _is_stale(os.path.join(dirpath, dirname), dirname, now, stale_after):
                    shutil.rmtree(os.path.join(dirpath, dirname), ignore_errors=True)
                    trash += 1
        for filename in filenames:
            if not filename.startswith(TEMP_PREFIX):
                continue
            full = os.path.join(dirpath, filename)
            if _is_stale(full, filename, now, stale_after):
                try:
                    os.unlink(full)
                    temps += 1
                except FileNotFoundError:
                    pass
    return RecoveryReport(temp_files=temps, trash_dirs=trash)


def _is_stale(full: str, name: str, now: float, stale_after: float) -> bool:
    pid = parse_temp_name(name)
    if pid is None or not pid_alive(pid):
        return True
    try:
        return now - os.lstat(full).st_mtime > stale_after
    except FileNotFoundError:
        return False


__all__ = [
    "STALE_AFTER",
    "TEMP_PREFIX",
    "TRASH_PREFIX",
    "AtomicFile",
    "RecoveryReport",
    "fsync_dir",
    "parse_temp_name",
    "pid_alive",
    "recover",
    "temp_name",
    "trash_name",
    "translate",
    "write_file",
]
