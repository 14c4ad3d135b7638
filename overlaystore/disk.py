"""FileBackend: the :class:`~overlaystore.backend.Backend` contract on a local directory.

Keys map to paths under ``root`` ("/" separated, scoped names nest as
``@scope/name/``). Invariants, beyond the backend contract:

* Blocking I/O never runs on the event loop, and it is *batched*: every public
  method is one ``asyncio.to_thread`` hop (``read_many`` of a whole fragment
  included), the streaming writer buffers chunks before hopping.
* Files are only ever created by :mod:`overlaystore.atomic` (temp + fsync +
  link/replace + dir fsync) and only ever removed by ``unlink`` or by renaming
  a whole directory into a hidden ``.trash.*`` directory first; a file is never
  modified in place, so a reader that opened it keeps reading complete bytes.
* Anything that vanished (a concurrent wipe, an operator's ``rm -rf`` of the
  whole root) reads as ``None``; a write into a vanished directory recreates
  it.
* Hidden entries (``.locks``, ``.tmp.*``, ``.trash.*``) are skipped by every
  listing.

Locking: ``lock(name)`` is an in-process ``asyncio.Lock`` (so one task per
process contends for the file lock) plus ``fcntl.flock`` on
``<root>/.locks/<escaped name>.lock`` for the other worker processes sharing
the store. The uncontended case is one thread hop (open + non-blocking flock);
a contended wait blocks in a dedicated daemon thread rather than in the shared
``to_thread`` pool, so waiters can never starve the pool of the threads the
lock holders need to finish (a cross-process deadlock otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import stat
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Final, TypeVar

from . import atomic
from ._types import PackageName
from .atomic import RecoveryReport
from .backend import BlobInfo, BlobWriter, KeyedLocks, Write, check_key, check_prefix, lock_file_name, package_of
from .errors import AlreadyPublished, InvalidInput

LOCK_DIR: Final = ".locks"
#: The streaming writer hops to a thread once this much is buffered.
WRITE_BUFFER: Final = 256 * 1024

_T = TypeVar("_T")
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


class FileBackend:
    """A :class:`~overlaystore.backend.Backend` on the directory ``root``.

    The root is created by the first write (or :meth:`recover`); a missing root
    reads as empty.
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        self._locks = KeyedLocks()

    @property
    def root(self) -> Path:
        return self._root

    def __repr__(self) -> str:
        return f"FileBackend({str(self._root)!r})"

    async def _io(self, what: str, fn: Callable[..., _T], *args: object) -> _T:
        try:
            return await asyncio.to_thread(fn, *args)
        except OSError as exc:
            raise atomic.translate(exc, what) from exc

    def _path(self, key: str) -> Path:
        return self._root / check_key(key)

    # --- reads

    async def read(self, key: str) -> bytes | None:
        return await self._io(f"reading {key}", _read, self._path(key))

    async def read_many(self, keys: Iterable[str] = (), *, children_of: Iterable[str] = ()) -> dict[str, bytes]:
        files = [(key, self._path(key)) for key in keys]
        dirs = [(prefix, self._root / check_prefix(prefix)) for prefix in children_of]
        return await self._io("reading", _read_many, files, dirs)

    async def info(self, key: str) -> BlobInfo | None:
        return await self._io(f"reading {key}", _info, key, self._path(key))

    async def list_keys(self, prefix: str = "") -> list[BlobInfo]:
        return await self._io("listing", _list, self._root, check_prefix(prefix))

    async def list_children(self, prefix: str) -> dict[str, str]:
        return await self._io("listing", _children, self._root / check_prefix(prefix), prefix)

    async def read_and_list(self, key: str, prefix: str) -> tuple[bytes | None, dict[str, str]]:
        directory = self._root / check_prefix(prefix)
        return await self._io(f"reading {key}", _read_and_list, self._path(key), directory, prefix)

    async def package_names(self) -> list[PackageName]:
        return await self._io("listing", _package_names, self._root)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    # --- writes

    async def write(self, key: str, data: bytes, *, replace: bool) -> None:
        path = self._path(key)
        if await self._io(f"writing {key}", _write, path, bytes(data), replace) is None:
            raise AlreadyPublished(key)

    async def write_in_order(self, writes: Sequence[Write]) -> list[str]:
        # One thread hop for all of them: a publish is three small writes, and
        # two extra hops cost about as much as a third fsync.
        planned = [(w.key, self._path(w.key), bytes(w.data), w.replace) for w in writes]
        return await self._io("writing", _write_in_order, planned)

    async def open_writer(self, key: str, *, replace: bool) -> BlobWriter:
        path = self._path(key)
        handle = await self._io(f"writing {key}", atomic.AtomicFile, path)
        return _FileWriter(self, key, handle, replace=replace)

    async def delete(self, key: str) -> bool:
        return await self.delete_many([key]) > 0

    async def delete_many(self, keys: Iterable[str]) -> int:
        paths = [self._path(key) for key in keys]
        return await self._io("deleting", _delete_many, self._root, paths)

    async def delete_prefix(self, prefix: str) -> int:
        return await self._io("deleting", _delete_prefix, self._root, check_prefix(prefix))

    async def recover(self) -> RecoveryReport:
        return await self._io("recovering", _recover, self._root)

    async def check_writable(self) -> None:
        """Create and remove a hidden probe file in the root (created if
        missing); raises StorageError if either fails. For readiness checks."""
        await self._io("checking that the store is writable", _probe, self._root)

    # --- locking

    @contextlib.asynccontextmanager
    async def lock(self, name: str) -> AsyncIterator[None]:
        if package_of(check_key(name)) != name:
            raise InvalidInput(f"invalid package name for a lock: {name!r}")
        async with self._locks.hold(name):
            fd = await self._file_lock(name)
            try:
                yield
            finally:
                _release(fd)  # non-blocking syscalls: safe in a finally, even on cancel

    async def _file_lock(self, name: str) -> int:
        path = self._root / LOCK_DIR / lock_file_name(name)
        try:
            # On the loop: open, a non-blocking flock and two stats of a file
            # in a local directory cost microseconds, a thread hop a few
            # hundred (every write pays this first). Only a held lock is
            # waited for in a thread.
            fd = _try_lock(path)
        except OSError as exc:
            raise atomic.translate(exc, f"locking {name}") from exc
        if fd is not None:
            return fd
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        thread = threading.Thread(
            target=_lock_in_thread, args=(loop, future, path), name=f"flock {name}", daemon=True
        )
        thread.start()
        try:
            return await future
        except OSError as exc:
            raise atomic.translate(exc, f"locking {name}") from exc


