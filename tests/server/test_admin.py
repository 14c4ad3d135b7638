"""The admin API under /-/overlaystore/: who may call it, stats, gc (dry run
and real), clear (LRU invalidated, published data untouched)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from server.config import CacheConfig
from server.keys import VIEW
from tests.fakes.upstream import FakeUpstream
from tests.server.conftest import Registry
from tests.server.ops_helpers import cache_files, fetch, make_registry, publish, snapshot

ENDPOINTS = [
    ("GET", "/-/overlaystore/cache"),
    ("POST", "/-/overlaystore/cache/gc"),
    ("POST", "/-/overlaystore/cache/clear"),
]


@pytest.fixture
async def reg(aiohttp_client: Any, tmp_path: Path, fake_upstream: FakeUpstream) -> Registry:
    """A registry on the fake upstream with an admin ("admin"), a user
    ("bob"), a published package and three proxied ones in the cache."""
    fake_upstream.add_package("left-pad", ["1.0.0", "1.1.0"], files={"index.js": "x" * 3000})
    fake_upstream.add_package("@types/node", ["20.0.0"], files={"index.d.ts": "y" * 5000})
    fake_upstream.add_package("chalk", ["5.0.0"], files={"index.js": "z" * 1000})
    registry = await make_registry(aiohttp_client, tmp_path, fake_upstream.url,
                                   cache=CacheConfig(max_bytes=None, gc_interval_s=3600))
    await registry.adduser("admin")
    await registry.adduser("bob")
    await publish(registry, "bob", "mine")
    for name in ("left-pad", "@types/node", "chalk"):
        await fetch(registry, fake_upstream, name)
    return registry


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_anonymous_gets_401_and_users_403(reg: Registry, method: str, path: str) -> None:
    before = snapshot(reg.config.storage.cache)
    resp = await reg.client.request(method, path)
    assert resp.status == 401
    assert "error" in await resp.json()
    resp = await reg.client.request(method, path, headers=reg.auth("bob"))
    assert resp.status == 403
    assert "not an administrator" in (await resp.json())["error"]
    resp = await reg.client.request(method, path, headers={"Authorization": "Bearer not-a-token"})
    assert resp.status == 401
    assert snapshot(reg.config.storage.cache) == before  # nothing happened


async def test_admin_password_login_works_too(reg: Registry) -> None:
    resp = await reg.client.get("/-/overlaystore/cache", headers=reg.basic("admin", "correct horse"))
    assert resp.status == 200


async def test_stats(reg: Registry) -> None:
    resp = await reg.client.get("/-/overlaystore/cache", headers=reg.auth("admin"))
    assert resp.status == 200
    body = await resp.json()
    on_disk = cache_files(reg.config.storage.cache)
    tarballs = {k: v for k, v in on_disk.items() if k.endswith(".tgz")}
    assert body["entries"] == len(on_disk) and body["bytes"] == sum(on_disk.values())
    assert body["packages"] == 3
    assert body["kinds"]["tarball"] == {"entries": 4, "bytes": sum(tarballs.values())}
    assert body["kinds"]["packument"]["entries"] == 6  # packument.json + packument.meta each
    assert body["oldest_use"] <= body["newest_use"]
    assert body["gc"]["max_bytes"] is None and body["gc"]["background"] is False and body["gc"]["last"] is None
    assert body["view"]["entries"] >= 3


async def test_gc_dry_run_then_real(reg: Registry) -> None:
    cache = reg.config.storage.cache
    published = snapshot(reg.config.storage.published)
    before = cache_files(cache)
    total = sum(before.values())
    cap = total // 2
    resp = await reg.client.post("/-/overlaystore/cache/gc", json={"dry_run": True, "max_bytes": cap},
                                 headers=reg.auth("admin"))
    assert resp.status == 200
    dry = await resp.json()
    assert dry["dry_run"] is True and dry["evicted"] > 0
    assert (dry["entries_before"], dry["bytes_before"]) == (len(before), total)
    assert dry["bytes_after"] <= cap
    assert cache_files(cache) == before  # nothing deleted

    resp = await reg.client.post("/-/overlaystore/cache/gc", json={"max_bytes": f"{cap}B"},
                                 headers=reg.auth("admin"))
    assert resp.status == 200
    real = await resp.json()
    after = cache_files(cache)
    assert real["dry_run"] is False
    assert {k: real[k] for k in ("evicted", "bytes_after", "entries_after")} == {
        k: dry[k] for k in ("evicted", "bytes_after", "entries_after")}
    assert sum(after.values()) == real["bytes_after"] <= cap
    assert len(after) == real["entries_after"] == len(before) - real["evicted"]
    assert snapshot(reg.config.storage.published) == published
    # The stats endpoint remembers the run.
    body = await (await reg.client.get("/-/overlaystore/cache", headers=reg.auth("admin"))).json()
    assert body["gc"]["last"]["evicted"] == real["evicted"]
    # Everything is still served (refilled from the upstream).
    for name, version in (("left-pad", "1.0.0"), ("@types/node", "20.0.0"), ("chalk", "5.0.0")):
        resp = await reg.client.get(f"/{name}/-/{name.rpartition('/')[2]}-{version}.tgz")
        assert resp.status == 200


async def test_gc_with_max_age_takes_idle_tarballs_only(reg: Registry) -> None:
    cache = reg.config.storage.cache
    resp = await reg.client.post("/-/overlaystore/cache/gc", json={"max_age": "0s"}, headers=reg.auth("admin"))
    assert resp.status == 200
    report = await resp.json()
    assert report["expired"] == report["evicted"] == 4
    assert sorted(cache_files(cache)) == sorted(
        f"{n}/{f}" for n in ("left-pad", "@types/node", "chalk") for f in ("packument.json", "packument.meta"))


async def test_gc_without_body_uses_the_configured_limits(reg: Registry) -> None:
    before = cache_files(reg.config.storage.cache)
    resp = await reg.client.post("/-/overlaystore/cache/gc", headers=reg.auth("admin"))
    assert resp.status == 200
    assert (await resp.json())["evicted"] == 0  # no limit configured
    assert cache_files(reg.config.storage.cache) == before


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"max_bytes": "lots"}, "max_bytes"),
        ({"max_age": "forever"}, "max_age"),
        ({"dry_run": "yes"}, "dry_run"),
        ({"maxBytes": 1}, "unknown gc option"),
        ([1, 2], "JSON object"),
    ],
)
async def test_gc_bad_bodies_are_400(reg: Registry, body: Any, message: str) -> None:
    before = cache_files(reg.config.storage.cache)
    resp = await reg.client.post("/-/overlaystore/cache/gc", json=body, headers=reg.auth("admin"))
    assert resp.status == 400
    assert message in (await resp.json())["error"]
    assert cache_files(reg.config.storage.cache) == before


async def test_clear_empties_the_cache_and_the_lru_only(reg: Registry) -> None:
    published = snapshot(reg.config.storage.published)
    assert published and cache_files(reg.config.storage.cache)
    view = reg.app[VIEW]
    # Warm the LRU: a hit now.
    resp = await reg.client.get("/left-pad")
    assert resp.headers["X-Overlaystore-Cache"] == "hit"
    assert len(view) > 0

    resp = await reg.client.post("/-/overlaystore/cache/clear", headers=reg.auth("admin"))
    assert resp.status == 200
    report = await resp.json()
    assert report["entries"] == 10 and report["bytes"] > 0
    assert cache_files(reg.config.storage.cache) == {}
    assert len(view) == 0  # the composed LRU was dropped
    assert snapshot(reg.config.storage.published) == published

    # The next request recomposes (a miss) and refills the cache from the upstream.
    resp = await reg.client.get("/left-pad")
    assert resp.status == 200 and resp.headers["X-Overlaystore-Cache"] == "miss"
    assert "left-pad/packument.json" in cache_files(reg.config.storage.cache)
    resp = await reg.client.get("/mine")
    assert resp.status == 200 and "1.0.0" in (await resp.json())["versions"]
    resp = await reg.client.get("/mine/-/mine-1.0.0.tgz")
    assert resp.status == 200


async def test_admin_api_with_a_readonly_token_can_read_only(reg: Registry) -> None:
    resp = await reg.client.post("/-/npm/v1/tokens", json={"password": "correct horse", "readonly": True},
                                 headers=reg.auth("admin"))
    assert resp.status in (200, 201), await resp.text()
    token = (await resp.json())["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert (await reg.client.get("/-/overlaystore/cache", headers=headers)).status == 200
    assert (await reg.client.post("/-/overlaystore/cache/clear", headers=headers)).status == 403
    assert (await reg.client.post("/-/overlaystore/cache/gc", headers=headers)).status == 403
    assert cache_files(reg.config.storage.cache)
