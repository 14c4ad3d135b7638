"""Small endpoints: ping and the audit passthrough."""

from __future__ import annotations

import logging

from aiohttp import web

from .errors import UpstreamError
from .keys import UPSTREAM

log = logging.getLogger("overlaystore.server")


async def ping(request: web.Request) -> web.Response:
    return web.json_response({})


async def audit_bulk(request: web.Request) -> web.Response:
    """Pass the bulk advisory query to the upstream; with no upstream (or one
    that fails) the clean answer is "no advisories", so installs stay quiet."""
    body = await request.read()  # aiohttp has already gunzipped it
    client = request.app.get(UPSTREAM)
    if client is not None:
        try:
            status, payload = await client.audit_bulk(body, {"Content-Type": "application/json"})
        except UpstreamError as exc:
            log.warning("upstream audit failed: %s", exc)
        else:
            if status == 200:
                return web.Response(body=payload, content_type="application/json")
            log.info("upstream audit answered %s; answering no advisories", status)
    return web.json_response({})
