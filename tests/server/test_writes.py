"""Deprecate, star, unpublish, owners and dist-tags, as npm sends them."""

from __future__ import annotations

import pytest

from tests.npmdata import publish_body

from .conftest import Registry


@pytest.fixture
async def foo(registry: Registry) -> Registry:
    for v in ("1.0.0", "1.1.0", "2.0.0"):
        resp = await registry.client.put("/foo", json=publish_body("foo", v), headers=registry.auth("alice"))
        assert resp.status == 201
    return registry


async def _doc(reg: Registry, name: str = "foo") -> dict:
    return await (await reg.client.get(f"/{name}?write=true")).json()  # type: ignore[no-any-return]


async def test_deprecate_and_undeprecate(foo: Registry) -> None:
    doc = await _doc(foo)
    doc["versions"]["1.0.0"]["deprecated"] = "use 2"
    doc["versions"]["1.1.0"]["deprecated"] = "use 2"
    assert (await foo.client.put("/foo", json=doc, headers=foo.auth("alice"))).status == 200
    doc = await _doc(foo)
    assert doc["versions"]["1.0.0"]["deprecated"] == "use 2"
    assert "deprecated" not in doc["versions"]["2.0.0"]
    doc["versions"]["1.0.0"]["deprecated"] = ""
    assert (await foo.client.put("/foo", json=doc, headers=foo.auth("alice"))).status == 200
    doc = await _doc(foo)
    assert "deprecated" not in doc["versions"]["1.0.0"]  # yarn warns even on ""
    assert doc["versions"]["1.1.0"]["deprecated"] == "use 2"


async def test_stale_document_does_not_roll_back(foo: Registry) -> None:
    stale = await _doc(foo)
    assert (await foo.client.put("/foo", json=publish_body("foo", "3.0.0"), headers=foo.auth("alice"))).status == 201
    stale["versions"]["1.0.0"]["deprecated"] = "old"
    stale["dist-tags"] = {}
    assert (await foo.client.put("/foo", json=stale, headers=foo.auth("alice"))).status == 200
    doc = await _doc(foo)
    assert "3.0.0" in doc["versions"] and doc["dist-tags"]["latest"] == "3.0.0"


async def test_star_only_touches_users(foo: Registry) -> None:
    await foo.adduser("bob")
    doc = await _doc(foo)
    resp = await foo.client.put("/foo", json={"_id": "foo", "_rev": doc["_rev"], "users": {"bob": True}}, headers=foo.auth("bob"))
    assert resp.status == 200 and (await resp.json())["ok"] is True
    doc = await _doc(foo)
    assert doc["users"] == {"bob": True}
    assert len(doc["versions"]) == 3


async def test_deprecate_needs_a_maintainer(foo: Registry) -> None:
    await foo.adduser("mallory")
    doc = await _doc(foo)
    doc["versions"]["1.0.0"]["deprecated"] = "pwned"
    assert (await foo.client.put("/foo", json=doc, headers=foo.auth("mallory"))).status == 403
    assert "deprecated" not in (await _doc(foo))["versions"]["1.0.0"]


async def test_unpublish_one_version(foo: Registry) -> None:
    doc = await _doc(foo)
    del doc["versions"]["2.0.0"]
    doc["dist-tags"]["latest"] = "1.1.0"
    doc.pop("_attachments", None)
    resp = await foo.client.put(f"/foo/-rev/{doc['_rev']}", json=doc, headers=foo.auth("alice"))
    assert resp.status == 200
    after = await _doc(foo)
    assert set(after["versions"]) == {"1.0.0", "1.1.0"}
    assert after["dist-tags"]["latest"] == "1.1.0"
    assert "2.0.0" in after["time"]  # the tombstone keeps its time
    tarball = await foo.client.delete(f"/foo/-/foo-2.0.0.tgz/-rev/{after['_rev']}", headers=foo.auth("alice"))
    assert tarball.status == 200
    assert (await foo.client.get("/foo/-/foo-2.0.0.tgz")).status == 404
    published = foo.config.storage.published / "foo"
    assert (published / "foo-2.0.0.tgz").exists()  # files stay until an operator purges


