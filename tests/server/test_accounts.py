"""Account endpoints as npm, pnpm and yarn call them (protocol notes §9)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from server import accounts
from server.access_log import AccessLogger
from server.auth import Authenticator, identity
from server.config import AuthConfig
from server.errors import Unauthenticated
from server.http_errors import error_middleware
from server.keys import AUTH

PASSWORD = "correct horse battery"
Client = TestClient[web.Request, web.Application]


def make_app(tmp_path: Path, **auth: Any) -> web.Application:
    config = AuthConfig(
        htpasswd=tmp_path / "auth" / "htpasswd",
        tokens=tmp_path / "auth" / "tokens.json",
        bcrypt_rounds=4,
        **auth,
    )
    app = web.Application(middlewares=[error_middleware])
    app[AUTH] = Authenticator(config)
    accounts.register(app.router)
    return app


@pytest.fixture
async def client(aiohttp_client: Callable[[web.Application], Awaitable[Client]], tmp_path: Path) -> Client:
    return await aiohttp_client(make_app(tmp_path))


def couch(name: str, password: str = PASSWORD, email: str | None = "x@example.com") -> dict[str, Any]:
    body: dict[str, Any] = {"_id": f"org.couchdb.user:{name}", "name": name, "password": password,
                            "type": "user", "roles": [], "date": "2026-11-25T17:02:17.439Z"}
    if email:
        body["email"] = email
    return body


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ok_json(resp: ClientResponse, status: int = 200) -> Any:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    # yarn 1 fails any response, 2xx included, whose body has a string "error".
    assert "error" not in body
    assert resp.headers["Cache-Control"] == "no-store"
    return body


async def error_of(resp: ClientResponse, status: int) -> str:
    assert resp.status == status, await resp.text()
    message = (await resp.json())["error"]
    assert isinstance(message, str) and message
    return message


async def adduser(client: Client, name: str = "alice", password: str = PASSWORD) -> str:
    body = await ok_json(await client.put(f"/-/user/org.couchdb.user:{name}", json=couch(name, password)), 201)
    assert body["ok"] is True and body["id"] == f"org.couchdb.user:{name}"
    return str(body["token"])


# ------------------------------------------------------------ adduser / login


async def test_adduser_creates_and_returns_a_token(client: Client) -> None:
    token = await adduser(client)
    assert token.startswith("ovs_")
    assert (await ok_json(await client.get("/-/whoami", headers=bearer(token))))["username"] == "alice"


async def test_login_of_a_known_user(client: Client) -> None:
    first = await adduser(client)
    # npm login sends no email, and its current token (even a stale one) as Bearer.
    resp = await client.put("/-/user/org.couchdb.user:alice", json=couch("alice", email=None),
                            headers=bearer("ovs_stale"))
    second = (await ok_json(resp, 201))["token"]
    assert second != first
    resp = await client.put("/-/user/org.couchdb.user:alice", json=couch("alice", "wrong"))
    assert "password" in await error_of(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Basic")


async def test_registration_closed(aiohttp_client: Any, tmp_path: Path) -> None:
    app = make_app(tmp_path, registration=False)
    await app[AUTH].add_user("alice", PASSWORD, None)
    client = await aiohttp_client(app)
    message = await error_of(await client.put("/-/user/org.couchdb.user:bob", json=couch("bob")), 403)
    assert "registration is disabled" in message
    await ok_json(await client.put("/-/user/org.couchdb.user:alice", json=couch("alice")), 201)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b"{oops", "not valid JSON"), (b"[]", "JSON object"), (b'{"name": "bob", "password": "x"}', "names user"),
     (b'{"name": "alice"}', "password is required"), (b'{"password": "x", "email": 5}', "email")],
)
async def test_adduser_bad_bodies(client: Client, body: bytes, fragment: str) -> None:
    resp = await client.put("/-/user/org.couchdb.user:alice", data=body)
    assert fragment in await error_of(resp, 400)


async def test_adduser_bad_name(client: Client) -> None:
    resp = await client.put("/-/user/org.couchdb.user:$all", json=couch("$all"))
    assert "invalid user name" in await error_of(resp, 400)


async def test_rev_fallback_with_basic_auth(client: Client) -> None:
    await adduser(client)
    url = "/-/user/org.couchdb.user:alice/-rev/1-abc"
    body = await ok_json(await client.put(url, json=couch("alice"), headers=basic("alice", PASSWORD)), 201)
    assert body["token"].startswith("ovs_")
    resp = await client.put(url, json={"name": "alice"})
    await error_of(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    resp = await client.put(url, json=couch("alice"), headers=basic("alice", "wrong"))
    await error_of(resp, 401)


async def test_get_user_for_npm_owner(client: Client) -> None:
    token = await adduser(client)
    await adduser(client, "bob")
    body = await ok_json(await client.get("/-/user/org.couchdb.user:bob?write=true", headers=bearer(token)))
    assert body == {"_id": "org.couchdb.user:bob", "name": "bob", "email": "x@example.com"}
    await error_of(await client.get("/-/user/org.couchdb.user:carol", headers=bearer(token)), 404)
    await error_of(await client.get("/-/user/org.couchdb.user:bob"), 401)


async def test_web_login_is_refused_with_404(client: Client) -> None:
    message = await error_of(await client.post("/-/v1/login", json={"create": True}), 404)
    assert message == "web login is not supported; use --auth-type=legacy"


# ------------------------------------------------------------ whoami / logout


async def test_whoami(client: Client) -> None:
    token = await adduser(client)
    assert await ok_json(await client.get("/-/whoami", headers=basic("alice", PASSWORD))) == {"username": "alice"}
    await error_of(await client.get("/-/whoami"), 401)
    resp = await client.get("/-/whoami", headers=bearer(token + "x"))
    await error_of(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_logout_revokes_the_token_and_is_idempotent(client: Client) -> None:
    token = await adduser(client)
    assert await ok_json(await client.delete(f"/-/user/token/{token}", headers=bearer(token))) == {"ok": True}
    await error_of(await client.get("/-/whoami", headers=bearer(token)), 401)
    # Again, with the now-revoked token as credentials: still a success, so npm forgets it.
    assert await ok_json(await client.delete(f"/-/user/token/{token}", headers=bearer(token))) == {"ok": True}


# ------------------------------------------------------------ /-/npm/v1/tokens


async def test_token_list_create_and_delete(client: Client) -> None:
    login = await adduser(client)
    listing = await ok_json(await client.get("/-/npm/v1/tokens", headers=bearer(login)))
    assert listing["total"] == 1 and listing["urls"] == {}
    (entry,) = listing["objects"]
    assert entry["token"] == login[:6] + "…" and login not in str(listing)
    assert {"key", "name", "created", "updated", "readonly", "cidr_whitelist"} <= entry.keys()

    # npm 11 sends name/expires; npm 10 readonly/cidr_whitelist.
    created = await ok_json(await client.post(
        "/-/npm/v1/tokens", headers=bearer(login),
        json={"password": PASSWORD, "name": "ci", "expires": 30, "readonly": True, "cidr_whitelist": ["127.0.0.1/32"]},
    ), 201)
    secret = created["token"]
    assert secret.startswith("ovs_") and created["readonly"] is True and created["name"] == "ci"
    assert created["cidr_whitelist"] == ["127.0.0.1/32"] and "expires" in created
    assert await ok_json(await client.get("/-/whoami", headers=bearer(secret))) == {"username": "alice"}

    listing = await ok_json(await client.get("/-/npm/v1/tokens", headers=bearer(login)))
    assert listing["total"] == 2 and secret not in str(listing)

    resp = await client.delete(f"/-/npm/v1/tokens/token/{created['key']}", headers=bearer(login))
    assert resp.status == 204
    await error_of(await client.get("/-/whoami", headers=bearer(secret)), 401)
    await error_of(await client.delete(f"/-/npm/v1/tokens/token/{created['key']}", headers=bearer(login)), 404)


async def test_token_create_rechecks_the_password(client: Client) -> None:
    login = await adduser(client)
    resp = await client.post("/-/npm/v1/tokens", headers=bearer(login), json={"password": "wrong"})
    await error_of(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    await error_of(await client.post("/-/npm/v1/tokens", headers=bearer(login), json={}), 400)
    await error_of(await client.post("/-/npm/v1/tokens", json={"password": PASSWORD}), 401)


async def test_token_create_refusals(client: Client) -> None:
    login = await adduser(client)
    resp = await client.post("/-/npm/v1/tokens", headers=bearer(login),
                             json={"password": PASSWORD, "packages": ["foo"]})
    assert "not supported" in await error_of(resp, 400)
    ro = (await ok_json(await client.post("/-/npm/v1/tokens", headers=bearer(login),
                                          json={"password": PASSWORD, "packages_and_scopes_permission": "read-only"}),
                        201))
    assert ro["readonly"] is True
    resp = await client.post("/-/npm/v1/tokens", headers=bearer(ro["token"]), json={"password": PASSWORD})
    assert "read-only" in await error_of(resp, 403)
    resp = await client.post("/-/npm/v1/tokens", headers=bearer(login),
                             json={"password": PASSWORD, "cidr_whitelist": ["nonsense"]})
    await error_of(resp, 400)


async def test_tokens_are_per_user(client: Client) -> None:
    alice = await adduser(client)
    bob = await adduser(client, "bob")
    key = (await ok_json(await client.get("/-/npm/v1/tokens", headers=bearer(alice))))["objects"][0]["key"]
    await error_of(await client.delete(f"/-/npm/v1/tokens/token/{key}", headers=bearer(bob)), 404)
    assert (await ok_json(await client.get("/-/npm/v1/tokens", headers=bearer(bob))))["total"] == 1


async def test_too_many_failed_logins(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(make_app(tmp_path, login_attempts_per_minute=2))
    await adduser(client)
    for _ in range(2):
        await error_of(await client.put("/-/user/org.couchdb.user:alice", json=couch("alice", "nope")), 401)
    resp = await client.put("/-/user/org.couchdb.user:alice", json=couch("alice"))
    await error_of(resp, 429)
    assert int(resp.headers["Retry-After"]) >= 1


# ------------------------------------------------------------------ hygiene


async def test_no_password_token_or_header_in_the_logs(
    aiohttp_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # With the server's access logger, which redacts the secret in logout paths.
    server = TestServer(make_app(tmp_path))
    await server.start_server(access_log_class=AccessLogger)
    client = await aiohttp_client(server)
    caplog.set_level(logging.DEBUG)
    token = await adduser(client)
    await client.put("/-/user/org.couchdb.user:alice", json=couch("alice", "wrong-password-123"))
    await client.get("/-/whoami", headers=basic("alice", PASSWORD))
    created = await ok_json(await client.post("/-/npm/v1/tokens", headers=bearer(token), json={"password": PASSWORD}), 201)
    await client.get("/-/whoami", headers=bearer(created["token"]))
    await client.delete(f"/-/user/token/{token}", headers=bearer(token))
    await client.get("/-/whoami", headers=bearer(token))
    assert "alice" in caplog.text  # the log is there, and names the user...
    secrets = [PASSWORD, "wrong-password-123", token, created["token"], token[6:],
               basic("alice", PASSWORD)["Authorization"].split()[1]]
    for secret in secrets:  # ...but never a credential
        assert secret not in caplog.text


async def test_identity_is_authenticated_once_per_request(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(tmp_path)
    seen: list[object] = []

    async def handler(request: web.Request) -> web.Response:
        try:
            first = await identity(request)
        except Unauthenticated as exc:
            with pytest.raises(Unauthenticated) as again:
                await identity(request)
            assert again.value is exc
            raise
        assert await identity(request) is first
        return web.json_response({"user": first.name if first else None})

    app.router.add_get("/twice", handler)
    real = app[AUTH].authenticate

    async def counting(authorization: str | None, *, remote: str | None) -> Any:
        seen.append(remote)
        return await real(authorization, remote=remote)

    monkeypatch.setattr(app[AUTH], "authenticate", counting)
    client = await aiohttp_client(app)
    token = await adduser(client)
    assert await (await client.get("/twice", headers=bearer(token))).json() == {"user": "alice"}
    assert await (await client.get("/twice")).json() == {"user": None}
    assert seen == ["127.0.0.1", "127.0.0.1"]
    # An error is memoized too (and raised again): one 401, one authentication.
    resp = await client.get("/twice", headers=bearer("ovs_bad"))
    assert resp.status == 401 and len(seen) == 3
