"""What a handler reads off a request: the package name, the public URL, the
representation asked for, a JSON body. Validation happens here, once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
from aiohttp import web

from overlaystore._types import PackageName
from overlaystore.errors import InvalidInput, NotFound
from overlaystore.names import parse_name
from overlaystore.render import Variant

from .keys import CONFIG

ABBREVIATED_TYPE = "application/vnd.npm.install-v1+json"


def package_name(request: web.Request) -> PackageName:
    """The package named by the route, whichever of the three scoped
    spellings was used (``@s%2fn``, ``@s%2Fn`` or a literal ``@s/n``)."""
    info = request.match_info
    if "scope" in info:
        raw = f"@{info['scope']}/{info['pkg']}"
    else:
        raw = info["name"]
    if raw.startswith("-"):
        # /-/<anything> we do not implement: no package is called "-".
        raise NotFound(f"no such endpoint: {request.rel_url.path}")
    return parse_name(raw)


def public_url(request: web.Request) -> str:
    """Base URL clients reach this server at, without a trailing slash."""
    configured = request.app[CONFIG].server.public_url
    if configured:
        return configured
    headers = request.headers
    return base_url(headers.get("X-Forwarded-Proto"), headers.get("X-Forwarded-Host"), request.scheme, request.host)


def variant_of(request: web.Request) -> Variant:
    """The abbreviated form iff asked for and not a ``?write=true`` read."""
    if request.query.get("write") == "true":
        return Variant.FULL
    return variant_for(request.headers.get("Accept", ""))


def variant_for(accept: str) -> Variant:
    """The representation an ``Accept`` header asks for."""
    return Variant.ABBREVIATED if ABBREVIATED_TYPE in accept else Variant.FULL


def accepts_gzip(request: web.Request) -> bool:
    return "gzip" in request.headers.get("Accept-Encoding", "")


def client_etags(request: web.Request) -> set[str]:
    return etags_of(request.headers.get("If-None-Match"))


def etags_of(if_none_match: str | None) -> set[str]:
    """The entity tags of an ``If-None-Match`` value, weak ones as strong (the
    comparison GET revalidation uses); empty without the header."""
    if not if_none_match:
        return set()
    return {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}


def base_url(forwarded_proto: str | None, forwarded_host: str | None, scheme: str, host: str) -> str:
    """``proto://host`` from the ``X-Forwarded-*`` headers, else the request's own."""
    proto = (forwarded_proto or scheme).split(",")[0].strip()
    return f"{proto}://{(forwarded_host or host).split(',')[0].strip()}"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidInput(f"duplicate key {key[:100]!r} in the request body")
            seen.add(key)
    return obj


def parse_json_body(body: bytes) -> Any:
    """``body`` as JSON; InvalidInput (400) for anything that is not JSON, and
    for an object that names a key twice: parsers disagree on which one wins,
    so a proxy or scanner in front of us may have checked the other one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from exc
    if isinstance(data, (dict, list)):
        try:
            # orjson keeps the last duplicate silently; this pass only looks for them.
            json.loads(body, object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError) as exc:
            if isinstance(exc, InvalidInput):
                raise
            raise InvalidInput(f"the request body is not valid JSON: {exc}") from exc
    return data


async def read_body(request: web.Request) -> bytes:
    """The whole request body (decompressed, as ``request.read()`` gives it).

    413 past ``max_body_bytes``; 408 when the client stops sending for
    ``body_timeout_s``: aiohttp puts no deadline on a body, so without this a
    client trickling a body (or sending less than its Content-Length) would
    hold the request, and the connection, forever."""
    config = request.app.get(CONFIG)
    if config is None:  # an app without the registry's config (handler tests)
        return await request.read()
    limit, idle = config.server.max_body_bytes, config.server.body_timeout_s
    body = bytearray()
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await request.content.readany()
        except TimeoutError:
            raise web.HTTPRequestTimeout() from None
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; 400 for anything that is not JSON."""
    return parse_json_body(await read_body(request))


async def read_json_object(request: web.Request) -> dict[str, Any]:
    data = await read_json(request)
    if not isinstance(data, dict):
        raise InvalidInput("the request body must be a JSON object")
    return data