async def test_missing_versions_never_means_delete_all(foo: Registry) -> None:
    doc = await _doc(foo)
    resp = await foo.client.put(
        f"/foo/-rev/{doc['_rev']}",
        json={"_id": "foo", "_rev": doc["_rev"], "maintainers": [{"name": "alice", "email": "a@x"}, {"name": "bob", "email": "b@x"}]},
        headers=foo.auth("alice"),
    )
    assert resp.status == 200
    after = await _doc(foo)
    assert len(after["versions"]) == 3
    assert [m["name"] for m in after["maintainers"]] == ["alice", "bob"]


async def test_unpublish_whole_package(foo: Registry) -> None:
    doc = await _doc(foo)
    await foo.adduser("mallory")
    assert (await foo.client.delete(f"/foo/-rev/{doc['_rev']}", headers=foo.auth("mallory"))).status == 403
    assert (await foo.client.delete(f"/foo/-rev/{doc['_rev']}", headers=foo.auth("alice"))).status == 200
    assert (await foo.client.get("/foo")).status == 404
    assert (await foo.client.get("/foo/-/foo-1.0.0.tgz")).status == 404
    # The numbers stay taken.
    assert (await foo.client.put("/foo", json=publish_body("foo", "1.0.0"), headers=foo.auth("alice"))).status == 409


async def test_owner_add_lets_bob_publish(foo: Registry) -> None:
    await foo.adduser("bob")
    user = await (await foo.client.get("/-/user/org.couchdb.user:bob", headers=foo.auth("alice"))).json()
    doc = await _doc(foo)
    maintainers = doc["maintainers"] + [{"name": user["name"], "email": user["email"]}]
    resp = await foo.client.put(f"/foo/-rev/{doc['_rev']}", json={"_id": "foo", "_rev": doc["_rev"], "maintainers": maintainers}, headers=foo.auth("alice"))
    assert resp.status == 200
    assert (await foo.client.put("/foo", json=publish_body("foo", "4.0.0"), headers=foo.auth("bob"))).status == 201


async def test_dist_tags(foo: Registry) -> None:
    c, auth = foo.client, foo.auth("alice")
    resp = await c.put("/-/package/foo/dist-tags/beta", data=b'"1.1.0"', headers={**auth, "Content-Type": "application/json"})
    assert resp.status == 201 and (await resp.json())["ok"] is True
    assert await (await c.get("/-/package/foo/dist-tags")).json() == {"latest": "2.0.0", "beta": "1.1.0"}
    bogus = await c.put("/-/package/foo/dist-tags/beta", data=b'"9.9.9"', headers={**auth, "Content-Type": "application/json"})
    assert bogus.status == 404 and "error" in await bogus.json()
    assert (await c.delete("/-/package/foo/dist-tags/latest", headers=auth)).status == 400
    assert (await c.delete("/-/package/foo/dist-tags/beta", headers=auth)).status == 200
    assert await (await c.get("/-/package/foo/dist-tags")).json() == {"latest": "2.0.0"}
    assert (await c.put("/-/package/foo/dist-tags/beta", data=b'"1.1.0"', headers={"Content-Type": "application/json"})).status == 401


async def test_search_published(foo: Registry) -> None:
    result = await (await foo.client.get("/-/v1/search?text=foo&size=20")).json()
    assert result["total"] == 1
    pkg = result["objects"][0]["package"]
    assert pkg["name"] == "foo" and pkg["version"] == "2.0.0"
    assert pkg["maintainers"][0]["username"] == "alice"
    empty = await (await foo.client.get("/-/v1/search?text=zzz")).json()
    assert empty["objects"] == [] and empty["total"] == 0
