"""GET/HEAD of tarballs: published first, then the cache, then the upstream.

A cached upstream tarball is never served for a name that has become private
(published here without an overlay rule): the published store alone speaks for
such a name.

Once read, a tarball up to ``cache.view_tarball_max_bytes`` is held in the
composed view next to its package's documents, so the next GET is answered
from memory: without that, each one looks up the package's metadata, stats
and opens a file, every step a hop to a worker thread. The view drops it
whenever it drops the package's documents (publish, unpublish, a cache wipe
or GC seen by the watcher, a write by another worker).
"""

from __future__ import annotations

import xxhash
from aiohttp import web

from overlaystore.errors import NotFound
from overlaystore.packages import TarballRef
from overlaystore.policy import Provenance
from overlaystore.render import Rendered
from overlaystore.view import TARBALL

from .access import require_read
from .bodies import send_body
from .keys import CONFIG, DOCUMENTS, OUTCOME, STORE, TARBALLS, VIEW
from .request_info import client_etags, package_name
from .tarball_proxy import TARBALL_HEADERS, serve_ref


#: How a tarball held in the view was served (metrics, access log).
MEMORY = "memory"


def _filename(request: web.Request) -> str:
    filename = request.match_info["filename"]
    if "/" in filename or "\\" in filename or filename.startswith(".") or not filename.endswith(".tgz"):
        raise NotFound(f"no tarball {filename!r}")
    return filename


def _held(data: bytes) -> Rendered:
    etag = f'"{xxhash.xxh3_64_hexdigest(data)}"'
    return Rendered(body=data, gzip=b"", etag=etag, last_modified=None, size=len(data))


def memory_headers(held: Rendered) -> dict[str, str]:
    """The headers of a tarball answered from memory, but for its length
    (the aiohttp handler and the hit path, :mod:`server.hit_path`)."""
    return {**TARBALL_HEADERS, "ETag": held.etag}


async def _from_memory(request: web.Request, held: Rendered) -> web.StreamResponse:
    headers = memory_headers(held)
    if held.etag in client_etags(request):
        return web.Response(status=304, headers=headers)
    if request.method == "HEAD":
        return web.Response(headers={**headers, "Content-Length": str(held.size)})
    return await send_body(request, held.body, headers)


async def _read(ref: TarballRef) -> bytes | None:
    """The bytes of ``ref``; None if it was a cache file removed since the lookup."""
    try:
        return await ref.read()
    except NotFound:
        if ref.layer == "cache":
            return None
        raise


async def get_tarball(request: web.Request) -> web.StreamResponse:
    name = package_name(request)
    filename = _filename(request)
    await require_read(request, name)
    view = request.app[VIEW]
    held = view.get(name, TARBALL, filename)
    if held is not None:
        request[OUTCOME] = MEMORY
        return await _from_memory(request, held)
    # Taken before the store is read: an invalidation meanwhile refuses the put.
    generation = view.generation(name)
    store = request.app[STORE]
    head = request.method == "HEAD"
    ref = await store.tarball(name, filename)
    provenance: Provenance | None = None
    if ref is not None and ref.layer != "published":
        # Only a cached copy needs the name's provenance: a name that has
        # become private is served from the published store alone.
        provenance = request.app[DOCUMENTS].classify(name, await store.fragment(name))
    if ref is not None and provenance is not Provenance.PRIVATE:
        # Tarballs are immutable: a long max-age is safe, and never gzip them
        # (npm would hash the gunzipped tar and fail with EINTEGRITY).
        if ref.size <= request.app[CONFIG].cache.view_tarball_max_bytes and (data := await _read(ref)) is not None:
            held = _held(data)
            view.put(name, TARBALL, filename, held, generation=generation)
            request[OUTCOME] = ref.layer
            return await _from_memory(request, held)
        response = await serve_ref(ref, head=head)
        if response is not None:
            request[OUTCOME] = ref.layer
            return response
        # A file removed since the lookup (a wipe or GC): a miss.
    if provenance is None:
        provenance = request.app[DOCUMENTS].classify(name, await store.fragment(name))
    if provenance is Provenance.PRIVATE:
        raise NotFound(f"no tarball {filename} for {name}")
    request[OUTCOME] = "upstream"
    return await request.app[TARBALLS].serve(request, name, filename, head=head)
