"""``npm access``: who may change a package, and which packages a user may.

* ``GET /-/package/<name>/collaborators`` (``npm access list collaborators``):
  the maintainers of a published package, each ``read-write``.
* ``GET /-/user/<user>/package`` (``npm access list packages [<user>]``,
  after npm's ``/-/org/<user>/package`` answers 404): the published packages
  the user maintains, each ``read-write``, of those the caller may read.
* ``GET /-/package/<name>/visibility`` (``npm access get status``):
  ``public`` when anonymous users may read the package.
* ``POST /-/package/<name>/access`` (``npm access set status=…`` and
  ``mfa=…``): refused with a 400. Here who reads and who publishes is set by
  the ``[[packages]]`` rules of the configuration and by ``npm owner``, not
  per package by its owners. Teams and organisations do not exist here.
"""

from __future__ import annotations

from aiohttp import web

from overlaystore.errors import InvalidInput

from .access import may_read, require_read
from .auth import identity
from .htpasswd import validate_user_name
from .keys import SEARCH
from .request_info import package_name
from .writes import published_fragment

READ_WRITE = "read-write"
_ONLY_PUBLISHED = "access is known only for packages published here"


async def list_collaborators(request: web.Request) -> web.Response:
    name = package_name(request)
    await require_read(request, name)
    fragment = await published_fragment(request, name, _ONLY_PUBLISHED)
    users = sorted({m["name"] for m in fragment.maintainers if m.get("name")})
    return web.json_response({user: READ_WRITE for user in users})


async def list_user_packages(request: web.Request) -> web.Response:
    user = validate_user_name(request.match_info["user"])
    who = await identity(request)
    return web.json_response({
        name: READ_WRITE
        for name, summary in await request.app[SEARCH].summaries()
        if user in summary.maintained_by and may_read(request, who, name)
    })


async def get_visibility(request: web.Request) -> web.Response:
    name = package_name(request)
    await require_read(request, name)
    await published_fragment(request, name, _ONLY_PUBLISHED)
    return web.json_response({"public": may_read(request, None, name)})


async def set_access(request: web.Request) -> web.Response:
    name = package_name(request)
    await require_read(request, name)
    raise InvalidInput(
        f"access to {name} is set by this registry's [[packages]] rules (read and publish) and by "
        "npm owner (maintainers), not per package; ask an administrator"
    )


def register(router: web.UrlDispatcher) -> None:
    router.add_get("/-/user/{user}/package", list_user_packages)
    for prefix in ("/-/package/@{scope}/{pkg}", "/-/package/{name}"):
        router.add_get(prefix + "/collaborators", list_collaborators)
        router.add_get(prefix + "/visibility", get_visibility)
        router.add_post(prefix + "/access", set_access)


__all__ = ["register"]
