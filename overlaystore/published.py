"""PublishedLayer: the write-once, durable layer of packages published here.

Contract:

* :meth:`PublishedLayer.put` is write-once: a key that exists raises
  :class:`~overlaystore.errors.AlreadyPublished` and its bytes stay unchanged.
* There is **no delete and no replace** in the public API. The only mutations
  beyond ``put`` go through a :class:`PackageTransaction`, which exists only
  while the package lock is held (``async with layer.transaction(name)``):

  - :meth:`PackageTransaction.replace_meta`: the one mutable document per
    package (``<name>/package-meta.json``: dist-tags, tombstones, ...);
  - :meth:`PackageTransaction.commit_version`: a publish's tarball, version
    file and (when it changed beyond what the version file records)
    metadata, in that order;
  - :meth:`PackageTransaction.remove_orphan` (and the tarball write of
    ``commit_version``): repair of a file a crashed publish left without its
    commit record. The caller must have checked, under this same lock, that
    the file is an orphan.

* Nothing is ever evicted; cache operations cannot reach this layer (the
  :class:`~overlaystore.layered.LayeredStore` keeps the two on separate
  backends).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from ._types import PackageName
from .atomic import RecoveryReport
from .backend import Backend, BlobInfo, BlobWriter, Write, check_key, package_of
from .errors import InvalidInput, StorageError

META_FILE: Final = "package-meta.json"


def meta_key(name: str) -> str:
    """The key of the mutable metadata document of package ``name``."""
    return f"{name}/{META_FILE}"


class PublishedLayer:
    """Write-once storage of published packages on ``backend``."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    @property
    def backend(self) -> Backend:
        return self._backend

    def __repr__(self) -> str:
        return f"PublishedLayer({self._backend!r})"

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under a new ``key``. Raises AlreadyPublished if it exists."""
        if _is_meta(key):
            raise InvalidInput(f"{key} is mutable: replace it inside a transaction")
        await self._backend.write(key, data, replace=False)

    async def open_writer(self, key: str) -> BlobWriter:
        """A streaming write-once writer (commit raises AlreadyPublished if ``key`` exists)."""
        if _is_meta(key):
            raise InvalidInput(f"{key} is mutable: replace it inside a transaction")
        return await self._backend.open_writer(key, replace=False)

    async def get(self, key: str) -> bytes | None:
        return await self._backend.read(key)

    async def get_many(self, keys: Iterable[str] = (), *, children_of: Iterable[str] = ()) -> dict[str, bytes]:
        """One batched read; see :meth:`Backend.read_many`."""
        return await self._backend.read_many(keys, children_of=children_of)

    async def info(self, key: str) -> BlobInfo | None:
        return await self._backend.info(key)

    async def keys(self, prefix: str = "") -> list[BlobInfo]:
        """Every key under directory prefix ``prefix``, with size and mtime."""
        return await self._backend.list_keys(prefix)

    async def get_and_list(self, key: str, prefix: str) -> tuple[bytes | None, dict[str, str]]:
        """``key``'s value, then the keys under ``prefix`` with their change
        tags, in one round trip; see :meth:`Backend.read_and_list`."""
        return await self._backend.read_and_list(key, prefix)

    async def names(self) -> list[PackageName]:
        return await self._backend.package_names()

    def local_path(self, key: str) -> Path | None:
        return self._backend.local_path(key)

    async def recover(self) -> RecoveryReport:
        return await self._backend.recover()

    @asynccontextmanager
    async def transaction(self, name: PackageName) -> AsyncIterator[PackageTransaction]:
        """Hold the package lock (in-process and cross-process) of ``name``."""
        async with self._backend.lock(name):
            txn = PackageTransaction(self._backend, name)
            try:
                yield txn
            finally:
                txn._closed = True


class PackageTransaction:
    """The mutations allowed only under the package lock. Unusable after the
    ``async with`` block ends."""

    __slots__ = ("_backend", "_closed", "name")

    def __init__(self, backend: Backend, name: PackageName) -> None:
        self._backend = backend
        self.name = name
        self._closed = False

    def _check(self, key: str) -> None:
        if self._closed:
            raise StorageError(f"the transaction on {self.name} has ended")
        if package_of(check_key(key)) != self.name:
            raise InvalidInput(f"{key} does not belong to {self.name}")

    async def replace_meta(self, data: bytes) -> None:
        """Atomically replace the package metadata document."""
        key = meta_key(self.name)
        self._check(key)
        await self._backend.write(key, data, replace=True)

    async def commit_version(
        self, tarball: tuple[str, bytes], version: tuple[str, bytes], meta: bytes | None
    ) -> str:
        """A publish's writes in one round trip, each durable before the next
        is visible: the tarball (replacing any orphan of a crashed publish:
        the caller checked under this lock that the version is not
        published), the version file (write-once: the commit point), then the
        metadata unless ``meta`` is None. A failure leaves the writes before
        it done. Returns the version file's change tag (see
        :meth:`Backend.list_children`)."""
        for key, _ in (tarball, version):
            self._check(key)
            if _is_meta(key):
                raise InvalidInput(f"{key} is the metadata document, not a file of a version")
        writes = [Write(tarball[0], tarball[1], replace=True), Write(version[0], version[1], replace=False)]
        if meta is not None:
            writes.append(Write(meta_key(self.name), meta, replace=True))
        tags = await self._backend.write_in_order(writes)
        return tags[1]

    async def remove_orphan(self, key: str) -> bool:
        """Remove a file a crashed publish left behind (caller verified it)."""
        self._check(key)
        return await self._backend.delete(key)


def _is_meta(key: str) -> bool:
    check_key(key)
    return key == meta_key(package_of(key))


__all__ = ["META_FILE", "PackageTransaction", "PublishedLayer", "meta_key"]
