"""Upstream packuments, kept fresh: the cache, revalidated against the upstream.

:class:`UpstreamSource` answers "what does the upstream say about this name?"
from the proxy cache when the cached copy is fresh, and otherwise asks the
upstream conditionally (stored ETag / Last-Modified):

====================  ==============================================  ==========
upstream answer       cache action                                    returns
====================  ==============================================  ==========
200                   ``store_packument`` (body as received)          new doc
304                   ``touch_packument`` (new ``fetched_at``)        cached doc
404 / 410             ``drop_cached`` (packument and tarballs)        None
error, with a copy    nothing; warning logged (stale-if-error)        cached, stale
error, no copy        nothing                                         raises
====================  ==============================================  ==========

Invariants:

* Concurrent calls for one name share one refresh (single-flight), so a burst
  of misses costs one upstream request and one parse.
* The cache is best effort: a failed cache write is logged and the fresh
  document is still returned.
* An unparseable upstream body is an upstream error (stale-if-error applies)
  and is never stored; an unparseable cached body is treated as absent.
* Without an upstream (no URL) or offline, only the cache is read and nothing
  is logged per request.

Parsing: orjson, in a worker thread above 1 MiB. Measured (4 MB document,
orjson 3.13, CPython 3.11): orjson holds the GIL for the whole parse, so the
thread does **not** shorten the loop stall (~50 ms either way); it only keeps
the loop free on a free-threaded interpreter. What does pay off is parsing
less: single-flight, the composed LRU upstream of this, and the per-version
``dist`` index kept here, so that a tarball miss does not re-parse a
multi-megabyte packument just to learn one version's integrity. (Dist entries
are safe to keep across refreshes: an npm version's tarball never changes.)

Parsed documents are kept too, in a :class:`~overlaystore.prepared.ParsedCache`
bounded by an estimate of their memory (~5x the JSON size, plus the
pre-serialized versions rendering adds; ``parsed_max_bytes``, 0 disables it):
an entry is found only for the very body it was parsed from (name, xxh3 digest
and length of the cached body), so a composed-view miss caused by anything
but an upstream change (a publish to an overlaid name, another variant or
public URL, an LRU eviction, a 304 revalidation, stale-if-error) neither
parses nor re-serializes the upstream versions. A 200 puts its fresh parse in.
Parsed documents are shared, never mutated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from overlaystore._types import PackageName
from overlaystore.errors import StorageError
from overlaystore.cache import CachedPackument, CacheMeta
from overlaystore.packages import PackageStore, packument_digest
from overlaystore.prepared import DEFAULT_MAX_BYTES, ParsedCache, PreparedUpstream

from .config import UpstreamConfig
from .errors import UpstreamError, UpstreamUnavailable
from .flight import SingleFlight
from .upstream import UpstreamClient

log = logging.getLogger("overlaystore.upstream")

#: Bodies above this are parsed in a worker thread.
THREAD_PARSE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class UpstreamDoc:
    """An upstream packument as served to composition.

    ``doc`` is the parsed document (treat it as read-only: it may be shared).
    ``source``: "cache" (fresh enough, no request), "upstream" (a 200 just
    now) or "revalidated" (a 304 just now). ``stale``: older than max-age and
    could not be revalidated (upstream failing, or offline). ``expires_at``
    (epoch seconds) is when it should be asked for again; None: only a cache
    change can alter it (offline / no upstream). ``prepared``: ``doc`` with
    what rendering re-uses (pass it to ``render(..., upstream=)``).
    """

    doc: Mapping[str, Any]
    etag: str | None
    last_modified: str | None
    fetched_at: float
    stale: bool
    source: Literal["cache", "upstream", "revalidated"]
    expires_at: float | None
    prepared: PreparedUpstream | None = None


@dataclass(frozen=True, slots=True)
class DistInfo:
    """What fetching and verifying one version's tarball needs."""

    tarball: str | None
    integrity: str | None
    shasum: str | None


class _DistIndex:
    """name -> {version: DistInfo}, LRU, bounded by the total number of versions."""

    def __init__(self, max_versions: int) -> None:
        self._max = max_versions
        self._entries: OrderedDict[str, dict[str, DistInfo]] = OrderedDict()
        self._size = 0
        self._tags: dict[str, str] = {}  # name -> digest of the body indexed

    def get(self, name: str, version: str) -> DistInfo | None:
        versions = self._entries.get(name)
        if versions is None:
            return None
        self._entries.move_to_end(name)
        return versions.get(version)

    def put(self, name: str, doc: Mapping[str, Any], tag: str = "") -> None:
        """Index ``doc``; a no-op if the body with digest ``tag`` is indexed already."""
        if tag and self._tags.get(name) == tag and name in self._entries:
            return
        self.drop(name)
        versions = _dists(doc)
        if len(versions) > self._max:
            return
        self._entries[name] = versions
        if tag:
            self._tags[name] = tag
        self._size += len(versions)
        while self._size > self._max:
            evicted_name, evicted = self._entries.popitem(last=False)
            self._tags.pop(evicted_name, None)
            self._size -= len(evicted)

    def drop(self, name: str) -> None:
        self._tags.pop(name, None)
        old = self._entries.pop(name, None)
        if old is not None:
            self._size -= len(old)


