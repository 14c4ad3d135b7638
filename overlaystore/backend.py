"""The storage backend contract: a generic, async store of keys and bytes.

A :class:`Backend` knows nothing of npm. Keys are "/"-separated relative
strings (``"@acme/widget/versions/1.0.0.json"``); the first one or two
components (two for ``@scope/name``) are the *package name*, which is the unit
of locking and of :meth:`Backend.package_names`.

Contract (checked by ``tests/test_backend_contract.py`` for every backend):

* **Atomic writes.** A reader sees the old value, the new value or nothing;
  never a torn value. ``write(..., replace=False)`` is write-once: it raises
  :class:`~overlaystore.errors.AlreadyPublished` if the key exists and leaves
  the stored bytes unchanged.
* **Missing is not an error.** Reading a key that does not exist (or that
  vanished under a concurrent wipe) returns ``None``; listing a vanished
  prefix returns nothing.
* **Hidden entries.** Nothing whose path component starts with ``.`` (locks,
  temp files, trash) is ever a key or a package name, and no key may name one:
  :func:`check_key` refuses such keys.
* **Only library errors.** I/O failures surface as
  :class:`~overlaystore.errors.StorageError` / ``StorageFull``.
* **Batching.** :meth:`Backend.read_many` reads many keys (and whole
  "directories") in one call, so a remote or threaded backend pays one round
  trip, not one per key.

The only path-shaped capability, :meth:`Backend.local_path`, is optional
(``None``), used for ``sendfile``; nothing else assumes a filesystem, so an
object-storage backend can implement the same protocol.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, runtime_checkable

from ._types import PackageName
from .atomic import RecoveryReport
from .errors import InvalidInput


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """Size and modification time (epoch seconds) of one stored key."""

    key: str
    size: int
    mtime: float


class BlobWriter(abc.ABC):
    """A streaming write of one key, invisible to readers until :meth:`commit`.

    ``write`` chunks, then ``commit`` (atomic) or ``abort``. As an async
    context manager it aborts on exit unless committed, so an exception (or a
    client that hangs up mid-download) never leaves a partial value behind.
    """

    @abc.abstractmethod
    async def write(self, chunk: bytes) -> None:
        """Append ``chunk``."""

    @abc.abstractmethod
    async def commit(self) -> None:
        """Make the written bytes the key's value, atomically and durably.
        Raises AlreadyPublished for a write-once key that exists."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Discard everything written; idempotent; a no-op after commit."""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Bytes written so far."""

    async def __aenter__(self) -> BlobWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.abort()


@dataclass(frozen=True, slots=True)
class Write:
    """One write of :meth:`Backend.write_in_order`."""

    key: str
    data: bytes
    replace: bool


@runtime_checkable
class Backend(Protocol):
    """A generic async key/bytes store (see the module docstring)."""

    async def read(self, key: str) -> bytes | None:
        """The value of ``key``, or None if absent."""

    async def read_many(self, keys: Iterable[str] = (), *, children_of: Iterable[str] = ()) -> dict[str, bytes]:
        """In one round trip: the present ``keys``, then every key directly
        under each directory prefix in ``children_of`` (``"a/b/"``, not
        recursive). ``keys`` are read *before* the directories are listed,
        which callers rely on (a version file is committed before the metadata
        that mentions it). Absent keys are absent from the result."""

    async def info(self, key: str) -> BlobInfo | None:
        """Size and mtime of ``key``, or None if absent."""

    async def write(self, key: str, data: bytes, *, replace: bool) -> None:
        """Store ``data`` atomically. ``replace=False``: write-once, raises
        AlreadyPublished if ``key`` exists (stored bytes unchanged)."""

    async def write_in_order(self, writes: Sequence[Write]) -> list[str]:
        """Each of ``writes`` as :meth:`write` does it, in one round trip and
        in order: each is durable before the next becomes visible, so a crash
        leaves a prefix of them done. The first failure (AlreadyPublished
        included) ends the call; the writes before it stay. Returns each
        key's change tag, as :meth:`list_children` lists it."""

    async def open_writer(self, key: str, *, replace: bool) -> BlobWriter:
        """A streaming writer for ``key`` (same semantics as :meth:`write`)."""

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Remove every key in ``keys`` in one round trip; the number removed."""

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every key under directory prefix ``prefix`` (``""`` = all,
        else ending in ``/``); the number of keys removed. Concurrent readers
        get the old complete value or a miss."""

    async def list_keys(self, prefix: str = "") -> list[BlobInfo]:
        """Every key under directory prefix ``prefix`` (recursive), sorted."""

    async def list_children(self, prefix: str) -> dict[str, str]:
        """Every key directly under directory prefix ``prefix`` (not
        recursive), without reading or stat-ing them, mapped to an opaque tag
        that changes when the key is written again: what a reader needs to
        keep parsed write-once values across calls. FileBackend's tag is the
        inode number from the directory entry (a replace always gets a new
        one; a delete then re-create may reuse it), an object store's would
        be its ETag."""

    async def read_and_list(self, key: str, prefix: str) -> tuple[bytes | None, dict[str, str]]:
        """In one round trip: the value of ``key`` (None if absent), *then*
        :meth:`list_children` of ``prefix``. Callers rely on the order (the
        listing holds every version file the metadata read first names)."""

    async def package_names(self) -> list[PackageName]:
        """Every package name that has at least one key, sorted."""

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for ``key`` (for sendfile), or None if the backend
        has none. Does no I/O: the file may not exist."""

    def lock(self, name: str) -> AbstractAsyncContextManager[None]:
        """An exclusive lock on package ``name``, held across processes that
        share the store."""

    async def recover(self) -> RecoveryReport:
        """Remove what crashed writers left behind (temp files, trash)."""


class KeyedLocks:
    """In-process exclusive locks by name (asyncio), holding only names in use."""

    __slots__ = ("_locks",)

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        entry = self._locks.get(name)
        if entry is None:
            entry = self._locks[name] = (asyncio.Lock(), [0])
        entry[1][0] += 1  # users, so the entry can be dropped when the last leaves
        try:
            async with entry[0]:
                yield
        finally:
            entry[1][0] -= 1
            if not entry[1][0]:
                del self._locks[name]

    def __len__(self) -> int:
        return len(self._locks)


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid key, else raise InvalidInput.

    Valid: non-empty "/"-separated components, none empty, none starting with
    "." (no ``..``, no hidden entries), no backslash or control characters.
    """
    if not isinstance(key, str) or not key:
        raise InvalidInput(f"invalid storage key {key!r}")
    for part in key.split("/"):
        if not part or part.startswith(".") or "\\" in part or any(ord(c) < 32 for c in part):
            raise InvalidInput(f"invalid storage key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is ``""`` or a valid key followed by "/"."""
    if prefix == "":
        return prefix
    if not isinstance(prefix, str) or not prefix.endswith("/"):
        raise InvalidInput(f"invalid storage prefix {prefix!r}: must be empty or end with '/'")
    check_key(prefix[:-1])
    return prefix


def package_of(key: str) -> PackageName:
    """The package name a key belongs to (first component, two if scoped)."""
    parts = key.split("/")
    if parts[0].startswith("@") and len(parts) > 1:
        return PackageName(f"{parts[0]}/{parts[1]}")
    return PackageName(parts[0])


def lock_file_name(name: str) -> str:
    """The lock file name for package ``name``: "/" escaped (names never contain "%")."""
    return name.replace("/", "%2f") + ".lock"


__all__ = [
    "Backend",
    "BlobInfo",
    "BlobWriter",
    "KeyedLocks",
    "RecoveryReport",
    "Write",
    "check_key",
    "check_prefix",
    "lock_file_name",
    "package_of",
]
