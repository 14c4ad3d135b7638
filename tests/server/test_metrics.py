"""GET /-/metrics: Prometheus text; counters move with requests; label
cardinality stays bounded; apps in one process do not share counters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.config import CacheConfig
from tests.fakes.upstream import ABBREVIATED, FakeUpstream
from tests.server.conftest import Registry
from tests.server.ops_helpers import fast_upstream, fetch, make_registry, publish, registry_with_open_breaker


class Scrape:
    """One parsed scrape: ``value(name, **labels)`` of a sample."""

    def __init__(self, text: str) -> None:
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        found = [s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        return sum(found)

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}


async def scrape(reg: Registry) -> Scrape:
    resp = await reg.client.get("/-/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Scrape(await resp.text())


@pytest.fixture
async def reg(aiohttp_client: Any, tmp_path: Path, fake_upstream: FakeUpstream) -> Registry:
    fake_upstream.add_package("left-pad", ["1.0.0", "1.1.0"])
    registry = await make_registry(aiohttp_client, tmp_path, fake_upstream.url)
    await registry.adduser("admin")
    return registry


async def test_request_counters_and_latency(reg: Registry, fake_upstream: FakeUpstream) -> None:
    before = await scrape(reg)
    assert before.value("overlaystore_http_requests_total", route="/{name}") == 0
    for _ in range(3):
        assert (await reg.client.get("/left-pad")).status == 200
    assert (await reg.client.get("/no-such-package")).status == 404
    m = await scrape(reg)
    assert m.value("overlaystore_http_requests_total", route="/{name}", method="GET", status="200") == 3
    assert m.value("overlaystore_http_requests_total", route="/{name}", method="GET", status="404") == 1
    assert m.value("overlaystore_http_request_duration_seconds_count", route="/{name}", method="GET") == 4
    assert m.value("overlaystore_http_request_duration_seconds_sum", route="/{name}", method="GET") > 0
    # The composed LRU: one miss, then hits; and how each response was served.
    assert m.value("overlaystore_served_total", kind="packument", outcome="miss") == 1
    assert m.value("overlaystore_served_total", kind="packument", outcome="hit") == 2
    assert m.value("overlaystore_view_hits_total") >= 2 and m.value("overlaystore_view_misses_total") >= 1
    assert m.value("overlaystore_view_entries") >= 1 and m.value("overlaystore_view_bytes") > 0
    # The upstream was asked, and is healthy.
    assert m.value("overlaystore_upstream_requests_total") >= 2
    assert m.value("overlaystore_upstream_request_seconds_count") >= 2
    assert m.value("overlaystore_upstream_breaker_state", state="closed") == 1
    assert m.value("overlaystore_upstream_breaker_state", state="open") == 0
    # The scrape itself is counted (by the next scrape).
    assert (await scrape(reg)).value("overlaystore_http_requests_total", route="/-/metrics") >= 2


async def test_tarball_outcomes_and_store_lookups(reg: Registry, fake_upstream: FakeUpstream) -> None:
    await publish(reg, "admin", "mine")
    await fetch(reg, fake_upstream, "left-pad", ["1.0.0"])  # from the upstream
    await fetch(reg, fake_upstream, "left-pad", ["1.0.0"])  # now from the cache
    assert (await reg.client.get("/mine/-/mine-1.0.0.tgz")).status == 200
    m = await scrape(reg)
    route = "/{name}/-/{filename}"
    assert m.value("overlaystore_http_requests_total", route=route, status="200") == 3
    assert m.value("overlaystore_served_total", kind="tarball", outcome="upstream") == 1
    assert m.value("overlaystore_served_total", kind="tarball", outcome="cache") == 1
    assert m.value("overlaystore_served_total", kind="tarball", outcome="published") == 1
    assert m.value("overlaystore_store_lookups_total", layer="cache") >= 1
    assert m.value("overlaystore_store_lookups_total", layer="published") >= 1
    assert m.value("overlaystore_publishes_total") == 1


async def test_publish_counter_counts_publishes_only(reg: Registry) -> None:
    await publish(reg, "admin", "mine")
    await publish(reg, "admin", "mine", "1.0.1")
    # A failed publish (version exists) and a deprecation are not publishes.
    from tests.npmdata import publish_body

    resp = await reg.client.put("/mine", json=publish_body("mine", "1.0.1"), headers=reg.auth("admin"))
    assert resp.status == 409
    m = await scrape(reg)
    assert m.value("overlaystore_publishes_total") == 2
    assert m.value("overlaystore_http_requests_total", route="/{name}", method="PUT", status="409") == 1


async def test_gc_and_clear_metrics(reg: Registry, fake_upstream: FakeUpstream) -> None:
    await fetch(reg, fake_upstream, "left-pad")
    resp = await reg.client.post("/-/overlaystore/cache/gc", json={"dry_run": True, "max_bytes": 0},
                                 headers=reg.auth("admin"))
    assert resp.status == 200
    m = await scrape(reg)
    assert m.value("overlaystore_cache_gc_runs_total") == 0  # a dry run is no run
    assert m.value("overlaystore_cache_entries") == 4  # but the scan is reported (2 packument files, 2 tarballs)
    resp = await reg.client.post("/-/overlaystore/cache/gc", json={"max_bytes": 0}, headers=reg.auth("admin"))
    freed = (await resp.json())["bytes_freed"]
    assert freed > 0
    m = await scrape(reg)
    assert m.value("overlaystore_cache_gc_runs_total", trigger="admin") == 1
    assert m.value("overlaystore_cache_gc_evicted_entries_total") == 4
    assert m.value("overlaystore_cache_gc_evicted_bytes_total") == freed
    assert m.value("overlaystore_cache_gc_duration_seconds_count") == 1
    assert m.value("overlaystore_cache_gc_last_run_timestamp_seconds") > 0
    assert m.value("overlaystore_cache_entries") == 0 and m.value("overlaystore_cache_bytes") == 0
    await reg.client.post("/-/overlaystore/cache/clear", headers=reg.auth("admin"))
    assert (await scrape(reg)).value("overlaystore_cache_clears_total") == 1


async def test_label_cardinality_is_bounded(reg: Registry, fake_upstream: FakeUpstream) -> None:
    for i in range(100):
        name = f"pkg-{i}"
        if i % 10 == 0:  # a few exist upstream (200s); the rest are 404s
            fake_upstream.add_package(name, ["1.0.0"])
        headers = {"Accept": ABBREVIATED} if i % 3 else {}
        await reg.client.get(f"/{name}", headers=headers)  # 200 or 404
        await reg.client.get(f"/@scope{i}/{name}")
        await reg.client.get(f"/{name}/-/{name}-1.0.0.tgz")
        await reg.client.get(f"/{name}/1.0.0")
    # Odd paths and methods: no route, no such method, an unknown method.
    await reg.client.get("/a/b/c/d/e/f")
    await reg.client.request("PATCH", "/-/ping")
    await reg.client.request("PROPFIND", "/left-pad")
    m = await scrape(reg)
    routes = m.label_values("overlaystore_http_requests_total", "route")
    assert len(routes) <= 8, routes
    assert not any(f"pkg-{i}" in route for route in routes for i in range(100))
    assert {"/{name}", "/@{scope}/{pkg}", "/{name}/-/{filename}", "/{name}/{version}"} <= routes
    assert "unmatched" in routes
    methods = m.label_values("overlaystore_http_requests_total", "method")
    assert "OTHER" in methods and methods <= {"GET", "PUT", "PATCH", "OTHER"}  # PUT: adduser
    assert len(m.label_values("overlaystore_http_requests_total", "status")) <= 5
    series = [s for s in m.samples if s.name == "overlaystore_http_requests_total"]
    assert len(series) <= 20, len(series)
    # The served-outcome series stay few too.
    assert len([s for s in m.samples if s.name == "overlaystore_served_total"]) <= 6


async def test_apps_in_one_process_do_not_share_counters(aiohttp_client: Any, tmp_path: Path,
                                                         reg: Registry) -> None:
    other = await make_registry(aiohttp_client, tmp_path / "other", None,
                                cache=CacheConfig(), upstream=fast_upstream(None))
    for _ in range(5):
        await reg.client.get("/-/ping")
    assert (await scrape(reg)).value("overlaystore_http_requests_total", route="/-/ping") == 5
    theirs = await scrape(other)
    assert theirs.value("overlaystore_http_requests_total", route="/-/ping") == 0
    # No upstream on the other one: no upstream series at all.
    assert theirs.value("overlaystore_upstream_requests_total") == 0
    assert not theirs.label_values("overlaystore_upstream_breaker_state", "state")


async def test_breaker_state_follows_the_client(aiohttp_client: Any, tmp_path: Path,
                                                fake_upstream: FakeUpstream) -> None:
    reg = await registry_with_open_breaker(aiohttp_client, tmp_path, fake_upstream)
    m = await scrape(reg)
    assert m.value("overlaystore_upstream_breaker_state", state="open") == 1
    assert m.value("overlaystore_upstream_breaker_opened_total") == 1
    assert m.value("overlaystore_upstream_errors_total") >= 1
