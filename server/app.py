"""The aiohttp application: services on typed keys, routes, lifecycle.

``make_app(config)`` wires the library (store, composed view, watcher) and the
server services (authenticator, upstream client, packument source, tarball
proxy) on the app; ``cleanup_ctx`` opens them at start-up and closes them on
shutdown. ``run(config)`` serves it until SIGINT/SIGTERM
(:func:`server.serving.serve`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable

from aiohttp import web

from overlaystore._types import PackageName
from overlaystore.changes import ChangeCounters
from overlaystore.errors import StorageError
from overlaystore.packages import PackageStore
from overlaystore.view import ComposedView
from overlaystore.watch import Watcher

from . import accounts, cache_admin, health, metrics, package_access, profile
from .allocator import tune_allocator
from .auth import Authenticator
from .config import Config
from .echoes import CacheEchoes
from .dist_tags import delete_tag, list_tags, put_tag
from .documents import Documents
from .http_errors import error_middleware
from .health import Readiness
from .keys import AUTH, CONFIG, DOCUMENTS, METRICS, POLICY, READINESS, SEARCH, SOURCE, STORE, TARBALLS, UPSTREAM, VIEW
from .log_setup import configure_logging
from .metrics import Metrics, metrics_middleware
from .misc import audit_bulk, ping
from .packuments import get_packument, get_version
from .refresh import UpstreamSource
from .search import search
from .search_index import SearchIndex
from .serving import serve
from .stars import starred_by_user
from .tarball_proxy import TarballProxy
from .tarballs import get_tarball
from .upstream import UpstreamClient
from .writes import delete_package, delete_tarball, put_package, put_package_rev

log = logging.getLogger("overlaystore.server")


def make_app(config: Config) -> web.Application:
    """The registry application for ``config`` (services start with the app)."""
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[metrics_middleware, error_middleware],
    )
    app[CONFIG] = config
    app[METRICS] = Metrics()
    app[METRICS].attach(app)
    app[READINESS] = Readiness()
    app[POLICY] = config.policy
    app[AUTH] = Authenticator(config.auth)
    app.cleanup_ctx.append(_services)
    app.cleanup_ctx.append(cache_admin.gc_context)  # after the services it uses
    app.on_cleanup.append(health.on_cleanup)
    add_routes(app.router)
    return app


def add_routes(router: web.UrlDispatcher) -> None:
    """Every route. The ``/-/`` routes come first so that ``/-/whoami`` is not
    taken for a package, and the literal ``/@scope/name`` spellings before
    ``/<name>/<version>``."""
    accounts.register(router)
    profile.register(router)  # /-/npm/v1/user
    router.add_get("/-/ping", ping)
    metrics.register(router)  # /-/metrics
    health.register(router)  # /-/overlaystore/ready
    cache_admin.register(router)  # /-/overlaystore/cache...
    router.add_get("/-/v1/search", search)
    router.add_get("/-/_view/starredByUser", starred_by_user)
    package_access.register(router)  # npm access: /-/package/<name>/{collaborators,visibility,access}
    router.add_post("/-/npm/v1/security/advisories/bulk", audit_bulk)
    for prefix in ("/-/package/@{scope}/{pkg}", "/-/package/{name}"):
        router.add_get(prefix + "/dist-tags", list_tags)
        router.add_put(prefix + "/dist-tags/{tag}", put_tag)
        router.add_post(prefix + "/dist-tags/{tag}", put_tag)
        router.add_delete(prefix + "/dist-tags/{tag}", delete_tag)
    # A scope never contains "%": "/@s%2fn/1.0.0" is the manifest route of
    # "/{name}/{version}", not the scoped-name route with scope "s/n".
    for prefix in ("/@{scope:[^{}/%]+}/{pkg}", "/{name}"):
        router.add_get(prefix, get_packument)
        router.add_put(prefix, put_package)
        router.add_put(prefix + "/-rev/{rev}", put_package_rev)
        router.add_delete(prefix + "/-rev/{rev}", delete_package)
        router.add_get(prefix + "/-/{filename}", get_tarball)
        router.add_delete(prefix + "/-/{filename}/-rev/{rev}", delete_tarball)
        router.add_get(prefix + "/{version}", get_version)


async def _services(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    # The published store is recovered before the first answer; the cache,
    # whose walk takes seconds at 100,000 packages, right after.
    store = await PackageStore.open_directories(config.storage.published, config.storage.cache, recover_cache=False)
    cache_recovery = asyncio.create_task(_recover_cache(store), name="cache recovery")
    # Several workers share per-package change counters: a write bumps them
    # before it returns, and every LRU hit checks them (read-your-writes
    # across workers, see overlaystore.changes). One worker: none of it.
    changes = ChangeCounters.for_store(config.storage.published) if config.server.workers > 1 else None
    view = ComposedView(config.cache.view_max_bytes, changes=changes)
    # In-process writes invalidate before they return; the watcher covers
    # other processes and operators.
    search = SearchIndex(store, changes)
    store.subscribe(view.invalidate)
    store.subscribe(search.invalidate)
    checks: asyncio.Task[None] | None = None
    if changes is not None:
        store.subscribe(changes.bump)
        checks = asyncio.create_task(changes.keep_checked(), name="change counters")
    client = UpstreamClient(config.upstream) if config.upstream.url else None
    if client is not None:
        await client.start()
        app[UPSTREAM] = client
    source = UpstreamSource(store, client, config.upstream, parsed_max_bytes=config.cache.parsed_max_bytes)
    app[STORE] = store
    app[VIEW] = view
    app[SEARCH] = search
    app[SOURCE] = source
    tarballs = TarballProxy(store, source, client)
    app[TARBALLS] = tarballs
    app[DOCUMENTS] = Documents(store, view, source, config.policy)
    watchers: list[Watcher] = []
    # Several workers: the supervisor watches for all of them, through the
    # change counters (server.worker_watch).
    if config.watch.enabled and changes is None:
        echoes = CacheEchoes(config.storage.cache)
        store.subscribe_cache_writes(echoes.wrote)

        def invalidate(names: Iterable[PackageName]) -> None:
            for name in names:
                view.invalidate(name)

        def invalidate_published_changes(names: set[PackageName]) -> None:
            invalidate(names)
            for name in names:
                search.invalidate(name)

        def published_reset() -> None:
            view.invalidate_all()
            search.invalidate_all()

        def invalidate_cache_changes(names: set[PackageName]) -> None:
            invalidate(echoes.foreign(names))

        for root, on_change, on_reset in (
            (config.storage.published, invalidate_published_changes, published_reset),
            (config.storage.cache, invalidate_cache_changes, view.invalidate_all),
        ):
            watcher = Watcher([root], on_change=on_change, on_reset=on_reset, force_polling=config.watch.polling)
            # Not waiting: a recursive watch of 100,000 packages takes seconds
            # to set up. What is served meanwhile is dropped once the watch exists.
            await watcher.start(wait=False)
            watchers.append(watcher)
    try:
        yield
    finally:
        for watcher in watchers:
            await watcher.stop()
        # In-flight upstream work first, then the session it runs on.
        await tarballs.close()
        await source.close()
        if client is not None:
            await client.close()
        for task in (checks, cache_recovery):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if changes is not None:
            changes.close()


async def _recover_cache(store: PackageStore) -> None:
    try:
        report = await store.layered.cache.recover()
    except StorageError as exc:
        log.warning("cache recovery failed: %s", exc)
        return
    if report.temp_files or report.trash_dirs:
        log.info("cache recovery removed %d temp files and %d interrupted wipes",
                 report.temp_files, report.trash_dirs)


def describe(config: Config) -> str:
    """The start line: where it listens, what it serves."""
    return "overlaystore on http://%s:%d (published: %s, cache: %s, upstream: %s%s)" % (
        config.server.host,
        config.server.port,
        config.storage.published,
        config.storage.cache,
        config.upstream.url or "none",
        ", offline" if config.upstream.offline else "",
    )


def run(config: Config) -> None:
    """Serve ``config`` until interrupted (one process; several workers:
    :func:`server.workers.serve_workers`)."""
    configure_logging(config)
    log.info("%s", describe(config))
    tune_allocator()
    serve(make_app(config), config)
