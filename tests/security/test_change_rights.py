"""Unpublish, dist-tag changes (and the other package writes) need the
publish right for that package.

For each change npm can make, on an unscoped and a scoped package: an
anonymous caller gets 401 (with a challenge), a logged-in non-maintainer
403, alice's read-only token 403, and a maintainer whom the name rule does
not allow to publish 403; none of them changes a byte. The maintainer and an
administrator then make the same changes successfully, so the refusals are
not an artefact of a broken route.
"""

from __future__ import annotations

from typing import Any

import pytest

from overlaystore.policy import DEFAULT_RULE, NamePolicy, PackageRule
from tests.npmdata import publish_body
from tests.server.conftest import Registry

from .conftest import PASSWORD, Actors, Results
from .helpers import Tree, check_error_body

POLICY = NamePolicy((PackageRule("@acme/*", publish=("alice", "root")), DEFAULT_RULE))


async def _setup(registry_with: Any) -> Actors:
    reg: Registry = await registry_with(policy=POLICY, auth={"admins": ("root",)})
    for user in ("alice", "bob", "carol", "root"):
        await reg.adduser(user, PASSWORD)
    resp = await reg.client.post("/-/npm/v1/tokens", json={"password": PASSWORD, "readonly": True},
                                 headers=reg.auth("alice"))
    actors = Actors(reg, (await resp.json())["token"])
    for name in ("foo", "@acme/w"):
        path = "/" + name.replace("/", "%2f")
        for v in ("1.0.0", "1.1.0", "2.0.0"):
            assert (await reg.client.put(path, json=publish_body(name, v), headers=reg.auth("alice"))).status == 201
        assert (await reg.client.put(f"/-/package{path}/dist-tags/beta", json="1.1.0",
                                     headers=reg.auth("alice"))).status == 201
        # carol becomes a maintainer of both; the @acme rule still does not let her publish.
        doc = await (await reg.client.get(f"{path}?write=true")).json()
        owners = doc["maintainers"] + [{"name": "carol", "email": "carol@example.com"}]
        resp = await reg.client.put(f"{path}/-rev/{doc['_rev']}", json={"_id": name, "_rev": doc["_rev"],
                                                                         "maintainers": owners},
                                    headers=reg.auth("alice"))
        assert resp.status == 200, await resp.text()
    return actors


async def _changes(actors: Actors, name: str, spelling: str) -> list[tuple[str, str, str, Any]]:
    """(what, method, path, body) for every change npm makes to a package."""
    base = name.rpartition("/")[2]
    doc = await (await actors.client.get(f"/{name.replace('/', '%2f')}?write=true")).json()
    rev = doc["_rev"]
    without_2 = {**doc, "versions": {v: m for v, m in doc["versions"].items() if v != "2.0.0"},
                 "dist-tags": {"latest": "1.1.0", "beta": "1.1.0"}}
    deprecated = {**doc, "versions": {v: {**m, "deprecated": "do not use"} for v, m in doc["versions"].items()}}
    return [
        ("unpublish one version", "PUT", f"{spelling}/-rev/{rev}", without_2),
        ("remove a tarball", "DELETE", f"{spelling}/-/{base}-2.0.0.tgz/-rev/{rev}", None),
        ("unpublish the package", "DELETE", f"{spelling}/-rev/{rev}", None),
        ("set a dist-tag (PUT)", "PUT", f"/-/package{spelling}/dist-tags/next", "2.0.0"),
        ("set a dist-tag (POST)", "POST", f"/-/package{spelling}/dist-tags/next", "2.0.0"),
        ("move latest", "PUT", f"/-/package{spelling}/dist-tags/latest", "1.0.0"),
        ("remove a dist-tag", "DELETE", f"/-/package{spelling}/dist-tags/beta", None),
        ("deprecate", "PUT", spelling, deprecated),
        ("change owners", "PUT", f"{spelling}/-rev/{rev}", {"_id": name, "_rev": rev,
                                                            "maintainers": [{"name": "bob", "email": "b@x.y"}]}),
        ("publish a version", "PUT", spelling, publish_body(name, "3.0.0")),
    ]


REFUSED = [("anonymous", 401), ("bob", 403), ("readonly", 403)]
SPELLINGS = [("foo", "/foo"), ("@acme/w", "/@acme%2fw"), ("@acme/w", "/@acme/w")]


@pytest.mark.parametrize(("name", "spelling"), SPELLINGS)
async def test_changes_need_the_publish_right(
    registry_with: Any, security_results: Results, name: str, spelling: str
) -> None:
    actors = await _setup(registry_with)
    refused = list(REFUSED) + ([("carol", 403)] if name.startswith("@acme/") else [])
    changes = await _changes(actors, name, spelling)
    root = Tree.of(actors.config.storage.published.parent)
    tried = 0
    for what, method, path, body in changes:
        # The tarball removal of 2.0.0 only makes sense after the version is
        # gone; for the refused callers it must fail either way.
        for who, expected in refused:
            resp = await actors.client.request(method, path, json=body, headers=actors.auth(who))
            raw = await resp.read()
            assert resp.status == expected, (what, who, resp.status, raw[:200])
            check_error_body(resp.status, resp.content_type, raw)
            if expected == 401:
                assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer")
            security_results.tally.add(f"change rights: {what}", resp.status)
            tried += 1
    root.assert_unchanged(name)
    security_results.detail(f"change rights refused ({name} as {spelling})", tried, "401 anonymous, 403 otherwise; nothing written")


@pytest.mark.parametrize("who", ["alice", "root"])
@pytest.mark.parametrize(("name", "spelling"), SPELLINGS[:2])
async def test_the_maintainer_and_an_administrator_may(
    registry_with: Any, name: str, spelling: str, who: str
) -> None:
    actors = await _setup(registry_with)
    order = ["set a dist-tag (PUT)", "set a dist-tag (POST)", "move latest", "remove a dist-tag", "deprecate",
             "publish a version", "unpublish one version", "remove a tarball", "change owners",
             "unpublish the package"]
    for step in order:
        changes = {what: (method, path, body) for what, method, path, body in await _changes(actors, name, spelling)}
        method, path, body = changes[step]
        if step == "unpublish one version":
            body = {**body, "versions": {v: m for v, m in body["versions"].items() if v != "2.0.0"}}
        if step == "change owners":
            body = {**body, "maintainers": [{"name": who, "email": f"{who}@example.com"}]}
        resp = await actors.client.request(method, path, json=body, headers=actors.auth(who))
        assert resp.status in (200, 201, 204), (step, resp.status, await resp.text())
    assert (await actors.client.get(spelling)).status == 404  # all unpublished at the end
