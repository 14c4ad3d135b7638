"""Who may read what, and whose names the upstream never hears of.

Extends tests/server/test_name_policy.py (which covers the basic private,
never-proxy and overlay cases on the packument and one tarball):

* read rules hold on every representation of a restricted package: the
  three spellings of a scoped name, full / abbreviated / ``?write=true``
  packuments, HEAD, conditional GETs, version manifests by number and by
  tag, the dist-tags list, tarballs, and search;
* they hold for proxied packages too, before any upstream request is made
  and after the tarball is in the cache;
* a private name (published here, fully unpublished here, or under a
  ``proxy = "never"`` rule) causes no upstream request from any endpoint,
  writes and audits included; a cached upstream tarball is never served
  for a name that has become private.
"""

from __future__ import annotations

from typing import Any

import pytest

from overlaystore.policy import DEFAULT_RULE, NamePolicy, PackageRule, ProxyMode
from server.config import UpstreamConfig
from tests.fakes.upstream import FakeUpstream
from tests.npmdata import publish_body
from tests.server.conftest import Registry

from .conftest import PASSWORD, Results
from .helpers import check_error_body

ABBREVIATED = "application/vnd.npm.install-v1+json"


async def _login(reg: Registry, *names: str) -> None:
    for name in names:
        await reg.adduser(name, PASSWORD)


