"""Small endpoints: ping and the audit passthrough."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from overlaystore.errors import InvalidInput
from overlaystore.names import parse_name
from overlaystore.policy import Provenance

from .errors import UpstreamError
from .keys import POLICY, STORE, UPSTREAM
from .request_info import read_body

log = logging.getLogger("overlaystore.server")


async def ping(request: web.Request) -> web.Response:
    return web.json_response({})


async def _upstream_query(request: web.Request, body: bytes) -> dict[str, Any]:
    """The part of a bulk advisory query the upstream may see: names it could
    serve. Private names (published here, or under a never-proxy rule) are
    not its business, and its advisories for a same-named public package
    would be about somebody else's code. Garbage asks nothing."""
    try:
        query = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(query, dict):
        return {}
    policy = request.app[POLICY]
    published = set(await request.app[STORE].published_names())
    kept: dict[str, Any] = {}
    for raw, versions in query.items():
        try:
            name = parse_name(raw)
        except InvalidInput:
            continue
        if policy.classify(name, has_published=name in published) is not Provenance.PRIVATE:
            kept[raw] = versions
    return kept


async def audit_bulk(request: web.Request) -> web.Response:
    """Pass the bulk advisory query to the upstream; with no upstream (or one
    that fails) the clean answer is "no advisories", so installs stay quiet."""
    body = await read_body(request)  # aiohttp has already gunzipped it
    client = request.app.get(UPSTREAM)
    query = await _upstream_query(request, body) if client is not None else {}
    if client is not None and query:
        try:
            status, payload = await client.audit_bulk(orjson.dumps(query), {"Content-Type": "application/json"})
        except UpstreamError as exc:
            log.warning("upstream audit failed: %s", exc)
        else:
            if status == 200:
                return web.Response(body=payload, content_type="application/json")
            log.info("upstream audit answered %s; answering no advisories", status)
    return web.json_response({})
