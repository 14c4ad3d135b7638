"""``cache clear`` under concurrent load: no request fails, every byte is right.

Many concurrent packument and tarball GETs (full and abbreviated, scoped and
unscoped, several tarballs per package) run through the app while the cache
is cleared again and again, both over the admin API (which also drops the
composed LRU) and directly through the library (what ``overlaystore cache
clear`` does from another process).
"""

from __future__ import annotations

import asyncio
import random
import time

import orjson

from pathlib import Path
from typing import Any

from overlaystore.cache import CacheLayer
from overlaystore.disk import FileBackend
from server.keys import STORE
from tests.fakes.upstream import ABBREVIATED, FakeUpstream
from tests.server.ops_helpers import fast_upstream, make_registry

PACKAGES = {
    "left-pad": ["1.0.0", "1.1.0", "1.2.0"],
    "@acme/widget": ["2.0.0", "2.1.0"],
    "chalk": ["4.0.0", "5.0.0"],
    "@types/node": ["18.0.0", "20.0.0", "22.0.0"],
}


async def test_clear_under_concurrent_load_fails_no_request(
    aiohttp_client: Any, tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    for name, versions in PACKAGES.items():
        fake_upstream.add_package(name, versions, files={"index.js": f"module.exports = {name!r};\n" * 200})
    # max_age 0: every packument request revalidates, so requests keep
    # reading (and rewriting) the cache files being wiped.
    reg = await make_registry(aiohttp_client, tmp_path, fake_upstream.url,
                              upstream=fast_upstream(fake_upstream.url, max_age_s=0))
    await reg.adduser("admin")
    expected_tarballs = {
        (name, v): fake_upstream.tarball(name, v) for name, versions in PACKAGES.items() for v in versions
    }
    failures: list[str] = []
    counts = {"packument": 0, "tarball": 0, "clears": 0}
    stop = asyncio.Event()
    public = reg.config.server.public_url

    async def packument(rng: random.Random) -> None:
        name = rng.choice(list(PACKAGES))
        headers = {"Accept": ABBREVIATED} if rng.random() < 0.5 else {}
        path = "/" + name.replace("/", "%2f")
        async with reg.client.get(path, headers=headers) as resp:
            body = await resp.read()
            if resp.status != 200:
                failures.append(f"GET {path} -> {resp.status} {body[:200]!r}")
                return
        doc = orjson.loads(body)
        if sorted(doc["versions"]) != sorted(PACKAGES[name]):
            failures.append(f"GET {path}: versions {sorted(doc['versions'])}")
        for version, manifest in doc["versions"].items():
            want = f"{public}/{name}/-/{name.rpartition('/')[2]}-{version}.tgz"
            if manifest["dist"]["tarball"] != want:
                failures.append(f"GET {path}: tarball URL {manifest['dist']['tarball']} != {want}")
        counts["packument"] += 1

    async def tarball(rng: random.Random) -> None:
        name, version = rng.choice(list(expected_tarballs))
        path = f"/{name}/-/{name.rpartition('/')[2]}-{version}.tgz"
        async with reg.client.get(path) as resp:
            body = await resp.read()
            if resp.status != 200:
                failures.append(f"GET {path} -> {resp.status} {body[:200]!r}")
                return
        if body != expected_tarballs[(name, version)]:
            failures.append(f"GET {path}: wrong bytes ({len(body)} bytes)")
        counts["tarball"] += 1

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            await (packument(rng) if rng.random() < 0.4 else tarball(rng))

    async def clearer() -> None:
        # Alternate the admin API (LRU dropped too) and a library wipe from
        # "another process" (a second CacheLayer on the same directory).
        other = CacheLayer(FileBackend(reg.config.storage.cache))
        rng = random.Random(99)
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(0.001, 0.02))
            if counts["clears"] % 2 == 0:
                async with reg.client.post("/-/overlaystore/cache/clear", headers=reg.auth("admin")) as resp:
                    if resp.status != 200:
                        failures.append(f"clear -> {resp.status} {await resp.text()}")
            else:
                await other.wipe()
            counts["clears"] += 1

    clients = [asyncio.create_task(client(seed)) for seed in range(24)]
    clear_task = asyncio.create_task(clearer())
    # At least 2 s and 16 clears (a slow machine gets more time, up to 30 s).
    started = time.monotonic()
    while time.monotonic() - started < 30 and (time.monotonic() - started < 2 or counts["clears"] < 16):
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*clients, clear_task)

    assert failures == [], failures[:10]
    assert counts["clears"] >= 16, counts
    assert counts["packument"] >= 50 and counts["tarball"] >= 50, counts
    # And the cache refills afterwards.
    for (name, version), data in list(expected_tarballs.items())[:3]:
        async with reg.client.get(f"/{name}/-/{name.rpartition('/')[2]}-{version}.tgz") as resp:
            assert resp.status == 200 and await resp.read() == data
    assert await reg.app[STORE].tarball(name, f"{name.rpartition('/')[2]}-{version}.tgz") is not None
