"""PUT /<name> publish: what npm sends, what must be refused, and that a
refused publish writes nothing."""

from __future__ import annotations

import base64
import os
import copy
import hashlib

import pytest

from tests.npmdata import integrity, make_tarball, publish_body

from server.config import ServerConfig

from .conftest import Registry, RegistryFactory


async def test_publish_then_read_back(registry: Registry) -> None:
    c = registry.client
    resp = await c.put("/foo", json=publish_body("foo", "1.0.0"), headers=registry.auth("alice"))
    assert resp.status == 201
    body = await resp.json()
    assert body["ok"] is True and body["id"] == "foo" and "error" not in body
    doc = await (await c.get("/foo")).json()
    assert doc["dist-tags"] == {"latest": "1.0.0"}
    manifest = doc["versions"]["1.0.0"]
    assert manifest["_npmUser"]["name"] == "alice"
    assert manifest["dist"]["tarball"] == "http://registry.test/foo/-/foo-1.0.0.tgz"
    assert doc["maintainers"][0]["name"] == "alice"
    assert "1.0.0" in doc["time"] and "created" in doc["time"] and "modified" in doc["time"]
    assert doc["_rev"]


async def test_publish_answers_with_the_rev_a_read_then_shows(registry: Registry) -> None:
    c, auth = registry.client, registry.auth("alice")
    for version in ("1.0.0", "1.1.0"):
        resp = await c.put("/@acme%2frev", json=publish_body("@acme/rev", version), headers=auth)
        assert resp.status == 201
        rev = (await resp.json())["rev"]
        assert rev == (await (await c.get("/@acme%2frev")).json())["_rev"]
    assert rev.startswith("2-")


async def test_published_tarball_is_served_byte_identical(registry: Registry) -> None:
    data = make_tarball("@acme/widget", "2.0.0")
    body = publish_body("@acme/widget", "2.0.0", tarball=data)
    resp = await registry.client.put("/@acme%2fwidget", json=body, headers=registry.auth("alice"))
    assert resp.status == 201
    doc = await (await registry.client.get("/@acme%2Fwidget")).json()
    url = doc["versions"]["2.0.0"]["dist"]["tarball"]
    assert url == "http://registry.test/@acme/widget/-/widget-2.0.0.tgz"
    tgz = await registry.client.get("/@acme/widget/-/widget-2.0.0.tgz")
    assert tgz.status == 200
    assert "Content-Encoding" not in tgz.headers
    assert tgz.headers["Content-Type"] == "application/octet-stream"
    assert await tgz.read() == data


async def test_publish_with_tag_keeps_latest_and_adds_latest_when_missing(registry: Registry) -> None:
    c, auth = registry.client, registry.auth("alice")
    assert (await c.put("/bar", json=publish_body("bar", "1.0.0-beta.1", tags={"beta": "1.0.0-beta.1"}), headers=auth)).status == 201
    tags = await (await c.get("/-/package/bar/dist-tags")).json()
    # No latest existed, so the first publish becomes latest (as Verdaccio and cnpm do).
    assert tags == {"beta": "1.0.0-beta.1", "latest": "1.0.0-beta.1"}
    assert (await c.put("/bar", json=publish_body("bar", "1.0.0"), headers=auth)).status == 201
    assert (await c.put("/bar", json=publish_body("bar", "2.0.0-rc.1", tags={"next": "2.0.0-rc.1"}), headers=auth)).status == 201
    tags = await (await c.get("/-/package/bar/dist-tags")).json()
    assert tags == {"beta": "1.0.0-beta.1", "latest": "1.0.0", "next": "2.0.0-rc.1"}


async def test_republish_is_refused_and_bytes_stay(registry: Registry) -> None:
    c, auth = registry.client, registry.auth("alice")
    first = make_tarball("foo", "1.0.0")
    assert (await c.put("/foo", json=publish_body("foo", "1.0.0", tarball=first), headers=auth)).status == 201
    other = make_tarball("foo", "1.0.0", extra_files={"index.js": b"evil()"})
    resp = await c.put("/foo", json=publish_body("foo", "1.0.0", tarball=other), headers=auth)
    assert resp.status == 409
    assert "cannot publish over the previously published versions: 1.0.0" in (await resp.json())["error"]
    assert await (await c.get("/foo/-/foo-1.0.0.tgz")).read() == first


async def test_unpublished_version_cannot_be_published_again(registry: Registry) -> None:
    c, auth = registry.client, registry.auth("alice")
    for v in ("1.0.0", "1.0.1"):
        assert (await c.put("/foo", json=publish_body("foo", v), headers=auth)).status == 201
    doc = await (await c.get("/foo?write=true")).json()
    del doc["versions"]["1.0.1"]
    doc["dist-tags"]["latest"] = "1.0.0"
    assert (await c.put(f"/foo/-rev/{doc['_rev']}", json=doc, headers=auth)).status == 200
    resp = await c.put("/foo", json=publish_body("foo", "1.0.1"), headers=auth)
    assert resp.status == 409


async def test_publish_requires_authentication(registry: Registry) -> None:
    resp = await registry.client.put("/foo", json=publish_body("foo", "1.0.0"))
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error" in await resp.json()
    assert (await registry.client.get("/foo")).status == 404


