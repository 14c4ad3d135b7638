"""Typed application keys: the one place where shared services hang on the app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from overlaystore.packages import PackageStore
    from overlaystore.policy import NamePolicy
    from overlaystore.view import ComposedView

    from .auth import Authenticator
    from .cache_admin import CacheAdmin
    from .config import Config
    from .documents import Documents
    from .health import Readiness
    from .metrics import Metrics
    from .refresh import UpstreamSource
    from .search_index import SearchIndex
    from .tarball_proxy import TarballProxy
    from .upstream import UpstreamClient
    from .worker_metrics import WorkerMetrics

CONFIG: web.AppKey["Config"] = web.AppKey("config")
STORE: web.AppKey["PackageStore"] = web.AppKey("store")
VIEW: web.AppKey["ComposedView"] = web.AppKey("view")
POLICY: web.AppKey["NamePolicy"] = web.AppKey("policy")
AUTH: web.AppKey["Authenticator"] = web.AppKey("auth")
UPSTREAM: web.AppKey["UpstreamClient"] = web.AppKey("upstream")
SOURCE: web.AppKey["UpstreamSource"] = web.AppKey("source")
TARBALLS: web.AppKey["TarballProxy"] = web.AppKey("tarballs")
DOCUMENTS: web.AppKey["Documents"] = web.AppKey("documents")
METRICS: web.AppKey["Metrics"] = web.AppKey("metrics")
#: Set in each worker of ``--workers N`` (N > 1): the scrape gathers every worker.
WORKER_METRICS: web.AppKey["WorkerMetrics"] = web.AppKey("worker_metrics")
CACHE_ADMIN: web.AppKey["CacheAdmin"] = web.AppKey("cache_admin")
READINESS: web.AppKey["Readiness"] = web.AppKey("readiness")
SEARCH: web.AppKey["SearchIndex"] = web.AppKey("search")
#: The worker number (1..N) in a process of ``serve --workers N``; absent in a
#: single-process server. Set before start-up, so a cleanup context can run
#: once-per-server background work (GC) in worker 1 only.
WORKER: web.AppKey[int] = web.AppKey("worker", int)
#: Response header naming the worker (1..N) that answered.
WORKER_HEADER = "X-Overlaystore-Worker"

#: How a request was served from the caches ("hit", "miss", "stale", "published", ...),
#: for the access log.
OUTCOME: web.RequestKey[str] = web.RequestKey("outcome", str)
