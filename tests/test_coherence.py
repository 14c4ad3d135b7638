"""Coherence across processes (design invariant 5).

A second OS process writes into the published and cache roots, in the
on-disk layout of the contract, atomically (temp file + ``os.replace``), and
``rm -rf``s the cache root. This process reads through the real stack: a
:class:`PackageStore` on the two roots, ``compose`` + ``render``, a
:class:`ComposedView`, and a :class:`Watcher` wired to ``view.invalidate``.
The view must stop serving an old entry within a bounded delay (measured and
printed; asserted < 2 s), and lookups never fail while the cache root
disappears and reappears.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from overlaystore._types import PackageName
from overlaystore.compose import compose
from overlaystore.packages import PackageStore
from overlaystore.render import Rendered, Variant, render
from overlaystore.view import ComposedView
from overlaystore.watch import Watcher

URL = "http://127.0.0.1:4873"
BOUND_S = 2.0

WRITER = textwrap.dedent(
    r'''
    import json, os, shutil, sys, time

    pub_root, cache_root = sys.argv[1], sys.argv[2]

    def atomic(path, doc):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), ".tmp.%d.w.%s" % (os.getpid(), os.path.basename(path)))
        with open(tmp, "wb") as f:
            f.write(json.dumps(doc).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def stamp():
        t = time.time()
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)

    def manifest(name, v):
        base = name.rpartition("/")[2]
        return {"name": name, "version": v,
                "dist": {"tarball": "http://w.invalid/%s-%s.tgz" % (base, v), "shasum": "0" * 40}}

    def publish(name, v):
        now = stamp()
        d = os.path.join(pub_root, name)
        atomic(os.path.join(d, "versions", v + ".json"), {"time": now, "manifest": manifest(name, v)})
        versions = sorted(p[:-5] for p in os.listdir(os.path.join(d, "versions")) if not p.startswith("."))
        atomic(os.path.join(d, "package-meta.json"),
               {"rev": len(versions), "created": now, "modified": now, "dist-tags": {"latest": v},
                "maintainers": [{"name": "w", "email": "w@example.invalid"}]})

    def cache(name, versions):
        atomic(os.path.join(cache_root, name, "packument.json"),
               {"name": name, "_rev": "%d-x" % len(versions), "dist-tags": {"latest": versions[-1]},
                "versions": {v: manifest(name, v) for v in versions},
                "time": {v: "2020-01-01T00:00:00.000Z" for v in versions}})

    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "publish":
            publish(cmd["name"], cmd["version"])
        elif op == "cache":
            cache(cmd["name"], cmd["versions"])
        elif op == "rmtree":
            shutil.rmtree(cache_root, ignore_errors=True)
        elif op == "churn":  # rm -rf the cache root and refill it, repeatedly
            for i in range(cmd["rounds"]):
                shutil.rmtree(cache_root, ignore_errors=True)
                time.sleep(cmd["pause"])
                for name in cmd["names"]:
                    cache(name, ["1.0.%d" % i])
                time.sleep(cmd["pause"])
        print(json.dumps({"done": time.time()}), flush=True)
    '''
)


class Writer:
    """The other process."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def do(self, **cmd: Any) -> float:
        """Run one command; returns the writer's wall-clock time when it finished."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(orjson.dumps(cmd) + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        return float(orjson.loads(line)["done"])


class Reader:
    """This process: store → compose → render → view, invalidated by the watcher."""

    def __init__(self, store: PackageStore, view: ComposedView) -> None:
        self.store = store
        self.view = view
        self.invalidated_at: dict[str, float] = {}

    def on_change(self, names: set[PackageName]) -> None:
        now = time.time()
        for name in names:
            self.view.invalidate(name)
            self.invalidated_at[name] = now

    def on_reset(self) -> None:
        self.view.invalidate_all()

    async def lookup(self, name: str) -> Rendered | None:
        hit = self.view.get(name, Variant.FULL, URL)
        if hit is not None:
            return hit
        generation = self.view.generation(name)
        fragment = await self.store.fragment(PackageName(name))
        cached = await self.store.cached_packument(PackageName(name))
        upstream = orjson.loads(cached.body) if cached is not None else None
        if fragment is None and upstream is None:
            return None
        rendered = render(compose(PackageName(name), fragment, upstream), Variant.FULL, URL)
        self.view.put(name, Variant.FULL, URL, rendered, generation=generation)
        return rendered

    async def versions(self, name: str) -> set[str]:
        rendered = await self.lookup(name)
        return set(orjson.loads(rendered.body)["versions"]) if rendered is not None else set()


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Writer, Reader, Watcher, Path]]:
    pub, cache = tmp_path / "published", tmp_path / "cache"
    store = await PackageStore.open_directories(pub, cache)
    reader = Reader(store, ComposedView())
    watcher = Watcher([pub, cache], reader.on_change, reader.on_reset)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(pub), str(cache),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    await watcher.start()
    try:
        yield Writer(proc), reader, watcher, cache
    finally:
        await watcher.stop()
        assert proc.stdin is not None
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 10)


async def eventually(reader: Reader, name: str, predicate: Any, bound: float = BOUND_S) -> float:
    """Poll lookups until ``predicate(versions)``; returns the time it took."""
    start = time.time()
    while True:
        if predicate(await reader.versions(name)):
            return time.time() - start
        if time.time() - start > bound:
            raise AssertionError(f"{name}: still stale after {bound} s")
        await asyncio.sleep(0.002)


async def test_changes_by_another_process_are_seen_within_bound(
    setup: tuple[Writer, Reader, Watcher, Path],
) -> None:
    writer, reader, _watcher, _cache = setup
    await writer.do(op="publish", name="@acme/private", version="1.0.0")
    await writer.do(op="cache", name="proxied", versions=["1.0.0"])
    await eventually(reader, "@acme/private", lambda vs: vs == {"1.0.0"})
    await eventually(reader, "proxied", lambda vs: vs == {"1.0.0"})

    delays = []
    for i in range(1, 9):
        for name, cmd in (
            ("@acme/private", {"op": "publish", "name": "@acme/private", "version": f"1.0.{i}"}),
            ("proxied", {"op": "cache", "name": "proxied", "versions": [f"1.0.{j}" for j in range(i + 1)]}),
        ):
            await asyncio.sleep(0.06)  # let events of the previous write drain
            old = await reader.lookup(name)
            assert old is not None and reader.view.get(name, Variant.FULL, URL) is old  # cached
            reader.invalidated_at.pop(name, None)
            done = await writer.do(**cmd)
            # The view must drop the old entry; the next lookup composes the new data.
            await eventually(reader, name, lambda vs, i=i: f"1.0.{i}" in vs)
            delays.append(max(0.0, reader.invalidated_at[name] - done))
    median = statistics.median(delays)
    print(f"\ncross-process invalidation delay: median {median * 1000:.1f} ms, "
          f"max {max(delays) * 1000:.1f} ms over {len(delays)} writes")
    assert max(delays) < BOUND_S


async def test_cache_root_removed_repeatedly_while_lookups_run(
    setup: tuple[Writer, Reader, Watcher, Path],
) -> None:
    writer, reader, watcher, cache = setup
    names = ["a", "b", "@s/c"]
    for name in names:
        await writer.do(op="cache", name=name, versions=["0.0.1"])
    await writer.do(op="publish", name="mine", version="1.0.0")

    errors: list[BaseException] = []
    lookups = 0
    stop = asyncio.Event()

    async def lookups_loop() -> None:
        nonlocal lookups
        while not stop.is_set():
            for name in [*names, "mine"]:
                try:
                    await reader.lookup(name)
                    lookups += 1
                except BaseException as exc:  # noqa: BLE001 - any failure is the finding
                    errors.append(exc)
            await asyncio.sleep(0)

    task = asyncio.create_task(lookups_loop())
    try:
        await writer.do(op="churn", rounds=12, pause=0.02, names=names)
        # Gone for good: the view stops serving what the cache held.
        await writer.do(op="rmtree")
        for name in names:
            await eventually(reader, name, lambda vs: vs == set())
        assert await reader.versions("mine") == {"1.0.0"}  # published data unaffected
        # Recreated: the watcher picks up the new root and its changes.
        await writer.do(op="cache", name="a", versions=["7.0.0"])
        await eventually(reader, "a", lambda vs: vs == {"7.0.0"})
        await writer.do(op="cache", name="a", versions=["7.0.0", "7.1.0"])
        await eventually(reader, "a", lambda vs: vs == {"7.0.0", "7.1.0"})
    finally:
        stop.set()
        await task
    assert errors == []
    assert lookups > 0
    assert watcher.running and watcher.resets >= 1
    assert cache.exists()
