"""``npm profile`` (server/profile.py): the caller's own email and password."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from server import profile

from .test_accounts import PASSWORD, Client, adduser, basic, bearer, error_of, ok_json
from .test_accounts import make_app as make_accounts_app


def make_app(tmp_path: Path, **auth: Any) -> web.Application:
    app = make_accounts_app(tmp_path, **auth)
    profile.register(app.router)
    return app


@pytest.fixture
async def client(aiohttp_client: Callable[[web.Application], Awaitable[Client]], tmp_path: Path) -> Client:
    return await aiohttp_client(make_app(tmp_path))


def htpasswd(tmp_path: Path) -> str:
    return (tmp_path / "auth" / "htpasswd").read_text()  # where make_app keeps it


async def test_get_shows_what_the_registry_keeps(client: Client) -> None:
    token = await adduser(client)
    got = await ok_json(await client.get("/-/npm/v1/user", headers=bearer(token)))
    assert got["name"] == "alice" and got["email"] == "x@example.com"
    assert got["tfa"] is False and got["email_verified"] is False
    assert got["created"].startswith("20")  # from the htpasswd's "autocreated <time>"
    await error_of(await client.get("/-/npm/v1/user"), 401)


async def test_set_email_as_npm_sends_it(client: Client, tmp_path: Path) -> None:
    token = await adduser(client)
    # npm sends back every writable field the GET gave, with the new value.
    got = await ok_json(await client.post("/-/npm/v1/user", headers=bearer(token), json={"email": "new@example.com"}))
    assert got["email"] == "new@example.com"
    assert "email=new@example.com" in htpasswd(tmp_path)
    assert (await ok_json(await client.get("/-/npm/v1/user", headers=bearer(token))))["email"] == "new@example.com"


async def test_change_password_needs_the_current_one(client: Client, tmp_path: Path) -> None:
    token = await adduser(client)
    before = htpasswd(tmp_path)
    resp = await client.post("/-/npm/v1/user", headers=bearer(token),
                             json={"password": {"old": "wrong", "new": "a new secret"}})
    assert "current password" in await error_of(resp, 403)
    assert htpasswd(tmp_path) == before
    await ok_json(await client.post("/-/npm/v1/user", headers=bearer(token),
                                    json={"email": "x@example.com", "password": {"old": PASSWORD, "new": "a new secret"}}))
    await error_of(await client.put("/-/user/org.couchdb.user:alice",
                                    json={"name": "alice", "password": PASSWORD}), 401)
    await ok_json(await client.put("/-/user/org.couchdb.user:alice",
                                   json={"name": "alice", "password": "a new secret"}), 201)
    # The token the change was made with still works (tokens are not revoked).
    assert (await ok_json(await client.get("/-/whoami", headers=bearer(token))))["username"] == "alice"
    # Basic auth with the old password (remembered a moment ago) no longer does.
    await error_of(await client.get("/-/whoami", headers=basic("alice", PASSWORD)), 401)


async def test_wrong_current_passwords_are_rate_limited_like_logins(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(make_app(tmp_path, login_attempts_per_minute=2))
    token = await adduser(client)
    change = {"password": {"old": "guess", "new": "whatever pass"}}
    for _ in range(2):
        await error_of(await client.post("/-/npm/v1/user", headers=bearer(token), json=change), 403)
    await error_of(await client.post("/-/npm/v1/user", headers=bearer(token), json=change), 429)


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"fullname": "Alice A"}, 400, "fullname is not kept"),
    ({"tfa": {"password": PASSWORD, "mode": "auth-only"}}, 400, "two-factor"),
    ({"name": "mallory"}, 400, "name cannot be changed"),
    ({"email": "not an email"}, 400, "email"),
    ({"password": "just-a-string"}, 400, '"old"'),
    ({"password": None}, 400, '"old"'),
    ({"email": None}, 400, "email must be a string"),
    ({"password": {"old": PASSWORD, "new": ""}}, 400, "password"),
    ({"password": {"old": PASSWORD, "new": "x" * 73}}, 400, "too long"),
    # a valid password change next to a bad field: nothing is written
    ({"password": {"old": PASSWORD, "new": "a new secret"}, "email": "bad"}, 400, "email"),
    ({"password": {"old": PASSWORD, "new": "a new secret"}, "github": "alice"}, 400, "github"),
])
async def test_bad_bodies_write_nothing(client: Client, tmp_path: Path, body: dict[str, Any], status: int, fragment: str) -> None:
    token = await adduser(client)
    before = htpasswd(tmp_path)
    assert fragment in await error_of(await client.post("/-/npm/v1/user", headers=bearer(token), json=body), status)
    assert htpasswd(tmp_path) == before


async def test_empty_fields_npm_echoes_back_are_fine(client: Client) -> None:
    token = await adduser(client)
    body = {"email": "x@example.com", "fullname": "", "homepage": None, "name": "alice", "tfa": False}
    assert (await ok_json(await client.post("/-/npm/v1/user", headers=bearer(token), json=body)))["name"] == "alice"


async def test_a_read_only_token_cannot_change_the_profile(client: Client) -> None:
    login = await adduser(client)
    ro = await ok_json(await client.post("/-/npm/v1/tokens", headers=bearer(login),
                                         json={"password": PASSWORD, "readonly": True}), 201)
    resp = await client.post("/-/npm/v1/user", headers=bearer(ro["token"]), json={"email": "ro@example.com"})
    assert "read-only" in await error_of(resp, 403)
    await ok_json(await client.get("/-/npm/v1/user", headers=bearer(ro["token"])))
