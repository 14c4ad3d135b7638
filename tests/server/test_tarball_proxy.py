"""TarballProxy in a tiny aiohttp app: streaming, verification, caching,
single-flight, and what the client sees when the upstream misbehaves."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from overlaystore._types import PackageName
from overlaystore.errors import NotFound, OverlayStoreError, StorageError
from overlaystore.packages import PackageStore
from server.config import UpstreamConfig
from server.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from server.refresh import DistInfo, UpstreamSource
from server.tarball_proxy import Expected, TarballProxy, version_of
from server.upstream import UpstreamClient
from tests.fakes.upstream import FakeUpstream

N = PackageName
_STATUS = {NotFound: 404, UpstreamUnavailable: 503, UpstreamTimeout: 504, UpstreamError: 502}


@web.middleware
async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except OverlayStoreError as exc:
        status = next(s for cls, s in _STATUS.items() if isinstance(exc, cls))
        return web.json_response({"error": str(exc)}, status=status)


@dataclass
class Env:
    fake: FakeUpstream
    store: PackageStore
    client: TestClient[web.Request, web.Application]
    upstream: UpstreamClient | None
    proxy: TarballProxy

    def path(self, name: str, version: str) -> str:
        return self.fake.tarball_path(name, version)

    async def get(self, name: str, version: str, **kw: Any) -> aiohttp.ClientResponse:
        return await self.client.get(self.path(name, version), **kw)

    async def cached(self, name: str, version: str) -> bytes | None:
        ref = await self.store.tarball(N(name), f"{name.rpartition('/')[2]}-{version}.tgz")
        if ref is None:
            return None
        assert ref.layer == "cache"
        return await ref.read()


Factory = Callable[..., Awaitable[Env]]


@pytest.fixture
async def make_env(fake_upstream: FakeUpstream, tmp_path: Path, aiohttp_client: Any) -> Any:
    upstreams: list[UpstreamClient] = []
    count = 0

    async def make(*, connected: bool = True, **kw: Any) -> Env:
        nonlocal count
        count += 1
        config = replace(
            UpstreamConfig(url=fake_upstream.url, timeout_s=2.0, retries=0, breaker_failures=100), **kw
        )
        store = await PackageStore.open_directories(tmp_path / f"p{count}", tmp_path / f"c{count}")
        upstream = None
        if connected:
            upstream = UpstreamClient(config, backoff_s=0.001)
            await upstream.start()
            upstreams.append(upstream)
        source = UpstreamSource(store, upstream, config)
        proxy = TarballProxy(store, source, upstream, chunk_size=16 * 1024)

        async def serve(request: web.Request) -> web.StreamResponse:
            info = request.match_info
            name = f"@{info['scope']}/{info['pkg']}" if "scope" in info else info["name"]
            return await proxy.serve(request, N(name), info["filename"], head=request.method == "HEAD")

        app = web.Application(middlewares=[errors])
        app.router.add_get("/@{scope}/{pkg}/-/{filename}", serve)
        app.router.add_get("/{name}/-/{filename}", serve)
        client = await aiohttp_client(app)
        return Env(fake_upstream, store, client, upstream, proxy)

    yield make
    for upstream in upstreams:
        await upstream.close()


def big_files(size: int = 512 * 1024) -> dict[str, bytes]:
    """Incompressible content, so the tarball spans many chunks."""
    return {"blob.bin": os.urandom(size)}


# ------------------------------------------------------------------ happy path


@pytest.mark.parametrize("name", ["left-pad", "@acme/widget"])
async def test_miss_streams_and_caches(make_env: Factory, name: str) -> None:
    env = await make_env()
    env.fake.add_package(name, ["1.0.0", "1.1.0"], files=big_files())
    data = env.fake.tarball(name, "1.1.0")
    resp = await env.get(name, "1.1.0", headers={"Accept-Encoding": "gzip, deflate"})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert "Content-Encoding" not in resp.headers
    assert resp.headers["Content-Length"] == str(len(data))
    assert await resp.read() == data
    assert await env.cached(name, "1.1.0") == data
    again = await env.get(name, "1.1.0")
    assert again.status == 200 and await again.read() == data
    assert env.fake.count(env.path(name, "1.1.0")) == 1
    assert env.fake.count(env.fake.packument_path(name)) == 1


async def test_head_miss_fetches_and_caches(make_env: Factory) -> None:
    env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"])
    data = env.fake.tarball("left-pad", "1.0.0")
    resp = await env.client.head(env.path("left-pad", "1.0.0"))
    assert resp.status == 200 and resp.headers["Content-Length"] == str(len(data))
    assert await resp.read() == b""
    assert await env.cached("left-pad", "1.0.0") == data


async def test_single_flight(make_env: Factory) -> None:
    env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"], files=big_files())
    data = env.fake.tarball("left-pad", "1.0.0")
    await env.proxy._source.packument(N("left-pad"))  # warm, so all requests race for the tarball
    env.fake.set_latency(0.2, path=env.path("left-pad", "1.0.0"))

    async def fetch() -> bytes:
        resp = await env.get("left-pad", "1.0.0")
        assert resp.status == 200
        return await resp.read()

    bodies = await asyncio.gather(*(fetch() for _ in range(8)))
    assert all(b == data for b in bodies)
    assert env.fake.count(env.path("left-pad", "1.0.0")) == 1


async def test_shasum_only_is_verified(make_env: Factory) -> None:
    env = await make_env()
    pkg = env.fake.add_package("old-pkg", ["0.1.0", "0.2.0"])
    for manifest in pkg.manifests.values():
        del manifest["dist"]["integrity"]
    assert (await (await env.get("old-pkg", "0.1.0")).read()) == env.fake.tarball("old-pkg", "0.1.0")
    assert await env.cached("old-pkg", "0.1.0") is not None
    env.fake.serve_wrong_bytes(path=env.path("old-pkg", "0.2.0"))
    resp = await env.get("old-pkg", "0.2.0")
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert await env.cached("old-pkg", "0.2.0") is None


async def test_no_digest_passes_through_uncached(make_env: Factory, caplog: pytest.LogCaptureFixture) -> None:
    env = await make_env()
    pkg = env.fake.add_package("ancient", ["0.0.1"])
    pkg.manifests["0.0.1"]["dist"] = {}
    with caplog.at_level(logging.WARNING, logger="overlaystore.upstream"):
        resp = await env.get("ancient", "0.0.1")
        assert await resp.read() == env.fake.tarball("ancient", "0.0.1")
    assert "not cached" in caplog.text
    assert await env.cached("ancient", "0.0.1") is None


# --------------------------------------------------------------- bad upstreams


async def test_integrity_mismatch_is_not_cached_and_cuts_the_connection(
    make_env: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"], files=big_files())
    data = env.fake.tarball("left-pad", "1.0.0")
    env.fake.serve_wrong_bytes(times=1)
    with caplog.at_level(logging.ERROR, logger="overlaystore.upstream"):
        resp = await env.get("left-pad", "1.0.0")
        assert resp.status == 200  # the bytes were already flowing
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert "integrity mismatch" in caplog.text and "left-pad" in caplog.text
    assert await env.cached("left-pad", "1.0.0") is None
    # The next request goes upstream again, and this time the bytes are right.
    again = await env.get("left-pad", "1.0.0")
    assert await again.read() == data
    assert env.fake.count(env.path("left-pad", "1.0.0")) == 2
    assert await env.cached("left-pad", "1.0.0") == data


@pytest.mark.parametrize("fault", ["reset", "truncate", "truncate_chunked"])
async def test_broken_body_is_not_cached(make_env: Factory, fault: str) -> None:
    env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"], files=big_files())
    path = env.path("left-pad", "1.0.0")
    if fault == "reset":
        env.fake.reset_mid_body(path=path)
    else:
        env.fake.truncate_body(path=path, chunked=fault == "truncate_chunked")
    resp = await env.get("left-pad", "1.0.0")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert await env.cached("left-pad", "1.0.0") is None
    again = await env.get("left-pad", "1.0.0")
    assert await again.read() == env.fake.tarball("left-pad", "1.0.0")


async def test_followers_get_the_leaders_error(make_env: Factory) -> None:
    env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"], files=big_files())
    await env.proxy._source.packument(N("left-pad"))
    env.fake.set_latency(0.2, path=env.path("left-pad", "1.0.0"))
    env.fake.serve_wrong_bytes(times=1)

    async def fetch() -> tuple[int, bytes | str]:
        resp = await env.get("left-pad", "1.0.0")
        try:
            return resp.status, await resp.read()
        except aiohttp.ClientPayloadError as exc:
            return resp.status, type(exc).__name__

    leader = asyncio.create_task(fetch())
    await asyncio.sleep(0.05)
    followers = [asyncio.create_task(fetch()) for _ in range(3)]
    results = [await leader, *[await f for f in followers]]
    assert results[0] == (200, "ClientPayloadError")
    for status, body in results[1:]:
        assert status == 502 and isinstance(body, bytes) and b"integrity" in body
    assert env.fake.count(env.path("left-pad", "1.0.0")) == 1
    assert await env.cached("left-pad", "1.0.0") is None


async def test_leader_hanging_up_does_not_stop_the_download(make_env: Factory) -> None:
    env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"], files=big_files(4 * 1024 * 1024))
    data = env.fake.tarball("left-pad", "1.0.0")
    await env.proxy._source.packument(N("left-pad"))
    env.fake.set_latency(0.1, path=env.path("left-pad", "1.0.0"))
    leader = await env.get("left-pad", "1.0.0")
    assert leader.status == 200
    follower = asyncio.create_task(env.get("left-pad", "1.0.0"))
    await asyncio.sleep(0.01)
    leader.close()  # the leader's client goes away mid-body
    resp = await follower
    assert resp.status == 200 and await resp.read() == data
    assert await env.cached("left-pad", "1.0.0") == data
    assert env.fake.count(env.path("left-pad", "1.0.0")) == 1


async def test_upstream_statuses(make_env: Factory) -> None:
    env = await make_env(timeout_s=1.0)
    pkg = env.fake.add_package("left-pad", ["1.0.0", "1.1.0", "1.2.0"])
    del pkg.tarballs["1.0.0"]  # listed, but the file is gone upstream
    resp = await env.get("left-pad", "1.0.0")
    assert resp.status == 404 and "error" in await resp.json()
    env.fake.fail_next(1, status=500, path=env.path("left-pad", "1.1.0"))
    resp = await env.get("left-pad", "1.1.0")
    assert resp.status == 502
    env.fake.set_latency(5.0, path=env.path("left-pad", "1.2.0"))
    resp = await env.get("left-pad", "1.2.0")
    assert resp.status == 504
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        assert await env.cached("left-pad", version) is None


async def test_unknown_version_package_or_filename(make_env: Factory) -> None:
    env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"])
    assert (await env.get("left-pad", "9.9.9")).status == 404
    assert (await env.get("nope", "1.0.0")).status == 404
    assert (await env.client.get("/left-pad/-/other-1.0.0.tgz")).status == 404
    assert env.fake.count(env.path("left-pad", "9.9.9")) == 0  # never asked for a file not listed


async def test_breaker_open_is_503(make_env: Factory) -> None:
    env = await make_env(breaker_failures=1)
    env.fake.add_package("left-pad", ["1.0.0", "1.1.0"])
    await env.proxy._source.packument(N("left-pad"))
    env.fake.fail_next(1, status=500)
    assert (await env.get("left-pad", "1.0.0")).status == 502
    assert (await env.get("left-pad", "1.1.0")).status == 503


async def test_offline_and_no_upstream(make_env: Factory) -> None:
    env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"])
    await env.proxy._source.packument(N("left-pad"))
    offline_config = UpstreamConfig(url=env.fake.url, offline=True)
    offline_client = UpstreamClient(offline_config)
    offline = TarballProxy(env.store, UpstreamSource(env.store, offline_client, offline_config), offline_client)
    with pytest.raises(UpstreamUnavailable):
        await offline.serve(_request(), N("left-pad"), "left-pad-1.0.0.tgz")
    with pytest.raises(NotFound):
        await offline.serve(_request(), N("other"), "other-1.0.0.tgz")
    none = TarballProxy(env.store, UpstreamSource(env.store, None, UpstreamConfig()), None)
    with pytest.raises(NotFound):
        await none.serve(_request(), N("left-pad"), "left-pad-1.0.0.tgz")


async def test_cache_write_failure_still_serves(make_env: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    env = await make_env()
    env.fake.add_package("left-pad", ["1.0.0"])

    async def full(*args: Any) -> Any:
        raise StorageError("no space left on device")

    monkeypatch.setattr(env.store, "open_cache_tarball", full)
    resp = await env.get("left-pad", "1.0.0")
    assert await resp.read() == env.fake.tarball("left-pad", "1.0.0")
    assert await env.cached("left-pad", "1.0.0") is None


# ------------------------------------------------------------------- helpers


def _request() -> web.Request:
    from aiohttp.test_utils import make_mocked_request

    return make_mocked_request("GET", "/")


def test_version_of() -> None:
    assert version_of(N("@acme/widget"), "widget-1.0.0-beta.1.tgz") == "1.0.0-beta.1"
    assert version_of(N("left-pad"), "left-pad-1.0.0.tgz") == "1.0.0"
    for bad in ("left-pad.tgz", "left-pad-.tgz", "right-pad-1.0.0.tgz", "left-pad-1.0.0.tar"):
        with pytest.raises(NotFound):
            version_of(N("left-pad"), bad)


def test_expected_digest() -> None:
    data = b"tarball"
    sha512 = hashlib.sha512(data).digest()
    import base64

    sri = "sha512-" + base64.b64encode(sha512).decode()
    weak = "sha1-" + base64.b64encode(hashlib.sha1(data).digest()).decode()
    chosen = Expected.from_dist(DistInfo(None, f"{weak} {sri}?opt", None))
    assert chosen is not None and chosen.algorithm == "sha512" and sha512 in chosen.digests
    by_shasum = Expected.from_dist(DistInfo(None, "garbage", hashlib.sha1(data).hexdigest()))
    assert by_shasum is not None and by_shasum.algorithm == "sha1"
    assert Expected.from_dist(DistInfo(None, None, None)) is None
    assert Expected.from_dist(DistInfo(None, "md5-xyz", "not-hex")) is None
