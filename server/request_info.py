"""What a handler reads off a request: the package name, the public URL, the
representation asked for, a JSON body. Validation happens here, once."""

from __future__ import annotations

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
    proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    host = request.headers.get("X-Forwarded-Host", request.host).split(",")[0].strip()
    return f"{proto}://{host}"


def wants_abbreviated(request: web.Request) -> bool:
    """The abbreviated form iff asked for and not a ``?write=true`` read."""
    if request.query.get("write") == "true":
        return False
    return ABBREVIATED_TYPE in request.headers.get("Accept", "")


def variant_of(request: web.Request) -> Variant:
    return Variant.ABBREVIATED if wants_abbreviated(request) else Variant.FULL


def accepts_gzip(request: web.Request) -> bool:
    return "gzip" in request.headers.get("Accept-Encoding", "")


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; 400 for anything that is not JSON."""
    body = await request.read()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from exc


async def read_json_object(request: web.Request) -> dict[str, Any]:
    data = await read_json(request)
    if not isinstance(data, dict):
        raise InvalidInput("the request body must be a JSON object")
    return data
