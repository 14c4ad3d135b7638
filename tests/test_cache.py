"""CacheLayer: LRU/TTL garbage collection, reports, wipe under concurrent readers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import threading
import time
from pathlib import Path

import pytest

from overlaystore.backend import Backend
from overlaystore.cache import CacheLayer, GCReport
from overlaystore.disk import FileBackend
from overlaystore.errors import InvalidInput
from overlaystore.memory import MemoryBackend


class Clock:
    """Epoch seconds that move only when told (starts at the real now, so
    file mtimes and clock readings are comparable)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["file", "memory"])
def clock_and_backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Clock, Backend]:
    clock = Clock()
    if request.param == "file":
        return clock, FileBackend(tmp_path / "cache")
    return clock, MemoryBackend(clock=clock)


@pytest.fixture
def clock(clock_and_backend: tuple[Clock, Backend]) -> Clock:
    return clock_and_backend[0]


@pytest.fixture
def cache(clock_and_backend: tuple[Clock, Backend]) -> CacheLayer:
    clock, backend = clock_and_backend
    return CacheLayer(backend, clock=clock)


async def fill(cache: CacheLayer, clock: Clock, keys: list[str], size: int = 100) -> None:
    for key in keys:
        clock.advance(10)
        await cache.put(key, b"x" * size)


async def test_gc_without_limits_keeps_everything(cache: CacheLayer, clock: Clock) -> None:
    await fill(cache, clock, ["a/1", "b/2"])
    report = await cache.gc()
    assert (report.entries_before, report.entries_after, report.evicted, report.bytes_freed) == (2, 2, 0, 0)


async def test_gc_respects_cap_lru_first(cache: CacheLayer, clock: Clock) -> None:
    await fill(cache, clock, ["a/1", "b/2", "c/3", "d/4", "e/5"])
    # Reading makes an entry recent again: a/1 and c/3 are now the newest.
    clock.advance(10)
    assert await cache.get("a/1") is not None
    clock.advance(10)
    assert await cache.get("c/3") is not None
    report = await cache.gc(max_bytes=250)
    remaining = [info.key for info in await cache.keys()]
    assert remaining == ["a/1", "c/3"]
    assert report == GCReport(
        entries_before=5,
        bytes_before=500,
        entries_after=2,
        bytes_after=200,
        evicted=3,
        bytes_freed=300,
        seconds=report.seconds,
    )
    assert report.seconds >= 0


async def test_gc_cap_exactly_met_evicts_nothing(cache: CacheLayer, clock: Clock) -> None:
    await fill(cache, clock, ["a/1", "b/2"])
    report = await cache.gc(max_bytes=200)
    assert report.evicted == 0 and report.bytes_after == 200


async def test_gc_cap_zero_empties(cache: CacheLayer, clock: Clock) -> None:
    await fill(cache, clock, ["a/1", "@s/b/2"])
    report = await cache.gc(max_bytes=0)
    assert report.entries_after == 0 and report.bytes_after == 0
    assert await cache.keys() == []
    assert await cache.names() == []


async def test_gc_max_age(cache: CacheLayer, clock: Clock) -> None:
    await fill(cache, clock, ["a/1", "b/2", "c/3"])  # accessed at +10, +20, +30
    clock.advance(100)  # now +130
    assert await cache.get("a/1") is not None  # a/1 used at +130
    report = await cache.gc(max_age=105)  # evict what was idle since before +25
    assert [info.key for info in await cache.keys()] == ["a/1", "c/3"]
    assert report.evicted == 1 and report.bytes_freed == 100


async def test_gc_age_and_cap_together(cache: CacheLayer, clock: Clock) -> None:
    await fill(cache, clock, ["a/1", "b/2", "c/3", "d/4"])
    clock.advance(25)
    # a/1 and b/2 are too old; the cap then also takes c/3 (LRU among the rest).
    report = await cache.gc(max_bytes=100, max_age=40)
    assert [info.key for info in await cache.keys()] == ["d/4"]
    assert report.evicted == 3


async def test_gc_rejects_negative_limits(cache: CacheLayer) -> None:
    with pytest.raises(InvalidInput):
        await cache.gc(max_bytes=-1)
    with pytest.raises(InvalidInput):
        await cache.gc(max_age=-1)


async def test_gc_uses_file_mtime_for_entries_this_process_never_saw(tmp_path: Path) -> None:
    clock = Clock()
    writer = CacheLayer(FileBackend(tmp_path / "c"), clock=clock)
    for key in ("old/a", "new/b", "mid/c"):
        await writer.put(key, b"x" * 10)
    now = time.time()
    for key, age in (("old/a", 3000), ("mid/c", 2000), ("new/b", 1000)):
        os.utime(tmp_path / "c" / key, (now - age, now - age))
    # A fresh layer (another worker, or after a restart) only has mtimes.
    other = CacheLayer(FileBackend(tmp_path / "c"), clock=clock)
    report = await other.gc(max_bytes=10)
    assert [info.key for info in await other.keys()] == ["new/b"]
    assert report.evicted == 2
    report = await other.gc(max_age=500)
    assert report.evicted == 1


