"""HTTP handlers for accounts: adduser/login, whoami, logout and tokens.

What npm, pnpm and yarn send and read is in the protocol notes, §9. The
choices made here:

* ``PUT /-/user/org.couchdb.user:<u>`` creates an unknown user when
  registration is open and logs a known one in; both answer ``201`` with a new
  token. We never answer 409, so npm's ``-rev`` fallback is only a courtesy.
* Web login is not offered: ``POST /-/v1/login`` answers 404, on which npm
  falls back to asking for a username and password.
* Logout revokes the token named in the path without authenticating the
  request: knowing a secret is enough to destroy it, and a logout that fails
  (because the token is already gone) would leave it in the user's ``.npmrc``.
* Success bodies never contain an ``error`` member (yarn fails on it) and are
  marked ``Cache-Control: no-store``: they name users or carry secrets.

Handlers raise :mod:`overlaystore.errors` / :mod:`server.errors` exceptions;
the error middleware turns them into ``{"error": ...}`` responses.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from overlaystore.errors import Conflict, InvalidInput, NotFound

from .access import require_user
from .auth import Identity, identity
from .errors import Forbidden, Unauthenticated
from .keys import AUTH
from .request_info import parse_json_body, read_body

COUCH_PREFIX = "org.couchdb.user:"


def _json(data: Any, *, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(data),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def _read_object(request: web.Request) -> dict[str, Any]:
    body = await read_body(request)
    data = parse_json_body(body) if body.strip() else {}
    if not isinstance(data, dict):
        raise InvalidInput("the request body must be a JSON object")
    return data


def _password(body: dict[str, Any]) -> str:
    password = body.get("password")
    if not isinstance(password, str) or not password:
        raise InvalidInput("a password is required")
    return password


async def _login_reply(request: web.Request, who: Identity) -> web.Response:
    _record, secret = await request.app[AUTH].create_token(who, name="login")
    return _json({"ok": True, "id": COUCH_PREFIX + who.name, "token": secret}, status=201)


async def put_user(request: web.Request) -> web.Response:
    """``npm adduser`` / ``npm login`` (legacy): create or check, then a token."""
    auth = request.app[AUTH]
    user = request.match_info["user"]
    body = await _read_object(request)
    if body.get("name", user) != user:
        raise InvalidInput(f"the body names user {body.get('name')!r} but the URL names {user!r}")
    password = _password(body)
    if auth.user_exists(user):
        who = await auth.login(user, password, remote=request.remote)
    elif not auth.registration:
        raise Forbidden(
            f"user {user} does not exist and registration is disabled on this registry; "
            "ask an administrator to create the account (overlaystore user add)"
        )
    else:
        email = body.get("email")
        if email is not None and not isinstance(email, str):
            raise InvalidInput("email must be a string")
        try:
            who = await auth.add_user(user, password, email)
        except Conflict:
            # A concurrent adduser created the same user first: this is a login now.
            who = await auth.login(user, password, remote=request.remote)
    return await _login_reply(request, who)


async def put_user_rev(request: web.Request) -> web.Response:
    """npm's fallback after a 409: the merged user document, with Basic auth."""
    user = request.match_info["user"]
    body = await _read_object(request)
    who = await identity(request)
    if who is None or who.name != user or who.token_key is not None:
        password = body.get("password")
        if not isinstance(password, str) or not password:
            raise Unauthenticated(f"log in as {user} with your password", scheme="Basic")
        who = await request.app[AUTH].login(user, password, remote=request.remote)
    return await _login_reply(request, who)


async def get_user(request: web.Request) -> web.Response:
    """A user's public record (``npm owner add`` reads name and email).
    Only for logged-in users: emails are not for anonymous eyes."""
    await require_user(request)
    auth = request.app[AUTH]
    user = request.match_info["user"]
    if not auth.user_exists(user):
        raise NotFound(f"no user named {user}")
    doc: dict[str, Any] = {"_id": COUCH_PREFIX + user, "name": user}
    email = auth.user_email(user)
    if email:
        doc["email"] = email
    return _json(doc)


async def web_login(request: web.Request) -> web.Response:
    # Any 4xx makes npm fall back to the couch login; 501/502/503 would abort it.
    raise NotFound("web login is not supported; use --auth-type=legacy")


async def whoami(request: web.Request) -> web.Response:
    who = await require_user(request)
    return _json({"username": who.name})


async def logout(request: web.Request) -> web.Response:
    """``npm logout``: revoke the token in the path. Idempotent: an unknown
    token is a success too, so the client can forget it."""
    await request.app[AUTH].revoke_secret(request.match_info["token"])
    return _json({"ok": True})


async def list_tokens(request: web.Request) -> web.Response:
    who = await require_user(request)
    objects = [record.public() for record in request.app[AUTH].list_tokens(who.name)]
    # npm follows urls.next and crashes without "urls".
    return _json({"objects": objects, "total": len(objects), "urls": {}})


_UNSUPPORTED_RESTRICTIONS = ("packages", "scopes", "orgs")


def _expires_days(value: object) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("expires must be a number of days")
    return value


async def create_token(request: web.Request) -> web.Response:
    """``npm token create``: needs the password again; the secret is in this reply only."""
    who = await require_user(request)
    if who.readonly:
        raise Forbidden("a read-only token cannot create tokens")
    body = await _read_object(request)
    password = _password(body)
    for field in _UNSUPPORTED_RESTRICTIONS:
        if body.get(field):
            raise InvalidInput(
                f"tokens restricted to {field} are not supported here; "
                "create an unrestricted or a read-only token"
            )
    readonly = body.get("readonly", False)
    if not isinstance(readonly, bool):
        raise InvalidInput("readonly must be true or false")
    readonly = readonly or body.get("packages_and_scopes_permission") == "read-only"
    name = body.get("name") or body.get("description") or ""
    if not isinstance(name, str):
        raise InvalidInput("name must be a string")
    auth = request.app[AUTH]
    await auth.login(who.name, password, remote=request.remote)
    record, secret = await auth.create_token(
        who,
        name=name,
        readonly=readonly,
        cidr_whitelist=body.get("cidr_whitelist"),
        expires_days=_expires_days(body.get("expires")),
    )
    return _json({**record.public(), "token": secret}, status=201)


async def delete_token(request: web.Request) -> web.Response:
    """``npm token revoke <key>``: the caller's own tokens only."""
    who = await require_user(request)
    await request.app[AUTH].revoke_token(who.name, request.match_info["key"])
    return web.Response(status=204, headers={"Cache-Control": "no-store"})


def register(router: web.UrlDispatcher) -> None:
    """Add the account routes. Call it before any ``/{name}`` package route."""
    user = "/-/user/" + COUCH_PREFIX + "{user}"
    router.add_put(user, put_user)
    router.add_put(user + "/-rev/{rev}", put_user_rev)
    router.add_get(user, get_user)
    router.add_post("/-/v1/login", web_login)
    router.add_get("/-/whoami", whoami)
    router.add_delete("/-/user/token/{token}", logout)
    router.add_get("/-/npm/v1/tokens", list_tokens)
    router.add_post("/-/npm/v1/tokens", create_token)
    router.add_delete("/-/npm/v1/tokens/token/{key}", delete_token)


__all__ = ["register"]
