"""The background GC task: enforces the cap (LRU first) and the tarball idle
age on its interval, leaves published files alone, keeps serving meanwhile,
logs one line a run, survives a failed run and stops with the app."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from overlaystore.cache import CacheLayer
from overlaystore.disk import FileBackend
from server.cache_admin import CacheAdmin
from server.config import CacheConfig
from server.keys import CACHE_ADMIN, METRICS
from tests.fakes.upstream import FakeUpstream
from tests.server.ops_helpers import cache_files, fetch, make_registry, publish, snapshot


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_background_gc_enforces_the_cap_lru_first(aiohttp_client: Any, tmp_path: Path,
                                                         fake_upstream: FakeUpstream,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="overlaystore.cache")
    names = [f"pkg{i}" for i in range(8)]
    rng = random.Random(7)
    for name in names:  # incompressible: each tarball is about 5 kB
        fake_upstream.add_package(name, ["1.0.0"], files={"index.bin": rng.randbytes(5000)})
    cap = 25_000
    reg = await make_registry(aiohttp_client, tmp_path, fake_upstream.url,
                              cache=CacheConfig(max_bytes=cap, gc_interval_s=0.05))
    await reg.adduser("admin")
    await publish(reg, "admin", "mine")
    await publish(reg, "admin", "mine", "1.0.1")
    published = snapshot(reg.config.storage.published)
    cache = reg.config.storage.cache
    fetched = 0
    for name in names:
        await fetch(reg, fake_upstream, name)
        fetched += len(fake_upstream.tarball(name, "1.0.0"))
    assert fetched > cap + 10_000, "the test needs more than the cap"
    # The last package used stays: read it again right before the GC catches up.
    await fetch(reg, fake_upstream, "pkg0")

    await wait_for(lambda: sum(cache_files(cache).values()) <= cap)
    left = cache_files(cache)
    assert "pkg0/pkg0-1.0.0.tgz" in left  # most recently used
    assert "pkg1/pkg1-1.0.0.tgz" not in left  # least recently used
    assert snapshot(reg.config.storage.published) == published
    # One summary line per run, with before/after figures.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cache gc (background)")]
    assert lines and all("entries" in line and "→" in line for line in lines)
    evicted = reg.app[METRICS].gc_evicted._value.get()
    assert evicted >= 1
    # Everything is still served, published and proxied.
    resp = await reg.client.get("/mine/-/mine-1.0.1.tgz")
    assert resp.status == 200
    await fetch(reg, fake_upstream, "pkg1")


async def test_background_gc_collects_idle_tarballs_only(aiohttp_client: Any, tmp_path: Path,
                                                         fake_upstream: FakeUpstream) -> None:
    fake_upstream.add_package("left-pad", ["1.0.0", "1.1.0"])
    reg = await make_registry(aiohttp_client, tmp_path, fake_upstream.url,
                              cache=CacheConfig(max_age_s=0.3, gc_interval_s=0.05))
    await reg.adduser("admin")
    await publish(reg, "admin", "mine")
    published = snapshot(reg.config.storage.published)
    await fetch(reg, fake_upstream, "left-pad")
    cache = reg.config.storage.cache
    assert "left-pad/left-pad-1.0.0.tgz" in cache_files(cache)
    await wait_for(lambda: not [k for k in cache_files(cache) if k.endswith(".tgz")])
    assert sorted(cache_files(cache)) == ["left-pad/packument.json", "left-pad/packument.meta"]
    assert snapshot(reg.config.storage.published) == published


async def test_no_task_without_limits(aiohttp_client: Any, tmp_path: Path) -> None:
    reg = await make_registry(aiohttp_client, tmp_path, cache=CacheConfig(gc_interval_s=0.01))
    assert not reg.app[CACHE_ADMIN].gc_enabled
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "overlaystore cache gc"]


async def test_the_task_stops_with_the_app(aiohttp_client: Any, tmp_path: Path) -> None:
    reg = await make_registry(aiohttp_client, tmp_path, cache=CacheConfig(max_bytes=0, gc_interval_s=0.01))
    await asyncio.sleep(0.05)
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == "overlaystore cache gc"]
    assert len(tasks) == 1
    await reg.client.close()
    assert tasks[0].done()


async def test_a_failed_run_is_logged_and_the_loop_goes_on(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    layer = CacheLayer(FileBackend(tmp_path / "cache"))
    await layer.put("a/a-1.0.0.tgz", b"x" * 100)
    admin = CacheAdmin(layer, CacheConfig(max_bytes=0, gc_interval_s=0.01))
    real_gc = layer.gc
    calls = 0

    async def flaky_gc(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk on fire")
        return await real_gc(*args, **kwargs)

    layer.gc = flaky_gc  # type: ignore[method-assign]
    task = asyncio.create_task(admin.run_periodically(0.01))
    await wait_for(lambda: calls >= 2 and not (tmp_path / "cache" / "a").exists())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert any("background cache gc failed" in r.getMessage() for r in caplog.records)


async def test_cancel_during_a_run_is_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = CacheLayer(FileBackend(tmp_path / "cache"))
    for i in range(20):
        await layer.put(f"p{i}/p{i}-1.0.0.tgz", b"x" * 10)
    admin = CacheAdmin(layer, CacheConfig(max_bytes=0))
    real_list = layer.backend.list_keys
    reached = asyncio.Event()

    async def slow_list(prefix: str = "") -> Any:
        if prefix == "p5/":
            reached.set()
            await asyncio.sleep(3600)  # somewhere in the scan, until cancelled
        return await real_list(prefix)

    monkeypatch.setattr(layer.backend, "list_keys", slow_list)
    run = asyncio.create_task(admin.gc(trigger="background"))
    await reached.wait()
    assert admin.gc_running
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert not admin.gc_running
    assert len(cache_files(tmp_path / "cache")) == 20  # nothing deleted by the cancelled run
    # The next run works and finishes the job.
    monkeypatch.setattr(layer.backend, "list_keys", real_list)
    report = await admin.gc()
    assert report.entries_after == 0 and cache_files(tmp_path / "cache") == {}


N_PACKAGES = 1000


async def test_gc_does_not_stall_the_event_loop(tmp_path: Path) -> None:
    """A run over a few thousand entries: the loop keeps ticking (the walk is
    per package, off the loop; sorting runs in a thread; deletes in batches)."""
    root = tmp_path / "cache"
    for i in range(N_PACKAGES):
        d = root / f"p{i:04d}"
        d.mkdir(parents=True)
        (d / f"p{i:04d}-1.0.0.tgz").write_bytes(b"x" * 10)
        t = time.time() - i
        os.utime(d / f"p{i:04d}-1.0.0.tgz", (t, t))
    admin = CacheAdmin(CacheLayer(FileBackend(root)), CacheConfig(max_bytes=1000))
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - before)

    tick = asyncio.create_task(ticker())
    report = await admin.gc()
    done.set()
    await tick
    assert report.evicted == N_PACKAGES - 100 and report.bytes_after == 1000
    assert len(lags) > 20, "the loop hardly ran during the GC"
    assert max(lags) < 0.25, f"the loop stalled for {max(lags):.3f} s"