async def _status(reg: Registry, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    resp = await reg.client.request(method, path, headers=headers or {})
    body = await resp.read()
    if resp.status >= 400 and method != "HEAD":
        check_error_body(resp.status, resp.content_type, body)
    return resp.status, body


def _read_paths(scope_pkg: str, version: str) -> list[tuple[str, str, dict[str, str]]]:
    """Every way to read one scoped package: (method, path, extra headers)."""
    scope, pkg = scope_pkg[1:].split("/")
    out: list[tuple[str, str, dict[str, str]]] = []
    for spelled in (f"/@{scope}%2f{pkg}", f"/@{scope}%2F{pkg}", f"/@{scope}/{pkg}"):
        out += [
            ("GET", spelled, {}),
            ("GET", spelled, {"Accept": ABBREVIATED}),
            ("GET", spelled + "?write=true", {}),
            ("GET", spelled, {"If-None-Match": "*"}),
            ("HEAD", spelled, {}),
            ("GET", f"{spelled}/{version}", {}),
            ("GET", f"{spelled}/latest", {}),
            ("GET", f"/-/package{spelled}/dist-tags", {}),
        ]
    for spelled in (f"/@{scope}/{pkg}", f"/@{scope}%2f{pkg}"):
        out += [("GET", f"{spelled}/-/{pkg}-{version}.tgz", {}), ("HEAD", f"{spelled}/-/{pkg}-{version}.tgz", {})]
    return out


async def test_read_rules_hold_on_every_representation(registry_with: Any, security_results: Results) -> None:
    policy = NamePolicy((
        PackageRule("@acme/*", access=("alice",), publish=("alice",), proxy=ProxyMode.NEVER),
        DEFAULT_RULE,
    ))
    reg: Registry = await registry_with(policy=policy)
    await _login(reg, "alice", "bob")
    resp = await reg.client.post("/-/npm/v1/tokens", json={"password": PASSWORD, "readonly": True}, headers=reg.auth("alice"))
    readonly = {"Authorization": f"Bearer {(await resp.json())['token']}"}
    body = publish_body("@acme/w", "1.0.0")
    body["versions"]["1.0.0"]["description"] = "TOP-SECRET-DESCRIPTION"
    assert (await reg.client.put("/@acme%2fw", json=body, headers=reg.auth("alice"))).status == 201
    checked = 0
    for method, path, extra in _read_paths("@acme/w", "1.0.0"):
        anonymous, leaked = await _status(reg, method, path, extra)
        assert anonymous == 401, (method, path, extra, anonymous)
        assert b"TOP-SECRET" not in leaked and b"1.0.0.tgz" not in leaked
        stranger, leaked = await _status(reg, method, path, {**extra, **reg.auth("bob")})
        assert stranger == 403, (method, path, extra, stranger)
        assert b"TOP-SECRET" not in leaked
        for who in (reg.auth("alice"), readonly):
            owner, _ = await _status(reg, method, path, {**extra, **who})
            assert owner in (200, 304), (method, path, extra, owner)
        checked += 1
        security_results.tally.add("read rules (restricted package)", anonymous)
        security_results.tally.add("read rules (restricted package)", stranger)
    # Search shows a package only to those who may read it.
    for who, visible in (({}, False), (reg.auth("bob"), False), (reg.auth("alice"), True)):
        found = await (await reg.client.get("/-/v1/search?text=w", headers=who)).json()
        assert any(o["package"]["name"] == "@acme/w" for o in found["objects"]) is visible, who
    security_results.detail("read rules: representations checked", checked, "anonymous 401, others 403, readers 200")


async def test_read_rules_hold_for_proxied_packages_before_and_after_caching(
    registry_with: Any, fake_upstream: FakeUpstream, security_results: Results
) -> None:
    fake_upstream.add_package("secret-lib", ["1.0.0"])
    fake_upstream.add_package("@ext/lib", ["2.0.0"])
    policy = NamePolicy((
        PackageRule("secret-*", access=("$authenticated",)),
        PackageRule("@ext/*", access=("alice",)),
        DEFAULT_RULE,
    ))
    reg: Registry = await registry_with(fake_upstream.url, policy=policy)
    await _login(reg, "alice", "bob")
    cases = [
        ("secret-lib", "/secret-lib", "/secret-lib/-/secret-lib-1.0.0.tgz", "/secret-lib/1.0.0", ("alice", "bob")),
        ("@ext/lib", "/@ext%2flib", "/@ext/lib/-/lib-2.0.0.tgz", "/@ext/lib/2.0.0", ("alice",)),
    ]
    for name, packument, tarball, manifest, readers in cases:
        paths = [packument, tarball, manifest, f"/-/package{packument}/dist-tags"]
        fake_upstream.clear_log()
        for path in paths:  # nobody has fetched it yet: refused before any upstream request
            assert (await _status(reg, "GET", path))[0] == 401, path
            assert (await _status(reg, "HEAD", path))[0] == 401, path
        assert fake_upstream.requests == [], [r.path for r in fake_upstream.requests]
        # A reader fills the cache ...
        for path in paths:
            assert (await _status(reg, "GET", path, reg.auth(readers[0])))[0] == 200, path
        # ... which opens nothing to anyone else.
        for path in paths:
            assert (await _status(reg, "GET", path))[0] == 401, path
            for user in ("alice", "bob"):
                status, _ = await _status(reg, "GET", path, reg.auth(user))
                assert status == (200 if user in readers else 403), (path, user, status)
            security_results.tally.add("read rules (proxied package)", 401)


async def _no_upstream_mention(fake: FakeUpstream, name: str) -> None:
    base = name.rpartition("/")[2]
    for r in fake.requests:
        text = f"{r.path} {r.raw_path} {r.body.decode('utf-8', 'replace')}"
        assert name not in text and (base + "-") not in r.path, f"the upstream heard of {name}: {r.method} {r.raw_path}"


async def test_a_private_name_never_reaches_the_upstream_from_any_endpoint(
    registry_with: Any, fake_upstream: FakeUpstream, security_results: Results
) -> None:
    reg: Registry = await registry_with(fake_upstream.url)
    await _login(reg, "alice", "bob")
    alice, bob = reg.auth("alice"), reg.auth("bob")
    for v in ("1.0.0", "1.1.0"):
        assert (await reg.client.put("/internal-tool", json=publish_body("internal-tool", v), headers=alice)).status == 201
    # Someone now publishes the name upstream, with a higher version.
    fake_upstream.add_package("internal-tool", ["1.0.0", "99.0.0"])
    fake_upstream.clear_log()
    c = reg.client
    requests: list[tuple[str, str, dict[str, str], Any]] = [
        ("GET", "/internal-tool", {}, None),
        ("GET", "/internal-tool", {"Accept": ABBREVIATED}, None),
        ("GET", "/internal-tool?write=true", alice, None),
        ("HEAD", "/internal-tool", {}, None),
        ("GET", "/internal-tool/1.0.0", {}, None),
        ("GET", "/internal-tool/99.0.0", {}, None),
        ("GET", "/internal-tool/latest", {}, None),
        ("GET", "/-/package/internal-tool/dist-tags", {}, None),
        ("GET", "/internal-tool/-/internal-tool-1.0.0.tgz", {}, None),
        ("GET", "/internal-tool/-/internal-tool-99.0.0.tgz", {}, None),
        ("HEAD", "/internal-tool/-/internal-tool-99.0.0.tgz", {}, None),
        ("PUT", "/-/package/internal-tool/dist-tags/beta", alice, "1.0.0"),
        ("PUT", "/internal-tool", bob, publish_body("internal-tool", "1.2.0")),
        ("PUT", "/internal-tool", alice, publish_body("internal-tool", "1.2.0")),
        ("POST", "/-/npm/v1/security/advisories/bulk", {}, {"internal-tool": ["1.0.0"]}),
    ]
    for method, path, headers, body in requests:
        resp = await c.request(method, path, headers=headers, json=body)
        assert resp.status < 500, (method, path, resp.status)
        if path.endswith("99.0.0.tgz") or path.endswith("/99.0.0"):
            assert resp.status == 404, (path, resp.status)  # not the upstream's version
        security_results.tally.add("private name: every endpoint", resp.status)
    doc = await (await c.get("/internal-tool")).json()
    assert sorted(doc["versions"]) == ["1.0.0", "1.1.0", "1.2.0"]
    await _no_upstream_mention(fake_upstream, "internal-tool")
    security_results.detail("private name: endpoints that reached the upstream", 0, f"of {len(requests)} tried")


async def test_a_fully_unpublished_name_stays_private(
    registry_with: Any, fake_upstream: FakeUpstream
) -> None:
    reg: Registry = await registry_with(fake_upstream.url)
    await _login(reg, "alice")
    assert (await reg.client.put("/tomb", json=publish_body("tomb", "1.0.0"), headers=reg.auth("alice"))).status == 201
    assert (await reg.client.delete("/tomb/-rev/1-x", headers=reg.auth("alice"))).status == 200
    fake_upstream.add_package("tomb", ["1.0.0", "2.0.0"])
    fake_upstream.clear_log()
    for path in ("/tomb", "/tomb/2.0.0", "/tomb/-/tomb-2.0.0.tgz", "/-/package/tomb/dist-tags"):
        assert (await reg.client.get(path)).status == 404, path
    resp = await reg.client.put("/tomb", json=publish_body("tomb", "3.0.0"), headers=reg.auth("alice"))
    assert resp.status == 201  # the owner may publish anew, without asking the upstream
    await _no_upstream_mention(fake_upstream, "tomb")


async def test_a_never_proxy_scope_is_private_before_its_first_publish(
    registry_with: Any, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.add_package("@acme/tool", ["5.0.0"])
    policy = NamePolicy((PackageRule("@acme/*", proxy=ProxyMode.NEVER), DEFAULT_RULE))
    reg: Registry = await registry_with(fake_upstream.url, policy=policy)
    await _login(reg, "alice")
    fake_upstream.clear_log()
    for path in ("/@acme%2ftool", "/@acme/tool", "/@acme/tool/5.0.0", "/@acme/tool/-/tool-5.0.0.tgz",
                 "/-/package/@acme%2ftool/dist-tags"):
        assert (await reg.client.get(path)).status == 404, path
    # The first publish does not ask the upstream whether the name is taken.
    resp = await reg.client.put("/@acme%2ftool", json=publish_body("@acme/tool", "1.0.0"), headers=reg.auth("alice"))
    assert resp.status == 201, await resp.text()
    audit = await reg.client.post("/-/npm/v1/security/advisories/bulk", json={"@acme/tool": ["1.0.0"]})
    assert audit.status == 200
    await _no_upstream_mention(fake_upstream, "@acme/tool")


async def test_a_cached_upstream_tarball_is_not_served_once_the_name_is_private(
    registry_with: Any, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.add_package("handover", ["1.0.0"])
    # max_age 0: the first-publish check asks the upstream again instead of the cached packument.
    upstream = UpstreamConfig(url=fake_upstream.url, retries=0, timeout_s=5, breaker_failures=1000, max_age_s=0)
    reg: Registry = await registry_with(fake_upstream.url, upstream=upstream)
    await _login(reg, "alice")
    assert (await reg.client.get("/handover/-/handover-1.0.0.tgz")).status == 200  # cached now
    fake_upstream.remove_package("handover")  # unpublished upstream; the name is free ...
    resp = await reg.client.put("/handover", json=publish_body("handover", "2.0.0"), headers=reg.auth("alice"))
    assert resp.status == 201, await resp.text()  # ... and taken here
    fake_upstream.clear_log()
    assert (await reg.client.get("/handover/-/handover-1.0.0.tgz")).status == 404
    assert (await reg.client.get("/handover/1.0.0")).status == 404
    assert list((await (await reg.client.get("/handover")).json())["versions"]) == ["2.0.0"]
    await _no_upstream_mention(fake_upstream, "handover")


async def test_audit_forwards_only_names_the_upstream_may_know(
    registry_with: Any, fake_upstream: FakeUpstream
) -> None:
    """``npm audit`` posts every installed name: the private ones are not the
    upstream's business (and its advisories for a same-named public package
    would be about somebody else's code)."""
    reg: Registry = await registry_with(fake_upstream.url)
    await _login(reg, "alice")
    assert (await reg.client.put("/internal-tool", json=publish_body("internal-tool", "1.0.0"), headers=reg.auth("alice"))).status == 201
    fake_upstream.clear_log()
    resp = await reg.client.post("/-/npm/v1/security/advisories/bulk",
                                 json={"internal-tool": ["1.0.0"], "left-pad": ["1.0.0"]})
    assert resp.status == 200
    audits = [r for r in fake_upstream.requests if "advisories" in r.path]
    assert len(audits) == 1 and b"left-pad" in audits[0].body
    await _no_upstream_mention(fake_upstream, "internal-tool")
    # Nothing left to ask about: no request at all.
    fake_upstream.clear_log()
    resp = await reg.client.post("/-/npm/v1/security/advisories/bulk", json={"internal-tool": ["1.0.0"]})
    assert resp.status == 200 and await resp.json() == {}
    assert fake_upstream.requests == []
    for garbage in (b"not json", b"[1, 2]"):
        resp = await reg.client.post("/-/npm/v1/security/advisories/bulk", data=garbage)
        assert resp.status == 200 and await resp.json() == {}
    assert fake_upstream.requests == []


@pytest.mark.parametrize("spelling", ["/@acme%2fw", "/@acme/w"])
async def test_search_hides_restricted_upstream_results(
    registry_with: Any, fake_upstream: FakeUpstream, spelling: str
) -> None:
    fake_upstream.add_package("@acme/w", ["1.0.0"])
    policy = NamePolicy((PackageRule("@acme/*", access=("$authenticated",)), DEFAULT_RULE))
    reg: Registry = await registry_with(fake_upstream.url, policy=policy)
    await _login(reg, "alice")
    assert (await reg.client.get(spelling)).status == 401
    for who, visible in (({}, False), (reg.auth("alice"), True)):
        found = await (await reg.client.get("/-/v1/search?text=w", headers=who)).json()
        names = [o["package"]["name"] for o in found["objects"]]
        assert ("@acme/w" in names) is visible, (who, names)
