"""Property: cache GC over random store contents.

For random published and cached contents (names, kinds, sizes, last uses),
a random size cap and a random idle age (applied to tarballs only, as the
server does):

1. after GC the cache holds at most ``max_bytes``;
2. every tarball idle longer than ``max_age`` is gone, and nothing else went
   for age;
3. the cap took the least recently used of the rest, and no more than needed
   (putting back the most recent entry it took would break the cap);
4. the published store is untouched: same keys, same bytes;
5. the report's numbers are what happened, and a dry run reports the same
   without deleting anything.

Run on the in-memory backends (many examples) and on real directories
(fewer), through :class:`LayeredStore`, so the published layer sits next to
the cache exactly as in the server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overlaystore.cache import CacheLayer, GCReport
from overlaystore.disk import FileBackend
from overlaystore.layered import LayeredStore
from overlaystore.memory import MemoryBackend
from overlaystore.published import PublishedLayer

NOW = time.time()
NAMES = ("a", "b", "@s/c", "@s/d", "lodash")


def is_tarball(key: str) -> bool:
    return key.endswith(".tgz")


@dataclass(frozen=True)
class Entry:
    key: str
    size: int
    age: int  # seconds since last use


@st.composite
def stores(draw: st.DrawFn) -> tuple[list[Entry], dict[str, bytes]]:
    def keys_of(name: str) -> st.SearchStrategy[str]:
        base = name.rpartition("/")[2]
        return st.sampled_from([f"{name}/packument.json", f"{name}/packument.meta"]
                               + [f"{name}/{base}-1.{i}.0.tgz" for i in range(4)])

    cached = draw(st.dictionaries(
        st.sampled_from(NAMES).flatmap(keys_of),
        st.tuples(st.integers(0, 400), st.integers(0, 100_000)),
        max_size=16,
    ))
    # Distinct ages keep "least recently used" unambiguous (ties are broken
    # by key in the implementation, which this test also checks below).
    ages = draw(st.lists(st.integers(0, 1_000_000), min_size=len(cached), max_size=len(cached), unique=True))
    entries = [Entry(key, size, age) for (key, (size, _)), age in zip(sorted(cached.items()), ages, strict=True)]
    published = draw(st.dictionaries(
        st.sampled_from(NAMES).flatmap(
            lambda n: st.sampled_from([f"{n}/versions/1.0.0.json", f"{n}/{n.rpartition('/')[2]}-1.0.0.tgz",
                                       f"{n}/package-meta.json"])),
        st.binary(min_size=0, max_size=64),
        max_size=8,
    ))
    return entries, published


limits = st.tuples(
    st.one_of(st.none(), st.integers(0, 3000)),  # max_bytes
    st.one_of(st.none(), st.integers(0, 1_000_000)),  # max_age
)


def expected_survivors(entries: list[Entry], max_bytes: int | None, max_age: int | None) -> set[str]:
    """The model: drop idle tarballs, then the least recently used until under the cap."""
    alive = [e for e in entries if not (max_age is not None and is_tarball(e.key) and e.age > max_age)]
    if max_bytes is not None:
        alive.sort(key=lambda e: (-e.age, e.key))  # least recently used first
        total = sum(e.size for e in alive)
        while alive and total > max_bytes:
            total -= alive.pop(0).size
    return {e.key for e in alive}


async def populate(store: LayeredStore, entries: list[Entry], published: dict[str, bytes],
                   set_mtime: callable) -> None:  # type: ignore[valid-type]
    for key, data in published.items():
        await store.published.backend.write(key, data, replace=False)
    for entry in entries:
        await store.cache.backend.write(entry.key, b"x" * entry.size, replace=True)
        set_mtime(entry.key, NOW - entry.age)


async def check(store: LayeredStore, entries: list[Entry], published: dict[str, bytes],
                max_bytes: int | None, max_age: int | None) -> None:
    cache = store.cache
    before = {info.key: info.size for info in await cache.keys()}
    dry = await cache.gc(max_bytes, max_age, dry_run=True, expires=is_tarball)
    assert {info.key: info.size for info in await cache.keys()} == before, "a dry run deleted something"

    report = await cache.gc(max_bytes, max_age, expires=is_tarball)
    after = {info.key: info.size for info in await cache.keys()}
    total = sum(after.values())

    # 1. the cap
    if max_bytes is not None:
        assert total <= max_bytes
    # 2. idle age: every idle tarball gone, nothing else evicted for age
    by_key = {e.key: e for e in entries}
    if max_age is not None:
        assert not [k for k in after if is_tarball(k) and by_key[k].age > max_age]
    # 3. LRU order and minimality, against the model
    assert set(after) == expected_survivors(entries, max_bytes, max_age)
    evicted = [by_key[k] for k in before if k not in after]
    capped = [e for e in evicted if not (max_age is not None and is_tarball(e.key) and e.age > max_age)]
    kept = [by_key[k] for k in after]
    if capped:
        assert max_bytes is not None
        assert min(e.age for e in capped) > max(e.age for e in kept) if kept else True
        youngest = min(capped, key=lambda e: e.age)
        assert total + youngest.size > max_bytes, "the cap took more than it needed"
    # 4. published data untouched
    assert {info.key for info in await store.published.keys()} == set(published)
    for key, data in published.items():
        assert await store.published.get(key) == data
    # 5. the report
    assert report == GCReport(
        entries_before=len(before), bytes_before=sum(before.values()),
        entries_after=len(after), bytes_after=total,
        evicted=len(before) - len(after), bytes_freed=sum(before.values()) - total,
        seconds=report.seconds, dry_run=False,
        expired=report.expired, bytes_expired=report.bytes_expired,
    )
    expired = [e for e in evicted if max_age is not None and is_tarball(e.key) and e.age > max_age]
    assert (report.expired, report.bytes_expired) == (len(expired), sum(e.size for e in expired))
    for field in ("entries_after", "bytes_after", "evicted", "bytes_freed", "expired", "bytes_expired"):
        assert getattr(dry, field) == getattr(report, field), field


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stores(), limits)
def test_gc_on_memory_backends(contents: tuple[list[Entry], dict[str, bytes]],
                               limit: tuple[int | None, int | None]) -> None:
    entries, published = contents
    cache_backend = MemoryBackend(clock=lambda: NOW)
    store = LayeredStore(PublishedLayer(MemoryBackend()), CacheLayer(cache_backend, clock=lambda: NOW))

    def set_mtime(key: str, when: float) -> None:
        data, _ = cache_backend._blobs[key]
        cache_backend._blobs[key] = (data, when)

    async def run() -> None:
        await populate(store, entries, published, set_mtime)
        await check(store, entries, published, *limit)

    asyncio.run(run())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stores(), limits)
def test_gc_on_directories(contents: tuple[list[Entry], dict[str, bytes]],
                           limit: tuple[int | None, int | None]) -> None:
    entries, published = contents
    root = Path(tempfile.mkdtemp(prefix="gcprops-"))
    try:
        store = LayeredStore(
            PublishedLayer(FileBackend(root / "published")),
            CacheLayer(FileBackend(root / "cache"), clock=lambda: NOW),
        )

        def set_mtime(key: str, when: float) -> None:
            os.utime(root / "cache" / key, (when, when))

        async def run() -> None:
            await populate(store, entries, published, set_mtime)
            await check(store, entries, published, *limit)

        asyncio.run(run())
    finally:
        shutil.rmtree(root, ignore_errors=True)
