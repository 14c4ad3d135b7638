"""``npm access`` (server/package_access.py): collaborators, a user's
packages, visibility; per-package access changes are refused."""

from __future__ import annotations

import pytest

from overlaystore.policy import NamePolicy, PackageRule
from tests.npmdata import publish_body

from .conftest import Registry, RegistryFactory


async def _publish(reg: Registry, name: str, user: str = "alice") -> None:
    resp = await reg.client.put(f"/{name.replace('/', '%2f')}", json=publish_body(name, "1.0.0"), headers=reg.auth(user))
    assert resp.status == 201, await resp.text()


async def _json(reg: Registry, path: str, user: str | None = None, status: int = 200) -> object:
    resp = await reg.client.get(path, headers=reg.auth(user) if user else {})
    assert resp.status == status, await resp.text()
    return await resp.json()


@pytest.fixture
async def owned(registry_factory: RegistryFactory) -> Registry:
    policy = NamePolicy(rules=(PackageRule("@private/*", access=("$authenticated",)), PackageRule("**")))
    reg = await registry_factory(policy=policy)
    for user in ("alice", "bob"):
        await reg.adduser(user)
    await _publish(reg, "shared")
    await _publish(reg, "@private/thing")
    await _publish(reg, "bobs", user="bob")
    doc = await (await reg.client.get("/shared?write=true")).json()
    doc["maintainers"].append({"name": "bob", "email": "bob@example.com"})
    resp = await reg.client.put(f"/shared/-rev/{doc['_rev']}", json=doc, headers=reg.auth("alice"))
    assert resp.status == 200, await resp.text()
    return reg


async def test_collaborators_are_the_maintainers(owned: Registry) -> None:
    assert await _json(owned, "/-/package/shared/collaborators") == {"alice": "read-write", "bob": "read-write"}
    assert await _json(owned, "/-/package/@private%2fthing/collaborators", "bob") == {"alice": "read-write"}
    await _json(owned, "/-/package/@private%2fthing/collaborators", status=401)  # not readable anonymously
    missing = await _json(owned, "/-/package/never-published/collaborators", status=404)
    assert "access is known only for packages published here" in missing["error"]  # type: ignore[index]


async def test_a_users_packages_are_those_they_maintain_and_the_caller_may_read(owned: Registry) -> None:
    assert await _json(owned, "/-/user/alice/package") == {"shared": "read-write"}
    assert await _json(owned, "/-/user/alice/package", "bob") == {"@private/thing": "read-write",
                                                                   "shared": "read-write"}
    assert await _json(owned, "/-/user/bob/package") == {"bobs": "read-write", "shared": "read-write"}
    assert await _json(owned, "/-/user/nobody/package") == {}
    await _json(owned, "/-/user/$all/package", status=400)


async def test_visibility_says_whether_anonymous_users_may_read(owned: Registry) -> None:
    assert await _json(owned, "/-/package/shared/visibility") == {"public": True}
    assert await _json(owned, "/-/package/@private%2fthing/visibility", "alice") == {"public": False}


async def test_changing_access_per_package_is_refused(owned: Registry) -> None:
    for body in ({"access": "restricted"}, {"publish_requires_tfa": True}):
        resp = await owned.client.post("/-/package/shared/access", json=body, headers=owned.auth("alice"))
        assert resp.status == 400
        assert "[[packages]]" in (await resp.json())["error"]
    assert await _json(owned, "/-/package/shared/visibility") == {"public": True}