class _FileWriter(BlobWriter):
    """Streams into an :class:`~overlaystore.atomic.AtomicFile`, buffering chunks."""

    def __init__(self, backend: FileBackend, key: str, handle: atomic.AtomicFile, *, replace: bool) -> None:
        self._backend = backend
        self._key = key
        self._handle = handle
        self._replace = replace
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._size = 0
        self._state = "open"  # -> "ending" -> "done"

    @property
    def size(self) -> int:
        return self._size

    async def write(self, chunk: bytes) -> None:
        if self._state != "open":
            raise InvalidInput(f"write to a finished writer for {self._key}")
        self._buffer.append(bytes(chunk))
        self._buffered += len(chunk)
        self._size += len(chunk)
        if self._buffered >= WRITE_BUFFER:
            data, self._buffer, self._buffered = b"".join(self._buffer), [], 0
            try:
                await self._backend._io(f"writing {self._key}", self._handle.write, data)
            except BaseException:
                await self.abort()
                raise

    async def commit(self) -> None:
        if self._state != "open":
            raise InvalidInput(f"commit of a finished writer for {self._key}")
        # Once the commit is handed to a thread it runs to its end even if this
        # task is cancelled; "ending" keeps a concurrent abort() off the file.
        self._state = "ending"
        data, self._buffer = b"".join(self._buffer), []
        try:
            created = await self._backend._io(f"writing {self._key}", _finish, self._handle, data, self._replace)
        finally:
            self._state = "done"
        if not created:
            raise AlreadyPublished(self._key)

    async def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "done"
        self._buffer = []
        try:
            await asyncio.to_thread(self._handle.abort)
        except OSError:
            pass  # the temp file is garbage either way; recovery removes it


# --- blocking helpers (run in a worker thread)


def _read(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except _MISSING:
        return None


def _read_many(files: list[tuple[str, Path]], dirs: list[tuple[str, Path]]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key, path in files:
        data = _read(path)
        if data is not None:
            out[key] = data
    for prefix, path in dirs:
        try:
            entries = sorted(e.name for e in os.scandir(path) if not e.name.startswith("."))
        except _MISSING:
            continue
        for name in entries:
            data = _read(path / name)
            if data is not None:
                out[prefix + name] = data
    return out


def _info(key: str, path: Path) -> BlobInfo | None:
    try:
        st = os.stat(path)
    except _MISSING:
        return None
    if not _is_file(st.st_mode):
        return None
    return BlobInfo(key=key, size=st.st_size, mtime=st.st_mtime)


def _is_file(mode: int) -> bool:
    return stat.S_ISREG(mode)


def _list(root: Path, prefix: str) -> list[BlobInfo]:
    out: list[BlobInfo] = []
    stack = [(root / prefix if prefix else root, prefix)]
    while stack:
        path, key_prefix = stack.pop()
        try:
            entries = list(os.scandir(path))
        except _MISSING:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), f"{key_prefix}{entry.name}/"))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    out.append(BlobInfo(key=key_prefix + entry.name, size=st.st_size, mtime=st.st_mtime))
            except FileNotFoundError:
                continue  # removed while we looked
    out.sort(key=lambda info: info.key)
    return out


