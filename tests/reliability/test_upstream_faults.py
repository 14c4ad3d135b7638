"""Upstream faults through the whole app: what clients see, and what the cache holds.

Already proven elsewhere, not repeated here: the client-level retry, breaker
and 304/HTML rules (tests/server/test_upstream.py), stale-if-error on a plain
outage, offline mode and single-flight through the app
(tests/server/test_proxying.py), and the tarball proxy's streaming rules in a
tiny app (tests/server/test_tarball_proxy.py).

What this module adds, each fault injected by the FakeUpstream:

* every packument fault (down, slow beyond the timeout, reset mid-body,
  truncated with Content-Length and chunked, 5xx, HTML, a 304 without a
  validator) with **no cached copy** is a 502/503/504 with an npm-style
  ``{"error": ...}`` body and writes nothing to the cache;
* the same faults **with a cached copy** serve it (stale-if-error, with a
  ``Warning: 110``), and the cache files stay byte-identical;
* tarball faults through the full app leave no cache file and no temp file,
  and the next clean fetch caches bytes whose sha512 matches the integrity;
* a 5xx burst shorter than the retries is invisible; a longer one is stale-if-error;
* the circuit breaker opens after ``breaker_failures``, answers 503 without
  contacting the upstream, serves cached copies meanwhile, lets one trial
  through after ``breaker_reset`` and closes on its success.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from overlaystore._types import PackageName
from server.config import UpstreamConfig
from server.keys import SOURCE
from tests.fakes.upstream import FakeUpstream

from .conftest import RegistryFactory
from .harness import SuiteRun, hidden_leftovers

SUITE = "upstream_faults"
SUITE_TITLE = "Upstream faults (through the app)"

#: Short enough to keep the suite fast, long enough for a loaded CI machine.
TIMEOUT_S = 1.0


def upstream_config(url: str, **kw: object) -> UpstreamConfig:
    base: dict[str, object] = {
        "url": url, "retries": 0, "timeout_s": TIMEOUT_S, "connect_timeout_s": TIMEOUT_S,
        "breaker_failures": 1000, "max_age_s": 0.0,
    }
    base.update(kw)
    return UpstreamConfig(**base)  # type: ignore[arg-type]


Fault = Callable[[FakeUpstream, str], Awaitable[None]]


async def _down(fake: FakeUpstream, path: str) -> None:
    await fake.stop()


async def _slow(fake: FakeUpstream, path: str) -> None:
    fake.set_latency(TIMEOUT_S * 2, path=path)


async def _reset(fake: FakeUpstream, path: str) -> None:
    fake.reset_mid_body(path=path)


async def _truncate(fake: FakeUpstream, path: str) -> None:
    fake.truncate_body(path=path)


async def _truncate_chunked(fake: FakeUpstream, path: str) -> None:
    fake.truncate_body(path=path, chunked=True)


async def _server_error(fake: FakeUpstream, path: str) -> None:
    fake.fail_next(1, status=503, path=path)


async def _html(fake: FakeUpstream, path: str) -> None:
    fake.html_body(path=path)


async def _not_modified(fake: FakeUpstream, path: str) -> None:
    fake.not_modified_without_validator(path=path)


#: fault -> the status a client gets when no copy is cached.
PACKUMENT_FAULTS: dict[str, tuple[Fault, int]] = {
    "down": (_down, 502),
    "slow": (_slow, 504),
    "reset": (_reset, 502),
    "truncated": (_truncate, 502),
    "truncated-chunked": (_truncate_chunked, 502),
    "5xx": (_server_error, 502),
    "html": (_html, 502),
    "304-without-validator": (_not_modified, 502),
}


def cache_files(root: Path, name: str) -> dict[str, bytes]:
    """Every file the cache holds for ``name``, hidden ones included."""
    base = root / name
    if not base.exists():
        return {}
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


async def error_body(resp: aiohttp.ClientResponse) -> str:
    assert resp.content_type == "application/json", resp.content_type
    body = await resp.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return str(body["error"])


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@pytest.fixture
async def revive(fake_upstream: FakeUpstream):  # type: ignore[no-untyped-def]
    """Make sure a stopped fake is running again (for the next step)."""

    async def go() -> None:
        fake_upstream.clear_faults()
        await fake_upstream.start()

    return go


@pytest.mark.parametrize("fault", list(PACKUMENT_FAULTS))
async def test_packument_fault_without_a_copy_is_a_clean_5xx(
    registry_factory: RegistryFactory, fake_upstream: FakeUpstream, revive, fault: str, record: SuiteRun
) -> None:
    fake_upstream.add_package("pkg", ["1.0.0"])
    reg = await registry_factory(fake_upstream.url, upstream=upstream_config(fake_upstream.url))
    inject, status = PACKUMENT_FAULTS[fault]
    await inject(fake_upstream, fake_upstream.packument_path("pkg"))
    for accept in ("application/json", "application/vnd.npm.install-v1+json"):
        resp = await reg.client.get("/pkg", headers={"Accept": accept})
        assert resp.status == status, (fault, resp.status, await resp.text())
        await error_body(resp)
        # The same fault again for the second representation.
        await revive()
        await inject(fake_upstream, fake_upstream.packument_path("pkg"))
    assert cache_files(reg.config.storage.cache, "pkg") == {}, "nothing may be cached from a failed fetch"
    assert hidden_leftovers(reg.config.storage.cache) == []
    await revive()
    resp = await reg.client.get("/pkg")
    assert resp.status == 200 and list((await resp.json())["versions"]) == ["1.0.0"]
    record.count(requests=3, faults=2)
    record.detail(f"packument, {fault}, nothing cached", status, "npm-style {\"error\"} body; nothing written")


@pytest.mark.parametrize("fault", list(PACKUMENT_FAULTS))
async def test_packument_fault_with_a_copy_serves_it_and_keeps_the_cache(
    registry_factory: RegistryFactory, fake_upstream: FakeUpstream, revive, fault: str, record: SuiteRun
) -> None:
    fake_upstream.add_package("pkg", ["1.0.0"])
    reg = await registry_factory(fake_upstream.url, upstream=upstream_config(fake_upstream.url))
    first = await reg.client.get("/pkg")
    assert first.status == 200
    expected = await first.json()
    cache = reg.config.storage.cache
    before = cache_files(cache, "pkg")
    assert set(before) == {"packument.json", "packument.meta"}
    fake_upstream.add_version("pkg", "2.0.0")  # what a good answer would now bring
    inject, _ = PACKUMENT_FAULTS[fault]
    await inject(fake_upstream, fake_upstream.packument_path("pkg"))
    resp = await reg.client.get("/pkg")
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    assert doc["versions"] == expected["versions"]
    if fault == "304-without-validator":
        # A conditional request was sent (the copy has an ETag): a bare 304 to
        # it is a valid revalidation, not a fault.
        assert "Warning" not in resp.headers
    else:
        assert resp.headers.get("Warning") == '110 - "Response is Stale"'
        assert resp.headers["X-Overlaystore-Cache"] == "stale"
        assert cache_files(cache, "pkg") == before, "a failed refresh must not touch the cached copy"
    assert hidden_leftovers(cache) == []
    await revive()
    # The stale result is kept in the composed LRU for a few seconds (so an
    # outage does not cost an upstream attempt per request); the cache
    # underneath refreshes on the next attempt, from the intact copy.
    refreshed = await reg.app[SOURCE].packument(PackageName("pkg"))
    assert refreshed is not None and not refreshed.stale
    assert set(refreshed.doc["versions"]) == {"1.0.0", "2.0.0"}
    assert b'"2.0.0"' in (cache / "pkg" / "packument.json").read_bytes()
    record.count(requests=2, faults=1)
    record.detail(f"packument, {fault}, copy cached", 200, "stale-if-error; cache files byte-identical")


async def test_304_to_an_unconditional_refresh_serves_the_copy_untouched(
    registry_factory: RegistryFactory, fake_upstream: FakeUpstream, record: SuiteRun
) -> None:
    """A copy whose freshness record was lost is refreshed without validators;
    a bare 304 to that cannot vouch for anything: the copy is served stale."""
    fake_upstream.add_package("pkg", ["1.0.0"])
    reg = await registry_factory(fake_upstream.url, upstream=upstream_config(fake_upstream.url))
    assert (await reg.client.get("/pkg")).status == 200
    cache = reg.config.storage.cache
    (cache / "pkg" / "packument.meta").unlink()
    before = cache_files(cache, "pkg")
    fake_upstream.not_modified_without_validator(path="/pkg")
    resp = await reg.client.get("/pkg")
    assert resp.status == 200 and resp.headers.get("Warning") == '110 - "Response is Stale"'
    unconditional = fake_upstream.requests_for("/pkg")[-1]
    assert "If-None-Match" not in unconditional.headers and "If-Modified-Since" not in unconditional.headers
    assert cache_files(cache, "pkg") == before
    record.count(requests=2, faults=1)
    record.detail("packument, bare 304 to an unconditional request, copy cached", 200, "stale; cache untouched")


TARBALL_FAULTS = ["reset", "truncated", "truncated-chunked", "wrong-bytes", "5xx", "slow", "down"]


@pytest.mark.parametrize("fault", TARBALL_FAULTS)
async def test_tarball_fault_leaves_no_cache_file(
    registry_factory: RegistryFactory, fake_upstream: FakeUpstream, revive, fault: str, record: SuiteRun
) -> None:
    # Incompressible content: the tarball spans many chunks, so a cut lands mid-stream.
    fake_upstream.add_package("pkg", ["1.0.0"], files={"blob.bin": bytes(range(256)) * 2048 + b"x" * 7})
    good = fake_upstream.tarball("pkg", "1.0.0")
    reg = await registry_factory(fake_upstream.url, upstream=upstream_config(fake_upstream.url, max_age_s=300.0))
    assert (await reg.client.get("/pkg")).status == 200  # the packument is cached: only the tarball fails
    path = fake_upstream.tarball_path("pkg", "1.0.0")
    {
        "reset": lambda: fake_upstream.reset_mid_body(path=path),
        "truncated": lambda: fake_upstream.truncate_body(path=path),
        "truncated-chunked": lambda: fake_upstream.truncate_body(path=path, chunked=True),
        "wrong-bytes": lambda: fake_upstream.serve_wrong_bytes(path=path, times=1),
        "5xx": lambda: fake_upstream.fail_next(1, status=500, path=path),
        "slow": lambda: fake_upstream.set_latency(TIMEOUT_S * 2, path=path),
        "down": lambda: None,
    }[fault]()
    if fault == "down":
        await fake_upstream.stop()
    resp = await reg.client.get("/pkg/-/pkg-1.0.0.tgz")
    if fault in ("5xx", "slow", "down"):
        # Nothing was sent yet: a clean error status.
        assert resp.status == {"5xx": 502, "slow": 504, "down": 502}[fault]
        await error_body(resp)
        outcome = f"{resp.status} + {{\"error\"}}"
    else:
        # The body was already flowing: the connection is cut short of the
        # announced length, so no client can take it for a whole file.
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        outcome = "200, connection cut before the last chunk"
    cache = reg.config.storage.cache
    assert "pkg-1.0.0.tgz" not in cache_files(cache, "pkg")
    assert hidden_leftovers(cache) == [], "a failed download must not leave its temp file"
    await revive()
    again = await reg.client.get("/pkg/-/pkg-1.0.0.tgz")
    assert again.status == 200 and await again.read() == good
    stored = (cache / "pkg" / "pkg-1.0.0.tgz").read_bytes()
    assert sri(stored) == fake_upstream.integrity("pkg", "1.0.0")
    record.count(requests=3, faults=1)
    record.detail(f"tarball, {fault}", outcome, "no cache file, no temp file; clean refetch verified")


async def test_5xx_bursts(registry_factory: RegistryFactory, fake_upstream: FakeUpstream, record: SuiteRun) -> None:
    fake_upstream.add_package("pkg", ["1.0.0"])
    reg = await registry_factory(fake_upstream.url, upstream=upstream_config(fake_upstream.url, retries=2))
    path = fake_upstream.packument_path("pkg")
    fake_upstream.fail_next(2, status=503, path=path)
    resp = await reg.client.get("/pkg")
    assert resp.status == 200 and "Warning" not in resp.headers, "a burst shorter than the retries is invisible"
    assert fake_upstream.count(path) == 3
    before = cache_files(reg.config.storage.cache, "pkg")
    fake_upstream.fail_next(3, status=502, path=path)
    resp = await reg.client.get("/pkg")
    assert resp.status == 200 and resp.headers.get("Warning") == '110 - "Response is Stale"'
    assert fake_upstream.count(path) == 6
    assert cache_files(reg.config.storage.cache, "pkg") == before
    fake_upstream.fail_next(3, status=500, path="/other")
    fake_upstream.add_package("other", ["1.0.0"])
    resp = await reg.client.get("/other")
    assert resp.status == 502
    await error_body(resp)
    record.count(requests=3, faults=8)
    record.detail("5xx burst of 2 with retries=2", 200, "invisible to the client")
    record.detail("5xx burst of 3 with retries=2", "200 stale / 502", "stale with a copy, 502 without")


async def test_circuit_breaker_opens_and_closes_as_configured(
    registry_factory: RegistryFactory, fake_upstream: FakeUpstream, record: SuiteRun
) -> None:
    reset_s = 1.0
    for name in ("cached", "a", "b", "c", "d", "e"):
        fake_upstream.add_package(name, ["1.0.0"])
    reg = await registry_factory(
        fake_upstream.url,
        upstream=upstream_config(fake_upstream.url, breaker_failures=3, breaker_reset_s=reset_s),
    )
    assert (await reg.client.get("/cached")).status == 200
    fake_upstream.fail_next(1000, status=503)  # an outage
    for name in ("a", "b", "c"):
        resp = await reg.client.get(f"/{name}")
        assert resp.status == 502
    # Open: nothing reaches the upstream any more.
    sent = fake_upstream.count(None)
    resp = await reg.client.get("/d")
    assert resp.status == 503 and "circuit breaker" in await error_body(resp)
    tarball = await reg.client.get("/d/-/d-1.0.0.tgz")
    assert tarball.status == 503
    stale = await reg.client.get("/cached")
    assert stale.status == 200 and stale.headers.get("Warning") == '110 - "Response is Stale"'
    assert fake_upstream.count(None) == sent, "an open breaker must not contact the upstream"
    # Half-open after the pause: one trial; it fails, so the breaker re-opens.
    await asyncio.sleep(reset_s + 0.1)
    assert (await reg.client.get("/d")).status == 502
    assert fake_upstream.count(None) == sent + 1
    assert (await reg.client.get("/e")).status == 503
    assert fake_upstream.count(None) == sent + 1
    # The upstream recovers: the next trial succeeds and closes the breaker.
    fake_upstream.clear_faults()
    await asyncio.sleep(reset_s + 0.1)
    for name in ("d", "e", "a"):
        resp = await reg.client.get(f"/{name}")
        assert resp.status == 200, (name, await resp.text())
    fresh = await reg.client.get("/cached")
    assert fresh.status == 200 and "Warning" not in fresh.headers
    record.count(requests=13, faults=5)
    record.detail("breaker: 3 failures open it", "503 without an upstream request", "stale copies still served")
    record.detail("breaker: trial after breaker_reset", "failure re-opens, success closes", f"breaker_reset={reset_s}s")

