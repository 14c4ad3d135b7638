"""``npm profile``: ``GET`` and ``POST /-/npm/v1/user``, the caller's own account.

What a user can change here is what the registry keeps: the email and the
password (``npm profile set email …``, ``npm profile set password``). npm
sends every writable field it got from the ``GET`` along with the one being
set, so fields this registry does not keep (``fullname``, ``github`` …) are
accepted when empty and refused with a 400 otherwise, before anything is
written. Two-factor authentication is not offered: the profile says
``tfa: false`` (``npm profile disable-2fa`` then has nothing to do) and
enabling it is a 400. A password change needs the current password, checked
and rate-limited as a login is; the user's tokens stay valid, as on npm's
own registry.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from overlaystore.errors import InvalidInput, NotFound

from .access import require_user
from .auth import Authenticator, Identity
from .errors import Forbidden, Unauthenticated
from .htpasswd import validate_email
from .keys import AUTH
from .request_info import read_json_object

#: what npm may send back from a profile; kept here: the email and the password
_NOT_KEPT = ("fullname", "homepage", "freenode", "twitter", "github", "cidr_whitelist")
_READ_ONLY = ("name", "email_verified", "created", "updated")


def _profile(auth: Authenticator, who: Identity) -> web.Response:
    entry = auth.user(who.name)
    if entry is None:
        raise NotFound(f"no user named {who.name}")
    profile: dict[str, Any] = {"name": entry.name, "email": entry.email or "", "email_verified": False, "tfa": False}
    # Users this registry (or Verdaccio) created say when in the htpasswd comment.
    stamp = entry.comment.removeprefix("autocreated ").strip()
    if entry.comment.startswith("autocreated ") and stamp:
        profile["created"] = stamp
    return web.Response(body=orjson.dumps(profile), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


async def get_profile(request: web.Request) -> web.Response:
    return _profile(request.app[AUTH], await require_user(request))


def _password_change(value: Any) -> tuple[str, str]:
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) for k in ("old", "new")):
        raise InvalidInput('password must be {"old": "<current password>", "new": "<new password>"}')
    if not value["old"]:
        raise InvalidInput("the current password is required to set a new one")
    return value["old"], value["new"]


async def post_profile(request: web.Request) -> web.Response:
    who = await require_user(request)
    if who.readonly:
        raise Forbidden("a read-only token cannot change the profile")
    body = await read_json_object(request)
    if body.get("tfa"):
        raise InvalidInput("two-factor authentication is not supported on this registry")
    for key, value in body.items():
        if key in _NOT_KEPT and value not in (None, ""):
            raise InvalidInput(f"{key} is not kept on this registry; only email and password can be set")
        if key in _READ_ONLY and value not in (None, "", False) and not (key == "name" and value == who.name):
            raise InvalidInput(f"{key} cannot be changed")
    password = _password_change(body["password"]) if "password" in body else None
    email = body.get("email")
    if "email" in body:
        if not isinstance(email, str):
            raise InvalidInput("email must be a string")
        validate_email(email)  # before the password changes: a bad body writes nothing
    auth = request.app[AUTH]
    if password is not None:
        try:
            await auth.change_password(who.name, *password, remote=request.remote)
        except Unauthenticated as exc:
            # The request is authenticated; it is the old password that is wrong.
            raise Forbidden("the current password is not right; the password was not changed") from exc
    if email is not None:
        await auth.set_email(who.name, email)
    return _profile(auth, who)


def register(router: web.UrlDispatcher) -> None:
    router.add_get("/-/npm/v1/user", get_profile)
    router.add_post("/-/npm/v1/user", post_profile)


__all__ = ["register"]
