"""Generated hostile input against ``/-/package/<name>/dist-tags[/<tag>]``.

Every example is a request that must not change anything: a bad tag or
package name in the path (sent byte-exact, so ``..`` and backslashes reach
the server as written), a body that is not the JSON string of a live
version, or a caller without the publish right. The answer is a 4xx with an
npm-style body, no file changes, and the server keeps answering.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from overlaystore.errors import InvalidInput
from server.publish import check_tag_name
from tests.server.conftest import Registry

from .conftest import Actors, Results, make_actors
from .helpers import Tree, assert_responsive, check_error_body, raw_request
from .strategies import TRAVERSAL, as_server_sees, hostile_name_segments, json_values, raw_garbage, url_segment, wrong_types

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
FUZZ_SLOW = settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))

LIVE = ("1.0.0", "1.1.0")
WHO = ["alice", "bob", "anonymous", "readonly"]

tag_segments = st.one_of(
    st.sampled_from(["latest", "beta", "next", "1.0.0", "v1.0.0", "__proto__", "constructor", "prototype"]),
    st.lists(st.one_of(st.sampled_from(TRAVERSAL), st.text(min_size=1, max_size=8)), min_size=1, max_size=3)
    .map("".join).map(url_segment),
)

bodies = st.one_of(
    raw_garbage,
    st.one_of(json_values, wrong_types, st.sampled_from(list(LIVE) + ["9.9.9", "1.0", "latest", ""])).map(
        lambda v: json.dumps(v).encode()
    ),
)


@pytest.fixture
async def tagged(fuzz_registry: Registry) -> Actors:
    return await make_actors(fuzz_registry)


def _valid_tag(segment: str) -> bool:
    if "/" in segment.split("?", 1)[0].split("#", 1)[0]:
        return False  # another route
    try:
        check_tag_name(as_server_sees(segment))
    except InvalidInput:
        return False
    return True


def _is_live_version(body: bytes) -> bool:
    try:
        return json.loads(body) in LIVE
    except (ValueError, RecursionError):
        return False


async def _case(actors: Actors, results: Results, method: str, tag: str, body: bytes, who: str,
                package: str = "foo") -> None:
    if who == "alice" and package == "foo" and _valid_tag(tag):
        # A maintainer setting a valid tag to a live version is a real change
        # (deleting can only hit latest, which is refused, or unknown tags).
        assume(not (method in ("PUT", "POST") and _is_live_version(body)))
    root = Tree.of(actors.config.storage.published.parent.parent)
    server = actors.client.server
    resp = await raw_request(
        server.host, server.port, method, f"/-/package/{package}/dist-tags/{tag}", body=body,
        headers={**actors.auth(who), "Content-Type": "application/json"},
    )
    assert 400 <= resp.status < 500, (method, tag, body[:80], who, resp.status, resp.body[:300])
    check_error_body(resp.status, resp.content_type, resp.body)
    results.tally.add(f"{method} /-/package/{{name}}/dist-tags/{{tag}}", resp.status)
    root.assert_unchanged((method, tag, who))
    tags = await (await actors.client.get("/-/package/foo/dist-tags")).json()
    assert tags == {"latest": "1.1.0"}
    await assert_responsive(actors.client)


@FUZZ
@given(method=st.sampled_from(["PUT", "POST", "DELETE"]), tag=tag_segments, body=bodies, who=st.sampled_from(WHO))
async def test_hostile_dist_tag_writes_change_nothing(
    tagged: Actors, security_results: Results, method: str, tag: str, body: bytes, who: str
) -> None:
    await _case(tagged, security_results, method, tag, body, who)


@pytest.mark.slow
@FUZZ_SLOW
@given(method=st.sampled_from(["PUT", "POST", "DELETE"]), tag=tag_segments, body=bodies, who=st.sampled_from(WHO))
async def test_hostile_dist_tag_writes_change_nothing_slow(
    tagged: Actors, security_results: Results, method: str, tag: str, body: bytes, who: str
) -> None:
    await _case(tagged, security_results, method, tag, body, who)


@FUZZ
@given(method=st.sampled_from(["GET", "PUT", "DELETE"]), package=hostile_name_segments,
       version=st.sampled_from(LIVE), who=st.sampled_from(WHO))
async def test_hostile_package_names_in_dist_tag_paths(
    tagged: Actors, security_results: Results, method: str, package: str, version: str, who: str
) -> None:
    assume(as_server_sees(package) != "foo")
    root = Tree.of(tagged.config.storage.published.parent.parent)
    server = tagged.client.server
    path = f"/-/package/{package}/dist-tags" + ("" if method == "GET" else "/beta")
    resp = await raw_request(server.host, server.port, method, path, body=json.dumps(version).encode(),
                             headers={**tagged.auth(who), "Content-Type": "application/json"})
    assert 400 <= resp.status < 500, (method, package, resp.status, resp.body[:300])
    check_error_body(resp.status, resp.content_type, resp.body)
    security_results.tally.add(f"{method} /-/package/{{name}}/dist-tags (hostile names)", resp.status)
    root.assert_unchanged((method, package))
    await assert_responsive(tagged.client)


async def test_prototype_keys_are_not_tags(tagged: Actors, security_results: Results) -> None:
    """``__proto__``/``constructor``/``prototype`` as tag names would be
    harmless here but not in every JavaScript client that reads them back
    (``Object.assign`` of the dist-tags object): refused."""
    for tag in ("__proto__", "constructor", "prototype"):
        resp = await tagged.client.put(f"/-/package/foo/dist-tags/{tag}", json="1.0.0", headers=tagged.auth("alice"))
        assert resp.status == 400, (tag, resp.status)
        check_error_body(resp.status, resp.content_type, await resp.read())
        security_results.tally.add("PUT /-/package/{name}/dist-tags/{tag}", resp.status)
    assert await (await tagged.client.get("/-/package/foo/dist-tags")).json() == {"latest": "1.1.0"}
