"""Who may do what to a package: the read and publish rules of the name
policy, plus npm's ownership model (maintainers of a published package)."""

from __future__ import annotations

from aiohttp import web

from overlaystore._types import PackageName
from overlaystore.fragment import PublishedFragment

from .auth import Identity, identity
from .errors import Forbidden, Unauthenticated
from .keys import AUTH, POLICY


def may_read(request: web.Request, who: Identity | None, name: PackageName) -> bool:
    """Whether ``who`` (None: anonymous) may read ``name`` under the read rules."""
    return request.app[AUTH].can_access(who, request.app[POLICY].rule_for(name).access)


async def require_read(request: web.Request, name: PackageName) -> Identity | None:
    """Raise unless the requester may read ``name``; returns the identity."""
    who = await identity(request)
    if may_read(request, who, name):
        return who
    if who is None:
        raise Unauthenticated(f"authentication required to read {name}")
    raise Forbidden(f"user {who.name} may not read {name}")


async def require_user(request: web.Request) -> Identity:
    who = await identity(request)
    if who is None:
        raise Unauthenticated("you must be logged in to do that (npm login)")
    return who


async def require_publish(
    request: web.Request, name: PackageName, fragment: PublishedFragment | None
) -> Identity:
    """Raise unless the requester may change ``name``: the rule's ``publish``
    principals, and for a package that has maintainers, one of them (or an
    administrator)."""
    who = await require_user(request)
    if who.readonly:
        raise Forbidden("this token is read-only")
    rule = request.app[POLICY].rule_for(name)
    if not request.app[AUTH].can_access(who, rule.publish):
        raise Forbidden(f"user {who.name} may not publish {name}")
    if fragment is not None and fragment.maintainers and not who.is_admin:
        owners = {m.get("name") for m in fragment.maintainers}
        if who.name not in owners:
            raise Forbidden(
                f"user {who.name} is not a maintainer of {name}; "
                f"ask one of {', '.join(sorted(o for o in owners if o))} to run npm owner add"
            )
    return who
