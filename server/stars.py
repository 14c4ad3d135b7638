"""``GET /-/_view/starredByUser?key="<user>"``: what ``npm stars`` lists.

The URL is a CouchDB view's, and so is the key: a JSON string, quoted
(npm sends ``key=%22alice%22``); a bare name is taken as well. The answer
holds one row per published package the user starred, sorted by name;
npm prints each row's ``value``. Only packages with a live version, and
only those the caller may read: a private registry's package names are
not for everyone's eyes.
"""

from __future__ import annotations

import json

from aiohttp import web

from overlaystore.errors import InvalidInput

from .access import may_read
from .auth import identity
from .htpasswd import validate_user_name
from .keys import SEARCH


def _user(request: web.Request) -> str:
    key = request.query.get("key", "").strip()
    if key.startswith('"'):
        try:
            key = json.loads(key)
        except ValueError:
            key = None
        if not isinstance(key, str):
            raise InvalidInput('key must be a user name as a JSON string, for example key="alice"')
    if not key:
        raise InvalidInput('key is required: the user name as a JSON string, for example key="alice"')
    return validate_user_name(key)


async def starred_by_user(request: web.Request) -> web.Response:
    user = _user(request)
    who = await identity(request)
    rows = [
        {"key": user, "value": name}
        for name, summary in await request.app[SEARCH].summaries()
        if user in summary.starred_by and may_read(request, who, name)
    ]
    return web.json_response({"rows": rows})


__all__ = ["starred_by_user"]
