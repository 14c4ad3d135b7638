"""Prometheus metrics: ``GET /-/metrics``.

Every application has its own :class:`Metrics` (its own
:class:`~prometheus_client.CollectorRegistry`), so several apps in one process
(tests, several workers' worth of apps) never share or collide on counters.

Two kinds of series:

* **Counted on the request path** by :func:`metrics_middleware`: requests by
  route, method and status, latency histograms by route and method, how
  packuments and tarballs were served (``request[OUTCOME]``) and publishes.
  The route label is the route's canonical resource (``/{name}/-/{filename}``),
  never the raw path, and unknown methods count as ``OTHER``, so label
  cardinality is bounded by the route table. The per-request cost is a dict
  lookup, a counter increment and a histogram observation (the label children
  are looked up once per (route, method, status) and kept).
* **Read at scrape time** by a collector: the composed-packument LRU, store
  lookups by layer, the upstream client's counters and circuit breaker. They
  cost nothing per request.

GC runs, evictions and cache clears are recorded by
:class:`~server.cache_admin.CacheAdmin` through :meth:`Metrics.gc_done` and
:meth:`Metrics.cleared`.

Latency is the time until the handler returns its response; for a file served
with sendfile that is before the body goes out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from .http_errors import CLIENT_CLOSED, Handler
from .keys import METRICS, OUTCOME, STORE, UPSTREAM, VIEW, WORKER_METRICS

if TYPE_CHECKING:
    from overlaystore.cache import GCReport, WipeReport

_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"})
_PACKUMENT_ROUTES = frozenset({"/{name}", "/@{scope}/{pkg}"})
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_GC_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0)


class Metrics:
    """The metrics of one application (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "overlaystore_http_requests", "HTTP requests by route, method and status",
            ["route", "method", "status"], registry=r,
        )
        self.latency = Histogram(
            "overlaystore_http_request_duration_seconds", "Time until the handler returned, by route and method",
            ["route", "method"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.served = Counter(
            "overlaystore_served", "Packument and tarball responses by how they were served "
            "(packument: hit/miss/stale of the composed LRU; tarball: memory/published/cache/upstream)",
            ["kind", "outcome"], registry=r,
        )
        self.publishes = Counter("overlaystore_publishes", "Versions published (PUT answered 201)", registry=r)
        self.gc_runs = Counter("overlaystore_cache_gc_runs", "Cache GC runs that deleted (not dry runs)",
                               ["trigger"], registry=r)
        self.gc_evicted = Counter("overlaystore_cache_gc_evicted_entries", "Cache entries removed by GC", registry=r)
        self.gc_evicted_bytes = Counter("overlaystore_cache_gc_evicted_bytes", "Bytes removed by GC", registry=r)
        self.gc_duration = Histogram("overlaystore_cache_gc_duration_seconds", "Duration of cache GC runs",
                                     buckets=_GC_BUCKETS, registry=r)
        self.gc_last = Gauge("overlaystore_cache_gc_last_run_timestamp_seconds",
                             "When the last cache GC run ended (epoch seconds)", registry=r)
        self.clears = Counter("overlaystore_cache_clears", "Cache clears done by this process", registry=r)
        self.cache_entries = Gauge("overlaystore_cache_entries",
                                   "Entries in the proxy cache at the last scan (GC, stats or clear)", registry=r)
        self.cache_bytes = Gauge("overlaystore_cache_bytes",
                                 "Bytes in the proxy cache at the last scan (GC, stats or clear)", registry=r)
        # (route, method, status) -> (counter child, histogram child, served kind, is a publish)
        self._children: dict[tuple[str, str, int], tuple[Any, Any, str | None, bool]] = {}
        self._served: dict[tuple[str, str], Any] = {}

    def attach(self, app: web.Application) -> None:
        """Read the app's services (LRU, store, upstream) at scrape time."""
        self.registry.register(_AppCollector(app))

    # --- the request path

    def observe(self, request: web.Request, status: int, seconds: float) -> None:
        self.record(_route_of(request), request.method, status, seconds, request.get(OUTCOME))

    def record(self, route: str, method: str, status: int, seconds: float, outcome: str | None) -> None:
        """Count one request to ``route`` (the canonical route, as in the table)."""
        key = (route, method if method in _METHODS else "OTHER", status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = self._make_children(key)
        counter, histogram, kind, publish = children
        counter.inc()
        histogram.observe(seconds)
        if kind is not None:
            if outcome is not None:
                child = self._served.get((kind, outcome))
                if child is None:
                    child = self._served[(kind, outcome)] = self.served.labels(kind, outcome)
                child.inc()
        elif publish:
            self.publishes.inc()

    def _make_children(self, key: tuple[str, str, int]) -> tuple[Any, Any, str | None, bool]:
        route, method, status = key
        kind: str | None = None
        if method in ("GET", "HEAD"):
            if route in _PACKUMENT_ROUTES:
                kind = "packument"
            elif route.endswith("/-/{filename}"):
                kind = "tarball"
        publish = method == "PUT" and route in _PACKUMENT_ROUTES and status == 201
        return (
            self.requests.labels(route, method, str(status)),
            self.latency.labels(route, method),
            kind,
            publish,
        )

    # --- cache operations

    def gc_done(self, report: GCReport, trigger: str) -> None:
        if report.dry_run:  # nothing deleted: what the scan found is what there is
            self.scanned(report.entries_before, report.bytes_before)
            return
        self.scanned(report.entries_after, report.bytes_after)
        self.gc_runs.labels(trigger).inc()
        self.gc_evicted.inc(report.evicted)
        self.gc_evicted_bytes.inc(report.bytes_freed)
        self.gc_duration.observe(report.seconds)
        self.gc_last.set(time.time())

    def scanned(self, entries: int, size: int) -> None:
        self.cache_entries.set(entries)
        self.cache_bytes.set(size)

    def cleared(self, report: WipeReport) -> None:
        self.clears.inc()
        self.cache_entries.set(0)
        self.cache_bytes.set(0)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition for an ``Accept`` header (Prometheus text 0.0.4 by
        default, OpenMetrics when asked for) and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"  # no route (404) or no such method (405)
    return resource.canonical


class _AppCollector(Collector):
    """Series read from the app's services when Prometheus scrapes."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def collect(self) -> Iterator[Any]:
        view = self._app.get(VIEW)
        if view is not None:
            s = view.stats
            yield CounterMetricFamily("overlaystore_view_hits", "Composed-packument LRU hits", value=s.hits)
            yield CounterMetricFamily("overlaystore_view_misses", "Composed-packument LRU misses", value=s.misses)
            yield CounterMetricFamily("overlaystore_view_evictions",
                                      "Composed-packument LRU evictions for room", value=s.evictions)
            yield GaugeMetricFamily("overlaystore_view_entries", "Entries in the composed-packument LRU",
                                    value=s.entries)
            yield GaugeMetricFamily("overlaystore_view_bytes", "Bytes held by the composed-packument LRU",
                                    value=s.bytes)
            yield GaugeMetricFamily("overlaystore_view_max_bytes", "Size cap of the composed-packument LRU",
                                    value=view.max_bytes)
        store = self._app.get(STORE)
        if store is not None:
            st = store.layered.stats
            lookups = CounterMetricFamily("overlaystore_store_lookups",
                                          "Store lookups (tarballs, raw keys) by the layer that answered",
                                          labels=["layer"])
            lookups.add_metric(["published"], st.published_hits)
            lookups.add_metric(["cache"], st.cache_hits)
            lookups.add_metric(["miss"], st.misses)
            yield lookups
        client = self._app.get(UPSTREAM)
        if client is not None:
            u = client.stats()
            yield CounterMetricFamily("overlaystore_upstream_requests",
                                      "Requests sent to the upstream (retries included)", value=u.requests)
            yield CounterMetricFamily("overlaystore_upstream_errors", "Upstream requests that failed", value=u.errors)
            yield CounterMetricFamily("overlaystore_upstream_retries", "Upstream retries", value=u.retries)
            latency = SummaryMetricFamily("overlaystore_upstream_request_seconds",
                                          "Time spent in upstream requests")
            latency.add_metric([], count_value=u.requests, sum_value=u.latency_s_sum)
            yield latency
            breaker = GaugeMetricFamily("overlaystore_upstream_breaker_state",
                                        "Upstream circuit breaker: 1 for the current state", labels=["state"])
            for state in type(u.breaker):
                breaker.add_metric([state.value], 1.0 if state is u.breaker else 0.0)
            yield breaker
            yield CounterMetricFamily("overlaystore_upstream_breaker_opened",
                                      "Times the upstream circuit breaker opened", value=u.breaker_opened)
            yield GaugeMetricFamily("overlaystore_upstream_in_flight",
                                    "Shared upstream packument fetches running", value=u.in_flight)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request (outermost middleware: it sees the status
    the error middleware chose)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # redirects and what the error middleware lets through
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        request.app[METRICS].observe(request, status, time.perf_counter() - started)


async def get_metrics(request: web.Request) -> web.Response:
    # On the loop: the collector reads the LRU, which is not thread-safe (and small).
    accept = request.headers.get("Accept", "")
    workers = request.app.get(WORKER_METRICS)
    if workers is not None:
        body, content_type = await workers.render(accept)
    else:
        body, content_type = request.app[METRICS].render(accept)
    return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


def register(router: web.UrlDispatcher) -> None:
    router.add_get("/-/metrics", get_metrics)


__all__ = ["CLIENT_CLOSED", "Metrics", "get_metrics", "metrics_middleware", "register"]