def _children(path: Path, prefix: str) -> dict[str, str]:
    # d_type and d_ino come with the directory entry: a stat per file costs as
    # much as reading a small one, which is what this listing exists to avoid.
    try:
        entries = sorted(
            (e for e in os.scandir(path) if not e.name.startswith(".") and e.is_file(follow_symlinks=False)),
            key=lambda e: e.name,
        )
    except _MISSING:
        return {}
    return {prefix + e.name: str(e.inode()) for e in entries}


def _read_and_list(path: Path, directory: Path, prefix: str) -> tuple[bytes | None, dict[str, str]]:
    return _read(path), _children(directory, prefix)


def _subdirs(path: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(path) if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
    except _MISSING:
        return []


def _package_names(root: Path) -> list[PackageName]:
    names: list[PackageName] = []
    for top in _subdirs(root):
        if top.startswith("@"):
            names.extend(PackageName(f"{top}/{sub}") for sub in _subdirs(root / top))
        else:
            names.append(PackageName(top))
    names.sort()
    return names


def _prune(root: Path, directory: Path) -> None:
    """Remove now-empty directories from ``directory`` up to (not including) ``root``."""
    while directory != root and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (or gone): stop
        directory = directory.parent


def _delete_many(root: Path, paths: list[Path]) -> int:
    removed = 0
    for path in paths:
        try:
            os.unlink(path)
        except _MISSING:
            continue
        removed += 1
        _prune(root, path.parent)
    return removed


def _count_files(path: Path) -> int:
    count = 0
    for _, _, files in os.walk(path):
        count += sum(1 for name in files if not name.startswith("."))
    return count


def _delete_prefix(root: Path, prefix: str) -> int:
    # Rename first, delete later: the subtree disappears atomically from the
    # key space, and readers holding open files keep complete bytes.
    trash = root / atomic.trash_name()
    if prefix:
        source = root / prefix.rstrip("/")
        try:
            os.rename(source, trash)
        except _MISSING:
            return 0
        _prune(root, source.parent)
    else:
        try:
            entries = [e.name for e in os.scandir(root) if not e.name.startswith(".")]
        except _MISSING:
            return 0
        if not entries:
            return 0
        trash.mkdir()
        for name in entries:
            try:
                os.rename(root / name, trash / name)
            except _MISSING:
                continue
    count = _count_files(trash)
    shutil.rmtree(trash, ignore_errors=True)
    return count


def _recover(root: Path) -> RecoveryReport:
    root.mkdir(parents=True, exist_ok=True)
    (root / LOCK_DIR).mkdir(exist_ok=True)
    return atomic.recover(root)


def _probe(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    # A temp-file name: recovery removes it should we die between the two steps.
    path = root / atomic.temp_name("probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"probe")
    finally:
        os.close(fd)
        os.unlink(path)


def _open_lock_file(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def _is_current(fd: int, path: Path) -> bool:
    """Whether the locked fd is still the file at ``path`` (not one removed and
    recreated meanwhile, which another process could lock concurrently)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _try_lock(path: Path) -> int | None:
    """Open and lock without blocking: the fd, or None if the lock is held."""
    while True:
        fd = _open_lock_file(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if _is_current(fd, path):
            return fd
        _release(fd)


def _lock_blocking(path: Path) -> int:
    while True:
        fd = _open_lock_file(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        if _is_current(fd, path):
            return fd
        _release(fd)


def _lock_in_thread(loop: asyncio.AbstractEventLoop, future: asyncio.Future[int], path: Path) -> None:
    try:
        fd = _lock_blocking(path)
    except BaseException as exc:  # noqa: BLE001 - handed to the waiting task
        with contextlib.suppress(RuntimeError):  # loop closed: nobody waits
            loop.call_soon_threadsafe(_fail, future, exc)
        return
    try:
        loop.call_soon_threadsafe(_deliver, future, fd)
    except RuntimeError:
        _release(fd)


def _deliver(future: asyncio.Future[int], fd: int) -> None:
    if future.done():  # the waiter was cancelled: give the lock back
        _release(fd)
    else:
        future.set_result(fd)


def _fail(future: asyncio.Future[int], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _release(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes, replace: bool) -> int | None:
    """The file's inode number (its listing tag); None if a no-replace write
    found the key taken (stored bytes untouched)."""
    try:
        return atomic.write_file(path, data, replace=replace)
    except FileExistsError:
        if replace:
            raise
        return None


def _write_in_order(writes: list[tuple[str, Path, bytes, bool]]) -> list[str]:
    tags: list[str] = []
    for key, path, data, replace in writes:
        try:
            inode = _write(path, data, replace)
        except OSError as exc:
            raise atomic.translate(exc, f"writing {key}") from exc
        if inode is None:
            raise AlreadyPublished(key)
        tags.append(str(inode))  # the tag _children gives it
    return tags


def _finish(handle: atomic.AtomicFile, data: bytes, replace: bool) -> bool:
    try:
        if data:
            handle.write(data)
    except BaseException:
        handle.abort()
        raise
    try:
        handle.commit(replace=replace)
    except FileExistsError:
        if replace:
            raise
        return False
    return True


__all__ = ["LOCK_DIR", "FileBackend"]
