"""``GET /-/v1/search``: published packages first, then upstream results.

Published packages are matched on name, description and keywords of their
latest version; upstream results whose names are published here are dropped,
so a private name is never shown with someone else's data.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from aiohttp import web

from overlaystore.fragment import PublishedFragment
from overlaystore.policy import Provenance

from .auth import identity
from .errors import UpstreamError
from .keys import AUTH, DOCUMENTS, POLICY, STORE, UPSTREAM

log = logging.getLogger("overlaystore.server")

MAX_SIZE = 250


def _int_param(request: web.Request, key: str, default: int, upper: int) -> int:
    try:
        value = int(request.query.get(key, default))
    except ValueError:
        return default
    return max(0, min(value, upper))


def _entry(fragment: PublishedFragment) -> dict[str, Any] | None:
    latest = fragment.dist_tags.get("latest")
    manifest = fragment.versions.get(latest or "")
    if manifest is None:
        return None
    people = [
        {"username": m.get("name", ""), "email": m.get("email", "")} for m in fragment.maintainers
    ]
    npm_user = manifest.get("_npmUser") or {}
    keywords = manifest.get("keywords")
    return {
        "package": {
            "name": fragment.name,
            "scope": fragment.name[1:].partition("/")[0] if fragment.name.startswith("@") else "unscoped",
            "version": latest,
            "description": manifest.get("description", ""),
            "keywords": keywords if isinstance(keywords, list) else [],
            "date": fragment.times.get(latest or "", fragment.modified),
            "links": {},
            "publisher": {"username": npm_user.get("name", ""), "email": npm_user.get("email", "")},
            "maintainers": people,
        },
        "score": {"final": 1.0, "detail": {"quality": 1.0, "popularity": 1.0, "maintenance": 1.0}},
        "searchScore": 1.0,
    }


def _matches(fragment: PublishedFragment, words: list[str]) -> bool:
    latest = fragment.versions.get(fragment.dist_tags.get("latest", ""), {})
    keywords = latest.get("keywords")
    haystack = " ".join(
        [fragment.name, str(latest.get("description", ""))]
        + ([str(k) for k in keywords] if isinstance(keywords, list) else [])
    ).lower()
    return all(word in haystack for word in words)


async def search(request: web.Request) -> web.Response:
    text = request.query.get("text", "").strip()
    size = _int_param(request, "size", 20, MAX_SIZE)
    offset = _int_param(request, "from", 0, 10_000)
    words = [w for w in text.lower().split() if w]
    store = request.app[STORE]
    auth = request.app[AUTH]
    policy = request.app[POLICY]
    who = await identity(request)

    local: list[dict[str, Any]] = []
    published = set()
    for name in await store.published_names():
        published.add(name)
        if not auth.can_access(who, policy.rule_for(name).access):
            continue
        fragment = await store.fragment(name)
        if fragment is None or not _matches(fragment, words):
            continue
        entry = _entry(fragment)
        if entry is not None:
            local.append(entry)
    local.sort(key=lambda e: e["package"]["name"])

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
            if not auth.can_access(who, policy.rule_for(name).access):  # type: ignore[arg-type]
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
