"""UpstreamClient against the fake registry: requests, retries, timeouts,
the circuit breaker, offline mode, single-flight, streaming, passthroughs."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import tarfile
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest

from server.config import UpstreamConfig
from server.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from server.breaker import BreakerState, CircuitBreaker
from server.flight import SingleFlight
from server.upstream import UpstreamClient
from tests.fakes.forward_proxy import ForwardProxy
from tests.fakes.upstream import ABBREVIATED, FakeUpstream, make_tarball, sri_sha512


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state_of(thing: UpstreamClient | CircuitBreaker) -> BreakerState:
    """The breaker state, read through a call so mypy does not narrow it between asserts."""
    return thing.breaker_state if isinstance(thing, UpstreamClient) else thing.state


def config_for(fake: FakeUpstream, **kw: Any) -> UpstreamConfig:
    base = UpstreamConfig(
        url=fake.url, timeout_s=2.0, connect_timeout_s=1.0, retries=0, breaker_failures=100, breaker_reset_s=30.0
    )
    return replace(base, **kw)


@pytest.fixture
async def make_client(fake_upstream: FakeUpstream) -> AsyncIterator[Callable[..., Any]]:
    clients: list[UpstreamClient] = []

    async def make(*, clock: Callable[[], float] | None = None, **kw: Any) -> UpstreamClient:
        extra: dict[str, Any] = {"backoff_s": 0.001, "backoff_max_s": 0.002}
        if clock is not None:
            extra["clock"] = clock
        client = UpstreamClient(config_for(fake_upstream, **kw), **extra)
        await client.start()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


# ------------------------------------------------------------------ packuments


async def test_fetch_full_document(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("@acme/widget", ["1.0.0", "1.1.0"])
    client = await make_client()
    answer = await client.fetch_packument("@acme/widget")
    assert answer.status == "ok" and answer.body is not None
    assert orjson.loads(answer.body) == fake_upstream.packument("@acme/widget")
    assert answer.etag == fake_upstream.etag("@acme/widget")
    assert answer.last_modified is not None
    (req,) = fake_upstream.requests
    assert req.raw_path == "/@acme%2fwidget"
    assert req.headers["Accept"] == "application/json"
    assert "gzip" in req.headers["Accept-Encoding"]  # and the fake did compress it
    assert "If-None-Match" not in req.headers


async def test_conditional_requests(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("left-pad", ["1.0.0"])
    client = await make_client()
    first = await client.fetch_packument("left-pad")
    again = await client.fetch_packument("left-pad", etag=first.etag, last_modified=first.last_modified)
    assert (again.status, again.body, again.etag) == ("not_modified", None, first.etag)
    assert fake_upstream.requests[-1].headers["If-None-Match"] == first.etag
    assert fake_upstream.requests[-1].headers["If-Modified-Since"] == first.last_modified
    by_date = await client.fetch_packument("left-pad", last_modified=first.last_modified)
    assert by_date.status == "not_modified"
    fake_upstream.add_version("left-pad", "1.1.0")
    changed = await client.fetch_packument("left-pad", etag=first.etag)
    assert changed.status == "ok" and changed.etag != first.etag


async def test_not_found(fake_upstream: FakeUpstream, make_client: Any) -> None:
    client = await make_client()
    answer = await client.fetch_packument("nope")
    assert answer.status == "not_found" and answer.body is None


async def test_html_body_is_an_error_and_not_retried(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("left-pad")
    fake_upstream.html_body()
    client = await make_client(retries=3)
    with pytest.raises(UpstreamError, match="HTML"):
        await client.fetch_packument("left-pad")
    assert fake_upstream.count() == 1
    assert client.stats().errors == 1


async def test_non_object_json_is_an_error(
    fake_upstream: FakeUpstream, make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_upstream.add_package("x")
    monkeypatch.setattr(fake_upstream, "packument_bytes", lambda name: b'["not", "a", "packument"]')
    client = await make_client()
    with pytest.raises(UpstreamError, match="not a JSON object"):
        await client.fetch_packument("x")


async def test_304_without_validator_is_an_error(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("left-pad")
    fake_upstream.not_modified_without_validator()
    client = await make_client()
    with pytest.raises(UpstreamError, match="304"):
        await client.fetch_packument("left-pad")


async def test_single_flight(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("left-pad")
    fake_upstream.latency = 0.1
    client = await make_client()
    answers = await asyncio.gather(*(client.fetch_packument("left-pad") for _ in range(20)))
    assert fake_upstream.count() == 1
    assert len({a.body for a in answers}) == 1
    assert client.stats().in_flight == 0
    # Different validators are different questions.
    etag = answers[0].etag
    await asyncio.gather(client.fetch_packument("left-pad"), client.fetch_packument("left-pad", etag=etag))
    assert fake_upstream.count() == 3


async def test_single_flight_survives_a_cancelled_caller(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("left-pad")
    fake_upstream.latency = 0.1
    client = await make_client()
    first = asyncio.create_task(client.fetch_packument("left-pad"))
    second = asyncio.create_task(client.fetch_packument("left-pad"))
    await asyncio.sleep(0.02)
    first.cancel()
    assert (await second).status == "ok"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert fake_upstream.count() == 1


# --------------------------------------------------------------------- retries


async def test_retries_5xx_then_succeeds(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("left-pad")
    fake_upstream.fail_next(2, status=503)
    client = await make_client(retries=2)
    assert (await client.fetch_packument("left-pad")).status == "ok"
    assert fake_upstream.count() == 3
    stats = client.stats()
    assert (stats.requests, stats.errors, stats.retries) == (3, 2, 2)
    assert stats.latency_s_sum > 0
    assert stats.breaker is BreakerState.CLOSED


async def test_retries_exhausted(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("left-pad")
    fake_upstream.fail_next(10, status=502)
    client = await make_client(retries=1)
    with pytest.raises(UpstreamError, match="502") as info:
        await client.fetch_packument("left-pad")
    assert type(info.value) is UpstreamError
    assert fake_upstream.count() == 2


async def test_4xx_is_not_retried_and_does_not_trip_the_breaker(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.fail_next(5, status=403)
    client = await make_client(retries=3, breaker_failures=2)
    for _ in range(3):
        with pytest.raises(UpstreamError, match="403"):
            await client.fetch_packument("left-pad")
    assert fake_upstream.count() == 3
    assert state_of(client) is BreakerState.CLOSED


async def test_429_is_retried(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("left-pad")
    fake_upstream.fail_next(1, status=429)
    client = await make_client(retries=1)
    assert (await client.fetch_packument("left-pad")).status == "ok"
    assert fake_upstream.count() == 2


async def test_reset_and_truncation_are_retried(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("left-pad")
    path = fake_upstream.packument_path("left-pad")
    fake_upstream.reset_mid_body(path=path)
    fake_upstream.truncate_body(path=path)
    fake_upstream.truncate_body(path=path, chunked=True)
    client = await make_client(retries=3)
    answer = await client.fetch_packument("left-pad")
    assert answer.status == "ok" and orjson.loads(answer.body or b"") == fake_upstream.packument("left-pad")
    assert fake_upstream.count(path) == 4
    assert client.stats().errors == 3


async def test_truncation_without_retries_is_an_error(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("left-pad")
    fake_upstream.truncate_body(chunked=True)
    client = await make_client()
    with pytest.raises(UpstreamError):
        await client.fetch_packument("left-pad")


async def test_timeout(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("left-pad")
    fake_upstream.latency = 5.0
    client = await make_client(timeout_s=0.2)
    with pytest.raises(UpstreamTimeout):
        await client.fetch_packument("left-pad")


async def test_connection_refused(fake_upstream: FakeUpstream, make_client: Any) -> None:
    client = await make_client(retries=1)
    await fake_upstream.stop()
    with pytest.raises(UpstreamError) as info:
        await client.fetch_packument("left-pad")
    assert type(info.value) is UpstreamError
    assert client.stats().requests == 2


# --------------------------------------------------------------------- breaker


async def test_breaker_opens_then_closes_after_a_good_trial(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("left-pad")
    clock = Clock()
    client = await make_client(clock=clock, breaker_failures=3, breaker_reset_s=10.0, retries=0)
    fake_upstream.fail_next(100, status=500)
    for _ in range(3):
        with pytest.raises(UpstreamError):
            await client.fetch_packument("left-pad")
    assert state_of(client) is BreakerState.OPEN
    with pytest.raises(UpstreamUnavailable, match="circuit"):
        await client.fetch_packument("left-pad")
    assert fake_upstream.count() == 3  # nothing was sent while open

    clock.now += 10
    assert state_of(client) is BreakerState.HALF_OPEN
    with pytest.raises(UpstreamError):  # the trial fails: open again
        await client.fetch_packument("left-pad")
    assert state_of(client) is BreakerState.OPEN
    assert fake_upstream.count() == 4

    fake_upstream.clear_faults()
    clock.now += 10
    assert (await client.fetch_packument("left-pad")).status == "ok"
    assert state_of(client) is BreakerState.CLOSED
    assert client.stats().breaker_opened == 2


async def test_breaker_lets_one_trial_through(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("a")
    fake_upstream.add_package("b")
    clock = Clock()
    client = await make_client(clock=clock, breaker_failures=1, breaker_reset_s=5.0)
    await fake_upstream.stop()
    with pytest.raises(UpstreamError):
        await client.fetch_packument("a")
    assert state_of(client) is BreakerState.OPEN
    await fake_upstream.start()
    clock.now += 5
    fake_upstream.latency = 0.1
    results = await asyncio.gather(
        client.fetch_packument("a"), client.fetch_packument("b"), return_exceptions=True
    )
    assert results[0].status == "ok"  # type: ignore[union-attr]
    assert isinstance(results[1], UpstreamUnavailable)
    assert state_of(client) is BreakerState.CLOSED


async def test_breaker_stops_a_retry_loop(fake_upstream: FakeUpstream, make_client: Any) -> None:
    client = await make_client(breaker_failures=2, retries=5)
    fake_upstream.fail_next(100, status=503)
    with pytest.raises(UpstreamError, match="503"):  # the real error, not "breaker open"
        await client.fetch_packument("left-pad")
    assert fake_upstream.count() == 2


def test_breaker_unit() -> None:
    clock = Clock()
    breaker = CircuitBreaker(2, 10.0, clock=clock)
    breaker.acquire()
    breaker.failure()
    breaker.success()  # a success ends the streak
    breaker.failure()
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.failure()
    assert state_of(breaker) is BreakerState.OPEN
    with pytest.raises(UpstreamUnavailable):
        breaker.acquire()
    clock.now += 10
    breaker.acquire()  # the trial
    with pytest.raises(UpstreamUnavailable):
        breaker.acquire()  # only one
    breaker.release()  # the trial was cancelled: the slot is free again
    breaker.acquire()
    breaker.success()
    assert state_of(breaker) is BreakerState.CLOSED
    disabled = CircuitBreaker(0, 1.0, clock=clock)
    for _ in range(10):
        disabled.failure()
    disabled.acquire()


# ------------------------------------------------------------ offline / no URL


async def test_offline_contacts_nothing(fake_upstream: FakeUpstream) -> None:
    client = UpstreamClient(config_for(fake_upstream, offline=True))
    await client.start()
    try:
        assert not client.enabled
        with pytest.raises(UpstreamUnavailable, match="offline"):
            await client.fetch_packument("left-pad")
        with pytest.raises(UpstreamUnavailable):
            await client.search({"text": "x"})
        with pytest.raises(UpstreamUnavailable):
            async with client.open_tarball(fake_upstream.url + "/x/-/x-1.0.0.tgz"):
                pass
        assert fake_upstream.requests == []
    finally:
        await client.close()


async def test_no_url() -> None:
    async with UpstreamClient(UpstreamConfig(url=None)) as client:
        with pytest.raises(UpstreamUnavailable, match="no upstream"):
            await client.fetch_packument("left-pad")


async def test_not_started(fake_upstream: FakeUpstream) -> None:
    client = UpstreamClient(config_for(fake_upstream))
    with pytest.raises(RuntimeError, match="start"):
        await client.fetch_packument("left-pad")


# -------------------------------------------------------------------- tarballs


async def test_open_tarball_streams(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("@acme/widget", ["1.0.0"])
    data = fake_upstream.tarball("@acme/widget", "1.0.0")
    client = await make_client()
    async with client.open_tarball(fake_upstream.tarball_url("@acme/widget", "1.0.0")) as body:
        assert body.status == 200 and body.content_length == len(data)
        received = b"".join([chunk async for chunk in body.chunks(100)])
    assert received == data
    req = fake_upstream.requests[-1]
    assert req.headers["Accept-Encoding"] == "identity"
    async with client.open_tarball(fake_upstream.url + "/nope/-/nope-1.0.0.tgz") as body:
        assert body.status == 404


async def test_open_tarball_retries_until_headers(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("left-pad", ["1.0.0"])
    url = fake_upstream.tarball_url("left-pad", "1.0.0")
    fake_upstream.fail_next(1, status=500)
    client = await make_client(retries=1)
    async with client.open_tarball(url) as body:
        assert body.status == 200
        assert b"".join([c async for c in body.chunks()]) == fake_upstream.tarball("left-pad", "1.0.0")
    fake_upstream.fail_next(2, status=500)
    with pytest.raises(UpstreamError, match="500"):
        async with client.open_tarball(url):
            pass


@pytest.mark.parametrize("fault", ["reset", "truncate", "truncate_chunked"])
async def test_tarball_broken_mid_body(fake_upstream: FakeUpstream, make_client: Any, fault: str) -> None:
    fake_upstream.add_package("big", ["1.0.0"], files={"blob.bin": bytes(range(256)) * 4096})
    url = fake_upstream.tarball_url("big", "1.0.0")
    if fault == "reset":
        fake_upstream.reset_mid_body()
    else:
        fake_upstream.truncate_body(chunked=fault == "truncate_chunked")
    client = await make_client(retries=2)
    with pytest.raises(UpstreamError):
        async with client.open_tarball(url) as body:
            async for _ in body.chunks():
                pass
    assert fake_upstream.count() == 1  # mid-body failures are the caller's to retry


async def test_tarball_stall_times_out(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("left-pad", ["1.0.0"])
    fake_upstream.latency = 5.0
    client = await make_client(timeout_s=0.2)
    with pytest.raises(UpstreamTimeout):
        async with client.open_tarball(fake_upstream.tarball_url("left-pad", "1.0.0")):
            pass


# ---------------------------------------------------------------- passthroughs


async def test_search(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("left-pad")
    fake_upstream.add_package("right-pad")
    client = await make_client()
    answer = await client.search({"text": "left", "size": "20"})
    assert answer is not None and answer["total"] == 1
    assert answer["objects"][0]["package"]["name"] == "left-pad"
    assert fake_upstream.requests[-1].query == {"text": "left", "size": "20"}
    fake_upstream.search_enabled = False
    assert await client.search({"text": "left"}) is None


async def test_audit_bulk(fake_upstream: FakeUpstream, make_client: Any) -> None:
    client = await make_client()
    payload = orjson.dumps({"left-pad": ["1.0.0"]})
    status, body = await client.audit_bulk(payload, {"content-type": "application/json", "X-Other": "no"})
    assert (status, orjson.loads(body)) == (200, {})
    req = fake_upstream.requests[-1]
    assert req.method == "POST" and req.body == payload and "X-Other" not in req.headers
    fake_upstream.advisories = {"left-pad": [{"id": 1, "severity": "high"}]}
    status, body = await client.audit_bulk(gzip.compress(payload), {})
    assert orjson.loads(body)["left-pad"][0]["id"] == 1
    assert fake_upstream.requests[-1].headers["Content-Encoding"] == "gzip"
    assert fake_upstream.requests[-1].body == payload  # the fake's server gunzipped it
    fake_upstream.fail_next(3, status=500)
    with pytest.raises(UpstreamError):
        await client.audit_bulk(payload, {})
    assert fake_upstream.count(method="POST") == 3  # POSTs are never retried


# ------------------------------------------------------------------ singleflight


async def test_singleflight_helper() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    calls = 0

    async def work() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return calls

    assert await asyncio.gather(*(flight.do("k", work) for _ in range(5))) == [1] * 5
    assert await flight.do("k", work) == 2  # finished flights are not reused
    assert len(flight) == 0

    async def boom() -> int:
        await asyncio.sleep(0.01)
        raise ValueError("boom")

    results = await asyncio.gather(*(flight.do("e", boom) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)


# -------------------------------------------------------------- the fake itself


async def test_fake_serves_real_npm_tarballs_and_spellings(fake_upstream: FakeUpstream) -> None:
    fake_upstream.add_package("@acme/w", {"1.0.0": {"dependencies": {"left-pad": "^1.0.0"}}, "1.1.0-beta.1": None},
                              dist_tags={"latest": "1.0.0", "beta": "1.1.0-beta.1"})
    data = fake_upstream.tarball("@acme/w", "1.0.0")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        manifest = orjson.loads(tar.extractfile("package/package.json").read())  # type: ignore[union-attr]
        assert "package/index.js" in tar.getnames()
    assert manifest["name"] == "@acme/w" and manifest["dependencies"] == {"left-pad": "^1.0.0"}
    doc = fake_upstream.packument("@acme/w")
    dist = doc["versions"]["1.0.0"]["dist"]
    assert dist["integrity"] == sri_sha512(data) and dist["shasum"] == hashlib.sha1(data).hexdigest()
    assert dist["tarball"] == fake_upstream.tarball_url("@acme/w", "1.0.0")
    assert set(doc["time"]) == {"created", "modified", "1.0.0", "1.1.0-beta.1"}
    assert doc["dist-tags"] == {"latest": "1.0.0", "beta": "1.1.0-beta.1"}
    assert make_tarball({"name": "x", "version": "1"}) == make_tarball({"name": "x", "version": "1"})
    async with aiohttp.ClientSession() as session:
        for spelling in ("/@acme%2fw", "/@acme%2Fw", "/@acme/w"):
            async with session.get(fake_upstream.url + spelling) as resp:
                assert resp.status == 200 and (await resp.json())["name"] == "@acme/w"
        async with session.get(fake_upstream.url + "/@acme%2fw", headers={"Accept": ABBREVIATED}) as resp:
            corgi = await resp.json()
            assert resp.headers["Content-Type"].startswith(ABBREVIATED)
            assert set(corgi) == {"name", "modified", "dist-tags", "versions"}
        async with session.get(fake_upstream.tarball_url("@acme/w", "1.0.0")) as resp:
            assert await resp.read() == data
    assert fake_upstream.count("/@acme/w") == 4



# ------------------------------------------------------------------ proxy


async def test_every_request_goes_through_the_configured_proxy(fake_upstream: FakeUpstream, make_client: Any) -> None:
    fake_upstream.add_package("@acme/widget", ["1.0.0"])
    async with ForwardProxy() as proxy:
        client = await make_client(proxy=proxy.url.replace("http://", "http://squid:pw@"))
        assert (await client.fetch_packument("@acme/widget")).status == "ok"
        async with client.open_tarball(fake_upstream.tarball_url("@acme/widget", "1.0.0")) as body:
            data = b"".join([chunk async for chunk in body.chunks(1 << 16)])
        assert data == fake_upstream.tarball("@acme/widget", "1.0.0")
        assert await client.search({"text": "widget"}) is not None
        assert await client.ping() == 200
    assert proxy.seen == [
        f"{fake_upstream.url}/@acme%2fwidget",
        fake_upstream.tarball_url("@acme/widget", "1.0.0"),
        f"{fake_upstream.url}/-/v1/search?text=widget",
        f"{fake_upstream.url}/-/ping",
    ]
    assert proxy.proxy_authorizations == ["Basic c3F1aWQ6cHc="] * 4  # base64("squid:pw")
    assert len(fake_upstream.requests) == 4
