"""``/-/package/<name>/dist-tags[/<tag>]``: list, set and remove dist-tags."""

from __future__ import annotations

from aiohttp import web

from overlaystore.errors import InvalidInput, NotFound

from .access import require_publish, require_read
from .keys import DOCUMENTS, STORE
from .publish import check_tag_name
from .request_info import package_name, read_json
from .writes import published_fragment


async def list_tags(request: web.Request) -> web.Response:
    name = package_name(request)
    await require_read(request, name)
    composed = await request.app[DOCUMENTS].composed(name)
    return web.json_response(composed.doc.get("dist-tags", {}))


async def put_tag(request: web.Request) -> web.Response:
    name = package_name(request)
    tag = check_tag_name(request.match_info["tag"])
    fragment = await published_fragment(request, name)
    await require_publish(request, name, fragment)
    version = await read_json(request)
    if not isinstance(version, str):
        raise InvalidInput('the body is the version as a JSON string, e.g. "1.0.0"')
    await request.app[STORE].set_dist_tag(name, tag, version)
    return web.json_response({"ok": True}, status=201)


async def delete_tag(request: web.Request) -> web.Response:
    name = package_name(request)
    tag = request.match_info["tag"]
    fragment = await published_fragment(request, name)
    await require_publish(request, name, fragment)
    if tag not in fragment.dist_tags:
        raise NotFound(f"{name} has no dist-tag {tag!r}")
    await request.app[STORE].remove_dist_tag(name, tag)
    return web.json_response({"ok": True})
