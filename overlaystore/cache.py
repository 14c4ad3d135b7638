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
* ``gc`` and ``stats`` never hold the event loop for long: the listing is one
  backend call per package (a bounded batch of I/O, off the loop in the file
  backend), sorting and summing run in a worker thread, and deletions go in
  batches of :data:`DELETE_BATCH` keys. An entry read or written while a GC
  runs is not evicted by that run. ``gc(dry_run=True)`` plans without deleting.
  Only keys inside a package directory (``<name>/...``) are listed and
  collected; the store never writes any other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
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
    #: xxh3-64 hex digest of ``body`` (as kept in the meta file; "" if not
    #: computed): with ``len(body)``, what identifies a parse of this body.
    body_xxh3: str = ""


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
    #: True: nothing was deleted; the other fields say what would have been.
    dry_run: bool = False
    #: Of ``evicted``, the entries (and their bytes) collected for idle age.
    expired: int = 0
    bytes_expired: int = 0


@dataclass(frozen=True, slots=True)
class KindStats:
    entries: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What one :meth:`CacheLayer.stats` scan found."""

    entries: int
    bytes: int
    packages: int
    #: Last use (epoch seconds; access seen by this process or mtime) of the
    #: least and the most recently used entry; None when empty.
    oldest_use: float | None
    newest_use: float | None
    seconds: float
    #: Entries and bytes per kind, when :meth:`CacheLayer.stats` got a ``kind`` function.
    by_kind: Mapping[str, KindStats] = field(default_factory=dict)


#: ``progress(phase, done, total)``: phase "scan" counts packages listed,
#: "delete" counts entries removed.
Progress = Callable[[str, int, int], None]

#: Keys deleted per backend call by :meth:`CacheLayer.gc`.
DELETE_BATCH = 256
#: Packages listed between two progress reports.
SCAN_REPORT_EVERY = 64


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
        # Keys used while a gc runs (None when none runs): that run spares them.
        self._used_during_gc: set[str] | None = None
        self._gc_running = 0

    def _used(self, key: str, now: float) -> None:
        self._access[key] = now
        if self._used_during_gc is not None:
            self._used_during_gc.add(key)

    @property
    def backend(self) -> Backend:
        return self._backend

    def __repr__(self) -> str:
        return f"CacheLayer({self._backend!r})"

    # --- reads and writes

    async def put(self, key: str, data: bytes) -> None:
        """Store (or replace) ``key`` atomically."""
        await self._backend.write(key, data, replace=True)
        self._used(key, self._clock())

    async def open_writer(self, key: str) -> BlobWriter:
        """A streaming writer; commit atomically replaces ``key``."""
        return _TrackedWriter(await self._backend.open_writer(key, replace=True), self, key)

    async def get(self, key: str) -> bytes | None:
        """The value of ``key`` or None; a hit counts as an access."""
        data = await self._backend.read(key)
        if data is not None:
            self._used(key, self._clock())
        return data

    async def get_many(self, keys: Iterable[str] = (), *, children_of: Iterable[str] = ()) -> dict[str, bytes]:
        """One batched read (see :meth:`Backend.read_many`); hits count as accesses."""
        found = await self._backend.read_many(keys, children_of=children_of)
        now = self._clock()
        for key in found:
            self._used(key, now)
        return found

    async def info(self, key: str) -> BlobInfo | None:
        """Size and mtime of ``key``; not an access (see :meth:`touch`)."""
        return await self._backend.info(key)

    def touch(self, key: str) -> None:
        """Record an access made without :meth:`get` (e.g. a sendfile of the path)."""
        self._used(check_key(key), self._clock())

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

    async def _scan(self, progress: Progress | None) -> list[BlobInfo]:
        """Every key, listed one package at a time (bounded batches of I/O)."""
        names = await self._backend.package_names()
        total = len(names)
        if progress is not None:
            progress("scan", 0, total)
        entries: list[BlobInfo] = []
        for done, name in enumerate(names, 1):
            entries.extend(await self._backend.list_keys(f"{name}/"))
            if progress is not None and (done % SCAN_REPORT_EVERY == 0 or done == total):
                progress("scan", done, total)
        return entries

    async def gc(
        self,
        max_bytes: int | None = None,
        max_age: float | None = None,
        *,
        dry_run: bool = False,
        expires: Callable[[str], bool] | None = None,
        progress: Progress | None = None,
    ) -> GCReport:
        """Evict entries idle longer than ``max_age`` seconds, then the least
        recently used until the total size is at most ``max_bytes``.

        ``expires(key)`` limits the idle-age rule to some keys (default: all);
        the size cap applies to every key. ``dry_run``: report, delete nothing.
        ``progress`` is called as the scan and the deletions advance.
        """
        if max_bytes is not None and max_bytes < 0:
            raise InvalidInput("max_bytes must not be negative")
        if max_age is not None and max_age < 0:
            raise InvalidInput("max_age must not be negative")
        started = time.perf_counter()
        self._gc_running += 1
        if self._used_during_gc is None:
            self._used_during_gc = set()
        used_during = self._used_during_gc
        try:
            entries = await self._scan(progress)
            now = self._clock()
            plan = await asyncio.to_thread(
                _plan, entries, self._access.get, now, max_bytes, max_age, expires, list(self._access.items())
            )
            doomed, evicted, freed = plan.doomed, 0, 0
            if dry_run:
                evicted, freed = len(doomed), sum(info.size for info in doomed)
            else:
                if progress is not None:
                    progress("delete", 0, len(doomed))
                for first in range(0, len(doomed), DELETE_BATCH):
                    # An entry used since the scan began is wanted again: spare it.
                    batch = [info for info in doomed[first : first + DELETE_BATCH] if info.key not in used_during]
                    if batch:
                        await self._backend.delete_many(info.key for info in batch)
                    for info in batch:
                        if info.key not in used_during:
                            self._access.pop(info.key, None)
                    evicted += len(batch)
                    freed += sum(info.size for info in batch)
                    if progress is not None:
                        progress("delete", min(first + DELETE_BATCH, len(doomed)), len(doomed))
                # Forget accesses of keys removed behind our back, so the map
                # stays bounded by the cache contents.
                for key in plan.vanished:
                    if key not in used_during:
                        self._access.pop(key, None)
        finally:
            self._gc_running -= 1
            if not self._gc_running:
                self._used_during_gc = None
        expired = [info for info in doomed[: plan.expired] if dry_run or info.key not in used_during]
        return GCReport(
            entries_before=len(entries),
            bytes_before=plan.bytes_before,
            entries_after=len(entries) - evicted,
            bytes_after=plan.bytes_before - freed,
            evicted=evicted,
            bytes_freed=freed,
            seconds=time.perf_counter() - started,
            dry_run=dry_run,
            expired=len(expired),
            bytes_expired=sum(info.size for info in expired),
        )

    async def stats(self, *, kind: Callable[[str], str] | None = None, progress: Progress | None = None) -> CacheStats:
        """Entries, bytes and packages now in the cache (one scan, as ``gc`` does)."""
        started = time.perf_counter()
        entries = await self._scan(progress)
        return await asyncio.to_thread(_summarize, entries, self._access.get, kind, started)

    async def wipe(self) -> WipeReport:
        """Remove everything cached. Safe while readers are active: they get
        the complete old value or a miss."""
        started = time.perf_counter()
        entries = await self._backend.list_keys("")
        self._access.clear()
        removed = await self._backend.delete_prefix("")
        size = sum(info.size for info in entries)
        return WipeReport(entries=max(removed, 0), bytes=size, seconds=time.perf_counter() - started)


@dataclass(frozen=True, slots=True)
class _Plan:
    doomed: list[BlobInfo]  # in eviction order: the ``expired`` idle ones first
    expired: int
    bytes_before: int
    vanished: list[str]  # keys with a recorded access that the scan did not find


def _plan(
    entries: list[BlobInfo],
    access: Callable[[str, float], float],
    now: float,
    max_bytes: int | None,
    max_age: float | None,
    expires: Callable[[str], bool] | None,
    accessed: list[tuple[str, float]],
) -> _Plan:
    """Which entries a gc removes (runs in a worker thread: pure CPU)."""

    def last_used(info: BlobInfo) -> float:
        return max(access(info.key, 0.0), info.mtime)

    # Oldest first; the key breaks ties so that runs are deterministic.
    order = sorted(((last_used(info), info.key, info) for info in entries), key=lambda t: (t[0], t[1]))
    bytes_before = sum(info.size for info in entries)
    cutoff = None if max_age is None else now - max_age
    total = bytes_before
    expired: list[BlobInfo] = []
    capped: list[BlobInfo] = []
    # Idle entries first (wherever they sit in LRU order), then the cap takes
    # the least recently used of the rest.
    if cutoff is not None:
        for used, key, info in order:
            if used >= cutoff:
                break  # sorted: nothing later is idle
            if expires is None or expires(key):
                expired.append(info)
                total -= info.size
    if max_bytes is not None and total > max_bytes:
        gone = {info.key for info in expired}
        for _, key, info in order:
            if total <= max_bytes:
                break
            if key in gone:
                continue
            capped.append(info)
            total -= info.size
    present = {info.key for info in entries}
    vanished = [key for key, _ in accessed if key not in present]
    return _Plan(expired + capped, len(expired), bytes_before, vanished)


def _summarize(
    entries: list[BlobInfo],
    access: Callable[[str, float], float],
    kind: Callable[[str], str] | None,
    started: float,
) -> CacheStats:
    uses = [max(access(info.key, 0.0), info.mtime) for info in entries]
    kinds: dict[str, list[int]] = {}
    if kind is not None:
        for info in entries:
            slot = kinds.setdefault(kind(info.key), [0, 0])
            slot[0] += 1
            slot[1] += info.size
    packages = {package_of(info.key) for info in entries}
    return CacheStats(
        entries=len(entries),
        bytes=sum(info.size for info in entries),
        packages=len(packages),
        oldest_use=min(uses) if uses else None,
        newest_use=max(uses) if uses else None,
        seconds=time.perf_counter() - started,
        by_kind={k: KindStats(v[0], v[1]) for k, v in sorted(kinds.items())},
    )


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


__all__ = [
    "DELETE_BATCH",
    "CacheLayer",
    "CacheMeta",
    "CacheStats",
    "CachedPackument",
    "GCReport",
    "KindStats",
    "Progress",
    "WipeReport",
]
