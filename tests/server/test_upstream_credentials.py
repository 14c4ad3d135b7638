"""Upstream credentials (server/upstream_credentials.py): on every request
under the upstream's URL, and on no other, redirects included."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from server.config import UpstreamConfig
from server.errors import UpstreamError
from server.upstream import UpstreamClient
from server.upstream_credentials import UpstreamCredentials
from tests.fakes.upstream import FakeUpstream

SECRET = "Bearer upstream-s3cret"


@pytest.mark.parametrize(("url", "covered"), [
    ("https://mirror.test/npm/left-pad", True),
    ("https://mirror.test/npm", True),
    ("https://mirror.test/npm/", True),
    ("https://MIRROR.test:443/npm/@acme%2fw", True),
    ("https://mirror.test/npmx/left-pad", False),  # a sibling path, not under the base
    ("https://mirror.test/other/left-pad", False),
    ("http://mirror.test/npm/left-pad", False),  # another scheme
    ("https://mirror.test:8443/npm/left-pad", False),  # another port
    ("https://cdn.mirror.test/npm/left-pad", False),  # another host
])
def test_covers_only_urls_under_the_base(url: str, covered: bool) -> None:
    assert UpstreamCredentials("https://mirror.test/npm/", SECRET).covers(URL(url)) is covered


def test_a_root_base_covers_its_whole_origin() -> None:
    credentials = UpstreamCredentials("https://mirror.test", SECRET)
    assert credentials.covers(URL("https://mirror.test/-/v1/search?text=x"))
    assert not credentials.covers(URL("https://mirror.test.evil/-/ping"))


@pytest.fixture
async def guarded(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.required_authorization = SECRET
    fake_upstream.add_package("left-pad", ["1.0.0"])
    return fake_upstream


@pytest.fixture
async def elsewhere() -> AsyncIterator[FakeUpstream]:
    """Another registry on another port: a tarball host the packument points at."""
    other = FakeUpstream()
    await other.start()
    other.add_package("left-pad", ["1.0.0"])
    yield other
    await other.stop()


async def client_for(url: str, authorization: str | None) -> UpstreamClient:
    client = UpstreamClient(UpstreamConfig(url=url, retries=0, timeout_s=5, authorization=authorization))
    await client.start()
    return client


async def test_every_kind_of_request_carries_the_credentials(guarded: FakeUpstream) -> None:
    client = await client_for(guarded.url, SECRET)
    try:
        assert (await client.fetch_packument("left-pad")).status == "ok"
        async with client.open_tarball(guarded.tarball_url("left-pad", "1.0.0")) as body:
            assert body.status == 200
        assert await client.search({"text": "left"}) is not None
        status, _ = await client.audit_bulk(orjson.dumps({"left-pad": ["1.0.0"]}), {})
        assert status == 200
        assert await client.ping() == 200
    finally:
        await client.close()
    assert len(guarded.requests) == 5
    assert all(r.headers.get("Authorization") == SECRET for r in guarded.requests)


async def test_without_credentials_the_error_says_what_is_missing(guarded: FakeUpstream) -> None:
    client = await client_for(guarded.url, None)
    try:
        with pytest.raises(UpstreamError, match=r"401.*\[upstream\]\.token"):
            await client.fetch_packument("left-pad")
    finally:
        await client.close()
    assert "Authorization" not in guarded.requests[-1].headers


async def test_a_tarball_on_another_origin_never_sees_them(guarded: FakeUpstream, elsewhere: FakeUpstream) -> None:
    client = await client_for(guarded.url, SECRET)
    try:
        async with client.open_tarball(elsewhere.tarball_url("left-pad", "1.0.0")) as body:
            assert body.status == 200
    finally:
        await client.close()
    assert [r.headers.get("Authorization") for r in elsewhere.requests] == [None]


async def test_a_redirect_to_another_origin_drops_them(guarded: FakeUpstream, elsewhere: FakeUpstream) -> None:
    seen: list[Any] = []

    async def bounce(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        raise web.HTTPFound(elsewhere.tarball_url("left-pad", "1.0.0"))

    app = web.Application()
    app.router.add_get("/{tail:.*}", bounce)
    mirror = TestServer(app, host="127.0.0.1")
    await mirror.start_server()
    client = await client_for(str(mirror.make_url("/npm")), SECRET)
    try:
        async with client.open_tarball(str(mirror.make_url("/npm/left-pad/-/left-pad-1.0.0.tgz"))) as body:
            assert body.status == 200
    finally:
        await client.close()
        await mirror.close()
    assert seen == [SECRET]  # the mirror itself got them
    assert [r.headers.get("Authorization") for r in elsewhere.requests] == [None]


async def test_the_secret_is_not_in_the_config_repr() -> None:
    config = UpstreamConfig(url="https://mirror.test", authorization=SECRET)
    assert "s3cret" not in repr(config)
