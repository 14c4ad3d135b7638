"""Whose name is it: proxied, private and overlaid names through the whole
app, with the fake upstream's request log as the witness."""

from __future__ import annotations

from overlaystore.policy import DEFAULT_RULE, NamePolicy, PackageRule, ProxyMode
from tests.fakes.upstream import FakeUpstream
from tests.npmdata import publish_body

from .conftest import Registry, RegistryFactory


async def test_proxied_package_and_tarball(registry_factory: RegistryFactory, fake_upstream: FakeUpstream) -> None:
    fake_upstream.add_package("left-pad", ["1.0.0", "1.1.0"])
    reg = await registry_factory(fake_upstream.url)
    doc = await (await reg.client.get("/left-pad")).json()
    assert list(doc["versions"]) == ["1.0.0", "1.1.0"]
    url = doc["versions"]["1.1.0"]["dist"]["tarball"]
    assert url == "http://registry.test/left-pad/-/left-pad-1.1.0.tgz"
    tgz = await reg.client.get("/left-pad/-/left-pad-1.1.0.tgz")
    assert tgz.status == 200
    assert await tgz.read() == fake_upstream.tarball("left-pad", "1.1.0")
    # Served from the cache now: no second upstream tarball request.
    again = await reg.client.get("/left-pad/-/left-pad-1.1.0.tgz")
    assert await again.read() == fake_upstream.tarball("left-pad", "1.1.0")
    assert fake_upstream.count(fake_upstream.tarball_path("left-pad", "1.1.0")) == 1


async def test_first_publish_of_an_upstream_name_is_refused(
    registry_factory: RegistryFactory, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.add_package("lodash", ["4.17.21"])
    reg = await registry_factory(fake_upstream.url)
    await reg.adduser("alice")
    resp = await reg.client.put("/lodash", json=publish_body("lodash", "4.17.21-acme.1"), headers=reg.auth("alice"))
    assert resp.status == 403
    message = (await resp.json())["error"]
    assert "overlay" in message and 'pattern = "lodash"' in message
    doc = await (await reg.client.get("/lodash")).json()
    assert list(doc["versions"]) == ["4.17.21"]


async def test_overlay_rule_composes_published_over_upstream(
    registry_factory: RegistryFactory, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.add_package("lodash", ["4.17.20", "4.17.21"])
    policy = NamePolicy((PackageRule("lodash", proxy=ProxyMode.OVERLAY), DEFAULT_RULE))
    reg = await registry_factory(fake_upstream.url, policy=policy)
    await reg.adduser("alice")
    body = publish_body("lodash", "4.17.21-acme.1", tags={"acme": "4.17.21-acme.1"})
    resp = await reg.client.put("/lodash", json=body, headers=reg.auth("alice"))
    assert resp.status == 201
    doc = await (await reg.client.get("/lodash")).json()
    assert (await resp.json())["rev"] == doc["_rev"]  # the composed document's, upstream part included
    assert list(doc["versions"]) == ["4.17.20", "4.17.21-acme.1", "4.17.21"]
    assert doc["dist-tags"]["latest"] == "4.17.21"
    assert doc["dist-tags"]["acme"] == "4.17.21-acme.1"
    assert doc["versions"]["4.17.21-acme.1"]["_npmUser"]["name"] == "alice"


async def test_private_name_never_consults_upstream(
    registry_factory: RegistryFactory, fake_upstream: FakeUpstream
) -> None:
    reg = await registry_factory(fake_upstream.url)
    await reg.adduser("alice")
    assert (await reg.client.put("/internal-tool", json=publish_body("internal-tool", "1.0.0"), headers=reg.auth("alice"))).status == 201
    # An attacker now publishes the same name upstream with a higher version.
    fake_upstream.add_package("internal-tool", ["99.0.0"])
    fake_upstream.clear_log()
    doc = await (await reg.client.get("/internal-tool")).json()
    assert list(doc["versions"]) == ["1.0.0"]
    assert (await reg.client.get("/internal-tool/-/internal-tool-99.0.0.tgz")).status == 404
    assert [r for r in fake_upstream.requests if "internal-tool" in r.path] == []


async def test_never_proxy_scope(registry_factory: RegistryFactory, fake_upstream: FakeUpstream) -> None:
    fake_upstream.add_package("@acme/secret", ["1.0.0"])
    policy = NamePolicy((PackageRule("@acme/*", proxy=ProxyMode.NEVER), DEFAULT_RULE))
    reg = await registry_factory(fake_upstream.url, policy=policy)
    fake_upstream.clear_log()
    assert (await reg.client.get("/@acme%2fsecret")).status == 404
    assert fake_upstream.requests == []


async def test_read_access_rules(registry_factory: RegistryFactory) -> None:
    policy = NamePolicy((PackageRule("@acme/*", access=("$authenticated",), proxy=ProxyMode.NEVER), DEFAULT_RULE))
    reg: Registry = await registry_factory(policy=policy)
    await reg.adduser("alice")
    assert (await reg.client.put("/@acme%2fw", json=publish_body("@acme/w", "1.0.0"), headers=reg.auth("alice"))).status == 201
    for path in ("/@acme%2fw", "/@acme/w/1.0.0", "/@acme/w/-/w-1.0.0.tgz"):
        assert (await reg.client.get(path)).status == 401, path
        assert (await reg.client.get(path, headers=reg.auth("alice"))).status == 200, path
