"""The proxy path through the whole app: freshness, single-flight,
stale-if-error, offline mode and upstream failures, as clients see them."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiohttp

from server.config import UpstreamConfig
from tests.fakes.upstream import FakeUpstream

from .conftest import RegistryFactory


async def test_concurrent_misses_make_one_upstream_request(
    registry_factory: RegistryFactory, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.add_package("slow-pkg", ["1.0.0"])
    fake_upstream.set_latency(0.2)
    reg = await registry_factory(fake_upstream.url)
    responses = await asyncio.gather(*(reg.client.get("/slow-pkg") for _ in range(20)))
    assert {r.status for r in responses} == {200}
    assert fake_upstream.count(fake_upstream.packument_path("slow-pkg")) == 1
    tarballs = await asyncio.gather(*(reg.client.get("/slow-pkg/-/slow-pkg-1.0.0.tgz") for _ in range(20)))
    bodies = {await r.read() for r in tarballs}
    assert bodies == {fake_upstream.tarball("slow-pkg", "1.0.0")}
    assert fake_upstream.count(fake_upstream.tarball_path("slow-pkg", "1.0.0")) == 1


async def test_fresh_copy_is_not_refetched_and_stale_one_is_revalidated(
    registry_factory: RegistryFactory, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.add_package("pkg", ["1.0.0"])
    reg = await registry_factory(fake_upstream.url)
    path = fake_upstream.packument_path("pkg")
    assert (await reg.client.get("/pkg")).status == 200
    assert (await reg.client.get("/pkg", headers={"Accept": "application/vnd.npm.install-v1+json"})).status == 200
    assert fake_upstream.count(path) == 1

    expired = await registry_factory(
        fake_upstream.url, upstream=replace(reg.config.upstream, max_age_s=0.0)
    )
    assert (await expired.client.get("/pkg")).status == 200
    fake_upstream.add_version("pkg", "1.1.0")
    doc = await (await expired.client.get("/pkg")).json()
    assert "1.1.0" in doc["versions"]
    conditional = [r for r in fake_upstream.requests_for(path) if "If-None-Match" in r.headers]
    assert conditional, "a stale copy is revalidated with its ETag"


async def test_stale_if_error(registry_factory: RegistryFactory, fake_upstream: FakeUpstream) -> None:
    fake_upstream.add_package("pkg", ["1.0.0"])
    reg = await registry_factory(
        fake_upstream.url, upstream=UpstreamConfig(url=fake_upstream.url, max_age_s=0.0, retries=0, timeout_s=2)
    )
    assert (await reg.client.get("/pkg")).status == 200
    await fake_upstream.stop()
    resp = await reg.client.get("/pkg")
    assert resp.status == 200
    assert "Stale" in resp.headers.get("Warning", "")
    assert list((await resp.json())["versions"]) == ["1.0.0"]
    # Tarballs already cached keep flowing.


async def test_upstream_down_without_a_copy_is_a_clear_5xx(
    registry_factory: RegistryFactory, fake_upstream: FakeUpstream
) -> None:
    reg = await registry_factory(fake_upstream.url)
    await fake_upstream.stop()
    resp = await reg.client.get("/never-seen")
    assert resp.status in (502, 503, 504)
    assert isinstance((await resp.json())["error"], str)


async def test_offline_mode_serves_the_cache_only(
    registry_factory: RegistryFactory, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.add_package("pkg", ["1.0.0"])
    online = await registry_factory(fake_upstream.url)
    assert (await online.client.get("/pkg")).status == 200
    first = await online.client.get("/pkg/-/pkg-1.0.0.tgz")
    # Reading the whole body lets the proxy finish its verified commit to the cache.
    assert await first.read() == fake_upstream.tarball("pkg", "1.0.0")
    offline = await registry_factory(
        fake_upstream.url,
        storage=online.config.storage,
        upstream=UpstreamConfig(url=fake_upstream.url, offline=True, max_age_s=0.0),
    )
    fake_upstream.clear_log()
    assert (await offline.client.get("/pkg")).status == 200
    tgz = await offline.client.get("/pkg/-/pkg-1.0.0.tgz")
    assert await tgz.read() == fake_upstream.tarball("pkg", "1.0.0")
    missing = await offline.client.get("/other")
    assert missing.status in (404, 503)
    assert fake_upstream.requests == []


async def test_wrong_integrity_is_never_cached(registry_factory: RegistryFactory, fake_upstream: FakeUpstream) -> None:
    fake_upstream.add_package("pkg", ["1.0.0"])
    reg = await registry_factory(fake_upstream.url)
    tarball_path = fake_upstream.tarball_path("pkg", "1.0.0")
    fake_upstream.serve_wrong_bytes(path=tarball_path, times=1)
    body: bytes | None
    try:
        bad = await reg.client.get("/pkg/-/pkg-1.0.0.tgz")
        body = await bad.read()
    except aiohttp.ClientPayloadError:
        body = None  # the connection is cut once the bytes prove wrong, as wanted
    assert body != fake_upstream.tarball("pkg", "1.0.0")
    good = await reg.client.get("/pkg/-/pkg-1.0.0.tgz")
    assert await good.read() == fake_upstream.tarball("pkg", "1.0.0")
    assert fake_upstream.count(tarball_path) == 2


async def test_upstream_404_drops_the_cached_copy(registry_factory: RegistryFactory, fake_upstream: FakeUpstream) -> None:
    fake_upstream.add_package("pkg", ["1.0.0"])
    reg = await registry_factory(fake_upstream.url, upstream=UpstreamConfig(url=fake_upstream.url, max_age_s=0.0, retries=0))
    assert (await reg.client.get("/pkg")).status == 200
    fake_upstream.remove_package("pkg")
    assert (await reg.client.get("/pkg")).status == 404
    assert not (reg.config.storage.cache / "pkg" / "packument.json").exists()
