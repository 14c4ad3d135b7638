"""UpstreamSource: freshness, revalidation, stale-if-error, 404 drops, offline,
single-flight, the dist index — the real PackageStore against the fake upstream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from overlaystore._types import PackageName
from overlaystore.cache import CacheMeta
from overlaystore.errors import StorageError
from overlaystore.packages import PackageStore
from server.config import UpstreamConfig
from server.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from server.refresh import UpstreamSource
from server.upstream import UpstreamClient
from tests.fakes.upstream import FakeUpstream
from tests.server.conftest import ParseCount

MAX_AGE = 300.0
N = PackageName


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    fake: FakeUpstream
    store: PackageStore
    client: UpstreamClient
    source: UpstreamSource
    clock: Clock


@pytest.fixture
async def make_env(fake_upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    clients: list[UpstreamClient] = []
    count = 0

    async def make(**kw: Any) -> Env:
        nonlocal count
        count += 1
        config = replace(
            UpstreamConfig(url=fake_upstream.url, max_age_s=MAX_AGE, timeout_s=2.0, retries=0, breaker_failures=100),
            **kw,
        )
        store = await PackageStore.open_directories(tmp_path / f"p{count}", tmp_path / f"c{count}")
        client = UpstreamClient(config, backoff_s=0.001)
        await client.start()
        clients.append(client)
        clock = Clock()
        return Env(fake_upstream, store, client, UpstreamSource(store, client, config, clock=clock), clock)

    yield make
    for client in clients:
        await client.close()


async def test_fetch_then_cache(make_env: Any) -> None:
    env: Env = await make_env()
    env.fake.add_package("@acme/widget", ["1.0.0", "2.0.0"])
    first = await env.source.packument(N("@acme/widget"))
    assert first is not None and first.source == "upstream" and not first.stale
    assert first.doc == env.fake.packument("@acme/widget")
    assert first.fetched_at == env.clock.now and first.expires_at == env.clock.now + MAX_AGE
    cached = await env.store.cached_packument(N("@acme/widget"))
    assert cached is not None and orjson.loads(cached.body) == first.doc
    assert cached.meta.etag == first.etag == env.fake.etag("@acme/widget")
    assert cached.meta.fetched_at == env.clock.now

    env.clock.now += MAX_AGE - 1
    again = await env.source.packument(N("@acme/widget"))
    assert again is not None and again.source == "cache" and again.doc == first.doc
    assert env.fake.count() == 1


async def test_revalidation_304_refreshes_fetched_at(make_env: Any) -> None:
    env: Env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"])
    first = await env.source.packument(N("left-pad"))
    assert first is not None
    env.clock.now += MAX_AGE + 1
    second = await env.source.packument(N("left-pad"))
    assert second is not None and second.source == "revalidated" and not second.stale
    assert second.fetched_at == env.clock.now and second.doc == first.doc and second.etag == first.etag
    assert env.fake.requests[-1].headers["If-None-Match"] == first.etag
    cached = await env.store.cached_packument(N("left-pad"))
    assert cached is not None and cached.meta.fetched_at == env.clock.now
    # Fresh again: no request.
    third = await env.source.packument(N("left-pad"))
    assert third is not None and third.source == "cache"
    assert env.fake.count() == 2


async def test_revalidation_200_replaces_the_copy(make_env: Any) -> None:
    env: Env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"])
    await env.source.packument(N("left-pad"))
    env.fake.add_version("left-pad", "1.1.0")
    env.clock.now += MAX_AGE
    doc = await env.source.packument(N("left-pad"))
    assert doc is not None and doc.source == "upstream" and "1.1.0" in doc.doc["versions"]
    cached = await env.store.cached_packument(N("left-pad"))
    assert cached is not None and "1.1.0" in orjson.loads(cached.body)["versions"]


async def test_upstream_404_drops_the_cache(make_env: Any) -> None:
    env: Env = await make_env()
    env.fake.add_package("gone", ["1.0.0"])
    await env.source.packument(N("gone"))
    writer = await env.store.open_cache_tarball(N("gone"), "gone-1.0.0.tgz")
    await writer.write(env.fake.tarball("gone", "1.0.0"))
    await writer.commit()
    assert await env.store.tarball(N("gone"), "gone-1.0.0.tgz") is not None
    env.fake.remove_package("gone")
    env.clock.now += MAX_AGE
    assert await env.source.packument(N("gone")) is None
    assert await env.store.cached_packument(N("gone")) is None
    assert await env.store.tarball(N("gone"), "gone-1.0.0.tgz") is None
    assert await env.source.dist(N("gone"), "1.0.0") is None


async def test_never_seen_404(make_env: Any) -> None:
    env: Env = await make_env()
    assert await env.source.packument(N("nope")) is None
    assert await env.source.exists_upstream(N("nope")) is False


@pytest.mark.parametrize("failure", ["503", "down", "timeout", "html"])
async def test_stale_if_error(make_env: Any, failure: str, caplog: pytest.LogCaptureFixture) -> None:
    # A short timeout only where it is the point: ordinary requests under load must not hit it.
    env: Env = await make_env(timeout_s=1.0 if failure == "timeout" else 10.0)
    env.fake.add_package("left-pad", ["1.0.0"])
    first = await env.source.packument(N("left-pad"))
    assert first is not None
    env.clock.now += MAX_AGE + 5
    if failure == "503":
        env.fake.fail_next(1, status=503)
    elif failure == "down":
        await env.fake.stop()
    elif failure == "timeout":
        env.fake.latency = 5.0  # the handler is cancelled when the client gives up
    else:
        env.fake.html_body()
    with caplog.at_level(logging.WARNING, logger="overlaystore.upstream"):
        stale = await env.source.packument(N("left-pad"))
    assert stale is not None and stale.stale and stale.source == "cache"
    assert stale.doc == first.doc and stale.fetched_at == first.fetched_at
    assert stale.expires_at is not None and env.clock.now < stale.expires_at < env.clock.now + MAX_AGE
    assert "stale-if-error" in caplog.text
    # Nothing was recorded as fresh: the next call tries the upstream again.
    cached = await env.store.cached_packument(N("left-pad"))
    assert cached is not None and cached.meta.fetched_at == first.fetched_at


@pytest.mark.parametrize(("failure", "error"), [("503", UpstreamError), ("timeout", UpstreamTimeout), ("html", UpstreamError)])
async def test_error_without_a_copy_raises(make_env: Any, failure: str, error: type[Exception]) -> None:
    env: Env = await make_env(timeout_s=0.3)
    env.fake.add_package("left-pad", ["1.0.0"])
    if failure == "503":
        env.fake.fail_next(1, status=503)
    elif failure == "timeout":
        env.fake.latency = 5.0  # the handler is cancelled when the client gives up
    else:
        env.fake.html_body()
    with pytest.raises(error):
        await env.source.packument(N("left-pad"))
    assert await env.store.cached_packument(N("left-pad")) is None


async def test_breaker_open_serves_stale(make_env: Any) -> None:
    env: Env = await make_env(breaker_failures=1)
    env.fake.add_package("a", ["1.0.0"])
    env.fake.add_package("b", ["1.0.0"])
    await env.source.packument(N("a"))
    await env.source.packument(N("b"))
    env.clock.now += MAX_AGE
    env.fake.fail_next(10, status=500)
    assert (await env.source.packument(N("a"))).stale  # type: ignore[union-attr]
    before = env.fake.count()
    assert (await env.source.packument(N("b"))).stale  # type: ignore[union-attr]
    assert env.fake.count() == before  # the open breaker answered, not the upstream
    with pytest.raises(UpstreamUnavailable):
        await env.source.packument(N("c"))


async def test_unparseable_upstream_body_is_not_stored(make_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    env: Env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"])
    monkeypatch.setattr(env.fake, "packument_bytes", lambda name: b'{"name": "left-pad", "versions": ')
    with pytest.raises(UpstreamError, match="unparseable"):
        await env.source.packument(N("left-pad"))
    assert await env.store.cached_packument(N("left-pad")) is None


async def test_unreadable_cached_copy_is_ignored(make_env: Any) -> None:
    env: Env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"])
    await env.store.store_packument(N("left-pad"), b"<html>oops", CacheMeta(fetched_at=env.clock.now, etag='"x"'))
    doc = await env.source.packument(N("left-pad"))
    assert doc is not None and doc.source == "upstream"
    assert "If-None-Match" not in env.fake.requests[-1].headers  # its validators mean nothing


async def test_304_for_an_unreadable_copy_refetches(make_env: Any) -> None:
    env: Env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"])
    etag = env.fake.etag("left-pad")
    await env.store.store_packument(N("left-pad"), b"{broken", CacheMeta(fetched_at=0.0, etag=etag))
    doc = await env.source.packument(N("left-pad"))
    assert doc is not None and doc.source == "upstream" and doc.doc["name"] == "left-pad"
    assert env.fake.count() == 2  # the 304, then an unconditional GET


async def test_single_flight(make_env: Any, parses: ParseCount) -> None:
    env: Env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"])
    env.fake.latency = 0.05
    docs = await asyncio.gather(*(env.source.packument(N("left-pad")) for _ in range(20)))
    assert env.fake.count() == 1 and parses.calls == 1
    assert all(d is docs[0] for d in docs)


async def test_offline_reads_the_cache_only(make_env: Any, caplog: pytest.LogCaptureFixture) -> None:
    env: Env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"])
    await env.source.packument(N("left-pad"))
    offline = UpstreamSource(env.store, env.client, replace(env.client.config, offline=True), clock=env.clock)
    assert not offline.online
    env.fake.clear_log()
    doc = await offline.packument(N("left-pad"))
    assert doc is not None and doc.source == "cache" and not doc.stale and doc.expires_at is None
    env.clock.now += 10 * MAX_AGE
    with caplog.at_level(logging.WARNING):
        old = await offline.packument(N("left-pad"))
    assert old is not None and old.stale and old.doc == doc.doc
    assert caplog.text == ""  # offline is not an error worth a warning per request
    assert await offline.packument(N("never-cached")) is None
    assert await offline.exists_upstream(N("left-pad")) is True
    with pytest.raises(UpstreamUnavailable):
        await offline.exists_upstream(N("never-cached"))
    assert env.fake.requests == []


async def test_no_upstream(make_env: Any) -> None:
    env: Env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"])
    await env.source.packument(N("left-pad"))
    nothing = UpstreamSource(env.store, None, UpstreamConfig(url=None), clock=env.clock)
    cached = await nothing.packument(N("left-pad"))
    assert cached is not None and cached.source == "cache"
    assert await nothing.packument(N("other")) is None
    assert await nothing.exists_upstream(N("left-pad")) is False


async def test_exists_upstream(make_env: Any) -> None:
    env: Env = await make_env()
    env.fake.add_package("lodash", ["4.17.21"])
    assert await env.source.exists_upstream(N("lodash")) is True
    assert await env.source.exists_upstream(N("lodash-private")) is False
    env.fake.fail_next(1, status=500)
    with pytest.raises(UpstreamError):
        await env.source.exists_upstream(N("other"))


async def test_cache_write_failure_still_serves(make_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    env: Env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"])

    async def full(*args: Any) -> None:
        raise StorageError("no space left")

    monkeypatch.setattr(env.store, "store_packument", full)
    doc = await env.source.packument(N("left-pad"))
    assert doc is not None and doc.source == "upstream"


async def test_dist_index_spares_a_parse(make_env: Any, parses: ParseCount) -> None:
    env: Env = await make_env()
    env.fake.add_package("@acme/widget", ["1.0.0", "1.1.0"])
    await env.source.packument(N("@acme/widget"))
    fetched = parses.calls  # what follows must not parse again
    dist = await env.source.dist(N("@acme/widget"), "1.1.0")
    assert dist is not None
    assert dist.tarball == env.fake.tarball_url("@acme/widget", "1.1.0")
    assert dist.integrity == env.fake.integrity("@acme/widget", "1.1.0")
    assert dist.shasum is not None and parses.calls == fetched
    assert await env.source.dist(N("@acme/widget"), "9.9.9") is None  # unknown: asks the packument ...
    assert parses.calls == fetched  # ... whose unchanged body the parsed cache answers for
    env.source.parsed_cache.clear()
    assert await env.source.dist(N("@acme/widget"), "9.9.9") is None
    assert parses.calls == fetched + 1


async def test_unchanged_bodies_are_parsed_once(make_env: Any, parses: ParseCount) -> None:
    """Cache hits, 304s and stale-if-error re-use the parse of the same body; a new body is parsed."""
    env: Env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"])
    first = await env.source.packument(N("left-pad"))
    assert first is not None and first.prepared is not None and parses.calls == 1
    again = await env.source.packument(N("left-pad"))  # fresh in the cache
    assert again is not None and again.doc is first.doc and again.prepared is first.prepared
    env.clock.now += MAX_AGE + 1
    revalidated = await env.source.packument(N("left-pad"))  # 304
    assert revalidated is not None and revalidated.source == "revalidated" and revalidated.doc is first.doc
    env.clock.now += MAX_AGE + 1
    env.fake.fail_next(1, status=500)
    stale = await env.source.packument(N("left-pad"))
    assert stale is not None and stale.stale and stale.doc is first.doc
    assert parses.calls == 1
    env.fake.add_package("left-pad", ["1.0.0", "1.1.0"])
    env.clock.now += MAX_AGE + 1
    changed = await env.source.packument(N("left-pad"))  # 200: parsed, and kept for next time
    assert changed is not None and "1.1.0" in changed.doc["versions"] and parses.calls == 2
    assert (await env.source.packument(N("left-pad"))).doc is changed.doc  # type: ignore[union-attr]
    assert parses.calls == 2


async def test_parsed_cache_can_be_disabled(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    fake_upstream.add_package("left-pad", ["1.0.0"])
    store = await PackageStore.open_directories(tmp_path / "p", tmp_path / "c")
    offline = UpstreamSource(store, None, UpstreamConfig(url=None), parsed_max_bytes=0)
    body = orjson.dumps(fake_upstream.packument("left-pad"))
    await store.store_packument(N("left-pad"), body, CacheMeta(fetched_at=0.0))
    a, b = await offline.packument(N("left-pad")), await offline.packument(N("left-pad"))
    assert a is not None and b is not None and a.doc == b.doc and a.doc is not b.doc
    assert len(offline.parsed_cache) == 0
    assert a.prepared is None  # nothing kept: no fragments worth building


async def test_large_document_parses_off_loop(make_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    env: Env = await make_env()
    versions = {f"1.0.{i}": {"description": "x" * 1000} for i in range(1200)}
    env.fake.add_package("huge", versions, files={})
    threaded = 0
    real = asyncio.to_thread

    async def spy(func: Any, *args: Any) -> Any:
        nonlocal threaded
        threaded += func is orjson.loads
        return await real(func, *args)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    doc = await env.source.packument(N("huge"))
    assert doc is not None and len(doc.doc["versions"]) == 1200
    assert threaded == 1
