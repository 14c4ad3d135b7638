"""Concurrent writers and readers: no lost update, no double publish, one
upstream fetch per file.

* 20 concurrent publishes of the same version: exactly one 2xx, 19 409s, and
  the stored bytes are the winner's, in one process and across two server
  processes sharing the storage (the per-package lock is a file lock too).
* 20 concurrent publishes of different versions: all succeed and all are
  listed with their own bytes (no lost metadata update), likewise.
* Publishes while cache GC (``CacheLayer.gc``) and cache clear (``wipe``)
  run in a loop, with installs of upstream packages going on: every publish
  succeeds and stays intact, every install gets the right bytes.
* 200 concurrent installs (packument + tarball) of uncached packages: one
  upstream request per packument and per tarball.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from server.config import UpstreamConfig
from server.keys import STORE
from tests.fakes.upstream import FakeUpstream
from tests.npmdata import make_tarball, publish_body

from .conftest import RegistryFactory
from .harness import DEFAULT_CONFIG, ServerProcess, SuiteRun, adduser

SUITE = "concurrency"
SUITE_TITLE = "Concurrent publishes, GC, cache clears and installs"

ABBREVIATED = "application/vnd.npm.install-v1+json"


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def distinct_tarball(name: str, version: str, i: int) -> bytes:
    return make_tarball(name, version, extra_files={"who.txt": f"publisher {i}".encode()})


async def put(session: Any, path: str, body: dict[str, Any], token: str) -> int:
    async with session.put(path, data=orjson.dumps(body), headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"}) as resp:
        await resp.read()
        return int(resp.status)


async def same_version_race(sessions: list[Any], token: str) -> tuple[list[int], list[bytes]]:
    tarballs = [distinct_tarball("race", "1.0.0", i) for i in range(20)]
    statuses = await asyncio.gather(*(
        put(sessions[i % len(sessions)], "/race", publish_body("race", "1.0.0", tarball=t), token)
        for i, t in enumerate(tarballs)
    ))
    return list(statuses), tarballs


async def check_same_version(session: Any, statuses: list[int], tarballs: list[bytes]) -> None:
    assert sorted(statuses) == [201] + [409] * 19, statuses
    winner = tarballs[statuses.index(201)]
    async with session.get("/race") as resp:
        doc = await resp.json()
    assert list(doc["versions"]) == ["1.0.0"]
    assert doc["versions"]["1.0.0"]["dist"]["integrity"] == sri(winner)
    async with session.get("/race/-/race-1.0.0.tgz") as resp:
        assert await resp.read() == winner


async def many_versions(sessions: list[Any], token: str) -> dict[str, bytes]:
    tarballs = {f"1.{i}.0": distinct_tarball("many", f"1.{i}.0", i) for i in range(20)}
    statuses = await asyncio.gather(*(
        put(sessions[i % len(sessions)], "/many", publish_body("many", v, tarball=t), token)
        for i, (v, t) in enumerate(tarballs.items())
    ))
    assert statuses == [201] * 20, statuses
    return tarballs


async def check_many_versions(session: Any, tarballs: dict[str, bytes]) -> None:
    async with session.get("/many") as resp:
        doc = await resp.json()
    assert set(doc["versions"]) == set(tarballs), "a concurrent publish lost another's version"
    assert set(tarballs) <= set(doc["time"])
    assert doc["dist-tags"]["latest"] in tarballs
    for version, data in tarballs.items():
        assert doc["versions"][version]["dist"]["integrity"] == sri(data)
        async with session.get(f"/many/-/many-{version}.tgz") as resp:
            assert await resp.read() == data


async def test_concurrent_publishes_in_one_process(registry_factory: RegistryFactory, record: SuiteRun) -> None:
    reg = await registry_factory()
    token = await reg.adduser("alice")
    statuses, tarballs = await same_version_race([reg.client], token)
    await check_same_version(reg.client, statuses, tarballs)
    await check_many_versions(reg.client, await many_versions([reg.client], token))
    record.count(requests=40 + 24)
    record.detail("20 publishes of one version, one process", "1 × 201, 19 × 409", "stored bytes are the winner's")
    record.detail("20 publishes of 20 versions, one process", "20 × 201", "all listed, all bytes intact")


def test_concurrent_publishes_across_two_processes(tmp_path: Path, record: SuiteRun) -> None:
    """Two server processes on one storage (as ``workers > 1`` runs them)."""
    first = ServerProcess(tmp_path / "one", None, published=tmp_path / "published", cache=tmp_path / "cache")
    # The second process shares the storage and the user files of the first.
    second = ServerProcess(tmp_path / "two", None, published=tmp_path / "published", cache=tmp_path / "cache",
                           config=DEFAULT_CONFIG.replace(
                               "[auth]\n",
                               f'[auth]\nhtpasswd = "{tmp_path / "one" / "auth" / "htpasswd"}"\n'
                               f'tokens = "{tmp_path / "one" / "auth" / "tokens.json"}"\n'))
    first.start()
    second.start()
    try:
        token = adduser(first.url, "alice")

        async def run() -> None:
            async with aiohttp.ClientSession(first.url) as a, aiohttp.ClientSession(second.url) as b:
                statuses, tarballs = await same_version_race([a, b], token)
                await check_same_version(a, statuses, tarballs)
                await check_same_version(b, statuses, tarballs)
                versions = await many_versions([a, b], token)
                await check_many_versions(a, versions)
                await check_many_versions(b, versions)

        asyncio.run(run())
    finally:
        first.stop()
        second.stop()
    record.count(requests=40 + 48)
    record.detail("20 publishes of one version, two processes", "1 × 201, 19 × 409", "the file lock holds across processes")
    record.detail("20 publishes of 20 versions, two processes", "20 × 201", "no lost update")


async def test_publishes_while_gc_and_cache_clear_run(
    registry_factory: RegistryFactory, fake_upstream: FakeUpstream, record: SuiteRun
) -> None:
    names = [f"up-{i}" for i in range(5)]
    for name in names:
        fake_upstream.add_package(name, ["1.0.0", "2.0.0"], files={"blob.bin": random.randbytes(50_000)})
    reg = await registry_factory(fake_upstream.url, upstream=UpstreamConfig(
        url=fake_upstream.url, retries=0, timeout_s=5, breaker_failures=1000, max_age_s=0.0))
    token = await reg.adduser("alice")
    cache = reg.app[STORE].layered.cache
    stop = asyncio.Event()
    counts = {"gc": 0, "wipe": 0, "installs": 0}

    async def churn() -> None:
        for i in range(10_000):
            if stop.is_set():
                return
            if i % 2:
                await cache.gc(max_bytes=0)
                counts["gc"] += 1
            else:
                await cache.wipe()
                counts["wipe"] += 1
            await asyncio.sleep(0.002)

    async def installs() -> None:
        rng = random.Random(1)
        for _ in range(10_000):
            if stop.is_set():
                return
            name, version = rng.choice(names), rng.choice(["1.0.0", "2.0.0"])
            resp = await reg.client.get(f"/{name}", headers={"Accept": ABBREVIATED})
            assert resp.status == 200, (name, resp.status, await resp.text())
            url = (await resp.json())["versions"][version]["dist"]["tarball"]
            resp = await reg.client.get(url.removeprefix("http://registry.test"))
            assert resp.status == 200, (name, version, resp.status, await resp.text())
            assert await resp.read() == fake_upstream.tarball(name, version)
            counts["installs"] += 1

    published: dict[tuple[str, str], bytes] = {}

    async def publisher(name: str) -> None:
        for i in range(12):
            version = f"1.0.{i}"
            data = distinct_tarball(name, version, i)
            assert await put(reg.client, f"/{name}", publish_body(name, version, tarball=data), token) == 201
            published[(name, version)] = data

    background = [asyncio.create_task(churn()), *(asyncio.create_task(installs()) for _ in range(6))]
    try:
        await asyncio.wait_for(asyncio.gather(*(publisher(f"mine-{i}") for i in range(3))), timeout=60)
    finally:
        stop.set()
        await asyncio.gather(*background)
    assert counts["gc"] > 0 and counts["wipe"] > 0 and counts["installs"] > 0, counts
    for (name, version), data in published.items():
        resp = await reg.client.get(f"/{name}/-/{name}-{version}.tgz")
        assert resp.status == 200 and await resp.read() == data
    for name in {n for n, _ in published}:
        doc = await (await reg.client.get(f"/{name}")).json()
        assert set(doc["versions"]) == {v for n, v in published if n == name}
    record.count(requests=len(published) * 2 + counts["installs"] * 2 + 3)
    record.detail("publishes during GC + cache clear loops", f"{len(published)} × 201",
                  f"{counts['gc']} GC runs, {counts['wipe']} clears, {counts['installs']} installs, all intact")


async def test_200_concurrent_installs_fetch_each_file_once(
    registry_factory: RegistryFactory, fake_upstream: FakeUpstream, record: SuiteRun
) -> None:
    names = [f"pkg-{i}" for i in range(10)]
    for name in names:
        fake_upstream.add_package(name, ["1.0.0", "1.1.0"])
    fake_upstream.set_latency(0.05)
    reg = await registry_factory(fake_upstream.url)
    rng = random.Random(3)
    plan = [(rng.choice(names), rng.choice(["1.0.0", "1.1.0"]), rng.random() < 0.5) for _ in range(200)]

    async def install(name: str, version: str, abbreviated: bool) -> None:
        headers = {"Accept": ABBREVIATED} if abbreviated else {}
        resp = await reg.client.get(f"/{name}", headers=headers)
        assert resp.status == 200
        url = (await resp.json())["versions"][version]["dist"]["tarball"]
        resp = await reg.client.get(url.removeprefix("http://registry.test"))
        assert resp.status == 200 and await resp.read() == fake_upstream.tarball(name, version)

    await asyncio.gather(*(install(*step) for step in plan))
    for name in names:
        assert fake_upstream.count(fake_upstream.packument_path(name)) == 1, name
        for version in ("1.0.0", "1.1.0"):
            wanted = 1 if any(n == name and v == version for n, v, _ in plan) else 0
            assert fake_upstream.count(fake_upstream.tarball_path(name, version)) == wanted, (name, version)
    record.count(requests=400)
    record.detail("200 concurrent installs of 10 uncached packages", "1 upstream fetch per file",
                  f"{fake_upstream.count(None)} upstream requests for 400 client requests")

