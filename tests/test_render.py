"""Tests for overlaystore.render: tarball rewrite, variants, gzip, ETag."""

from __future__ import annotations

import copy
import gzip
import re
from types import MappingProxyType
from typing import Any

import orjson
import pytest

from overlaystore._types import PackageName
from overlaystore.compose import ABBREVIATED_VERSION_FIELDS, compose
from overlaystore.errors import InvalidInput
from overlaystore.render import (
    GZIP_SMALL_LIMIT,
    Rendered,
    Variant,
    gzip_bytes,
    http_date,
    render,
    rewrite_tarballs,
)

URL = "http://reg.example:4873/npm"
ETAG = re.compile(r'"[0-9a-f]{32}"\Z')


def doc_for(name: str, versions: tuple[str, ...] = ("1.0.0", "1.1.0")) -> dict[str, Any]:
    up = {
        "name": name,
        "_rev": "1-a",
        "dist-tags": {"latest": versions[-1]},
        "versions": {
            v: {
                "name": name,
                "version": v,
                "scripts": {"install": "x"},
                "readme": "r",
                "dist": {"tarball": f"http://up.invalid/x-{v}.tgz", "shasum": "00", "integrity": "sha512-x"},
            }
            for v in versions
        },
        "time": {"created": "2020-01-01T00:00:00.000Z", "modified": "2021-02-03T04:05:06.789Z",
                 **{v: "2020-06-01T00:00:00.000Z" for v in versions}},
    }
    return compose(PackageName(name), None, up)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("widget", f"{URL}/widget/-/widget-1.0.0.tgz"),
        ("@acme/widget", f"{URL}/@acme/widget/-/widget-1.0.0.tgz"),
    ],
)
def test_tarball_urls_point_here(name: str, expected: str) -> None:
    out = orjson.loads(render(doc_for(name), Variant.FULL, URL).body)
    assert out["versions"]["1.0.0"]["dist"]["tarball"] == expected
    trailing = orjson.loads(render(doc_for(name), Variant.FULL, URL + "/").body)
    assert trailing["versions"]["1.0.0"]["dist"]["tarball"] == expected


def test_render_does_not_mutate_and_copies_only_changed_versions() -> None:
    doc = doc_for("widget")
    doc["versions"]["1.1.0"]["dist"]["tarball"] = f"{URL}/widget/-/widget-1.1.0.tgz"  # already right
    doc["versions"]["2.0.0"] = {"name": "widget", "version": "2.0.0"}  # no dist at all
    before = copy.deepcopy(doc)
    rewritten = rewrite_tarballs(doc["versions"], "widget", URL)
    assert doc == before
    assert rewritten["1.1.0"] is doc["versions"]["1.1.0"]
    assert rewritten["2.0.0"] is doc["versions"]["2.0.0"]
    assert rewritten["1.0.0"] is not doc["versions"]["1.0.0"]
    assert rewritten["1.0.0"]["scripts"] is doc["versions"]["1.0.0"]["scripts"]  # shallow copy
    render(doc, Variant.FULL, URL)
    render(doc, Variant.ABBREVIATED, URL)
    assert doc == before


def test_full_variant_is_the_document() -> None:
    doc = doc_for("widget")
    out = orjson.loads(render(doc, Variant.FULL, URL).body)
    assert list(out) == list(doc)
    assert out["_rev"] == doc["_rev"] and out["time"] == doc["time"]
    assert out["versions"]["1.0.0"]["readme"] == "r"


def test_abbreviated_variant() -> None:
    r = render(doc_for("@acme/widget"), Variant.ABBREVIATED, URL)
    out = orjson.loads(r.body)
    assert list(out) == ["name", "modified", "dist-tags", "versions"]
    for m in out["versions"].values():
        assert set(m) <= ABBREVIATED_VERSION_FIELDS
        assert m["hasInstallScript"] is True
        assert m["dist"]["tarball"].startswith(f"{URL}/@acme/widget/-/widget-")


def test_rendered_fields() -> None:
    doc = doc_for("widget")
    r = render(doc, Variant.FULL, URL)
    assert isinstance(r, Rendered)
    assert r.size == len(r.body)
    assert gzip.decompress(r.gzip) == r.body
    assert ETAG.match(r.etag)
    assert r.last_modified == "Wed, 03 Feb 2021 04:05:06 GMT"
    abbr = render(doc, Variant.ABBREVIATED, URL)
    assert abbr.etag != r.etag
    assert abbr.last_modified == r.last_modified
    with pytest.raises(AttributeError):
        r.etag = "x"  # type: ignore[misc]


def test_same_document_same_bytes_and_etag() -> None:
    a = render(doc_for("widget"), Variant.FULL, URL)
    b = render(doc_for("widget"), Variant.FULL, URL)
    assert (a.body, a.gzip, a.etag) == (b.body, b.gzip, b.etag)
    c = render(doc_for("widget"), Variant.FULL, "http://other.example")
    assert c.etag != a.etag


def test_no_time_no_last_modified() -> None:
    doc = doc_for("widget")
    del doc["time"]
    assert render(doc, Variant.FULL, URL).last_modified is None
    assert render(doc, Variant.ABBREVIATED, URL).last_modified is None


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-11-25T17:03:04.123Z", "Wed, 25 Nov 2026 17:03:04 GMT"),
        ("2026-11-25T18:03:04+01:00", "Wed, 25 Nov 2026 17:03:04 GMT"),
        ("2026-11-25T17:03:04", "Wed, 25 Nov 2026 17:03:04 GMT"),
        ("yesterday", None),
        (None, None),
        (12, None),
    ],
)
def test_http_date(stamp: object, expected: str | None) -> None:
    assert http_date(stamp) == expected


def test_gzip_is_deterministic_and_level_depends_on_size() -> None:
    small = b'{"a": "b"}' * 100
    assert gzip_bytes(small) == gzip_bytes(small)
    assert gzip_bytes(small)[4:8] == b"\0\0\0\0"  # mtime 0
    big = orjson.dumps([{"k": i, "v": str(i) * 3} for i in range(GZIP_SMALL_LIMIT // 10)])
    assert len(big) > GZIP_SMALL_LIMIT
    assert gzip_bytes(big) == gzip_bytes(big, 1)
    assert gzip.decompress(gzip_bytes(big, 9)) == big


def test_read_only_mappings_serialize() -> None:
    doc = doc_for("widget")
    doc["users"] = MappingProxyType({"bob": True})
    doc["versions"]["1.0.0"] = MappingProxyType(doc["versions"]["1.0.0"])
    out = orjson.loads(render(doc, Variant.FULL, URL).body)
    assert out["users"] == {"bob": True}
    assert out["versions"]["1.0.0"]["dist"]["tarball"] == f"{URL}/widget/-/widget-1.0.0.tgz"


def test_unserializable_document_is_invalid_input() -> None:
    doc = doc_for("widget")
    doc["huge"] = 2**70
    with pytest.raises(InvalidInput):
        render(doc, Variant.FULL, URL)
