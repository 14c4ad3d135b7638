"""GET of packuments (full and abbreviated) and of single version manifests."""

from __future__ import annotations

from aiohttp import web

from overlaystore.render import Rendered, Variant

from .access import require_read
from .bodies import send_body
from .documents import Outcome
from .keys import DOCUMENTS, OUTCOME
from .request_info import (
    ABBREVIATED_TYPE,
    accepts_gzip,
    client_etags,
    package_name,
    public_url,
    variant_of,
)

# Clients revalidate every time (cheap 304s), so a publish shows up at once.
_CACHE_CONTROL = "no-cache"
_VARY = "Accept, Accept-Encoding"


def _gzip_etag(etag: str) -> str:
    """A strong ETag names one representation: the gzip bytes get their own."""
    return etag[:-1] + '-gz"'


def is_not_modified(etags: set[str], rendered: Rendered) -> bool:
    # Either encoding's tag proves the client holds this version of the document.
    return bool(etags & {rendered.etag, _gzip_etag(rendered.etag), "*"})


def packument_headers(rendered: Rendered, gzipped: bool, outcome: Outcome) -> dict[str, str]:
    """The headers of a packument answer but for what describes its body
    (:func:`body_headers`, not sent with a 304). The aiohttp handler and the
    hit path (:mod:`server.hit_path`) both send these."""
    headers = {
        "ETag": _gzip_etag(rendered.etag) if gzipped else rendered.etag,
        "Vary": _VARY,
        "Cache-Control": _CACHE_CONTROL,
        "X-Overlaystore-Cache": outcome.value,
    }
    if rendered.last_modified:
        headers["Last-Modified"] = rendered.last_modified
    if outcome is Outcome.STALE:
        headers["Warning"] = '110 - "Response is Stale"'
    return headers


def body_headers(headers: dict[str, str], variant: Variant, gzipped: bool) -> None:
    """Add to ``headers`` what a 200 says of its body."""
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    headers["Content-Type"] = ABBREVIATED_TYPE if variant is Variant.ABBREVIATED else "application/json"


async def _respond(
    request: web.Request, rendered: Rendered, variant: Variant, outcome: Outcome
) -> web.StreamResponse:
    gzipped = accepts_gzip(request)
    headers = packument_headers(rendered, gzipped, outcome)
    request[OUTCOME] = outcome.value
    if is_not_modified(client_etags(request), rendered):
        return web.Response(status=304, headers=headers)
    body_headers(headers, variant, gzipped)
    body = rendered.gzip if gzipped else rendered.body
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return web.Response(headers=headers)
    return await send_body(request, body, headers)


async def get_packument(request: web.Request) -> web.StreamResponse:
    name = package_name(request)
    await require_read(request, name)
    variant = variant_of(request)
    rendered, outcome = await request.app[DOCUMENTS].rendered(name, variant, public_url(request))
    return await _respond(request, rendered, variant, outcome)


async def get_version(request: web.Request) -> web.Response:
    """``GET /<name>/<version-or-tag>``: one manifest, tarball URL rewritten."""
    name = package_name(request)
    await require_read(request, name)
    body = await request.app[DOCUMENTS].manifest(name, request.match_info["version"], public_url(request))
    return web.Response(body=body, headers=manifest_headers())


def manifest_headers() -> dict[str, str]:
    """The headers of a manifest answer, from aiohttp or the hit path."""
    return {"Content-Type": "application/json", "Cache-Control": _CACHE_CONTROL}
