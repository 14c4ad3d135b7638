"""Stateful property test: PackageStore / LayeredStore on real directories
against a plain in-memory model.

Rules publish, put into the cache, evict, GC, wipe, unpublish and look up,
over a few names and versions so that they collide. After every step:

1. published shadows cache: every published key is served from the
   published layer, with its published bytes;
2. write-once: published bytes never change (re-publishing is refused, also
   after unpublish);
3. cache operations never touch published data (the published layer is
   exactly the model, whatever the cache did);
6. after GC the cache is under the cap, and what went was least recently used.

The store runs on FileBackend in a temp directory; its async API is driven
from the synchronous rules by a per-machine event loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from overlaystore._types import PackageName
from overlaystore.cache import CacheLayer
from overlaystore.disk import FileBackend
from overlaystore.errors import AlreadyPublished, NotFound
from overlaystore.layered import LayeredStore
from overlaystore.names import tarball_filename
from overlaystore.packages import PackageStore
from overlaystore.published import PublishedLayer

_T = TypeVar("_T")

payloads = st.binary(min_size=1, max_size=48)
NAMES = ("@acme/w", "plain", "@acme/plain")
VERSIONS = ("1.0.0", "1.0.1", "2.0.0-rc.1", "2.0.0")


class StepClock:
    """Epoch seconds far ahead of real time, one tick per reading, so that
    the in-memory access times (not file mtimes) decide the LRU order."""

    def __init__(self) -> None:
        self.last = time.time() + 10**7

    def __call__(self) -> float:
        self.last += 1.0
        return self.last


class LayeredStoreMachine(RuleBasedStateMachine):
    names = Bundle("names")
    versions = Bundle("versions")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        # tmpfs when there is one: the machine makes thousands of fsync'd
        # writes, whose durability is not what it tests (test_crash_safety is).
        shm = Path("/dev/shm")
        scratch = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
        self.root = Path(tempfile.mkdtemp(prefix="overlaystore-state-", dir=scratch))
        self.clock = StepClock()
        published = PublishedLayer(FileBackend(self.root / "published"))
        cache = CacheLayer(FileBackend(self.root / "cache"), clock=self.clock)
        self.store = PackageStore(LayeredStore(published, cache))
        self.layered = self.store.layered
        # the model
        self.published: dict[str, bytes] = {}  # tarball key -> bytes
        self.live: dict[str, set[str]] = {}  # name -> live versions
        self.tombstoned: dict[str, set[str]] = {}
        self.cache: dict[str, bytes] = {}
        self.access: dict[str, float] = {}

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
            shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def key(name: str, version: str) -> str:
        return f"{name}/{tarball_filename(PackageName(name), version)}"

    # --- universe

    @initialize(target=names)
    def init_names(self) -> Any:
        return multiple(*NAMES)

    @initialize(target=versions)
    def init_versions(self) -> Any:
        return multiple(*VERSIONS)

    # --- published side

    @rule(name=names, version=versions, data=payloads)
    def publish(self, name: str, version: str, data: bytes) -> None:
        pkg = PackageName(name)
        manifest = {"name": name, "version": version}
        taken = version in self.live.get(name, set()) | self.tombstoned.get(name, set())
        try:
            fragment = self.run(self.store.publish(pkg, version, manifest, data, tags={}, user={"name": "u"}))
        except AlreadyPublished:
            assert taken, f"{name}@{version} refused but never published"
            return
        assert not taken, f"{name}@{version} published twice"
        self.published[self.key(name, version)] = data
        self.live.setdefault(name, set()).add(version)
        assert set(fragment.versions) == self.live[name]

    @rule(name=names, version=versions)
    def unpublish(self, name: str, version: str) -> None:
        try:
            fragment = self.run(self.store.unpublish(PackageName(name), [version]))
        except NotFound:
            assert name not in self.live
            return
        if version in self.live[name]:
            self.live[name].remove(version)
            self.tombstoned.setdefault(name, set()).add(version)
        assert set(fragment.versions) == self.live[name]
        assert set(fragment.unpublished) == self.tombstoned.get(name, set())
        if self.live[name]:
            assert fragment.dist_tags["latest"] in self.live[name]

    # --- cache side

    @rule(name=names, version=versions, data=payloads)
    def cache_put(self, name: str, version: str, data: bytes) -> None:
        key = self.key(name, version)
        self.run(self.layered.cache.put(key, data))
        self.cache[key] = data
        self.access[key] = self.clock.last

    @rule(name=names, version=versions, data=payloads)
    def cache_put_streamed(self, name: str, version: str, data: bytes) -> None:
        key = self.key(name, version)

        async def put() -> None:
            filename = key.rsplit("/", 1)[1]
            async with await self.store.open_cache_tarball(PackageName(name), filename) as writer:
                await writer.write(data[:5])
                await writer.write(data[5:])
                await writer.commit()

        self.run(put())
        self.cache[key] = data
        self.access[key] = self.clock.last

    @rule(items=st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VERSIONS), payloads), max_size=6))
    def cache_fill(self, items: list[tuple[str, str, bytes]]) -> None:
        # Several puts in one step, so that GC usually has a choice to make.
        for name, version, data in items:
            self.cache_put(name, version, data)

    @rule(name=names, version=versions)
    def cache_evict(self, name: str, version: str) -> None:
        key = self.key(name, version)
        removed = self.run(self.layered.cache.evict(key))
        assert removed == (key in self.cache)
        self.cache.pop(key, None)
        self.access.pop(key, None)

    @rule(name=names)
    def cache_evict_package(self, name: str) -> None:
        removed = self.run(self.layered.cache.evict_package(PackageName(name)))
        doomed = [k for k in self.cache if k.startswith(f"{name}/")]
        assert removed == len(doomed)
        for key in doomed:
            del self.cache[key]
            del self.access[key]

    @precondition(lambda self: len(self.cache) >= 2)
    @rule(percent=st.integers(min_value=0, max_value=110))
    def cache_gc(self, percent: int) -> None:
        before = dict(self.cache)
        # The cap relative to the current size, so that partial evictions
        # (the interesting case) are common.
        cap = sum(len(v) for v in before.values()) * percent // 100
        report = self.run(self.layered.cache.gc(max_bytes=cap))
        after = self.stored_cache()
        evicted = set(before) - set(after)
        note(f"gc cap={cap}: evicted {sorted(evicted)}")
        assert set(after) <= set(before)
        total = sum(len(v) for v in after.values())
        assert total <= cap  # invariant 6: under the cap
        assert report.bytes_after == total and report.evicted == len(evicted)
        assert report.bytes_before == sum(len(v) for v in before.values())
        if evicted and after:  # ...least recently used first
            assert max(self.access[k] for k in evicted) < min(self.access[k] for k in after)
        if evicted:  # ...and no more than needed
            newest = max(evicted, key=lambda k: self.access[k])
            assert total + len(before[newest]) > cap
        for key in evicted:
            del self.cache[key]
            del self.access[key]

    @precondition(lambda self: bool(self.cache))
    @rule(age=st.integers(min_value=0, max_value=20))
    def cache_gc_age(self, age: int) -> None:
        now = self.clock.last + 1  # gc reads the clock once
        report = self.run(self.layered.cache.gc(max_age=age))
        expected = {k for k, t in self.access.items() if t < now - age}
        assert report.evicted == len(expected)
        for key in expected:
            del self.cache[key]
            del self.access[key]

    @rule()
    def cache_wipe(self) -> None:
        report = self.run(self.layered.cache.wipe())
        assert report.entries == len(self.cache)
        self.cache.clear()
        self.access.clear()

    # --- reads

    @rule(name=names, version=versions)
    def lookup(self, name: str, version: str) -> None:
        key = self.key(name, version)
        hit = self.run(self.layered.lookup(key))
        if key in self.published:
            assert hit is not None and (hit.data, hit.layer) == (self.published[key], "published")
        elif key in self.cache:
            assert hit is not None and (hit.data, hit.layer) == (self.cache[key], "cache")
            self.access[key] = self.clock.last
        else:
            assert hit is None

    @rule(name=names, version=versions)
    def tarball(self, name: str, version: str) -> None:
        key = self.key(name, version)
        ref = self.run(self.store.tarball(PackageName(name), key.rsplit("/", 1)[1]))
        if version in self.tombstoned.get(name, set()):
            assert ref is None
        elif key in self.published:
            assert ref is not None and ref.layer == "published"
            assert self.run(ref.read()) == self.published[key]
        elif key in self.cache:
            assert ref is not None and ref.layer == "cache"
            self.access[key] = self.clock.last
            assert self.run(ref.read()) == self.cache[key]
            self.access[key] = self.clock.last
        else:
            assert ref is None

    # --- invariants

    def stored_cache(self) -> dict[str, bytes]:
        backend = self.layered.cache.backend
        keys = [info.key for info in self.run(backend.list_keys())]
        return self.run(backend.read_many(keys))  # the backend: no access recorded

    @invariant()
    def published_layer_is_exactly_the_model(self) -> None:
        # Invariants 2 and 3: every published tarball is there, byte-identical,
        # whatever happened to the cache; nothing else appeared.
        pub = self.layered.published
        stored = {i.key for i in self.run(pub.keys()) if i.key.endswith(".tgz")}
        assert stored == set(self.published)
        for key, data in self.run(pub.get_many(self.published)).items():
            assert data == self.published[key]

    @invariant()
    def published_shadows_cache(self) -> None:
        # Invariant 1, where it matters: keys both layers hold (the published
        # layer's own content is checked above). A published hit never
        # touches the cache's access times.
        for key in self.published.keys() & self.cache.keys():
            data = self.published[key]
            hit = self.run(self.layered.lookup(key))
            assert hit is not None and hit.layer == "published" and hit.data == data

    @invariant()
    def cache_is_exactly_the_model(self) -> None:
        assert self.stored_cache() == self.cache


LayeredStoreMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLayeredStore = LayeredStoreMachine.TestCase
