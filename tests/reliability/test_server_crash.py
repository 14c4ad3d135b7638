"""SIGKILL of the real server process in the middle of writes and cache fills.

Each iteration starts the server on the same storage, drives it over HTTP
(one writer per package doing publishes, unpublishes and dist-tag changes in
sequence, plus cache-filling readers of upstream packages), and SIGKILLs it
after a random delay. The driver keeps a model: an operation is
*acknowledged* when its 2xx arrived; the one operation per package that was in
flight at the kill is *unknown* (it may or may not have landed).

After every kill, on disk and through the restarted server:

* the store opens (the restart) and no temp file (``.tmp.*``) or trash
  directory is left in either root;
* every acknowledged publish is listed with its integrity, and its tarball is
  served with bytes whose sha512 matches; every acknowledged unpublish is gone
  (tarball 404); the ``beta`` tag is the last acknowledged value (or the
  unknown one); ``latest`` names a live version;
* the unknown operation either landed whole or not at all: a version that is
  listed has its tarball, one that is not listed is not served (its orphan
  tarball, if any, stays invisible);
* every cached upstream tarball on disk is byte-identical to the upstream's,
  every cached packument parses.

Default: 6 kills, the first two of an exec'd ``python -m server serve``, the
others of the same command forked from a pre-imported launcher
(tests/reliability/zygote.py), which spares the ~0.7 s of imports per start.
``-m slow``: ``OVERLAYSTORE_SERVER_CRASH_ITERATIONS`` kills (default 200) of
forked servers, ~0.4 s an iteration.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import shutil
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from overlaystore.packages import PackageStore
from tests.e2e.conftest import ThreadedUpstream
from tests.fakes.upstream import FakeUpstream
from tests.npmdata import make_tarball, publish_body

from .harness import DEFAULT_CONFIG, ServerProcess, SuiteRun, Zygote, adduser, hidden_leftovers

SUITE = "server_crash"
SUITE_TITLE = "SIGKILL of the server during writes and cache fills"

WRITERS = ("@crash/alpha", "crash-beta", "@crash/gamma")
UPSTREAM_PACKAGES = [f"up-{i}" for i in range(6)]
#: A writer moves on to a new package name after this many versions, so the
#: per-publish work (which reads every version file of the package) stays flat.
VERSIONS_PER_NAME = 60
#: The watcher (cross-process LRU coherence) is off: it plays no part in crash
#: safety and its start-up scan would double the cost of an iteration.
ABBREVIATED = "application/vnd.npm.install-v1+json"
CONFIG = DEFAULT_CONFIG + "\n[upstream]\nretries = 0\ntimeout = 5\n\n[watch]\nenabled = false\n"


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def quoted(name: str) -> str:
    return name.replace("/", "%2f")


def tarball_path(name: str, version: str) -> str:
    return f"/{name}/-/{name.rpartition('/')[2]}-{version}.tgz"


# --------------------------------------------------------------------- model


@dataclass
class Pending:
    op: str  # "publish" | "unpublish" | "tag"
    version: str
    integrity: str = ""


@dataclass
class PackageModel:
    name: str
    next_k: int = 0
    live: dict[str, str] = field(default_factory=dict)  # version -> integrity (acknowledged or resolved)
    unpublished: set[str] = field(default_factory=set)
    beta: str | None = None
    pending: Pending | None = None
    touched: set[str] = field(default_factory=set)  # versions to verify after the next kill

    def doomed(self) -> list[str]:
        """Live versions that may be unpublished (never a ``beta`` candidate)."""
        return sorted(v for v in self.live if int(v.rsplit(".", 1)[1]) % 3 == 1)

    def keepers(self) -> list[str]:
        return sorted(v for v in self.live if int(v.rsplit(".", 1)[1]) % 3 != 1)


@dataclass
class Writer:
    base: str
    generation: int = 0
    packages: dict[str, PackageModel] = field(default_factory=dict)

    @property
    def current(self) -> PackageModel:
        name = f"{self.base}-g{self.generation}"
        if name not in self.packages:
            self.packages[name] = PackageModel(name)
        return self.packages[name]

    def roll(self) -> None:
        if self.current.next_k >= VERSIONS_PER_NAME:
            self.generation += 1


# -------------------------------------------------------------------- driver


class Driver:
    """The HTTP side of the loop (runs in the test's event loop)."""

    def __init__(self, rng: random.Random, fake: FakeUpstream, token: str, stats: Counter[str]) -> None:
        self.rng = rng
        self.fake = fake
        self.headers = {"Authorization": f"Bearer {token}"}
        self.stats = stats
        self.writers = [Writer(base) for base in WRITERS]

    # -- load

    async def load(self, base: str, server: ServerProcess, delay: float) -> None:
        """Writers and fillers until the kill ``delay`` seconds in."""
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(base, timeout=timeout) as session:
            killed = asyncio.Event()

            def kill() -> None:
                assert server.pid is not None
                os.kill(server.pid, signal.SIGKILL)
                killed.set()

            loop = asyncio.get_running_loop()
            handle = loop.call_later(delay, kill)
            try:
                tasks = [self.write_loop(session, w, killed) for w in self.writers]
                tasks += [self.fill_loop(session, killed) for _ in range(2)]
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
            finally:
                handle.cancel()

    async def write_loop(self, session: aiohttp.ClientSession, writer: Writer, killed: asyncio.Event) -> None:
        for _ in range(500):
            if killed.is_set():
                return
            writer.roll()
            pkg = writer.current
            choice = self.rng.random()
            if choice < 0.2 and len(pkg.doomed()) >= 1 and len(pkg.live) >= 2:
                op = Pending("unpublish", self.rng.choice(pkg.doomed()))
            elif choice < 0.4 and pkg.keepers():
                op = Pending("tag", self.rng.choice(pkg.keepers()))
            else:
                op = Pending("publish", f"1.0.{pkg.next_k}")
                pkg.next_k += 1
            pkg.pending = op
            try:
                status = await self.send(session, pkg, op)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                self.stats[f"unknown_{op.op}"] += 1
                return  # the server is gone: this op is the package's unknown one
            if killed.is_set() and status >= 500:
                return
            assert 200 <= status < 300, f"{op} on {pkg.name} answered {status}"
            self.apply(pkg, op)
            pkg.pending = None
            self.stats[f"acked_{op.op}"] += 1

    async def send(self, session: aiohttp.ClientSession, pkg: PackageModel, op: Pending) -> int:
        name = pkg.name
        if op.op == "publish":
            size = self.rng.choice([0, 0, 30_000, 300_000])
            extra = {"blob.bin": self.rng.randbytes(size)} if size else None
            tarball = make_tarball(name, op.version, extra_files=extra)
            op.integrity = sri(tarball)
            body = publish_body(name, op.version, tarball=tarball, tags={})
            async with session.put(f"/{quoted(name)}", data=orjson.dumps(body), headers={
                **self.headers, "Content-Type": "application/json"}) as resp:
                await resp.read()
                return resp.status
        if op.op == "unpublish":
            keep = {v: {} for v in pkg.live if v != op.version}
            async with session.put(f"/{quoted(name)}/-rev/1-0", json={"name": name, "versions": keep},
                                   headers=self.headers) as resp:
                await resp.read()
                return resp.status
        async with session.put(f"/-/package/{quoted(name)}/dist-tags/beta", data=orjson.dumps(op.version),
                               headers={**self.headers, "Content-Type": "application/json"}) as resp:
            await resp.read()
            return resp.status

    @staticmethod
    def apply(pkg: PackageModel, op: Pending) -> None:
        pkg.touched.add(op.version)
        if op.op == "publish":
            pkg.live[op.version] = op.integrity
        elif op.op == "unpublish":
            del pkg.live[op.version]
            pkg.unpublished.add(op.version)
        else:
            pkg.beta = op.version

    async def fill_loop(self, session: aiohttp.ClientSession, killed: asyncio.Event) -> None:
        for _ in range(500):
            if killed.is_set():
                return
            name = self.rng.choice(UPSTREAM_PACKAGES)
            version = self.rng.choice(list(self.fake.packages[name].tarballs))
            accept = ABBREVIATED if self.rng.random() < 0.5 else "application/json"
            try:
                async with session.get(f"/{name}", headers={"Accept": accept}) as resp:
                    await resp.read()
                    if not killed.is_set():
                        assert resp.status == 200, (name, resp.status)
                async with session.get(tarball_path(name, version)) as resp:
                    data = await resp.read()
                    if not killed.is_set():
                        assert resp.status == 200 and data == self.fake.tarball(name, version), (name, version)
                self.stats["cache_reads"] += 2
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return

    # -- verification

    async def verify(self, base: str, *, full: bool) -> None:
        """Check every model against the restarted server; resolve unknown ops."""
        async with aiohttp.ClientSession(base, timeout=aiohttp.ClientTimeout(total=60)) as session:
            for writer in self.writers:
                for pkg in writer.packages.values():
                    if full or pkg.touched or pkg.pending is not None:
                        await self.verify_package(session, pkg, full=full)

    async def verify_package(self, session: aiohttp.ClientSession, pkg: PackageModel, *, full: bool) -> None:
        async with session.get(f"/{quoted(pkg.name)}") as resp:
            if resp.status == 404:
                assert not pkg.live and not pkg.unpublished, f"{pkg.name} lost: {sorted(pkg.live)}"
                if pkg.pending is not None:
                    self.stats["unknown_not_landed"] += 1
                pkg.pending = None
                pkg.touched.clear()
                return
            assert resp.status == 200, (pkg.name, resp.status, await resp.text())
            doc = await resp.json()
        listed: dict[str, dict[str, Any]] = doc["versions"]
        async with session.get(f"/{quoted(pkg.name)}", headers={"Accept": ABBREVIATED}) as resp:
            abbreviated = await resp.json()
        assert resp.status == 200 and abbreviated["versions"].keys() == listed.keys(), pkg.name
        assert abbreviated["dist-tags"] == doc["dist-tags"], pkg.name
        pending, pkg.pending = pkg.pending, None
        # Resolve the unknown operation first: it landed whole or not at all.
        if pending is not None:
            landed = False
            if pending.op == "publish" and pending.version in listed:
                assert listed[pending.version]["dist"]["integrity"] == pending.integrity
                pkg.live[pending.version] = pending.integrity
                landed = True
            elif pending.op == "unpublish" and pending.version not in listed:
                pkg.live.pop(pending.version, None)
                pkg.unpublished.add(pending.version)
                landed = True
            elif pending.op == "tag" and doc["dist-tags"].get("beta") == pending.version:
                landed = pkg.beta != pending.version
                pkg.beta = pending.version
            self.stats["unknown_landed" if landed else "unknown_not_landed"] += 1
            pkg.touched.add(pending.version)
        lost = sorted(set(pkg.live) - set(listed))
        assert not lost, f"acknowledged versions of {pkg.name} lost: {lost}"
        extra = sorted(set(listed) - set(pkg.live))
        assert not extra, f"{pkg.name} lists versions nobody published: {extra}"
        for version, integrity in pkg.live.items():
            assert listed[version]["dist"]["integrity"] == integrity, (pkg.name, version)
        assert not (pkg.unpublished & set(listed)), f"{pkg.name}: an unpublish came back"
        assert doc["dist-tags"].get("beta") == pkg.beta, (pkg.name, doc["dist-tags"], pkg.beta)
        assert doc["dist-tags"].get("latest") in listed, (pkg.name, doc["dist-tags"])
        # Tarballs: what changed since the last check (all of them when full).
        check = set(pkg.live) if full else {v for v in pkg.touched if v in pkg.live}
        for version in sorted(check):
            async with session.get(tarball_path(pkg.name, version)) as resp:
                data = await resp.read()
                assert resp.status == 200, (pkg.name, version, resp.status)
                assert sri(data) == pkg.live[version], f"{pkg.name}@{version}: torn tarball"
            self.stats["tarballs_verified"] += 1
        gone = pkg.unpublished if full else pkg.unpublished & pkg.touched
        if pending is not None and pending.op == "publish" and pending.version not in listed:
            gone = gone | {pending.version}  # an orphan of the kill must not be served
        for version in sorted(gone):
            async with session.get(tarball_path(pkg.name, version)) as resp:
                await resp.read()
                assert resp.status == 404, (pkg.name, version, resp.status)
        pkg.touched.clear()


def check_cache_on_disk(cache: Path, fake: FakeUpstream, stats: Counter[str]) -> None:
    """Whatever the cache holds (temp files aside) is complete and verified."""
    for name in UPSTREAM_PACKAGES:
        directory = cache / name
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            if path.name.startswith("."):
                continue
            if path.name.endswith(".tgz"):
                version = path.name[len(name) + 1 : -len(".tgz")]
                assert path.read_bytes() == fake.tarball(name, version), f"corrupt cache file {path}"
                stats["cached_tarballs_checked"] += 1
            elif path.name == "packument.json":
                doc = orjson.loads(path.read_bytes())
                assert isinstance(doc, dict) and set(doc["versions"]) <= set(fake.packages[name].tarballs)


async def check_published_on_disk(published: Path, cache: Path, driver: Driver) -> None:
    """The library's view of the store after the last kill matches the model."""
    store = await PackageStore.open_directories(published, cache)
    for writer in driver.writers:
        for pkg in writer.packages.values():
            fragment = await store.fragment(pkg.name)  # type: ignore[arg-type]
            if fragment is None:
                assert not pkg.live
                continue
            assert set(fragment.versions) == set(pkg.live)
            for version in fragment.versions:
                ref = await store.tarball(pkg.name, f"{pkg.name.rpartition('/')[2]}-{version}.tgz")  # type: ignore[arg-type]
                assert ref is not None and ref.layer == "published"
                assert sri(await ref.read()) == pkg.live[version]


# ---------------------------------------------------------------------- loop


def crash_loop(tmp_path: Path, threaded: ThreadedUpstream, iterations: int, seed: int,
               zygote: Zygote, max_delay: float, exec_iterations: int = 0) -> tuple[Counter[str], Driver, float]:
    """``iterations`` kills; the first ``exec_iterations`` of an exec'd
    ``python -m server serve``, the others of the same forked from ``zygote``."""
    rng = random.Random(seed)
    fake = threaded.fake
    for i, name in enumerate(UPSTREAM_PACKAGES):
        fake.add_package(name, ["1.0.0", "1.1.0", "2.0.0"],
                         files={"blob.bin": random.Random(i).randbytes(rng.choice([2_000, 80_000, 400_000]))})
    root = tmp_path / "registry"
    server = ServerProcess(root, fake.url, config=CONFIG, zygote=None if exec_iterations else zygote)
    stats: Counter[str] = Counter()
    timings: Counter[str] = Counter()
    server.start()
    token = adduser(server.url, "crasher")
    driver = Driver(rng, fake, token, stats)
    assert server.published is not None and server.cache is not None
    started = time.monotonic()
    try:
        for i in range(iterations):
            mark = time.monotonic()
            server.zygote = None if i < exec_iterations else zygote
            if i:
                server.start()
                stats["restarts"] += 1
                timings["start"] += time.monotonic() - mark
                # The store has been opened (recovery ran): nothing half-written remains.
                leftovers = hidden_leftovers(server.published, server.cache)
                assert leftovers == [], f"after restart {i}: {leftovers}"
                mark = time.monotonic()
                asyncio.run(driver.verify(server.url, full=(i % 25 == 0)))
                timings["verify"] += time.monotonic() - mark
            mark = time.monotonic()
            delay = rng.uniform(0.01, max_delay)
            asyncio.run(driver.load(server.url, server, delay))
            server.kill()
            timings["load"] += time.monotonic() - mark
            mark = time.monotonic()
            stats["kills"] += 1
            stats["temps_at_kill"] += len(hidden_leftovers(server.published, server.cache))
            check_cache_on_disk(server.cache, fake, stats)
            # Let some fills happen again next time: drop a few cached packages.
            for name in rng.sample(UPSTREAM_PACKAGES, 2):
                shutil.rmtree(server.cache / name, ignore_errors=True)
            timings["disk checks"] += time.monotonic() - mark
        elapsed = time.monotonic() - started
        # The last word: a clean start, everything verified, on disk and over HTTP.
        server.start()
        assert hidden_leftovers(server.published, server.cache) == []
        asyncio.run(driver.verify(server.url, full=True))
        server.stop()
        asyncio.run(check_published_on_disk(server.published, server.cache, driver))
        orphans = 0
        for path in server.published.rglob("*.tgz"):
            version = path.name.rsplit("-", 1)[1][: -len(".tgz")]
            if not (path.parent / "versions" / f"{version}.json").exists():
                orphans += 1
        stats["orphan_tarballs"] = orphans
        print("crash loop timings (s):", dict(timings), "iterations:", iterations)
    finally:
        server.kill()
    return stats, driver, elapsed


def summarize(record: SuiteRun, stats: Counter[str], driver: Driver, elapsed: float, iterations: int,
              launcher: str) -> None:
    acked = stats["acked_publish"] + stats["acked_unpublish"] + stats["acked_tag"]
    live = sum(len(p.live) for w in driver.writers for p in w.packages.values())
    record.count(requests=acked + stats["cache_reads"] + stats["tarballs_verified"], crashes=stats["kills"],
                 faults=stats["kills"], lost=0)
    record.detail(f"kills ({launcher})", stats["kills"], f"{elapsed / max(iterations, 1):.2f} s per iteration")
    record.detail("acknowledged publishes / unpublishes / tag moves",
                  f"{stats['acked_publish']} / {stats['acked_unpublish']} / {stats['acked_tag']}",
                  "all present (or gone) after every restart")
    record.detail("operations in flight at a kill: landed / not landed",
                  f"{stats['unknown_landed']} / {stats['unknown_not_landed']}", "all-or-nothing, never partial")
    record.detail("temp files found right after a kill", stats["temps_at_kill"],
                  "all removed when the store opened")
    record.detail("orphan tarballs (kill between tarball and version file)", stats["orphan_tarballs"],
                  "never served")
    record.detail("live versions verified at the end", live, "sha512 of every tarball matches")
    record.detail("cache reads during the kills / cached tarballs checked on disk",
                  f"{stats['cache_reads']} / {stats['cached_tarballs_checked']}", "no corrupt cache file")


def test_sigkill_during_writes(tmp_path: Path, threaded_upstream: ThreadedUpstream, record: SuiteRun) -> None:
    iterations = 6
    zygote = Zygote()
    try:
        stats, driver, elapsed = crash_loop(tmp_path, threaded_upstream, iterations, seed=5, zygote=zygote,
                                            max_delay=0.4, exec_iterations=2)
    finally:
        zygote.close()
    assert stats["kills"] == iterations
    assert stats["acked_publish"] > 0
    summarize(record, stats, driver, elapsed, iterations, "2 exec'd python -m server serve, 4 forked")


@pytest.mark.slow
def test_sigkill_during_writes_many(tmp_path: Path, threaded_upstream: ThreadedUpstream, record: SuiteRun) -> None:
    iterations = int(os.environ.get("OVERLAYSTORE_SERVER_CRASH_ITERATIONS", "200"))
    zygote = Zygote()
    try:
        stats, driver, elapsed = crash_loop(tmp_path, threaded_upstream, iterations, seed=17, zygote=zygote,
                                            max_delay=0.25)
    finally:
        zygote.close()
    assert stats["kills"] == iterations
    if iterations >= 50:
        # With this many kills some must have landed mid-operation, or the
        # test is not testing what it says.
        assert stats["unknown_landed"] + stats["unknown_not_landed"] > 0, stats
        assert stats["temps_at_kill"] + stats["orphan_tarballs"] > 0, stats
    summarize(record, stats, driver, elapsed, iterations, "forked from a pre-imported launcher")