async def test_only_maintainers_publish_new_versions(registry: Registry) -> None:
    c = registry.client
    await registry.adduser("mallory")
    assert (await c.put("/foo", json=publish_body("foo", "1.0.0"), headers=registry.auth("alice"))).status == 201
    resp = await c.put("/foo", json=publish_body("foo", "1.0.1"), headers=registry.auth("mallory"))
    assert resp.status == 403
    assert "1.0.1" not in (await (await c.get("/foo")).json())["versions"]


def _tamper(body: dict, how: str) -> dict:
    body = copy.deepcopy(body)
    (key,) = body["_attachments"]
    att = body["_attachments"][key]
    version = body["versions"]["1.0.0"]
    if how == "length":
        att["length"] += 1
    elif how == "base64":
        att["data"] = "!!not base64!!"
    elif how == "integrity":
        version["dist"]["integrity"] = integrity(b"something else")
    elif how == "shasum":
        version["dist"]["shasum"] = hashlib.sha1(b"x").hexdigest()
    elif how == "two-versions":
        body["versions"]["1.0.1"] = dict(version, version="1.0.1")
    elif how == "bad-semver":
        body["versions"] = {"1.0": dict(version, version="1.0")}
    elif how == "name-mismatch":
        version["name"] = "other"
    elif how == "attachment-name":
        body["_attachments"] = {"../../evil-1.0.0.tgz": att}
    elif how == "extra-attachment":
        body["_attachments"]["other-9.9.9.tgz"] = att
    elif how == "not-a-tar":
        data = b"plain bytes, not a tarball"
        att["data"] = base64.b64encode(data).decode()
        att["length"] = len(data)
        version["dist"]["integrity"] = integrity(data)
        version["dist"]["shasum"] = hashlib.sha1(data).hexdigest()
    elif how == "tag-is-version":
        body["dist-tags"] = {"1.2.3": "1.0.0"}
    elif how == "tag-elsewhere":
        body["dist-tags"] = {"latest": "9.9.9"}
    elif how == "too-deep":  # stored, its packument could never be served again
        deep: object = 1
        for _ in range(252):  # the manifest alone serializes; the packument, 2 levels deeper, would not
            deep = [deep]
        version["exports"] = deep
    return body


@pytest.mark.parametrize(
    "how",
    ["length", "base64", "integrity", "shasum", "two-versions", "bad-semver", "name-mismatch",
     "attachment-name", "extra-attachment", "not-a-tar", "tag-is-version", "tag-elsewhere", "too-deep"],
)
async def test_bad_publish_is_a_4xx_and_writes_nothing(registry: Registry, how: str) -> None:
    body = _tamper(publish_body("foo", "1.0.0"), how)
    resp = await registry.client.put("/foo", json=body, headers=registry.auth("alice"))
    assert 400 <= resp.status < 500, (how, resp.status)
    assert isinstance((await resp.json())["error"], str)
    assert (await registry.client.get("/foo")).status == 404
    assert (await registry.client.get("/foo/-/foo-1.0.0.tgz")).status == 404


@pytest.mark.parametrize(
    "path",
    ["/..", "/%2e%2e", "/foo%2f..%2f..%2fetc", "/__proto__", "/a%5cb", "/.hidden", "/UPPER",
     "/@acme%2f..", "/node_modules", "/fs"],
)
async def test_bad_names_are_refused(registry: Registry, path: str) -> None:
    raw = path.lstrip("/")
    resp = await registry.client.put(path, json=publish_body(raw, "1.0.0"), headers=registry.auth("alice"))
    assert 400 <= resp.status < 500
    assert "error" in await resp.json()
    published = registry.config.storage.published
    assert [p.name for p in published.iterdir() if not p.name.startswith(".")] == []


async def test_malformed_json_is_400(registry: Registry) -> None:
    for raw in (b"{", b"[]", b"\"str\"", b"{" * 5000 + b"}" * 5000):
        resp = await registry.client.put(
            "/foo", data=raw, headers={**registry.auth("alice"), "Content-Type": "application/json"}
        )
        assert resp.status == 400, raw[:10]
        assert "error" in await resp.json()


async def test_body_over_the_limit_is_413(registry_factory: RegistryFactory) -> None:
    reg = await registry_factory(server=ServerConfig(public_url="http://registry.test", max_body_bytes=4096))
    await reg.adduser("alice")
    body = publish_body("big", "1.0.0", tarball=make_tarball("big", "1.0.0", extra_files={"blob": os.urandom(8192)}))
    resp = await reg.client.put("/big", json=body, headers=reg.auth("alice"))
    assert resp.status == 413
    assert "error" in await resp.json()
    assert (await reg.client.get("/big")).status == 404


async def test_install_script_and_shrinkwrap_are_derived(registry: Registry) -> None:
    data = make_tarball("gyp", "1.0.0", extra_files={"binding.gyp": b"{}", "npm-shrinkwrap.json": b"{}"})
    resp = await registry.client.put("/gyp", json=publish_body("gyp", "1.0.0", tarball=data), headers=registry.auth("alice"))
    assert resp.status == 201
    abbreviated = await (
        await registry.client.get("/gyp", headers={"Accept": "application/vnd.npm.install-v1+json"})
    ).json()
    v = abbreviated["versions"]["1.0.0"]
    assert v["hasInstallScript"] is True and v["_hasShrinkwrap"] is True