async def test_gc_max_of_access_and_mtime(tmp_path: Path) -> None:
    clock = Clock()
    cache = CacheLayer(FileBackend(tmp_path / "c"), clock=clock)
    await cache.put("a/x", b"1")
    await cache.put("b/x", b"1")
    clock.advance(-10_000)  # the in-memory access is older than the file mtime
    await cache.get("a/x")
    await cache.put("c/x", b"1")  # mtime now, access far in the past
    # a/x: max(old access, mtime) = mtime, so the mtime wins: no eviction by age.
    report = await cache.gc(max_age=5_000)
    assert report.evicted == 0


async def test_evict_forgets_access(cache: CacheLayer, clock: Clock) -> None:
    await fill(cache, clock, ["a/1"])
    assert cache.last_access("a/1") is not None
    await cache.evict("a/1")
    assert cache.last_access("a/1") is None


async def test_touch_and_streamed_writes_count_as_access(cache: CacheLayer, clock: Clock) -> None:
    await fill(cache, clock, ["a/1", "b/2"])
    clock.advance(10)
    cache.touch("a/1")  # e.g. served by sendfile without get()
    clock.advance(10)
    async with await cache.open_writer("c/3") as writer:
        await writer.write(b"y" * 100)
        await writer.commit()
    await cache.gc(max_bytes=200)
    assert [info.key for info in await cache.keys()] == ["a/1", "c/3"]


async def test_wipe_report(cache: CacheLayer, clock: Clock) -> None:
    await fill(cache, clock, ["a/1", "@s/b/2", "c/3"])
    report = await cache.wipe()
    assert (report.entries, report.bytes) == (3, 300)
    assert await cache.keys() == []
    assert cache.last_access("a/1") is None
    report = await cache.wipe()
    assert (report.entries, report.bytes) == (0, 0)


def payload(key: str, generation: int) -> bytes:
    """Self-checking bytes: a digest header, then a body long enough that a
    torn read would be noticed."""
    body = f"{key}:{generation}:".encode() * 2000
    return hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def intact(data: bytes) -> bool:
    digest, _, body = data.partition(b"\n")
    return hashlib.sha256(body).hexdigest().encode() == digest


