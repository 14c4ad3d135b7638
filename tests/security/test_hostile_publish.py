"""Generated hostile input against ``PUT /<name>`` (publish), and the other
package writes that share its body parser.

Properties, for every example:

* the answer is never a 5xx, and an error is npm-shaped (``{"error": str}``,
  JSON, no traceback);
* a body that is wrong where the server must check it (names, version,
  dist, attachments, tags, JSON itself) is a 4xx and writes nothing: every
  file under the registry's storage root is byte-identical afterwards;
* a body that is only odd where the server stores what it is given
  (description, dependencies, scripts, ...) may be accepted, and then the
  package reads back in every representation without a 5xx, with a tarball
  that matches its integrity;
* ``/-/ping`` answers after every example.
"""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import itertools
import json
import os
import tarfile
import time
import zlib
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from overlaystore.errors import InvalidInput
from server.config import ServerConfig
from server.publish import MAX_TARBALL_ENTRIES, check_tag_name
from tests.npmdata import integrity, make_tarball, publish_body
from tests.server.conftest import Registry

from .conftest import PASSWORD, Results
from .helpers import Tree, as_body, assert_responsive, check_error_body, expect_4xx, expect_not_5xx, package_entries, raw_request
from .strategies import (
    TRAVERSAL_TEXT,
    as_server_sees,
    deep_json_bytes,
    hostile_name_segments,
    invalid_new_name,
    json_values,
    raw_garbage,
    wrong_types,
)

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
FUZZ_SLOW = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))

V = "1.0.0"
TARBALL = make_tarball("foo", V)
BASE = publish_body("foo", V, tarball=TARBALL)
KEY = f"foo-{V}.tgz"
SHA1 = hashlib.sha1(TARBALL).hexdigest()


def _root(reg: Registry) -> Tree:
    """Every file under the test's tmp directory: the registry's storage
    (published, cache, auth) and anything a traversal could have put beside it."""
    return Tree.of(reg.config.storage.published.parent.parent)


async def _alice(reg: Registry) -> dict[str, str]:
    if "alice" not in reg.tokens:
        await reg.adduser("alice", PASSWORD)
    return reg.auth("alice")


# ------------------------------------------------------- fields that must be checked


def _set(path: tuple[str, ...]) -> Callable[[dict[str, Any], Any], None]:
    def apply(body: dict[str, Any], value: Any) -> None:
        target = body
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return apply


def _decodes_to_tarball(value: Any) -> bool:
    try:
        return isinstance(value, str) and base64.b64decode(value, validate=True) == TARBALL
    except ValueError:
        return False


