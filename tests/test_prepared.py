"""PreparedUpstream (pre-serialized upstream versions) and ParsedCache (their LRU)."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from overlaystore._types import PackageName
from overlaystore.compose import compose
from overlaystore.fragment import PublishedFragment
from overlaystore.prepared import PARSED_FACTOR, PLACEHOLDER, PLACEHOLDER_BYTES, ParsedCache, PreparedUpstream
from overlaystore.render import Variant, render, serialize

URL = "https://npm.example.com"
NAME = PackageName("@acme/widget")


def upstream(versions: tuple[str, ...] = ("1.0.0", "1.1.0", "2.0.0")) -> dict[str, Any]:
    return {
        "name": NAME,
        "_rev": "3-abc",
        "dist-tags": {"latest": versions[-1]},
        "versions": {
            v: {
                "name": NAME,
                "version": v,
                "scripts": {"install": "node-gyp rebuild"},
                "readme": f"mentions http://upstream.test/{NAME}/-/widget-{v}.tgz and @0123456789abcdef",
                "dist": {"shasum": "0" * 40, "tarball": f"http://upstream.test/{NAME}/-/widget-{v}.tgz"},
            }
            for v in versions
        },
        "time": {v: f"2020-01-0{i + 1}T00:00:00.000Z" for i, v in enumerate(versions)},
    }


def test_spliced_render_equals_plain_render_and_mutates_nothing() -> None:
    up = upstream()
    before = copy.deepcopy(up)
    prepared = PreparedUpstream(NAME, up, digest="d", body_size=100)
    published = PublishedFragment(
        name=NAME,
        versions={"1.1.0": {"name": NAME, "version": "1.1.0", "dist": {"tarball": "x"}}, "3.0.0": {"name": NAME, "version": "3.0.0"}},
        times={"1.1.0": "2024-01-01T00:00:00.000Z", "3.0.0": "2024-01-01T00:00:00.000Z"},
        deprecations={"1.1.0": "use 3"},
        rev=1,
    )
    doc = compose(NAME, published, up)
    for variant in Variant:
        spliced = render(doc, variant, URL, upstream=prepared)
        assert spliced == render(doc, variant, URL)
        assert PLACEHOLDER_BYTES not in spliced.body
        served = orjson.loads(spliced.body)["versions"]
        assert served["2.0.0"]["dist"]["tarball"] == f"{URL}/{NAME}/-/widget-2.0.0.tgz"
        assert served["1.1.0"]["deprecated"] == "use 3"
    assert up == before
    assert render(doc, Variant.FULL, URL + "/", upstream=prepared) == render(doc, Variant.FULL, URL)


def test_a_fragment_is_only_used_for_the_manifest_it_was_made_from() -> None:
    up = upstream()
    prepared = PreparedUpstream(NAME, up, digest="d", body_size=100)
    doc = compose(NAME, None, up)
    render(doc, Variant.FULL, URL, upstream=prepared)  # fragments built
    changed = {**doc, "versions": {**doc["versions"], "1.0.0": {**doc["versions"]["1.0.0"], "extra": True}}}
    body = orjson.loads(render(changed, Variant.FULL, URL, upstream=prepared).body)
    assert body["versions"]["1.0.0"]["extra"] is True
    assert render(changed, Variant.FULL, URL, upstream=prepared) == render(changed, Variant.FULL, URL)
    # Another name: no splicing at all.
    other = compose(PackageName("other"), None, {**up, "name": "other"})
    assert serialize(other, Variant.FULL, URL, upstream=prepared) == serialize(other, Variant.FULL, URL)


def test_the_placeholder_is_random_and_only_replaced_where_placed() -> None:
    assert PLACEHOLDER.startswith("@") and len(PLACEHOLDER) == 33
    up = upstream()
    up["versions"]["1.0.0"]["description"] = "@" + "f" * 32  # looks like one, is not ours
    prepared = PreparedUpstream(NAME, up, digest="d", body_size=100)
    doc = compose(NAME, None, up)
    out = orjson.loads(render(doc, Variant.FULL, URL, upstream=prepared).body)
    assert out["versions"]["1.0.0"]["description"] == "@" + "f" * 32
    assert "upstream.test" in out["versions"]["1.0.0"]["readme"]  # only dist.tarball is rewritten


def test_fragments_are_built_once_per_variant_and_counted() -> None:
    prepared = PreparedUpstream(NAME, upstream(), digest="d", body_size=1000)
    assert prepared.nbytes == PARSED_FACTOR * 1000
    full = prepared.fragments("full")
    assert prepared.fragments("full") is full and set(full) == {"1.0.0", "1.1.0", "2.0.0"}
    grown = prepared.nbytes
    assert grown > PARSED_FACTOR * 1000
    prepared.fragments("abbreviated")
    assert prepared.nbytes > grown


def test_parsed_cache_matches_digest_and_size() -> None:
    cache = ParsedCache(10_000)
    entry = PreparedUpstream("a", upstream(), digest="d1", body_size=100)
    cache.put(entry)
    assert cache.holds(entry)
    assert cache.get("a", "d1", 100) is entry
    assert cache.get("a", "d2", 100) is None
    assert cache.get("a", "d1", 101) is None
    assert cache.get("a", "", 100) is None
    assert cache.get("b", "d1", 100) is None
    newer = PreparedUpstream("a", upstream(), digest="d2", body_size=100)
    cache.put(newer)  # one entry per name
    assert not cache.holds(entry) and cache.holds(newer)
    assert len(cache) == 1 and cache.get("a", "d1", 100) is None and cache.get("a", "d2", 100) is newer
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.entries, stats.bytes) == (2, 5, 1, PARSED_FACTOR * 100)
    cache.put(PreparedUpstream("c", upstream(), digest="", body_size=100))  # no digest: never found, not kept
    assert len(cache) == 1
    cache.drop("a")
    assert len(cache) == 0 and cache.stats.bytes == 0


def test_parsed_cache_is_bounded_lru() -> None:
    cache = ParsedCache(PARSED_FACTOR * 250)
    for name in "abc":
        cache.put(PreparedUpstream(name, upstream(), digest="d", body_size=100))
    assert len(cache) == 2 and cache.get("a", "d", 100) is None  # a evicted
    assert cache.get("b", "d", 100) is not None  # b now most recent
    cache.put(PreparedUpstream("d", upstream(), digest="d", body_size=100))
    assert cache.get("c", "d", 100) is None and cache.get("b", "d", 100) is not None
    assert cache.stats.evictions == 2 and cache.stats.bytes <= cache.max_bytes
    cache.put(PreparedUpstream("big", upstream(), digest="d", body_size=1000))  # larger than everything
    assert cache.get("big", "d", 1000) is None and len(cache) == 2
    cache.clear()
    assert len(cache) == 0 and cache.stats.bytes == 0


def test_fragments_are_charged_at_the_next_lookup() -> None:
    cache = ParsedCache(PARSED_FACTOR * 2000 + 600)
    a = PreparedUpstream("a", upstream(), digest="d", body_size=1000)
    b = PreparedUpstream("b", upstream(), digest="d", body_size=1000)
    cache.put(a)
    cache.put(b)
    assert cache.stats.bytes == PARSED_FACTOR * 2000
    b.fragments("full")
    assert cache.stats.bytes == PARSED_FACTOR * 2000  # not yet
    assert cache.get("b", "d", 1000) is b
    # b grew by more than the spare 600 bytes: the least recently used entry made room.
    assert b.nbytes > PARSED_FACTOR * 1000 + 600
    assert cache.get("a", "d", 1000) is None and cache.stats.bytes == b.nbytes


def test_parsed_cache_zero_keeps_nothing() -> None:
    cache = ParsedCache(0)
    cache.put(PreparedUpstream("a", upstream(), digest="d", body_size=1))
    assert len(cache) == 0
    with pytest.raises(ValueError):
        ParsedCache(-1)
