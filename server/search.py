"""``GET /-/v1/search``: published packages first, then upstream results.

Published packages are matched on name, description and keywords of their
latest version (kept between searches by :mod:`server.search_index`);
upstream results whose names are published here are dropped, so a private
name is never shown with someone else's data.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from aiohttp import web

from overlaystore.policy import Provenance

from .access import may_read
from .auth import identity
from .errors import UpstreamError
from .keys import DOCUMENTS, SEARCH, UPSTREAM

log = logging.getLogger("overlaystore.server")

MAX_SIZE = 250


def _int_param(request: web.Request, key: str, default: int, upper: int) -> int:
    try:
        value = int(request.query.get(key, default))
    except ValueError:
        return default
    return max(0, min(value, upper))


async def search(request: web.Request) -> web.Response:
    text = request.query.get("text", "").strip()
    size = _int_param(request, "size", 20, MAX_SIZE)
    offset = _int_param(request, "from", 0, 10_000)
    words = [w for w in text.lower().split() if w]
    who = await identity(request)

    local: list[dict[str, Any]] = []
    published = set()
    for name, summary in await request.app[SEARCH].summaries():  # sorted by name
        published.add(name)
        if summary.entry is not None and summary.matches(words) and may_read(request, who, name):
            local.append(summary.entry)

    remote: list[dict[str, Any]] = []
    client = request.app.get(UPSTREAM)
    if client is not None and text and offset + size > len(local):
        try:
            answer = await client.search({"text": text, "size": str(size), "from": "0"})
        except UpstreamError as exc:
            log.warning("upstream search failed: %s", exc)
            answer = None
        for obj in (answer or {}).get("objects", []):
            pkg = obj.get("package", {}) if isinstance(obj, dict) else {}
            name = pkg.get("name")
            if not isinstance(name, str) or name in published:
                continue
            if not may_read(request, who, name):  # type: ignore[arg-type]
                continue  # the read rules apply to upstream names too
            if request.app[DOCUMENTS].classify(name, None) is Provenance.PRIVATE:  # type: ignore[arg-type]
                continue  # a never-proxy scope: upstream data must not show
            remote.append(obj)
    objects = (local + remote)[offset : offset + size]
    return web.json_response(
        {
            "objects": objects,
            "total": len(local) + len(remote),
            "time": dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z"),
        }
    )
