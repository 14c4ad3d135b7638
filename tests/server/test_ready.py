"""GET /-/overlaystore/ready: both stores writable, and the upstream's state."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from overlaystore.layered import LayeredStore
from overlaystore.memory import MemoryBackend
from overlaystore.cache import CacheLayer
from overlaystore.published import PublishedLayer
from server.breaker import BreakerState
from server.health import Readiness
from server.keys import READINESS, UPSTREAM
from tests.fakes.upstream import FakeUpstream
from tests.server.ops_helpers import fast_upstream, make_registry, registry_with_open_breaker, snapshot


async def test_ready_without_upstream(aiohttp_client: Any, tmp_path: Path) -> None:
    reg = await make_registry(aiohttp_client, tmp_path)
    resp = await reg.client.get("/-/overlaystore/ready")
    assert resp.status == 200
    assert await resp.json() == {"published": "writable", "cache": "writable", "upstream": "none"}
    # The probe leaves nothing behind.
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and "probe" in p.name]
    # Anonymous, no auth needed; ping is unchanged.
    resp = await reg.client.get("/-/ping")
    assert resp.status == 200 and await resp.json() == {}


async def test_ready_offline(aiohttp_client: Any, tmp_path: Path) -> None:
    reg = await make_registry(aiohttp_client, tmp_path, "http://127.0.0.1:9",
                              upstream=fast_upstream("http://127.0.0.1:9", offline=True))
    assert (await (await reg.client.get("/-/overlaystore/ready")).json())["upstream"] == "offline"


async def test_ready_upstream_ok_then_down_cached_briefly(aiohttp_client: Any, tmp_path: Path,
                                                          fake_upstream: FakeUpstream) -> None:
    reg = await make_registry(aiohttp_client, tmp_path, fake_upstream.url)
    resp = await reg.client.get("/-/overlaystore/ready")
    assert resp.status == 200 and (await resp.json())["upstream"] == "ok"
    assert fake_upstream.count("/-/ping") == 1
    # Answers are reused for a few seconds: a poller does not load the upstream.
    for _ in range(5):
        await reg.client.get("/-/overlaystore/ready")
    assert fake_upstream.count("/-/ping") == 1
    # The upstream dies: readiness still 200 (the stores work), upstream "down".
    await fake_upstream.stop()
    resp = await reg.client.get("/-/overlaystore/ready")
    assert (await resp.json())["upstream"] == "ok"  # the cached answer, still
    reg.app[READINESS].ttl_s = 0.0
    resp = await reg.client.get("/-/overlaystore/ready")
    assert resp.status == 200 and (await resp.json())["upstream"] == "down"
    await fake_upstream.start()
    resp = await reg.client.get("/-/overlaystore/ready")
    assert (await resp.json())["upstream"] == "ok"


async def test_concurrent_checks_share_one_probe(fake_upstream: FakeUpstream) -> None:
    from server.upstream import UpstreamClient

    fake_upstream.set_latency(0.2)
    async with UpstreamClient(fast_upstream(fake_upstream.url)) as client:
        probe = Readiness()
        answers = await asyncio.gather(*(probe.upstream(client) for _ in range(10)))
        assert answers == ["ok"] * 10
        assert fake_upstream.count("/-/ping") == 1
        assert await probe.upstream(None) == "none"


async def test_open_breaker_is_down_without_a_probe(aiohttp_client: Any, tmp_path: Path,
                                                    fake_upstream: FakeUpstream) -> None:
    reg = await registry_with_open_breaker(aiohttp_client, tmp_path, fake_upstream)
    assert reg.app[UPSTREAM].breaker_state is BreakerState.OPEN
    resp = await reg.client.get("/-/overlaystore/ready")
    assert resp.status == 200 and (await resp.json())["upstream"] == "down"
    assert fake_upstream.count("/-/ping") == 0


async def test_unwritable_cache_is_503(aiohttp_client: Any, tmp_path: Path) -> None:
    reg = await make_registry(aiohttp_client, tmp_path)
    published = snapshot(reg.config.storage.published)
    cache = reg.config.storage.cache
    shutil.rmtree(cache)
    cache.write_text("not a directory")  # (root ignores permissions; this fails for everyone)
    resp = await reg.client.get("/-/overlaystore/ready")
    assert resp.status == 503
    body = await resp.json()
    assert (body["published"], body["cache"], body["upstream"]) == ("writable", "unwritable", "none")
    assert "cache" in body["errors"] and "published" not in body["errors"]
    assert snapshot(reg.config.storage.published) == published
    # Repaired: ready again.
    cache.unlink()
    resp = await reg.client.get("/-/overlaystore/ready")
    assert resp.status == 200 and (await resp.json())["cache"] == "writable"


async def test_unwritable_published_is_503(aiohttp_client: Any, tmp_path: Path) -> None:
    reg = await make_registry(aiohttp_client, tmp_path)
    published = reg.config.storage.published
    shutil.rmtree(published)
    published.write_text("not a directory")
    resp = await reg.client.get("/-/overlaystore/ready")
    assert resp.status == 503
    assert (await resp.json())["published"] == "unwritable"


async def test_layered_writable_on_backends_without_a_check() -> None:
    class Bare(MemoryBackend):
        check_writable = None  # type: ignore[assignment]

    store = LayeredStore(PublishedLayer(Bare()), CacheLayer(MemoryBackend()))
    assert await store.writable() == {"published": None, "cache": None}


async def test_an_upstream_refusing_our_credentials_is_unauthorized(aiohttp_client: Any, tmp_path: Path,
                                                                    fake_upstream: FakeUpstream) -> None:
    fake_upstream.required_authorization = "Bearer right"
    reg = await make_registry(aiohttp_client, tmp_path, fake_upstream.url,
                              upstream=fast_upstream(fake_upstream.url, authorization="Bearer wrong"))
    resp = await reg.client.get("/-/overlaystore/ready")
    assert resp.status == 200 and (await resp.json())["upstream"] == "unauthorized"
    fake_upstream.required_authorization = "Bearer wrong"
    reg.app[READINESS].ttl_s = 0.0
    assert (await (await reg.client.get("/-/overlaystore/ready")).json())["upstream"] == "ok"
