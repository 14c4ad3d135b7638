"""Small files shared by every worker process: the htpasswd and token files.

:class:`SharedFile` gives three things and nothing more:

* **Atomic replacement.** A new version is written to a temp file in the same
  directory (mode 0600: the files hold password and token hashes), fsynced,
  ``os.replace``d over the old one, and the directory is fsynced. A reader
  never sees a torn file.
* **Cross-process mutual exclusion.** :meth:`SharedFile.locked` holds an
  ``fcntl.flock`` on a sibling ``<name>.lock`` file (never on the data file,
  which is replaced and so would not stay locked). ``flock`` locks belong to
  the open file description, so two threads of one process exclude each other
  too. Writers re-read the file under the lock before changing it, so no
  update made by another process is lost.
* **Change detection.** :meth:`SharedFile.changed` compares the file's stat
  signature (inode, size, mtime, ctime) with the one of the version last read
  or written, so a process notices another one's write on its next request,
  at the cost of one ``stat``.

These are blocking calls; the caller decides whether they run on the event
loop (a stat, a read of a few kilobytes) or in a thread (locked writes).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from overlaystore.errors import StorageError, StorageFull

Signature = tuple[int, int, int, int]


def _signature(st: os.stat_result) -> Signature:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _storage_error(exc: OSError, what: str) -> StorageError:
    cls = StorageFull if getattr(exc, "errno", None) == 28 else StorageError  # ENOSPC
    return cls(f"{what}: {exc.strerror or exc}")


class SharedFile:
    """One small file, read whole and replaced whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._seen: Signature | None = None

    def changed(self) -> bool:
        """Whether the file differs from the version last read or written
        (a missing file counts as unchanged once a missing file was read)."""
        try:
            current: Signature | None = _signature(os.stat(self.path))
        except FileNotFoundError:
            current = None
        except OSError as exc:
            raise _storage_error(exc, f"cannot stat {self.path}") from exc
        return current != self._seen

    def read(self) -> bytes | None:
        """The whole file, or None if it does not exist. Remembers the version read."""
        try:
            with open(self.path, "rb") as fh:
                signature = _signature(os.fstat(fh.fileno()))
                data = fh.read()
        except FileNotFoundError:
            self._seen = None
            return None
        except OSError as exc:
            raise _storage_error(exc, f"cannot read {self.path}") from exc
        self._seen = signature
        return data

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive access among all processes and threads (blocking)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _storage_error(exc, f"cannot lock {self.path}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def replace(self, data: bytes) -> None:
        """Atomically make ``data`` the file's content (call under :meth:`locked`)."""
        directory = self.path.parent
        tmp = directory / f".tmp.{os.getpid()}.{secrets.token_hex(4)}.{self.path.name}"
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
                signature = _signature(os.fstat(fd))
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise _storage_error(exc, f"cannot write {self.path}") from exc
        # rename() updates the inode's ctime on some filesystems: stat again.
        try:
            self._seen = _signature(os.stat(self.path))
        except OSError:
            self._seen = signature


__all__ = ["SharedFile"]
