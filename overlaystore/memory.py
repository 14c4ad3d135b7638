"""MemoryBackend: the backend contract in a dict (reference model, test double).

Same observable behaviour as :class:`~overlaystore.disk.FileBackend` for one
process: atomic write-once/replace, ``None`` for missing keys, batched reads,
per-name locks. It has no filesystem, so :meth:`MemoryBackend.local_path` is
``None`` and :meth:`recover` finds nothing. Every operation yields to the
event loop once, like a real backend's thread hop, so tests that race tasks
against it see real interleavings.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from ._types import PackageName
from .atomic import RecoveryReport
from .backend import BlobInfo, BlobWriter, KeyedLocks, Write, check_key, check_prefix, package_of
from .errors import AlreadyPublished, InvalidInput


class MemoryBackend:
    """A :class:`~overlaystore.backend.Backend` holding everything in memory.

    ``clock`` (epoch seconds) stamps the mtime of every write.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._blobs: dict[str, tuple[bytes, float]] = {}
        # list_children tags: a write counter, so a key deleted and written
        # again never shows its old tag.
        self._tags: dict[str, str] = {}
        self._writes = itertools.count(1)
        self._locks = KeyedLocks()

    def __repr__(self) -> str:
        return f"MemoryBackend({len(self._blobs)} keys)"

    async def read(self, key: str) -> bytes | None:
        check_key(key)
        await asyncio.sleep(0)
        entry = self._blobs.get(key)
        return None if entry is None else entry[0]

    async def read_many(self, keys: Iterable[str] = (), *, children_of: Iterable[str] = ()) -> dict[str, bytes]:
        keys = [check_key(key) for key in keys]
        prefixes = [check_prefix(prefix) for prefix in children_of]
        await asyncio.sleep(0)
        out = {key: self._blobs[key][0] for key in keys if key in self._blobs}
        for prefix in prefixes:
            for key in sorted(self._blobs):
                if key.startswith(prefix) and "/" not in key[len(prefix) :]:
                    out[key] = self._blobs[key][0]
        return out

    async def info(self, key: str) -> BlobInfo | None:
        check_key(key)
        await asyncio.sleep(0)
        entry = self._blobs.get(key)
        return None if entry is None else BlobInfo(key=key, size=len(entry[0]), mtime=entry[1])

    async def write(self, key: str, data: bytes, *, replace: bool) -> None:
        check_key(key)
        await asyncio.sleep(0)
        self._store(key, bytes(data), replace=replace)

    async def write_in_order(self, writes: Sequence[Write]) -> list[str]:
        for write in writes:
            check_key(write.key)
        await asyncio.sleep(0)
        for write in writes:
            self._store(write.key, bytes(write.data), replace=write.replace)
        return [self._tags[write.key] for write in writes]

    def _store(self, key: str, data: bytes, *, replace: bool) -> None:
        if not replace and key in self._blobs:
            raise AlreadyPublished(key)
        # A key cannot be both a value and a "directory" of other keys, as on disk.
        if any(k.startswith(key + "/") for k in self._blobs) or any(
            p in self._blobs for p in _parents(key)
        ):
            raise InvalidInput(f"storage key {key!r} collides with an existing key")
        self._blobs[key] = (data, self._clock())
        self._tags[key] = str(next(self._writes))

    async def open_writer(self, key: str, *, replace: bool) -> BlobWriter:
        check_key(key)
        await asyncio.sleep(0)
        return _MemoryWriter(self, key, replace=replace)

    async def delete(self, key: str) -> bool:
        return await self.delete_many([key]) > 0

    async def delete_many(self, keys: Iterable[str]) -> int:
        keys = [check_key(key) for key in keys]
        await asyncio.sleep(0)
        removed = [key for key in keys if self._blobs.pop(key, None) is not None]
        for key in removed:
            self._tags.pop(key, None)
        return len(removed)

    async def delete_prefix(self, prefix: str) -> int:
        check_prefix(prefix)
        await asyncio.sleep(0)
        doomed = [key for key in self._blobs if key.startswith(prefix)]
        for key in doomed:
            del self._blobs[key]
            self._tags.pop(key, None)
        return len(doomed)

    async def list_keys(self, prefix: str = "") -> list[BlobInfo]:
        check_prefix(prefix)
        await asyncio.sleep(0)
        return [
            BlobInfo(key=key, size=len(data), mtime=mtime)
            for key, (data, mtime) in sorted(self._blobs.items())
            if key.startswith(prefix)
        ]

    async def list_children(self, prefix: str) -> dict[str, str]:
        check_prefix(prefix)
        await asyncio.sleep(0)
        return {
            key: self._tags.get(key, "")
            for key in sorted(self._blobs)
            if key.startswith(prefix) and "/" not in key[len(prefix) :]
        }

    async def read_and_list(self, key: str, prefix: str) -> tuple[bytes | None, dict[str, str]]:
        return await self.read(key), await self.list_children(prefix)

    async def package_names(self) -> list[PackageName]:
        await asyncio.sleep(0)
        return sorted({package_of(key) for key in self._blobs})

    def local_path(self, key: str) -> Path | None:
        check_key(key)
        return None

    @asynccontextmanager
    async def lock(self, name: str) -> AsyncIterator[None]:
        if package_of(check_key(name)) != name:
            raise InvalidInput(f"invalid package name for a lock: {name!r}")
        async with self._locks.hold(name):
            yield

    async def recover(self) -> RecoveryReport:
        return RecoveryReport()

    async def check_writable(self) -> None:
        """Always writable (see :meth:`FileBackend.check_writable`)."""
        await asyncio.sleep(0)


def _parents(key: str) -> Iterable[str]:
    parts = key.split("/")
    return ("/".join(parts[:i]) for i in range(1, len(parts)))


class _MemoryWriter(BlobWriter):
    def __init__(self, backend: MemoryBackend, key: str, *, replace: bool) -> None:
        self._backend = backend
        self._key = key
        self._replace = replace
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    async def write(self, chunk: bytes) -> None:
        if self._done:
            raise InvalidInput(f"write to a finished writer for {self._key}")
        await asyncio.sleep(0)
        self._chunks.append(bytes(chunk))
        self._size += len(chunk)

    async def commit(self) -> None:
        if self._done:
            raise InvalidInput(f"commit of a finished writer for {self._key}")
        self._done = True
        await asyncio.sleep(0)
        self._backend._store(self._key, b"".join(self._chunks), replace=self._replace)
        self._chunks = []

    async def abort(self) -> None:
        self._done = True
        self._chunks = []


__all__ = ["MemoryBackend"]
