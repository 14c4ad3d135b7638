"""``GET /-/_view/starredByUser`` (server/stars.py): what ``npm stars`` lists."""

from __future__ import annotations

from typing import Any

import pytest

from overlaystore.policy import NamePolicy, PackageRule
from tests.npmdata import publish_body

from .conftest import Registry, RegistryFactory


async def _publish(reg: Registry, name: str, user: str = "alice") -> None:
    resp = await reg.client.put(f"/{name.replace('/', '%2f')}", json=publish_body(name, "1.0.0"), headers=reg.auth(user))
    assert resp.status == 201, await resp.text()


async def _star(reg: Registry, name: str, user: str, starred: bool = True) -> None:
    path = f"/{name.replace('/', '%2f')}"
    doc = await (await reg.client.get(path + "?write=true", headers=reg.auth(user))).json()
    users = {**doc.get("users", {}), user: True} if starred else {}
    resp = await reg.client.put(path, json={"_id": name, "_rev": doc["_rev"], "users": users}, headers=reg.auth(user))
    assert resp.status == 200, await resp.text()


async def _stars(reg: Registry, key: str, headers: dict[str, str] | None = None) -> Any:
    resp = await reg.client.get("/-/_view/starredByUser", params={"key": key}, headers=headers or {})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_lists_what_the_user_starred_sorted_with_npm_quoting(registry: Registry) -> None:
    await registry.adduser("bob")
    for name in ("zeta", "@acme/alpha", "mid", "unstarred"):
        await _publish(registry, name)
    for name in ("zeta", "@acme/alpha", "mid"):
        await _star(registry, name, "bob")
    await _star(registry, "mid", "alice")
    assert await _stars(registry, '"bob"') == {
        "rows": [{"key": "bob", "value": name} for name in ("@acme/alpha", "mid", "zeta")]}
    assert [r["value"] for r in (await _stars(registry, "alice"))["rows"]] == ["mid"]  # a bare name too
    assert await _stars(registry, '"carol"') == {"rows": []}


async def test_an_unstar_and_an_unpublish_take_the_package_off_the_list(registry: Registry) -> None:
    await registry.adduser("bob")
    for name in ("kept", "unstarred", "gone"):
        await _publish(registry, name)
        await _star(registry, name, "bob")
    assert len((await _stars(registry, '"bob"'))["rows"]) == 3  # the index now holds all three
    await _star(registry, "unstarred", "bob", starred=False)
    doc = await (await registry.client.get("/gone?write=true")).json()
    resp = await registry.client.delete(f"/gone/-rev/{doc['_rev']}", headers=registry.auth("alice"))
    assert resp.status == 200, await resp.text()
    assert [r["value"] for r in (await _stars(registry, '"bob"'))["rows"]] == ["kept"]


async def test_packages_the_caller_cannot_read_are_not_listed(registry_factory: RegistryFactory) -> None:
    policy = NamePolicy(rules=(PackageRule("@private/*", access=("$authenticated",)),))
    registry = await registry_factory(policy=policy)
    await registry.adduser("alice")
    for name in ("@private/thing", "open"):
        await _publish(registry, name)
        await _star(registry, name, "alice")
    assert [r["value"] for r in (await _stars(registry, '"alice"'))["rows"]] == ["open"]
    member = await _stars(registry, '"alice"', headers=registry.auth("alice"))
    assert [r["value"] for r in member["rows"]] == ["@private/thing", "open"]


@pytest.mark.parametrize("key", ["", '"', '"unterminated', '["alice"]', '""', '"a b"', '"$all"'])
async def test_a_missing_or_malformed_key_is_a_400(registry: Registry, key: str) -> None:
    resp = await registry.client.get("/-/_view/starredByUser", params={"key": key} if key else {})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert "key" in error or "invalid user name" in error
