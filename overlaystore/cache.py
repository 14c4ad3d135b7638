"""CacheLayer: the disposable layer of upstream copies, with LRU/TTL GC and wipe.

Contract:

* Writes replace (upstream data changes); every value is still written
  atomically, so a reader sees a complete old value, a complete new value or a
  miss, never a torn one, including while :meth:`CacheLayer.wipe` or
  :meth:`CacheLayer.gc` run.
* Access is tracked **in memory** (no write, no fsync per read). GC orders
  entries by ``max(last access seen by this process, file mtime)``, so entries
  written by other workers or a previous run still age sensibly.
* ``gc(max_bytes, max_age)`` evicts everything idle for longer than
  ``max_age``, then least-recently-used entries until the total is at most
  ``max_bytes``.
* Nothing here can reach published data: the layer only ever touches its own
  backend, which :class:`~overlaystore.layered.LayeredStore` keeps separate
  from the published one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ._types import PackageName
from .atomic import RecoveryReport
from .backend import Backend, BlobInfo, BlobWriter, check_key, package_of
from .errors import InvalidInput


@dataclass(frozen=True, slots=True)
class CacheMeta:
    """Freshness data of a cached upstream packument."""

    fetched_at: float  # epoch seconds of the last successful (200 or 304) fetch
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True, slots=True)
class CachedPackument:
    """An upstream packument as received (bytes) and its freshness data."""

    body: bytes
    meta: CacheMeta


@dataclass(frozen=True, slots=True)
class GCReport:
    """What one :meth:`CacheLayer.gc` run found and removed."""

    entries_before: int
    bytes_before: int
    entries_after: int
    bytes_after: int
    evicted: int
    bytes_freed: int
    seconds: float


@dataclass(frozen=True, slots=True)
class WipeReport:
    """What one :meth:`CacheLayer.wipe` removed."""

    entries: int
    bytes: int
    seconds: float


class CacheLayer:
    """Replaceable, evictable storage of upstream copies on ``backend``.

    ``clock`` gives epoch seconds (``time.time``); it stamps accesses and is
    the "now" of ``max_age``.
    """

    def __init__(self, backend: Backend, *, clock: Callable[[], float] = time.time) -> None:
        self._backend = backend
        self._clock = clock
        self._access: dict[str, float] = {}

    @property
    def backend(self) -> Backend:
        return self._backend

    def __repr__(self) -> str:
        return f"CacheLayer({self._backend!r})"

    # --- reads and writes

    async def put(self, key: str, data: bytes) -> None:
        """Store (or replace) ``key`` atomically."""
        await self._backend.write(key, data, replace=True)
        self._access[key] = self._clock()

    async def open_writer(self, key: str) -> BlobWriter:
        """A streaming writer; commit atomically replaces ``key``."""
        return _TrackedWriter(await self._backend.open_writer(key, replace=True), self, key)

    async def get(self, key: str) -> bytes | None:
        """The value of ``key`` or None; a hit counts as an access."""
        data = await self._backend.read(key)
        if data is not None:
            self._access[key] = self._clock()
        return data

    async def get_many(self, keys: Iterable[str] = (), *, children_of: Iterable[str] = ()) -> dict[str, bytes]:
        """One batched read (see :meth:`Backend.read_many`); hits count as accesses."""
        found = await self._backend.read_many(keys, children_of=children_of)
        now = self._clock()
        for key in found:
            self._access[key] = now
        return found

    async def info(self, key: str) -> BlobInfo | None:
        """Size and mtime of ``key``; not an access (see :meth:`touch`)."""
        return await self._backend.info(key)

    def touch(self, key: str) -> None:
        """Record an access made without :meth:`get` (e.g. a sendfile of the path)."""
        self._access[check_key(key)] = self._clock()

    def last_access(self, key: str) -> float | None:
        """The last access this process saw, if any."""
        return self._access.get(key)

    async def keys(self, prefix: str = "") -> list[BlobInfo]:
        return await self._backend.list_keys(prefix)

    async def names(self) -> list[PackageName]:
        return await self._backend.package_names()

    def local_path(self, key: str) -> Path | None:
        return self._backend.local_path(key)

    async def recover(self) -> RecoveryReport:
        return await self._backend.recover()

    # --- eviction

    async def evict(self, key: str) -> bool:
        """Remove ``key``; True if it was cached."""
        self._access.pop(key, None)
        return await self._backend.delete(key)

    async def evict_package(self, name: PackageName) -> int:
        """Remove every cached key of package ``name``; the number removed."""
        if package_of(check_key(name)) != name:
            raise InvalidInput(f"invalid package name {name!r}")
        prefix = f"{name}/"
        for key in [k for k in self._access if k.startswith(prefix)]:
            del self._access[key]
        return await self._backend.delete_prefix(prefix)

    async def gc(self, max_bytes: int | None = None, max_age: float | None = None) -> GCReport:
        """Evict entries idle longer than ``max_age`` seconds, then the least
        recently used until the total size is at most ``max_bytes``."""
        if max_bytes is not None and max_bytes < 0:
            raise InvalidInput("max_bytes must not be negative")
        if max_age is not None and max_age < 0:
            raise InvalidInput("max_age must not be negative")
        started = time.perf_counter()
        entries = await self._backend.list_keys("")
        now = self._clock()

        def last_used(info: BlobInfo) -> float:
            return max(self._access.get(info.key, 0.0), info.mtime)

        # Oldest first; the key breaks ties so that runs are deterministic.
        order = sorted(entries, key=lambda info: (last_used(info), info.key))
        bytes_before = sum(info.size for info in entries)
        total = bytes_before
        doomed: list[BlobInfo] = []
        for info in order:
            too_old = max_age is not None and last_used(info) < now - max_age
            too_big = max_bytes is not None and total > max_bytes
            if not (too_old or too_big):
                if max_age is None:
                    break  # sorted: nothing later is older, and we are under the cap
                continue
            doomed.append(info)
            total -= info.size
        if doomed:
            await self._backend.delete_many(info.key for info in doomed)
        gone = {info.key for info in doomed}
        live = {info.key for info in entries} - gone
        # Forget accesses of keys that no longer exist (evicted or removed
        # behind our back), so the map stays bounded by the cache contents.
        # Keys written after the listing lose their entry and fall back to mtime.
        self._access = {k: t for k, t in self._access.items() if k in live}
        freed = bytes_before - total
        return GCReport(
            entries_before=len(entries),
            bytes_before=bytes_before,
            entries_after=len(entries) - len(doomed),
            bytes_after=total,
            evicted=len(doomed),
            bytes_freed=freed,
            seconds=time.perf_counter() - started,
        )

    async def wipe(self) -> WipeReport:
        """Remove everything cached. Safe while readers are active: they get
        the complete old value or a miss."""
        started = time.perf_counter()
        entries = await self._backend.list_keys("")
        self._access.clear()
        removed = await self._backend.delete_prefix("")
        size = sum(info.size for info in entries)
        return WipeReport(entries=max(removed, 0), bytes=size, seconds=time.perf_counter() - started)


class _TrackedWriter(BlobWriter):
    """Records the access when the wrapped writer commits."""

    def __init__(self, inner: BlobWriter, layer: CacheLayer, key: str) -> None:
        self._inner = inner
        self._layer = layer
        self._key = key

    @property
    def size(self) -> int:
        return self._inner.size

    async def write(self, chunk: bytes) -> None:
        await self._inner.write(chunk)

    async def commit(self) -> None:
        await self._inner.commit()
        self._layer.touch(self._key)

    async def abort(self) -> None:
        await self._inner.abort()


__all__ = ["CacheLayer", "CacheMeta", "CachedPackument", "GCReport", "WipeReport"]
