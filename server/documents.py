"""The packument a client sees: composed view hit, or compose on a miss.

The composed LRU (:class:`~overlaystore.view.ComposedView`) holds rendered
bytes per (name, variant, public URL). On a miss the published fragment and,
when the name policy allows, the upstream packument (refreshed through
:class:`~server.refresh.UpstreamSource`) are composed and rendered once.

Coherence: the generation of a name is read before the store is read, and
again after the upstream refresh (which may itself invalidate the name); if
it moved, published data is read again under the new one. So a write that
lands while we compose makes our fill a no-op instead of a stale entry. (With
several workers the generation also carries the name's shared change counter,
read at the same moments; a write by another worker then makes the entry a
miss on its next lookup, see :mod:`overlaystore.changes`.) Entries
built from upstream data expire with that data's freshness; a stale-if-error
result is cached only briefly, and served with a warning.

Cost of a miss: the upstream document comes parsed from the source's parsed
cache unless its body changed, and ``render`` splices its pre-serialized
versions (``upstream=``; see :mod:`overlaystore.prepared`). Documents with
at least :data:`THREAD_RENDER_VERSIONS` versions are rendered in a worker
thread: zlib releases the GIL while it compresses (the bulk of the render of
a big document), so the event loop keeps serving meanwhile; orjson holds the
GIL, so serialization still competes with the loop. Smaller documents render
inline (a thread hop costs ~0.2 ms here, about what they take).

Single version manifests (``GET /<name>/<version>``) are cut from the full
rendering once and kept, each with the ETag of the rendering it came from:
one is served only while that rendering is the one the LRU serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from dataclasses import dataclass
from typing import Any

import orjson
from cachetools import LRUCache

from overlaystore._types import JSONObject, PackageName
from overlaystore.compose import compose, revision
from overlaystore.errors import NotFound
from overlaystore.fragment import PublishedFragment
from overlaystore.packages import PackageStore
from overlaystore.policy import NamePolicy, Provenance
from overlaystore.render import Rendered, Variant, render
from overlaystore.view import ComposedView, Generation

from .refresh import UpstreamDoc, UpstreamSource

#: Composed documents with at least this many versions are rendered in a
#: worker thread (roughly 100 KB of JSON and up: gzip then costs more than the hop).
THREAD_RENDER_VERSIONS = 100
#: Bytes of single version manifests (``GET /<name>/<version>``) kept, so that
#: asking again does not parse the whole packument again (40 ms and more for
#: a 10 MB one, with the GIL held).
MANIFEST_CACHE_BYTES = 8 * 1024 * 1024


class Outcome(enum.Enum):
    """How a packument request was served (for the access log and headers)."""

    HIT = "hit"
    MISS = "miss"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class Composed:
    """A composed document with what it was made of."""

    doc: JSONObject
    fragment: PublishedFragment | None
    upstream: UpstreamDoc | None
    provenance: Provenance


class Documents:
    """Serves composed packuments through the LRU."""

    def __init__(
        self,
        store: PackageStore,
        view: ComposedView,
        source: UpstreamSource,
        policy: NamePolicy,
    ) -> None:
        self._store = store
        self._view = view
        self._source = source
        self._policy = policy
        # (name, public URL, version or tag) -> (ETag of the full packument it
        # was cut from, manifest bytes). Checked against the packument served
        # now, so it is never staler than the LRU, and holds no reference to it.
        self._manifests: LRUCache[tuple[str, str, str], tuple[str, bytes]] = LRUCache(
            MANIFEST_CACHE_BYTES, getsizeof=lambda held: len(held[1]) + len(held[0]) + 200
        )

    def classify(self, name: PackageName, fragment: PublishedFragment | None) -> Provenance:
        has_published = fragment is not None and (fragment.is_live or bool(fragment.unpublished))
        return self._policy.classify(name, has_published=has_published)

    async def composed(self, name: PackageName) -> Composed:
        """Compose ``name`` now. Raises NotFound when neither store has it."""
        composed, _ = await self._compose(name)
        return composed

    async def revision(self, name: PackageName, fragment: PublishedFragment) -> str:
        """The ``_rev`` a GET of ``name`` shows once ``fragment`` is what is published."""
        if self.classify(name, fragment) is Provenance.PRIVATE:
            return revision(name, fragment, None)
        return str((await self.composed(name)).doc.get("_rev", "1-0"))

    async def rendered(
        self, name: PackageName, variant: Variant, public_url: str
    ) -> tuple[Rendered, Outcome]:
        """Rendered bytes of ``name`` from the LRU, composing on a miss."""
        hit = self._view.get(name, variant, public_url)
        if hit is not None:
            return hit, Outcome.HIT
        composed, generation = await self._compose(name)
        upstream = composed.upstream
        prepared = upstream.prepared if upstream is not None else None
        versions = composed.doc.get("versions")
        if isinstance(versions, dict) and len(versions) >= THREAD_RENDER_VERSIONS:
            rendered = await asyncio.to_thread(render, composed.doc, variant, public_url, upstream=prepared)
        else:
            rendered = render(composed.doc, variant, public_url, upstream=prepared)
        # Entries made of upstream data live as long as that data is fresh; a
        # stale-if-error result is kept only briefly (``expires_at`` says).
        expires_at = None if upstream is None else upstream.expires_at
        if expires_at is None or expires_at > time.time():
            self._view.put(
                name, variant, public_url, rendered, generation=generation, expires_at=expires_at
            )
        outcome = Outcome.STALE if upstream is not None and upstream.stale else Outcome.MISS
        return rendered, outcome

    async def manifest(self, name: PackageName, spec: str, public_url: str) -> bytes:
        """The serialized manifest of version or dist-tag ``spec``, as it
        appears in the full packument served now (tarball URL rewritten)."""
        rendered, _ = await self.rendered(name, Variant.FULL, public_url)
        held = self.held_manifest(name, spec, public_url, rendered.etag)
        if held is not None:
            return held
        body = orjson.dumps(version_manifest(orjson.loads(rendered.body), spec))
        with contextlib.suppress(ValueError):  # larger than the whole cache: not kept
            self._manifests[(name, public_url, spec)] = (rendered.etag, body)
        return body

    def held_manifest(self, name: PackageName, spec: str, public_url: str, etag: str) -> bytes | None:
        """What :meth:`manifest` last answered for ``spec``, if it was cut
        from the full packument whose ETag is ``etag`` (the hit path's check)."""
        held = self._manifests.get((name, public_url, spec))
        return held[1] if held is not None and held[0] == etag else None

    async def _compose(self, name: PackageName) -> tuple[Composed, Generation]:
        generation = self._view.generation(name)
        fragment = await self._store.fragment(name)
        provenance = self.classify(name, fragment)
        upstream: UpstreamDoc | None = None
        if provenance is not Provenance.PRIVATE:
            upstream = await self._source.packument(name)
            # The refresh may have invalidated the name, and a publish may have
            # landed meanwhile: then take the generation again and re-read
            # published data. An unchanged generation means neither happened
            # (as far as a put could tell), so what we read still holds.
            after = self._view.generation(name)
            if after != generation:
                generation = after
                fragment = await self._store.fragment(name)
                provenance = self.classify(name, fragment)
                if provenance is Provenance.PRIVATE:
                    upstream = None
        if upstream is None and (fragment is None or not fragment.is_live):
            if fragment is not None:
                raise NotFound(f"{name} has been unpublished")
            raise NotFound(f"package {name} not found")
        doc = compose(name, fragment, upstream.doc if upstream else None)
        return Composed(doc, fragment, upstream, provenance), generation


def version_manifest(doc: JSONObject, spec: str) -> dict[str, Any]:
    """The manifest of ``spec`` (a version or a dist-tag) in a composed doc."""
    versions = doc.get("versions", {})
    version = doc.get("dist-tags", {}).get(spec, spec)
    manifest = versions.get(version)
    if manifest is None:
        raise NotFound(f"version {spec} of {doc.get('name')} not found")
    return dict(manifest)
