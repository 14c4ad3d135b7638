"""GET/HEAD of tarballs: published first, then the cache, then the upstream.

A cached upstream tarball is never served for a name that has become private
(published here without an overlay rule): the published store alone speaks for
such a name.
"""

from __future__ import annotations

from aiohttp import web

from overlaystore.errors import NotFound
from overlaystore.policy import Provenance

from .access import require_read
from .keys import DOCUMENTS, OUTCOME, STORE, TARBALLS
from .request_info import package_name
from .tarball_proxy import serve_ref

TARBALL_TYPE = "application/octet-stream"


def _filename(request: web.Request) -> str:
    filename = request.match_info["filename"]
    if "/" in filename or "\\" in filename or filename.startswith(".") or not filename.endswith(".tgz"):
        raise NotFound(f"no tarball {filename!r}")
    return filename


async def get_tarball(request: web.Request) -> web.StreamResponse:
    name = package_name(request)
    filename = _filename(request)
    await require_read(request, name)
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
