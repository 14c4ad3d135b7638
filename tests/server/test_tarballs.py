"""Tarballs held in memory after their first read: the same bytes and headers
as from the file, conditional GETs and HEAD, a size limit, and every write
that changes a tarball's fate (unpublish, a cache wipe) is seen at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.config import CacheConfig
from tests.fakes.upstream import FakeUpstream
from tests.npmdata import make_tarball
from tests.server.conftest import Registry
from tests.server.ops_helpers import make_registry, publish
from tests.server.test_metrics import scrape

TARBALL = "/mine/-/mine-1.0.0.tgz"


async def _served(reg: Registry, outcome: str) -> float:
    return (await scrape(reg)).value("overlaystore_served_total", kind="tarball", outcome=outcome)


async def _registry(aiohttp_client: Any, tmp_path: Path, upstream: str | None = None, **cache: Any) -> Registry:
    reg = await make_registry(aiohttp_client, tmp_path, upstream, cache=CacheConfig(**cache))
    await reg.adduser("admin")
    return reg


async def test_second_read_comes_from_memory_with_the_same_bytes(aiohttp_client: Any, tmp_path: Path) -> None:
    reg = await _registry(aiohttp_client, tmp_path)
    await publish(reg, "admin", "mine")
    first = await reg.client.get(TARBALL)
    second = await reg.client.get(TARBALL)
    assert first.status == second.status == 200
    assert await first.read() == await second.read() == make_tarball("mine", "1.0.0")
    for header in ("Content-Type", "Cache-Control", "ETag"):
        assert first.headers[header] == second.headers[header]
    assert "Content-Encoding" not in second.headers  # npm hashes the bytes as sent
    assert await _served(reg, "published") == 1
    assert await _served(reg, "memory") == 1


async def test_conditional_get_and_head_from_memory(aiohttp_client: Any, tmp_path: Path) -> None:
    reg = await _registry(aiohttp_client, tmp_path)
    await publish(reg, "admin", "mine")
    etag = (await reg.client.get(TARBALL)).headers["ETag"]
    not_modified = await reg.client.get(TARBALL, headers={"If-None-Match": f'"other", W/{etag}'})
    assert not_modified.status == 304
    assert await not_modified.read() == b""
    changed = await reg.client.get(TARBALL, headers={"If-None-Match": '"other"'})
    assert changed.status == 200
    head = await reg.client.head(TARBALL)
    assert head.status == 200
    assert int(head.headers["Content-Length"]) == len(make_tarball("mine", "1.0.0"))
    assert await _served(reg, "memory") == 3


async def test_tarballs_over_the_limit_are_always_sent_from_their_file(aiohttp_client: Any, tmp_path: Path) -> None:
    reg = await _registry(aiohttp_client, tmp_path, view_tarball_max_bytes=16)
    await publish(reg, "admin", "mine")
    for _ in range(2):
        resp = await reg.client.get(TARBALL)
        assert resp.status == 200
        assert await resp.read() == make_tarball("mine", "1.0.0")
    assert await _served(reg, "published") == 2
    assert await _served(reg, "memory") == 0


async def test_unpublish_drops_the_held_tarball(aiohttp_client: Any, tmp_path: Path) -> None:
    reg = await _registry(aiohttp_client, tmp_path)
    await publish(reg, "admin", "mine")
    await publish(reg, "admin", "mine", "1.0.1")
    assert (await reg.client.get(TARBALL)).status == 200  # now held in memory
    doc = await (await reg.client.get("/mine?write=true", headers=reg.auth("admin"))).json()
    del doc["versions"]["1.0.0"]
    doc["dist-tags"]["latest"] = "1.0.1"
    resp = await reg.client.put(f"/mine/-rev/{doc['_rev']}", json=doc, headers=reg.auth("admin"))
    assert resp.status == 200, await resp.text()
    assert (await reg.client.get(TARBALL)).status == 404


async def test_cache_clear_drops_held_upstream_tarballs(aiohttp_client: Any, tmp_path: Path,
                                                        fake_upstream: FakeUpstream) -> None:
    fake_upstream.add_package("left-pad", ["1.0.0"])
    reg = await _registry(aiohttp_client, tmp_path, fake_upstream.url)
    path = "/left-pad/-/left-pad-1.0.0.tgz"
    assert (await reg.client.get("/left-pad")).status == 200
    for _ in range(3):  # upstream, then the cache file (now held), then memory
        resp = await reg.client.get(path)
        assert await resp.read() == fake_upstream.tarball("left-pad", "1.0.0")
    assert fake_upstream.count(path) == 1
    assert await _served(reg, "memory") == 1
    resp = await reg.client.post("/-/overlaystore/cache/clear", headers=reg.auth("admin"))
    assert resp.status == 200, await resp.text()
    resp = await reg.client.get(path)
    assert await resp.read() == fake_upstream.tarball("left-pad", "1.0.0")
    assert fake_upstream.count(path) == 2  # asked again: nothing was kept