def _dists(doc: Mapping[str, Any]) -> dict[str, DistInfo]:
    out: dict[str, DistInfo] = {}
    versions = doc.get("versions")
    if not isinstance(versions, dict):
        return out
    for version, manifest in versions.items():
        dist = manifest.get("dist") if isinstance(manifest, dict) else None
        if isinstance(dist, dict):
            out[version] = DistInfo(
                tarball=_str(dist.get("tarball")),
                integrity=_str(dist.get("integrity")),
                shasum=_str(dist.get("shasum")),
            )
    return out


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


async def parse_document(body: bytes) -> dict[str, Any]:
    """Parse a packument body; raises ValueError if it is not a JSON object."""
    if len(body) > THREAD_PARSE_BYTES:
        doc = await asyncio.to_thread(orjson.loads, body)
    else:
        doc = orjson.loads(body)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


class UpstreamSource:
    """Upstream packuments through the proxy cache. See the module docstring."""

    def __init__(
        self,
        store: PackageStore,
        client: UpstreamClient | None,
        config: UpstreamConfig,
        *,
        clock: Callable[[], float] = time.time,
        stale_retry_s: float = 10.0,
        dist_index_versions: int = 200_000,
        parsed_max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._store = store
        self._client = client
        self._config = config
        self._clock = clock
        self._stale_retry_s = stale_retry_s
        self._online = client is not None and config.url is not None and not config.offline
        self._flights: SingleFlight[str, UpstreamDoc | None] = SingleFlight()
        self._dists = _DistIndex(dist_index_versions)
        self._parsed = ParsedCache(parsed_max_bytes)

    @property
    def parsed_cache(self) -> ParsedCache:
        """Parsed upstream documents kept for re-use (for stats)."""
        return self._parsed

    async def close(self) -> None:
        """Cancel refreshes still running (at shutdown, before the client closes)."""
        await self._flights.cancel_all()

    @property
    def online(self) -> bool:
        """Whether the upstream is consulted at all (a URL, not offline)."""
        return self._online

    async def packument(self, name: PackageName) -> UpstreamDoc | None:
        """The upstream document of ``name``; None if the upstream has none
        (or, without an upstream, if the cache has none).

        Raises UpstreamError (or a subclass) only when the upstream failed and
        no cached copy exists.
        """
        return await self._flights.do(name, lambda: self._load(name))

    async def exists_upstream(self, name: PackageName) -> bool:
        """Whether the upstream knows ``name`` (the first-publish check).

        Without an upstream URL: False. Offline: True if a copy is cached, else
        UpstreamUnavailable (we cannot tell). Upstream errors propagate unless a
        cached copy answers the question.
        """
        if self._client is None or self._config.url is None:
            return False
        if self._config.offline:
            if await self._store.cached_packument(name) is not None:
                return True
            raise UpstreamUnavailable(f"offline mode: cannot tell whether {name} exists upstream")
        return await self.packument(name) is not None

    async def dist(self, name: PackageName, version: str) -> DistInfo | None:
        """``versions[version].dist`` of the upstream document (None: no such
        version). Served from the dist index when possible, else through
        :meth:`packument`."""
        info = self._dists.get(name, version)
        if info is not None:
            return info
        doc = await self.packument(name)
        if doc is None:
            return None
        info = self._dists.get(name, version)
        if info is None:  # the index may have declined a huge document
            info = _dists({"versions": {version: doc.doc.get("versions", {}).get(version)}}).get(version)
        return info

    # -- the refresh

    async def _load(self, name: PackageName) -> UpstreamDoc | None:
        cached = await self._store.cached_packument(name)
        now = self._clock()
        if cached is not None:
            fresh = now - cached.meta.fetched_at < self._config.max_age_s
            if fresh or not self._online:
                prepared = await self._parse_cached(name, cached)
                if prepared is not None:
                    if not self._online:
                        return self._from_cache(cached, prepared, stale=not fresh, expires_at=None)
                    expires_at = cached.meta.fetched_at + self._config.max_age_s
                    return self._from_cache(cached, prepared, stale=False, expires_at=expires_at)
                cached = None  # unreadable: behave as if there were none
        if not self._online:
            return None
        return await self._refresh(name, cached, now)

    async def _refresh(self, name: PackageName, cached: CachedPackument | None, now: float) -> UpstreamDoc | None:
        """Ask the upstream (conditionally if ``cached``) and update the cache."""
        assert self._client is not None
        meta = cached.meta if cached is not None else None
        try:
            answer = await self._client.fetch_packument(
                name,
                etag=meta.etag if meta else None,
                last_modified=meta.last_modified if meta else None,
            )
            if answer.status == "not_found":
                await self._drop(name)
                return None
            if answer.status == "not_modified":
                if cached is None:  # cannot happen: the validators came from the cache
                    raise UpstreamError(f"upstream answered 304 for {name} without a cached copy")
                prepared = await self._parse_cached(name, cached)
                if prepared is None:
                    # The 304 vouches for bytes we cannot read: ask again, unconditionally.
                    return await self._refresh(name, None, now)
                new_meta = CacheMeta(
                    fetched_at=now,
                    etag=answer.etag or cached.meta.etag,
                    last_modified=answer.last_modified or cached.meta.last_modified,
                )
                await self._best_effort("record the revalidation of", name, self._store.touch_packument(name, new_meta))
                return self._doc(prepared, new_meta, "revalidated")
            assert answer.body is not None
            try:
                doc = await parse_document(answer.body)
            except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
                raise UpstreamError(f"upstream sent an unparseable packument for {name}: {exc}") from exc
        except UpstreamError as exc:
            if cached is None:
                raise
            stale = await self._parse_cached(name, cached)
            if stale is None:
                raise
            log.warning("upstream failed for %s, serving the cached copy (stale-if-error): %s", name, exc)
            return self._from_cache(cached, stale, stale=True, expires_at=now + self._stale_retry_s)
        new_meta = CacheMeta(fetched_at=now, etag=answer.etag, last_modified=answer.last_modified)
        digest = packument_digest(answer.body)
        prepared = PreparedUpstream(name, doc, digest=digest, body_size=len(answer.body))
        self._parsed.put(prepared)
        self._dists.put(name, doc, digest)
        await self._best_effort("cache the packument of", name, self._store.store_packument(name, answer.body, new_meta))
        return self._doc(prepared, new_meta, "upstream")

    def _doc(
        self, prepared: PreparedUpstream, meta: CacheMeta, source: Literal["upstream", "revalidated"]
    ) -> UpstreamDoc:
        return UpstreamDoc(
            doc=prepared.doc,
            etag=meta.etag,
            last_modified=meta.last_modified,
            fetched_at=meta.fetched_at,
            stale=False,
            source=source,
            expires_at=meta.fetched_at + self._config.max_age_s,
            prepared=self._reusable(prepared),
        )

    @staticmethod
    async def _best_effort(what: str, name: PackageName, write: Awaitable[None]) -> None:
        """The cache is disposable: a failed write is logged, not raised."""
        try:
            await write
        except StorageError as exc:
            log.warning("could not %s %s: %s", what, name, exc)

    def _from_cache(
        self, cached: CachedPackument, prepared: PreparedUpstream, *, stale: bool, expires_at: float | None
    ) -> UpstreamDoc:
        return UpstreamDoc(
            doc=prepared.doc,
            etag=cached.meta.etag,
            last_modified=cached.meta.last_modified,
            fetched_at=cached.meta.fetched_at,
            stale=stale,
            source="cache",
            expires_at=expires_at,
            prepared=self._reusable(prepared),
        )

    def _reusable(self, prepared: PreparedUpstream) -> PreparedUpstream | None:
        # Pre-serialized versions only pay off when they are kept for the next
        # render: not for a document the parsed cache declined (or is off).
        return prepared if self._parsed.holds(prepared) else None

    async def _parse_cached(self, name: PackageName, cached: CachedPackument) -> PreparedUpstream | None:
        """The parsed cached body: from the parsed cache if this very body was
        parsed before, else parsed now (and kept). None if unparseable."""
        digest = cached.body_xxh3
        prepared = self._parsed.get(name, digest, len(cached.body))
        if prepared is None:
            try:
                doc = await parse_document(cached.body)
            except ValueError as exc:
                log.warning("the cached packument of %s is unreadable, ignoring it: %s", name, exc)
                return None
            prepared = PreparedUpstream(name, doc, digest=digest, body_size=len(cached.body))
            self._parsed.put(prepared)
        self._dists.put(name, prepared.doc, digest)
        return prepared

    async def _drop(self, name: PackageName) -> None:
        self._dists.drop(name)
        self._parsed.drop(name)
        await self._best_effort("drop the cached copy of", name, self._store.drop_cached(name))


__all__ = ["DistInfo", "THREAD_PARSE_BYTES", "UpstreamDoc", "UpstreamSource", "parse_document"]
