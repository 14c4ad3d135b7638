"""GET of packuments: representations, ETag/304, gzip, scoped spellings,
version manifests, and in-process coherence (a write shows at once)."""

from __future__ import annotations

import gzip
from typing import Any

import pytest

from tests.npmdata import publish_body

from .conftest import Registry

CORGI = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"


@pytest.fixture
async def published(registry: Registry) -> Registry:
    for name in ("foo", "@acme/widget"):
        body = publish_body(name, "1.0.0", manifest={"dependencies": {"bar": "^1"}, "scripts": {"test": "x"}})
        resp = await registry.client.put(f"/{name.replace('/', '%2f')}", json=body, headers=registry.auth("alice"))
        assert resp.status == 201
    return registry


async def test_full_and_abbreviated(published: Registry) -> None:
    c = published.client
    full = await c.get("/foo")
    assert full.headers["Content-Type"].startswith("application/json")
    assert "Accept" in full.headers["Vary"]
    doc = await full.json()
    assert doc["versions"]["1.0.0"]["scripts"] == {"test": "x"}
    corgi = await c.get("/foo", headers={"Accept": CORGI})
    assert corgi.headers["Content-Type"].startswith("application/vnd.npm.install-v1+json")
    small = await corgi.json()
    assert set(small) == {"name", "modified", "dist-tags", "versions"}
    assert "scripts" not in small["versions"]["1.0.0"]
    assert small["versions"]["1.0.0"]["dependencies"] == {"bar": "^1"}
    assert full.headers["ETag"] != corgi.headers["ETag"]
    # ?write=true always gets the full document, with _rev.
    write = await (await c.get("/foo?write=true", headers={"Accept": CORGI})).json()
    assert "_rev" in write and "time" in write


@pytest.mark.parametrize("path", ["/@acme%2fwidget", "/@acme%2Fwidget", "/@acme/widget"])
async def test_scoped_spellings(published: Registry, path: str) -> None:
    resp = await published.client.get(path)
    assert resp.status == 200
    assert (await resp.json())["name"] == "@acme/widget"


async def test_etag_and_304(published: Registry) -> None:
    c = published.client
    first = await c.get("/foo")
    etag = first.headers["ETag"]
    again = await c.get("/foo", headers={"If-None-Match": etag})
    assert again.status == 304
    assert again.headers["ETag"] == etag
    assert (await c.get("/foo", headers={"If-None-Match": '"other"'})).status == 200


async def test_gzip_from_the_lru(published: Registry) -> None:
    resp = await published.client.get("/foo", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert resp.headers["Content-Encoding"] == "gzip"
    raw = await resp.read()
    assert b'"name":"foo"' in gzip.decompress(raw)


async def test_publish_is_visible_at_once(published: Registry) -> None:
    c = published.client
    etag = (await c.get("/foo")).headers["ETag"]
    assert (await c.put("/foo", json=publish_body("foo", "1.1.0"), headers=published.auth("alice"))).status == 201
    resp = await c.get("/foo", headers={"If-None-Match": etag})
    assert resp.status == 200
    assert (await resp.json())["dist-tags"]["latest"] == "1.1.0"


async def test_version_manifest_route(published: Registry) -> None:
    c = published.client
    by_version = await (await c.get("/foo/1.0.0")).json()
    by_tag = await (await c.get("/foo/latest")).json()
    assert by_version == by_tag
    assert by_version["dist"]["tarball"] == "http://registry.test/foo/-/foo-1.0.0.tgz"
    scoped = await c.get("/@acme/widget/latest")
    assert (await scoped.json())["version"] == "1.0.0"
    missing = await c.get("/foo/9.9.9")
    assert missing.status == 404 and "error" in await missing.json()


async def test_version_manifest_is_cut_once_per_packument(
    published: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.documents

    cuts: list[str] = []
    cut = server.documents.version_manifest

    def counting(doc: dict[str, Any], spec: str) -> dict[str, Any]:
        cuts.append(spec)
        return cut(doc, spec)

    monkeypatch.setattr(server.documents, "version_manifest", counting)
    c = published.client
    for _ in range(3):
        assert (await (await c.get("/foo/latest")).json())["version"] == "1.0.0"
    assert cuts == ["latest"]
    # A publish makes a new packument: the tag is resolved again, in it.
    assert (await c.put("/foo", json=publish_body("foo", "1.1.0"), headers=published.auth("alice"))).status == 201
    assert (await (await c.get("/foo/latest")).json())["version"] == "1.1.0"
    assert cuts == ["latest", "latest"]


async def test_unknown_package_is_json_404(registry: Registry) -> None:
    for accept in (CORGI, "application/json"):
        resp = await registry.client.get("/nope", headers={"Accept": accept})
        assert resp.status == 404
        assert "error" in await resp.json()


async def test_forwarded_public_url(registry_factory) -> None:  # type: ignore[no-untyped-def]
    from server.config import ServerConfig

    reg = await registry_factory(server=ServerConfig(public_url=""))
    await reg.adduser("alice")
    assert (await reg.client.put("/foo", json=publish_body("foo", "1.0.0"), headers=reg.auth("alice"))).status == 201
    doc = await (
        await reg.client.get("/foo", headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "npm.example.com"})
    ).json()
    assert doc["versions"]["1.0.0"]["dist"]["tarball"] == "https://npm.example.com/foo/-/foo-1.0.0.tgz"


async def test_ping_and_unknown_endpoints(registry: Registry) -> None:
    assert await (await registry.client.get("/-/ping")).json() == {}
    resp = await registry.client.get("/-/all")
    assert resp.status == 404 and "error" in await resp.json()
    audit = await registry.client.post("/-/npm/v1/security/advisories/bulk", json={"foo": ["1.0.0"]})
    assert audit.status == 200 and await audit.json() == {}


async def test_gzip_has_its_own_etag_and_both_revalidate(published: Registry) -> None:
    c = published.client
    plain = await c.get("/foo", headers={"Accept-Encoding": "identity"})
    zipped = await c.get("/foo", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert plain.headers["ETag"] != zipped.headers["ETag"]
    for tag in (plain.headers["ETag"], zipped.headers["ETag"]):
        again = await c.get("/foo", headers={"If-None-Match": tag, "Accept-Encoding": "gzip"})
        assert again.status == 304


async def test_deprecated_in_a_publish_body_is_not_stored(registry: Registry) -> None:
    body = publish_body("dep", "1.0.0", manifest={"deprecated": "sneaky"})
    assert (await registry.client.put("/dep", json=body, headers=registry.auth("alice"))).status == 201
    doc = await (await registry.client.get("/dep")).json()
    assert "deprecated" not in doc["versions"]["1.0.0"]