async def test_wipe_and_gc_while_readers_and_writers_are_active(tmp_path: Path) -> None:
    """Readers (tasks through the layer, threads through local paths as a
    sendfile would) see complete old bytes or a miss, never an error or a torn
    file, while writers replace and wipe/gc remove everything repeatedly."""
    cache = CacheLayer(FileBackend(tmp_path / "cache"))
    keys = [f"@s/p{i}/p{i}-1.0.0.tgz" for i in range(4)] + [f"q{i}/packument.json" for i in range(4)]
    for key in keys:
        await cache.put(key, payload(key, 0))
    stop = asyncio.Event()
    thread_stop = threading.Event()
    seen = {"hits": 0, "misses": 0}
    problems: list[str] = []

    async def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            key = rng.choice(keys)
            data = await cache.get(key)
            if data is None:
                seen["misses"] += 1
            elif not intact(data):
                problems.append(f"torn read of {key}")
            else:
                seen["hits"] += 1

    async def writer(seed: int) -> None:
        rng = random.Random(seed)
        generation = 0
        while not stop.is_set():
            generation += 1
            key = rng.choice(keys)
            if rng.random() < 0.5:
                await cache.put(key, payload(key, generation))
            else:
                async with await cache.open_writer(key) as w:
                    data = payload(key, generation)
                    await w.write(data[:1000])
                    await asyncio.sleep(0)
                    await w.write(data[1000:])
                    await w.commit()

    async def wiper() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            await (cache.wipe() if n % 2 else cache.gc(max_bytes=50_000))
            await asyncio.sleep(0.005)

    def thread_reader(seed: int) -> None:
        rng = random.Random(seed)
        while not thread_stop.is_set():
            key = rng.choice(keys)
            path = cache.local_path(key)
            assert path is not None
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            if not intact(data):
                problems.append(f"torn file read of {key}")

    threads = [threading.Thread(target=thread_reader, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    tasks = [asyncio.create_task(c) for c in (reader(1), reader(2), reader(3), writer(4), writer(5), wiper())]
    try:
        await asyncio.sleep(1.5)
    finally:
        stop.set()
        thread_stop.set()
        await asyncio.gather(*tasks)
        for thread in threads:
            thread.join()
    assert problems == []
    assert seen["hits"] > 0 and seen["misses"] > 0
    # Nothing hidden left behind: no temp files, no trash.
    leftovers = [p for p in (tmp_path / "cache").rglob(".t*")]
    assert leftovers == []


# ------------------------------------------------------------ dry run, stats, progress, batches


async def test_gc_dry_run_reports_the_same_and_deletes_nothing(cache: CacheLayer, clock: Clock) -> None:
    await fill(cache, clock, ["a/1.tgz", "b/2.tgz", "c/3", "d/4.tgz"])
    clock.advance(25)
    before = [(info.key, info.size) for info in await cache.keys()]
    dry = await cache.gc(max_bytes=150, max_age=40, dry_run=True)
    assert [(info.key, info.size) for info in await cache.keys()] == before
    assert dry.dry_run and cache.last_access("a/1.tgz") is not None
    real = await cache.gc(max_bytes=150, max_age=40)
    assert not real.dry_run
    fields = ("entries_before", "bytes_before", "entries_after", "bytes_after", "evicted", "bytes_freed",
              "expired", "bytes_expired")
    assert {f: getattr(dry, f) for f in fields} == {f: getattr(real, f) for f in fields}
    assert (real.evicted, real.expired, real.bytes_expired) == (3, 2, 200)


async def test_gc_idle_age_only_for_expiring_keys(cache: CacheLayer, clock: Clock) -> None:
    await fill(cache, clock, ["a/packument.json", "a/a-1.0.0.tgz", "b/packument.json", "b/b-1.0.0.tgz"])
    clock.advance(1000)
    report = await cache.gc(max_age=100, expires=lambda key: key.endswith(".tgz"))
    assert [info.key for info in await cache.keys()] == ["a/packument.json", "b/packument.json"]
    assert (report.evicted, report.expired) == (2, 2)
    # The cap still applies to every key, least recently used first.
    report = await cache.gc(max_bytes=100, max_age=100, expires=lambda key: key.endswith(".tgz"))
    assert [info.key for info in await cache.keys()] == ["b/packument.json"]
    assert (report.evicted, report.expired) == (1, 0)


async def test_gc_progress_and_batches(cache: CacheLayer, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    import overlaystore.cache as cache_module

    monkeypatch.setattr(cache_module, "DELETE_BATCH", 3)
    monkeypatch.setattr(cache_module, "SCAN_REPORT_EVERY", 4)
    await fill(cache, clock, [f"p{i:02d}/x.tgz" for i in range(10)], size=10)
    calls: list[tuple[str, int, int]] = []
    deletes: list[int] = []
    real_delete_many = cache.backend.delete_many

    async def counting_delete_many(keys):  # type: ignore[no-untyped-def]
        keys = list(keys)
        deletes.append(len(keys))
        return await real_delete_many(keys)

    monkeypatch.setattr(cache.backend, "delete_many", counting_delete_many)
    report = await cache.gc(max_bytes=30, progress=lambda *a: calls.append(a))
    assert report.evicted == 7 and deletes == [3, 3, 1]
    assert [c for c in calls if c[0] == "scan"] == [("scan", 0, 10), ("scan", 4, 10), ("scan", 8, 10), ("scan", 10, 10)]
    assert [c for c in calls if c[0] == "delete"] == [("delete", 0, 7), ("delete", 3, 7), ("delete", 6, 7), ("delete", 7, 7)]
    # The survivors are the three most recently used.
    assert [info.key for info in await cache.keys()] == ["p07/x.tgz", "p08/x.tgz", "p09/x.tgz"]


async def test_gc_spares_entries_used_while_it_runs(cache: CacheLayer, clock: Clock,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    await fill(cache, clock, ["a/1", "b/2", "c/3"])
    real_list = cache.backend.list_keys

    async def list_then_read(prefix: str = ""):  # type: ignore[no-untyped-def]
        found = await real_list(prefix)
        if prefix == "c/":
            # A request reads a/1 after the scan saw it as the oldest entry.
            assert await cache.get("a/1") is not None
        return found

    monkeypatch.setattr(cache.backend, "list_keys", list_then_read)
    report = await cache.gc(max_bytes=100)
    assert [info.key for info in await cache.keys()] == ["a/1", "c/3"]
    assert report.evicted == 1 and report.bytes_after == 200
    assert cache.last_access("a/1") is not None


async def test_stats(cache: CacheLayer, clock: Clock) -> None:
    empty = await cache.stats()
    assert (empty.entries, empty.bytes, empty.packages, empty.oldest_use) == (0, 0, 0, None)
    start = clock.now
    await fill(cache, clock, ["a/packument.json", "a/a-1.tgz", "@s/b/packument.json", "@s/b/b-1.tgz", "@s/b/b-2.tgz"])
    progress: list[tuple[str, int, int]] = []
    stats = await cache.stats(kind=lambda k: "tarball" if k.endswith(".tgz") else "packument",
                              progress=lambda *a: progress.append(a))
    assert (stats.entries, stats.bytes, stats.packages) == (5, 500, 2)
    assert {k: (v.entries, v.bytes) for k, v in stats.by_kind.items()} == {"packument": (2, 200), "tarball": (3, 300)}
    assert stats.oldest_use is not None and stats.newest_use is not None
    assert start + 10 <= stats.oldest_use < stats.newest_use
    assert progress[-1] == ("scan", 2, 2)
