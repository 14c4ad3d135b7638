"""The proxy cache's lifecycle in the server: background GC, and the admin API.

:class:`CacheAdmin` is the one place the server runs cache GC, stats and clear:

* **Background GC** (:func:`gc_context`, in the app's ``cleanup_ctx``): every
  ``[cache] gc_interval`` seconds, evicts cached tarballs idle longer than
  ``[cache] max_age``, then least recently used entries until the cache is
  under ``[cache] max_bytes``; one log line per run. It only runs when one of
  the two limits is set. The library does the walking off the event loop, a
  package at a time, and deletes in batches, so requests are served
  meanwhile; it only ever touches the cache layer.
* **Admin HTTP** under ``/-/overlaystore/`` (authenticated administrators,
  ``[auth] admins``; 401 anonymous, 403 others):

  - ``GET  /-/overlaystore/cache``        stats (a scan of the cache) + GC settings
  - ``POST /-/overlaystore/cache/gc``     a GC run now; optional JSON body
    ``{"dry_run": bool, "max_bytes": 123 | "10GiB", "max_age": 3600 | "7d"}``
    (absent or null: the configured limit)
  - ``POST /-/overlaystore/cache/clear``  wipe the cache, then drop the
    composed LRU

Clearing is safe while requests run: readers get complete bytes or a miss
(which refills from the upstream), downloads in flight commit into the
recreated directory. One GC runs at a time per process; a clear does not wait
for it.

The idle-age rule applies to tarballs only (``*.tgz``): packuments are
revalidated by their own freshness rules; the size cap applies to everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web

from overlaystore.cache import CacheLayer, CacheStats, GCReport, Progress, WipeReport
from overlaystore.errors import InvalidInput
from overlaystore.view import ComposedView

from .access import require_user
from .auth import Identity
from .config import CacheConfig
from .config_file import ConfigError, _duration, _size
from .errors import Forbidden
from .keys import CACHE_ADMIN, CONFIG, METRICS, STORE, VIEW, WORKER
from .metrics import Metrics
from .request_info import read_json_object

log = logging.getLogger("overlaystore.cache")

#: Marks "use the configured limit" in :meth:`CacheAdmin.gc`.
CONFIGURED: Any = object()


# ------------------------------------------------------------ npm knowledge


def is_tarball(key: str) -> bool:
    """Whether a cache key is a tarball (the idle-age rule applies to these)."""
    return key.endswith(".tgz")


def kind_of(key: str) -> str:
    """``tarball``, ``packument`` (body and freshness meta) or ``other``."""
    if key.endswith(".tgz"):
        return "tarball"
    if key.endswith("/packument.json") or key.endswith("/packument.meta"):
        return "packument"
    return "other"


# ------------------------------------------------------------ parsing, formatting


def parse_size(value: object, what: str) -> int | None:
    """Bytes from an int or ``"10GiB"``; ``None``/``"none"``: no limit. InvalidInput if malformed."""
    if value is None:
        return None
    try:
        return _size(optional=True)(value, what, Path())
    except ConfigError as exc:
        raise InvalidInput(f"{what}: {exc.problem}") from exc


def parse_duration(value: object, what: str) -> float | None:
    """Seconds from a number or ``"7d"``; ``None``/``"none"``: no limit. InvalidInput if malformed."""
    if value is None:
        return None
    try:
        return _duration(positive=False, optional=True)(value, what, Path())
    except ConfigError as exc:
        raise InvalidInput(f"{what}: {exc.problem}") from exc


def format_bytes(n: float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def gc_summary(report: GCReport) -> str:
    """One line: entries and bytes before/after, what went, how long it took."""
    verb = "would evict" if report.dry_run else "evicted"
    idle = f" ({report.expired} idle)" if report.expired else ""
    return (
        f"{report.entries_before} → {report.entries_after} entries, "
        f"{format_bytes(report.bytes_before)} → {format_bytes(report.bytes_after)}; "
        f"{verb} {report.evicted}{idle}, {format_bytes(report.bytes_freed)}, in {report.seconds:.2f} s"
    )


def gc_json(report: GCReport) -> dict[str, Any]:
    return asdict(report)


def stats_json(stats: CacheStats) -> dict[str, Any]:
    return {
        "entries": stats.entries,
        "bytes": stats.bytes,
        "packages": stats.packages,
        "kinds": {kind: {"entries": k.entries, "bytes": k.bytes} for kind, k in stats.by_kind.items()},
        "oldest_use": stats.oldest_use,
        "newest_use": stats.newest_use,
        "seconds": stats.seconds,
    }


# ------------------------------------------------------------ the service


class CacheAdmin:
    """GC, stats and clear of one process's cache layer (see the module docstring)."""

    def __init__(
        self,
        cache: CacheLayer,
        config: CacheConfig,
        *,
        view: ComposedView | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._cache = cache
        self._config = config
        self._view = view
        self._metrics = metrics
        self._gc_lock = asyncio.Lock()
        self.last_gc: tuple[float, GCReport] | None = None  # (epoch seconds, report) of the last real run

    @property
    def config(self) -> CacheConfig:
        return self._config

    @property
    def gc_enabled(self) -> bool:
        """Whether the background GC has anything to enforce."""
        return self._config.max_bytes is not None or self._config.max_age_s is not None

    @property
    def gc_running(self) -> bool:
        return self._gc_lock.locked()

    async def gc(
        self,
        *,
        max_bytes: int | None = CONFIGURED,
        max_age: float | None = CONFIGURED,
        dry_run: bool = False,
        trigger: str = "admin",
        progress: Progress | None = None,
    ) -> GCReport:
        """One GC run with the configured limits, or those given (None: no limit)."""
        if max_bytes is CONFIGURED:
            max_bytes = self._config.max_bytes
        if max_age is CONFIGURED:
            max_age = self._config.max_age_s
        async with self._gc_lock:
            report = await self._cache.gc(
                max_bytes, max_age, dry_run=dry_run, expires=is_tarball, progress=progress
            )
        if not dry_run:
            self.last_gc = (time.time(), report)
        if self._metrics is not None:
            self._metrics.gc_done(report, trigger)
        log.info("cache gc (%s%s): %s", trigger, ", dry run" if dry_run else "", gc_summary(report))
        return report

    async def stats(self, *, progress: Progress | None = None) -> CacheStats:
        stats = await self._cache.stats(kind=kind_of, progress=progress)
        if self._metrics is not None:
            self._metrics.scanned(stats.entries, stats.bytes)
        return stats

    async def clear(self) -> WipeReport:
        """Wipe the cache, then drop every composed packument (they may embed
        what was just removed; the next request recomposes and refills)."""
        try:
            report = await self._cache.wipe()
        finally:
            if self._view is not None:
                self._view.invalidate_all()
        if self._metrics is not None:
            self._metrics.cleared(report)
        log.info("cache cleared: %d entries, %s in %.2f s", report.entries, format_bytes(report.bytes), report.seconds)
        return report

    async def run_periodically(self, interval_s: float, *, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        """GC every ``interval_s`` seconds until cancelled; a failed run is logged, not fatal."""
        while True:
            await sleep(interval_s)
            try:
                await self.gc(trigger="background")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background cache gc failed")


async def gc_context(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: the app's :class:`CacheAdmin` and its background GC
    task (after the services: it needs the store; stopped before them)."""
    config = app[CONFIG]
    admin = CacheAdmin(app[STORE].layered.cache, config.cache, view=app[VIEW], metrics=app.get(METRICS))
    app[CACHE_ADMIN] = admin
    task: asyncio.Task[None] | None = None
    # With several workers on one store, one background GC is enough.
    if admin.gc_enabled and app.get(WORKER, 1) == 1:
        task = asyncio.create_task(admin.run_periodically(config.cache.gc_interval_s), name="overlaystore cache gc")
        log.info(
            "cache gc every %g s (max_bytes: %s, tarball max_age: %s)",
            config.cache.gc_interval_s,
            "none" if config.cache.max_bytes is None else format_bytes(config.cache.max_bytes),
            "none" if config.cache.max_age_s is None else f"{config.cache.max_age_s:g} s",
        )
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# ------------------------------------------------------------ HTTP


async def require_admin(request: web.Request, *, write: bool = False) -> Identity:
    """401 for anonymous requests, 403 for non-administrators (and for
    read-only tokens when ``write``)."""
    who = await require_user(request)
    if not who.is_admin:
        raise Forbidden(f"user {who.name} is not an administrator")
    if write and who.readonly:
        raise Forbidden("this token is read-only")
    return who


async def get_cache(request: web.Request) -> web.Response:
    await require_admin(request)
    admin = request.app[CACHE_ADMIN]
    stats = await admin.stats()
    last = admin.last_gc
    body = stats_json(stats)
    body["gc"] = {
        "max_bytes": admin.config.max_bytes,
        "max_age": admin.config.max_age_s,
        "interval": admin.config.gc_interval_s,
        "background": admin.gc_enabled,
        "running": admin.gc_running,
        "last": None if last is None else {"at": last[0], **gc_json(last[1])},
    }
    view = request.app[VIEW]
    body["view"] = {**asdict(view.stats), "max_bytes": view.max_bytes}
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def post_gc(request: web.Request) -> web.Response:
    await require_admin(request, write=True)
    options = await read_json_object(request) if request.body_exists else {}
    unknown = sorted(set(options) - {"dry_run", "max_bytes", "max_age"})
    if unknown:
        raise InvalidInput(f"unknown gc option {unknown[0]!r} (dry_run, max_bytes, max_age)")
    dry_run = options.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidInput("dry_run must be true or false")
    max_bytes = parse_size(options["max_bytes"], "max_bytes") if options.get("max_bytes") is not None else CONFIGURED
    max_age = parse_duration(options["max_age"], "max_age") if options.get("max_age") is not None else CONFIGURED
    report = await request.app[CACHE_ADMIN].gc(max_bytes=max_bytes, max_age=max_age, dry_run=dry_run)
    return web.json_response(gc_json(report))


async def post_clear(request: web.Request) -> web.Response:
    await require_admin(request, write=True)
    report = await request.app[CACHE_ADMIN].clear()
    return web.json_response(asdict(report))


def register(router: web.UrlDispatcher) -> None:
    router.add_get("/-/overlaystore/cache", get_cache)
    router.add_post("/-/overlaystore/cache/gc", post_gc)
    router.add_post("/-/overlaystore/cache/clear", post_clear)


__all__ = [
    "CONFIGURED",
    "CacheAdmin",
    "format_bytes",
    "gc_context",
    "gc_json",
    "gc_summary",
    "is_tarball",
    "kind_of",
    "parse_duration",
    "parse_size",
    "register",
    "require_admin",
    "stats_json",
]
