"""LayeredStore: the union of the published and the cache layer.

The only place that knows the order of the layers:

* **Published shadows cache** (invariant 1): :meth:`LayeredStore.lookup` and
  :meth:`LayeredStore.locate` try the published layer first and fall through
  to the cache only on a miss. The result says which layer served it.
* **Cache operations never touch published data** (invariant 3): the two
  layers must sit on different backends; for filesystem backends the roots
  must not nest (checked at construction), so no cache key, wipe or GC can
  name a published file.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .cache import CacheLayer
from .disk import FileBackend
from .errors import InvalidInput, OverlayStoreError
from .published import PublishedLayer
from .store_marker import claim

LayerName = Literal["published", "cache"]


@dataclass(frozen=True, slots=True)
class Hit:
    """The bytes of a key and the layer that served them."""

    data: bytes
    layer: LayerName


@dataclass(frozen=True, slots=True)
class Location:
    """Where a key is stored, for streaming it (``path`` None: no local file)."""

    key: str
    layer: LayerName
    size: int
    path: Path | None


@dataclass(frozen=True, slots=True)
class LayerStats:
    """Lookup counters since the store was made (provenance, in aggregate)."""

    published_hits: int
    cache_hits: int
    misses: int


class LayeredStore:
    """Published layer over cache layer."""

    def __init__(self, published: PublishedLayer, cache: CacheLayer) -> None:
        if published.backend is cache.backend:
            raise InvalidInput("the published and the cache layer need separate backends")
        check_roots_apart(published, cache)
        self._published = published
        self._cache = cache
        self._hits = {"published": 0, "cache": 0, "miss": 0}

    @classmethod
    async def open_directories(
        cls, published_root: Path, cache_root: Path, *, recover_cache: bool = True
    ) -> LayeredStore:
        """Filesystem layers on the two roots, created and recovered.

        ``recover_cache=False`` leaves the cache's leftovers to a later
        ``cache.recover()``: a walk of a large cache takes seconds, and its
        temp files are invisible to readers meanwhile (a server starts
        answering first and recovers the cache in the background)."""
        store = cls(PublishedLayer(FileBackend(published_root)), CacheLayer(FileBackend(cache_root)))
        # Each root must hold the store it is opened as (see store_marker).
        await asyncio.to_thread(claim, Path(published_root), "published")
        await asyncio.to_thread(claim, Path(cache_root), "cache")
        await store.published.recover()
        if recover_cache:
            await store.cache.recover()
        else:
            await asyncio.to_thread(Path(cache_root).mkdir, parents=True, exist_ok=True)
        return store

    @property
    def published(self) -> PublishedLayer:
        return self._published

    @property
    def cache(self) -> CacheLayer:
        return self._cache

    @property
    def stats(self) -> LayerStats:
        return LayerStats(
            published_hits=self._hits["published"],
            cache_hits=self._hits["cache"],
            misses=self._hits["miss"],
        )

    async def lookup(self, key: str) -> Hit | None:
        """The bytes of ``key``, published first; None if neither layer has it."""
        data = await self._published.get(key)
        if data is not None:
            self._hits["published"] += 1
            return Hit(data, "published")
        data = await self._cache.get(key)
        if data is not None:
            self._hits["cache"] += 1
            return Hit(data, "cache")
        self._hits["miss"] += 1
        return None

    async def locate(self, key: str, *, published: bool = True) -> Location | None:
        """Where ``key`` is (published first), with its size and local path,
        for sendfile. ``published=False`` looks in the cache only. A cache hit
        counts as an access."""
        if published:
            info = await self._published.info(key)
            if info is not None:
                self._hits["published"] += 1
                return Location(key, "published", info.size, self._published.local_path(key))
        info = await self._cache.info(key)
        if info is not None:
            self._hits["cache"] += 1
            self._cache.touch(key)
            return Location(key, "cache", info.size, self._cache.local_path(key))
        self._hits["miss"] += 1
        return None

    async def writable(self) -> dict[LayerName, str | None]:
        """For each layer, None if its backend can create and remove a file
        (its optional ``check_writable()``; backends without one count as
        writable), else why not. For readiness checks; no key is touched."""
        out: dict[LayerName, str | None] = {}
        for name, backend in (("published", self._published.backend), ("cache", self._cache.backend)):
            check = getattr(backend, "check_writable", None)
            try:
                if check is not None:
                    await check()
            except OverlayStoreError as exc:
                out[name] = str(exc) or type(exc).__name__
            else:
                out[name] = None
        return out


def check_roots_apart(published: PublishedLayer, cache: CacheLayer) -> None:
    """Raise InvalidInput if the layers are filesystem backends whose roots
    are equal or nested (then a cache wipe could remove published files)."""
    a, b = published.backend, cache.backend
    if not (isinstance(a, FileBackend) and isinstance(b, FileBackend)):
        return
    pa, pb = a.root.resolve(), b.root.resolve()
    if pa == pb or pa in pb.parents or pb in pa.parents:
        raise InvalidInput(
            f"the published root {str(pa)!r} and the cache root {str(pb)!r} must not "
            "be the same directory or contain one another"
        )


__all__ = ["Hit", "LayerName", "LayerStats", "LayeredStore", "Location", "check_roots_apart"]