def _valid_tags(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    try:
        for tag, target in value.items():
            check_tag_name(tag)
            if target != V:
                return False
    except InvalidInput:
        return False
    return True


#: field -> (setter, "this value would be a valid publish after all").
CHECKED_FIELDS: dict[str, tuple[Callable[[dict[str, Any], Any], None], Callable[[Any], bool]]] = {
    "name": (_set(("name",)), lambda x: x == "foo"),
    "_id": (_set(("_id",)), lambda x: x == "foo"),
    "versions": (_set(("versions",)), lambda x: x == BASE["versions"]),
    "versions[v]": (_set(("versions", V)), lambda x: x == BASE["versions"][V]),
    "versions[v].name": (_set(("versions", V, "name")), lambda x: x == "foo"),
    "versions[v].version": (_set(("versions", V, "version")), lambda x: x == V),
    "versions[v].dist": (_set(("versions", V, "dist")), lambda x: x == BASE["versions"][V]["dist"]),
    "dist.integrity": (_set(("versions", V, "dist", "integrity")), lambda x: x is None or x == integrity(TARBALL)),
    "dist.shasum": (_set(("versions", V, "dist", "shasum")),
                    lambda x: x is None or (isinstance(x, str) and x.lower() == SHA1)),
    "_attachments": (_set(("_attachments",)), lambda x: x == BASE["_attachments"]),
    "_attachments[key]": (_set(("_attachments", KEY)), lambda x: x == BASE["_attachments"][KEY]),
    "attachment.data": (_set(("_attachments", KEY, "data")), _decodes_to_tarball),
    "attachment.length": (_set(("_attachments", KEY, "length")),
                          lambda x: x is None or (type(x) is int and x == len(TARBALL))),
    "dist-tags": (_set(("dist-tags",)), _valid_tags),
    "dist-tags.latest": (_set(("dist-tags", "latest")), lambda x: x == V),
    "dist-tags[key]": (lambda body, key: body.__setitem__("dist-tags", {str(key): V}),
                       lambda x: _valid_tags({str(x): V})),
}

hostile_values = st.one_of(wrong_types, json_values, st.sampled_from(TRAVERSAL_TEXT))


async def _checked_field_case(reg: Registry, results: Results, field: str, value: Any) -> None:
    setter, would_be_valid = CHECKED_FIELDS[field]
    assume(not would_be_valid(value))
    body = copy.deepcopy(BASE)
    setter(body, value)
    headers = {**await _alice(reg), "Content-Type": "application/json"}
    before = _root(reg)
    resp = await reg.client.put("/foo", data=as_body(json.dumps(body)), headers=headers)
    status = await expect_4xx(resp, context=field)
    results.tally.add("PUT /{name} (publish: checked fields)", status)
    before.assert_unchanged(field)
    await assert_responsive(reg.client)


@FUZZ
@given(field=st.sampled_from(sorted(CHECKED_FIELDS)), value=hostile_values)
async def test_publish_with_a_bad_checked_field_is_refused(
    fuzz_registry: Registry, security_results: Results, field: str, value: Any
) -> None:
    await _checked_field_case(fuzz_registry, security_results, field, value)


@pytest.mark.slow
@FUZZ_SLOW
@given(field=st.sampled_from(sorted(CHECKED_FIELDS)), value=hostile_values)
async def test_publish_with_a_bad_checked_field_is_refused_slow(
    fuzz_registry: Registry, security_results: Results, field: str, value: Any
) -> None:
    await _checked_field_case(fuzz_registry, security_results, field, value)


# ------------------------------------------------------- fields stored as given

FREE_FIELDS = [
    "description", "readme", "readmeFilename", "dependencies", "devDependencies", "peerDependencies",
    "optionalDependencies", "peerDependenciesMeta", "bundleDependencies", "scripts", "bin", "directories",
    "engines", "os", "cpu", "libc", "keywords", "license", "author", "maintainers", "repository",
    "funding", "deprecated", "_npmUser", "hasInstallScript", "_hasShrinkwrap", "gitHead", "main",
    "__proto__", "constructor", "dist.tarball", "dist.fileCount", "dist.signatures", "dist.unpackedSize",
    "top:maintainers", "top:time", "top:_rev", "top:readme", "top:users", "top:access", "top:__proto__",
]
_versions = itertools.count(1)


def _apply_free(body: dict[str, Any], version: str, field: str, value: Any) -> None:
    manifest = body["versions"][version]
    if field.startswith("top:"):
        body[field[4:]] = value
    elif field.startswith("dist."):
        manifest["dist"][field[5:]] = value
    else:
        manifest[field] = value


async def _free_field_case(reg: Registry, results: Results, field: str, value: Any) -> None:
    # A fresh name per example: a package's documents are read whole, so one
    # name collecting every odd version would make each example slower.
    n = next(_versions)
    name, version = f"odd{n}", f"2.0.{n}"
    data = make_tarball(name, version)
    body = publish_body(name, version, tarball=data)
    _apply_free(body, version, field, value)
    headers = {**await _alice(reg), "Content-Type": "application/json"}
    before = _root(reg)
    resp = await reg.client.put(f"/{name}", data=as_body(json.dumps(body)), headers=headers)
    status = await expect_not_5xx(resp, context=field)
    results.tally.add("PUT /{name} (publish: stored fields)", status)
    if status >= 400:
        before.assert_unchanged(field)
    else:
        assert status == 201
        await _reads_back(reg, name, version, data)
    await assert_responsive(reg.client)


async def _reads_back(reg: Registry, name: str, version: str, tarball: bytes) -> None:
    c = reg.client
    for accept in ("application/json", "application/vnd.npm.install-v1+json", "*/*"):
        resp = await c.get(f"/{name}", headers={"Accept": accept})
        assert resp.status == 200, (accept, await resp.text())
        doc = await resp.json()
        assert version in doc["versions"]
    manifest = await (await c.get(f"/{name}/{version}")).json()
    assert manifest["dist"]["integrity"] == integrity(tarball)
    assert manifest["dist"]["tarball"].endswith(f"/{name}/-/{name}-{version}.tgz")
    assert (await c.get(f"/{name}?write=true")).status == 200
    assert (await c.get(f"/-/package/{name}/dist-tags")).status == 200
    tgz = await c.get(f"/{name}/-/{name}-{version}.tgz")
    assert tgz.status == 200 and await tgz.read() == tarball
    if int(version.rsplit(".", 1)[1]) % 10 == 0:
        # Search reads every published package: once in a while, or the
        # examples get slower as they accumulate.
        search = await c.get(f"/-/v1/search?text={name}")
        assert search.status == 200, await search.text()


@FUZZ
@given(field=st.sampled_from(FREE_FIELDS), value=hostile_values)
async def test_odd_stored_fields_never_break_the_package(
    fuzz_registry: Registry, security_results: Results, field: str, value: Any
) -> None:
    await _free_field_case(fuzz_registry, security_results, field, value)


@pytest.mark.slow
@pytest.mark.timeout(1200)
@settings(FUZZ_SLOW, max_examples=800)
@given(field=st.sampled_from(FREE_FIELDS), value=hostile_values)
async def test_odd_stored_fields_never_break_the_package_slow(
    fuzz_registry: Registry, security_results: Results, field: str, value: Any
) -> None:
    await _free_field_case(fuzz_registry, security_results, field, value)


# ------------------------------------------------------- names in the URL


async def _name_case(reg: Registry, results: Results, segment: str) -> None:
    decoded = as_server_sees(segment)
    assume(invalid_new_name(decoded))
    body = orjson.dumps(publish_body(decoded, V))
    server = reg.client.server
    published = reg.config.storage.published
    headers = {**await _alice(reg), "Content-Type": "application/json"}
    before = _root(reg)
    resp = await raw_request(server.host, server.port, "PUT", "/" + segment, body=body, headers=headers)
    assert 400 <= resp.status < 500, (segment, resp.status, resp.body[:300])
    check_error_body(resp.status, resp.content_type, resp.body)
    results.tally.add("PUT /{name} (publish: hostile URL names)", resp.status)
    assert package_entries(published) == [], segment
    before.assert_unchanged(segment)
    await assert_responsive(reg.client)


@FUZZ
@given(segment=hostile_name_segments)
async def test_publish_under_a_hostile_url_name_is_refused(
    fuzz_registry: Registry, security_results: Results, segment: str
) -> None:
    await _name_case(fuzz_registry, security_results, segment)


@pytest.mark.slow
@FUZZ_SLOW
@given(segment=hostile_name_segments)
async def test_publish_under_a_hostile_url_name_is_refused_slow(
    fuzz_registry: Registry, security_results: Results, segment: str
) -> None:
    await _name_case(fuzz_registry, security_results, segment)


# ------------------------------------------------------- attachment names

attachment_names = st.one_of(
    st.builds(
        lambda pre, tok, post: pre + tok + post,
        st.sampled_from(["", "foo", "foo-", "../", "@acme/", "/", "./"]),
        st.sampled_from(TRAVERSAL_TEXT),
        st.sampled_from(["", KEY, "-1.0.0.tgz", ".tgz", "/" + KEY, "\x00.tgz", "foo-1.0.0.tgz.tgz"]),
    ),
    st.text(max_size=40).map(lambda s: s + ".tgz"),
    st.sampled_from([
        "../../foo-1.0.0.tgz", "..%2f..%2ffoo-1.0.0.tgz", "foo-1.0.0.tgz\x00", "foo-1.0.0.tgz/..",
        "..\\foo-1.0.0.tgz", "foo\u2215..-1.0.0.tgz", "FOO-1.0.0.tgz", " foo-1.0.0.tgz", "foo-1.0.0.TGZ",
        "foo-01.0.0.tgz", "foo-v1.0.0.tgz", "foo-1.0.0+build.tgz", "foo-2.0.0.tgz", "bar-1.0.0.tgz",
        "foo-1.0.0.sigstore", "foo-2.0.0.sigstore", "__proto__", "constructor", "",
    ]),
)


async def _attachment_case(reg: Registry, results: Results, key: str, keep_original: bool) -> None:
    assume(key != KEY)
    assume(not (keep_original and key == f"foo-{V}.sigstore"))  # npm publish --provenance: valid
    body = copy.deepcopy(BASE)
    attachment = body["_attachments"][KEY]
    if not keep_original:
        del body["_attachments"][KEY]
    body["_attachments"][key] = attachment
    headers = {**await _alice(reg), "Content-Type": "application/json"}
    before = _root(reg)
    resp = await reg.client.put("/foo", data=as_body(json.dumps(body)), headers=headers)
    status = await expect_4xx(resp, context=key)
    results.tally.add("PUT /{name} (publish: attachment names)", status)
    before.assert_unchanged(key)
    await assert_responsive(reg.client)


@FUZZ
@given(key=attachment_names, keep_original=st.booleans())
async def test_hostile_attachment_names_are_refused(
    fuzz_registry: Registry, security_results: Results, key: str, keep_original: bool
) -> None:
    await _attachment_case(fuzz_registry, security_results, key, keep_original)


@pytest.mark.slow
@FUZZ_SLOW
@given(key=attachment_names, keep_original=st.booleans())
async def test_hostile_attachment_names_are_refused_slow(
    fuzz_registry: Registry, security_results: Results, key: str, keep_original: bool
) -> None:
    await _attachment_case(fuzz_registry, security_results, key, keep_original)


def _other_version_attachments() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    other = make_tarball("foo", "2.0.0")
    b = copy.deepcopy(BASE)
    b["_attachments"] = publish_body("foo", "2.0.0", tarball=other)["_attachments"]
    cases.append(("only another version's tarball", b))
    b = copy.deepcopy(BASE)
    b["_attachments"].update(publish_body("foo", "2.0.0", tarball=other)["_attachments"])
    cases.append(("an extra tarball for a version not in the body", b))
    b = copy.deepcopy(BASE)
    b["_attachments"]["foo-2.0.0.sigstore"] = {"data": "{}", "content_type": "application/vnd.dev.sigstore.bundle+json"}
    cases.append(("a provenance bundle for a version not in the body", b))
    b = copy.deepcopy(BASE)
    b["versions"]["2.0.0"] = dict(b["versions"][V], version="2.0.0")
    b["_attachments"].update(publish_body("foo", "2.0.0", tarball=other)["_attachments"])
    cases.append(("two versions, two tarballs", b))
    b = copy.deepcopy(BASE)
    b["versions"] = {"2.0.0": dict(b["versions"][V], version="2.0.0")}
    cases.append(("the tarball of 1.0.0 under version 2.0.0", b))
    b = copy.deepcopy(BASE)
    b["_attachments"] = {}
    cases.append(("no attachments at all", b))
    return cases


@pytest.mark.parametrize(("what", "body"), _other_version_attachments(), ids=lambda x: x if isinstance(x, str) else "")
async def test_attachments_for_versions_not_in_the_body_are_refused(
    fuzz_registry: Registry, security_results: Results, what: str, body: dict[str, Any]
) -> None:
    headers = await _alice(fuzz_registry)
    before = _root(fuzz_registry)
    resp = await fuzz_registry.client.put("/foo", json=body, headers=headers)
    security_results.tally.add("PUT /{name} (publish: attachments for other versions)", await expect_4xx(resp, context=what))
    before.assert_unchanged(what)


# ------------------------------------------------------- duplicate keys (raw JSON)


def _raw(obj: Any) -> str:
    return json.dumps(obj)


def _duplicate_key_bodies() -> list[tuple[str, str]]:
    """Bodies that name a key twice. JSON parsers disagree on which one wins
    (first, last, error), so a proxy or scanner in front of the registry may
    have checked a different tarball than the one stored: refuse them."""
    good = BASE["_attachments"][KEY]
    evil_bytes = make_tarball("foo", V, extra_files={"index.js": b"evil()"})
    evil = {"content_type": "application/octet-stream", "data": base64.b64encode(evil_bytes).decode(),
            "length": len(evil_bytes)}
    manifest = BASE["versions"][V]
    evil_manifest = dict(manifest, dist=dict(manifest["dist"], integrity=integrity(evil_bytes),
                                             shasum=hashlib.sha1(evil_bytes).hexdigest()))
    head = f'{{"_id": "foo", "name": "foo", "dist-tags": {{"latest": "{V}"}}, '
    cases = [
        ("two attachments under one key, good last",
         head + f'"versions": {_raw(BASE["versions"])}, "_attachments": {{"{KEY}": {_raw(evil)}, "{KEY}": {_raw(good)}}}}}'),
        ("two attachments under one key, good first",
         head + f'"versions": {_raw(BASE["versions"])}, "_attachments": {{"{KEY}": {_raw(good)}, "{KEY}": {_raw(evil)}}}}}'),
        ("two _attachments members",
         head + f'"versions": {_raw(BASE["versions"])}, "_attachments": {{"{KEY}": {_raw(evil)}}}, '
                f'"_attachments": {{"{KEY}": {_raw(good)}}}}}'),
        ("one version twice",
         head + f'"versions": {{"{V}": {_raw(evil_manifest)}, "{V}": {_raw(manifest)}}}, '
                f'"_attachments": {_raw(BASE["_attachments"])}}}'),
        ("two versions members",
         head + f'"versions": {_raw({V: evil_manifest})}, "versions": {_raw(BASE["versions"])}, '
                f'"_attachments": {_raw(BASE["_attachments"])}}}'),
        ("name twice",
         f'{{"name": "other", "name": "foo", "_id": "foo", "dist-tags": {{"latest": "{V}"}}, '
         f'"versions": {_raw(BASE["versions"])}, "_attachments": {_raw(BASE["_attachments"])}}}'),
        ("integrity twice",
         head + f'"versions": {{"{V}": {{"name": "foo", "version": "{V}", "dist": {{'
                f'"integrity": "{integrity(evil_bytes)}", "integrity": "{integrity(TARBALL)}", '
                f'"tarball": "http://127.0.0.1:4873/foo/-/{KEY}"}}}}}}, '
                f'"_attachments": {_raw(BASE["_attachments"])}}}'),
        ("dist-tags twice",
         f'{{"_id": "foo", "name": "foo", "dist-tags": {{"latest": "{V}", "latest": "{V}"}}, '
         f'"versions": {_raw(BASE["versions"])}, "_attachments": {_raw(BASE["_attachments"])}}}'),
    ]
    return cases


@pytest.mark.parametrize(("what", "raw"), _duplicate_key_bodies(), ids=lambda x: x if len(x) < 60 else "")
async def test_duplicate_keys_are_refused(
    fuzz_registry: Registry, security_results: Results, what: str, raw: str
) -> None:
    json.loads(raw)  # the test body itself is well-formed JSON
    headers = {**await _alice(fuzz_registry), "Content-Type": "application/json"}
    before = _root(fuzz_registry)
    resp = await fuzz_registry.client.put("/foo", data=as_body(raw), headers=headers)
    status = await expect_4xx(resp, context=what)
    security_results.tally.add("PUT /{name} (publish: duplicate keys)", status)
    assert "duplicate" in (await resp.json())["error"]
    before.assert_unchanged(what)


# ------------------------------------------------------- raw bodies on every write route

WRITE_ROUTES = [
    ("PUT", "/newpkg", "PUT /{name} (new)"),
    ("PUT", "/foo", "PUT /{name} (existing)"),
    ("PUT", "/foo/-rev/1-abc", "PUT /{name}/-rev/{rev}"),
    ("PUT", "/-/package/foo/dist-tags/beta", "PUT /-/package/{name}/dist-tags/{tag}"),
    ("POST", "/-/package/foo/dist-tags/beta", "POST /-/package/{name}/dist-tags/{tag}"),
    ("PUT", "/-/user/org.couchdb.user:carol", "PUT /-/user/org.couchdb.user:{user}"),
    ("PUT", "/-/user/org.couchdb.user:alice/-rev/1-x", "PUT /-/user/org.couchdb.user:{user}/-rev/{rev}"),
    ("POST", "/-/npm/v1/tokens", "POST /-/npm/v1/tokens"),
    ("POST", "/-/v1/login", "POST /-/v1/login"),
]


async def _garbage_case(reg: Registry, results: Results, route: tuple[str, str, str], raw: bytes) -> None:
    method, path, label = route
    headers = {**await _alice(reg), "Content-Type": "application/json"}
    if not (reg.config.storage.published / "foo").exists():
        resp = await reg.client.put("/foo", json=BASE, headers=headers)
        assert resp.status == 201
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    before = _root(reg)
    resp = await reg.client.request(method, path, data=as_body(raw), headers=headers)
    status = await expect_not_5xx(resp, context=(label, raw[:80]))
    results.tally.add(label + " (raw bodies)", status)
    if not isinstance(parsed, dict):
        assert 400 <= status < 500, (label, raw[:80], status)
    if status >= 400 or not isinstance(parsed, dict):
        before.assert_unchanged((label, raw[:80]))
    await assert_responsive(reg.client)


@FUZZ
@given(route=st.sampled_from(WRITE_ROUTES), raw=raw_garbage)
async def test_garbage_bodies_on_write_routes(
    fuzz_registry: Registry, security_results: Results, route: tuple[str, str, str], raw: bytes
) -> None:
    await _garbage_case(fuzz_registry, security_results, route, raw)


@pytest.mark.slow
@FUZZ_SLOW
@given(route=st.sampled_from(WRITE_ROUTES), raw=raw_garbage)
async def test_garbage_bodies_on_write_routes_slow(
    fuzz_registry: Registry, security_results: Results, route: tuple[str, str, str], raw: bytes
) -> None:
    await _garbage_case(fuzz_registry, security_results, route, raw)


@pytest.mark.parametrize("depth", [1023, 1024, 1025, 5000, 100_000])
@pytest.mark.parametrize("kind", ["arrays", "objects", "versions"])
async def test_deeply_nested_json(fuzz_registry: Registry, security_results: Results, depth: int, kind: str) -> None:
    resp = await fuzz_registry.client.put("/foo", json=BASE, headers=await _alice(fuzz_registry))
    assert resp.status == 201  # so that the -rev and dist-tag routes get as far as the body
    for method, path, label in WRITE_ROUTES:
        before = _root(fuzz_registry)
        resp = await fuzz_registry.client.request(
            method, path, data=as_body(deep_json_bytes(depth, kind)),
            headers={**fuzz_registry.auth("alice"), "Content-Type": "application/json"},
        )
        status = await expect_4xx(resp, context=(label, depth, kind))
        security_results.tally.add(label + " (deep nesting)", status)
        before.assert_unchanged((label, depth))
    await assert_responsive(fuzz_registry.client)


async def test_huge_strings_in_a_publish(fuzz_registry: Registry, security_results: Results) -> None:
    headers = await _alice(fuzz_registry)
    for field, value in [("name", "a" * 5_000_000), ("description", "\u00e9" * 3_000_000),
                         ("version", "1.0.0-" + "a" * 1_000_000), ("dist-tag", "t" * 1_000_000)]:
        body = copy.deepcopy(BASE)
        if field == "version":
            body["versions"] = {value: dict(body["versions"][V], version=value)}
        elif field == "dist-tag":
            body["dist-tags"] = {value: V}
        elif field == "description":
            body["versions"][V]["description"] = value
            body["name"] = "x" * 10  # and wrong elsewhere, so nothing may be written
        else:
            body[field] = value
        before = _root(fuzz_registry)
        started = time.monotonic()
        resp = await fuzz_registry.client.put("/foo", data=as_body(json.dumps(body)),
                                              headers={**headers, "Content-Type": "application/json"})
        security_results.tally.add("PUT /{name} (publish: huge strings)", await expect_4xx(resp, context=field))
        assert time.monotonic() - started < 5, f"{field}: {time.monotonic() - started:.1f}s"
        before.assert_unchanged(field)


# ------------------------------------------------------- bodies over the limit

LIMIT = 64 * 1024


@pytest.fixture
async def small_limit(registry_with: Any) -> Registry:
    reg: Registry = await registry_with(server=ServerConfig(public_url="http://registry.test", max_body_bytes=LIMIT))
    await reg.adduser("alice", PASSWORD)
    return reg


async def _limit_case(reg: Registry, results: Results, size: int, mode: str, path: str) -> None:
    headers = {**reg.auth("alice"), "Content-Type": "application/json"}
    filler = os.urandom(size // 2).hex()[:size]
    body = orjson.dumps(dict(BASE, readme=filler))
    if mode == "gzip":
        headers["Content-Encoding"] = "gzip"
        payload: Any = as_body(gzip.compress(body))
    elif mode == "chunked":
        async def chunks():  # type: ignore[no-untyped-def]
            for i in range(0, len(body), 8192):
                yield body[i : i + 8192]

        payload = chunks()
    else:
        payload = as_body(body)
    before = _root(reg)
    resp = await reg.client.put(path, data=payload, headers=headers)
    status = await expect_not_5xx(resp, context=(size, mode))
    results.tally.add(f"PUT {path} (body size, {mode})", status)
    if len(body) > LIMIT:
        assert status == 413, (len(body), mode, status)
    if status >= 400:
        before.assert_unchanged((size, mode))
    await assert_responsive(reg.client)


@FUZZ
@given(size=st.integers(min_value=0, max_value=4 * LIMIT), mode=st.sampled_from(["plain", "gzip", "chunked"]),
       path=st.sampled_from(["/foo", "/-/user/org.couchdb.user:zed", "/-/package/foo/dist-tags/x"]))
async def test_bodies_over_the_limit_are_413(
    small_limit: Registry, security_results: Results, size: int, mode: str, path: str
) -> None:
    await _limit_case(small_limit, security_results, size, mode, path)


async def test_a_gzip_bomb_body_is_413_without_inflating_it(small_limit: Registry, security_results: Results) -> None:
    # 48 MiB of zeros gzip to about 47 KiB: under the 64 KiB limit on the
    # wire, 750 times over it once inflated.
    bomb = gzip.compress(b"\x00" * (48 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < LIMIT
    resp = await small_limit.client.put(
        "/foo", data=as_body(bomb),
        headers={**small_limit.auth("alice"), "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    status = await expect_4xx(resp)
    security_results.tally.add("PUT /{name} (gzip bomb)", status)
    assert status == 413
    await assert_responsive(small_limit.client)


# ------------------------------------------------------- tarball bombs


def _entries_bomb(entries: int) -> bytes:
    """A valid gzipped tar of ``entries`` empty files (a few hundred KiB)."""
    info = tarfile.TarInfo("package/a")
    block = info.tobuf(format=tarfile.USTAR_FORMAT)
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [co.compress(block * min(1000, entries - i)) for i in range(0, entries, 1000)]
    return b"".join([*parts, co.compress(b"\0" * 1024), co.flush()])


def _size_bomb(declared: int) -> bytes:
    """A gzipped tar whose one entry declares ``declared`` bytes of zeros."""
    info = tarfile.TarInfo("package/big")
    info.size = declared
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [co.compress(info.tobuf(format=tarfile.USTAR_FORMAT))]
    parts += [co.compress(b"\0" * (1 << 20)) for _ in range(8)]
    return b"".join([*parts, co.flush()])


async def _bomb_case(reg: Registry, results: Results, name: str, tarball: bytes, within: float) -> None:
    headers = await _alice(reg)
    before = _root(reg)
    started = time.monotonic()
    resp = await reg.client.put(f"/{name}", data=as_body(json.dumps(publish_body(name, "1.0.0", tarball=tarball))),
                                headers={**headers, "Content-Type": "application/json"})
    status = await expect_4xx(resp, context=name)
    assert "unpacks to more than" in (await resp.json())["error"]
    assert time.monotonic() - started < within, time.monotonic() - started
    results.tally.add("PUT /{name} (publish: tarball bombs)", status)
    before.assert_unchanged(name)
    await assert_responsive(reg.client)


async def test_tarball_bombs_are_refused(
    fuzz_registry: Registry, security_results: Results, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Millions of empty entries fit in a few MiB of gzip (and cost seconds
    of CPU and hundreds of MiB each to list); an entry can declare gigabytes
    of zeros. The server stops reading at its bounds. (Bound lowered here to
    keep the test quick; the slow test uses the real one.)"""
    monkeypatch.setattr("server.publish.MAX_TARBALL_ENTRIES", 2_000)
    await _bomb_case(fuzz_registry, security_results, "entries", _entries_bomb(5_000), within=5)
    await _bomb_case(fuzz_registry, security_results, "zeros", _size_bomb(4 << 30), within=5)


@pytest.mark.slow
async def test_tarball_bombs_are_refused_at_the_real_bounds(fuzz_registry: Registry, security_results: Results) -> None:
    await _bomb_case(fuzz_registry, security_results, "entries", _entries_bomb(MAX_TARBALL_ENTRIES + 50_000), within=15)
