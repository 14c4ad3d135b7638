"""Tests for overlaystore.compose: compose() and abbreviate()."""

from __future__ import annotations

import copy
import re
from types import MappingProxyType
from typing import Any

import orjson
import pytest

from overlaystore._types import PackageName
from overlaystore.compose import (
    ABBREVIATED_FIELDS,
    ABBREVIATED_VERSION_FIELDS,
    abbreviate,
    compose,
    has_install_script,
    revision,
)
from overlaystore.errors import NotFound
from overlaystore.fragment import PublishedFragment

NAME = PackageName("widget")
REV = re.compile(r"[0-9]+-[0-9a-f]+\Z")


def manifest(name: str, version: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "description": f"{name} {version}",
        "scripts": {"test": "true"},
        "dependencies": {"dep": "^1.0.0"},
        "_id": f"{name}@{version}",
        "dist": {
            "tarball": f"http://up.invalid/{name}/-/{name}-{version}.tgz",
            "integrity": "sha512-x",
            "shasum": "ab" * 20,
        },
        **extra,
    }


def upstream(name: str = NAME, versions: tuple[str, ...] = ("1.0.0", "1.1.0", "2.0.0-beta.1"),
             **extra: Any) -> dict[str, Any]:
    time = {"created": "2020-01-01T00:00:00.000Z", "modified": "2021-01-01T00:00:00.000Z"}
    time.update({v: f"2020-0{i + 1}-01T00:00:00.000Z" for i, v in enumerate(versions)})
    doc: dict[str, Any] = {
        "_id": name,
        "_rev": "7-abcdef",
        "name": name,
        "description": "upstream description",
        "dist-tags": {"latest": versions[1] if len(versions) > 1 else versions[0], "next": versions[-1]},
        "versions": {v: manifest(name, v) for v in versions},
        "time": time,
        "maintainers": [{"name": "upstream-owner", "email": "o@example.invalid"}],
        "users": {"fan": True},
        "readme": "# upstream",
        "license": "MIT",
        "_attachments": {"x.tgz": {"data": "..."}},
    }
    doc.update(extra)
    return doc


def fragment(name: str = NAME, versions: tuple[str, ...] = ("1.0.0",), **kw: Any) -> PublishedFragment:
    times = {v: f"2022-0{i + 1}-01T00:00:00.000Z" for i, v in enumerate(versions)}
    times.update(kw.pop("times", {}))
    fields: dict[str, Any] = {
        "versions": {v: manifest(name, v, description=f"published {v}", readme=f"readme {v}") for v in versions},
        "times": times,
        "created": min(times.values()) if times else None,
        "modified": max(times.values()) if times else None,
        "dist_tags": {"latest": versions[-1]} if versions else {},
        "maintainers": ({"name": "alice", "email": "alice@example.invalid"},),
        "rev": 3,
    }
    fields.update(kw)
    return PublishedFragment(name=PackageName(name), **fields)


# --- upstream only ------------------------------------------------------------


def test_upstream_only_shares_versions_and_drops_attachments() -> None:
    up = upstream()
    doc = compose(NAME, None, up)
    assert "_attachments" not in doc
    assert list(doc["versions"]) == ["1.0.0", "1.1.0", "2.0.0-beta.1"]
    for v, m in doc["versions"].items():
        assert m is up["versions"][v]  # shared, not copied
    assert doc["dist-tags"] == up["dist-tags"]
    assert doc["readme"] == "# upstream" and doc["license"] == "MIT"
    assert doc["description"] == "upstream description"
    assert doc["maintainers"] == up["maintainers"]
    assert doc["users"] == {"fan": True}
    assert doc["_id"] == doc["name"] == NAME
    assert REV.match(doc["_rev"])
    assert doc["time"]["created"] == "2020-01-01T00:00:00.000Z"
    assert doc["time"]["modified"] == "2021-01-01T00:00:00.000Z"


def test_versions_are_ordered_by_semver() -> None:
    up = upstream(versions=("1.10.0", "1.2.0", "1.2.0-rc.1", "0.9.0"))
    assert list(compose(NAME, None, up)["versions"]) == ["0.9.0", "1.2.0-rc.1", "1.2.0", "1.10.0"]


def test_inputs_are_not_mutated() -> None:
    up = upstream()
    frag = fragment(versions=("1.0.0", "3.0.0"), deprecations={"1.0.0": "old"}, unpublished={"1.1.0": "x"})
    before_up = copy.deepcopy(up)
    before_frag = copy.deepcopy(frag)
    doc = compose(NAME, frag, up)
    doc["versions"]["1.0.0"]["extra"] = 1  # the copied one; the fragment's is untouched
    assert up == before_up
    assert frag == before_frag


def test_both_missing_is_not_found() -> None:
    with pytest.raises(NotFound):
        compose(NAME, None, None)


# --- private (published only) -------------------------------------------------


def test_private_package() -> None:
    frag = fragment(versions=("1.0.0", "1.1.0"), users={"bob": True})
    doc = compose(NAME, frag, None)
    assert doc["versions"] == dict(frag.versions)
    assert doc["dist-tags"] == {"latest": "1.1.0"}
    assert doc["maintainers"] == [{"name": "alice", "email": "alice@example.invalid"}]
    assert doc["users"] == {"bob": True}
    assert doc["description"] == "published 1.1.0"  # from the latest version
    assert doc["readme"] == "readme 1.1.0"
    assert doc["time"] == {
        "created": "2022-01-01T00:00:00.000Z",
        "modified": "2022-02-01T00:00:00.000Z",
        "1.0.0": "2022-01-01T00:00:00.000Z",
        "1.1.0": "2022-02-01T00:00:00.000Z",
    }
    assert REV.match(doc["_rev"]) and doc["_rev"].startswith("3-")
    assert "users" not in compose(NAME, fragment(), None)  # empty: omitted


def test_read_only_published_mappings_become_dicts() -> None:
    frag = fragment(versions=("1.0.0",))
    frozen = PublishedFragment(
        name=frag.name,
        versions=MappingProxyType({v: MappingProxyType(m) for v, m in frag.versions.items()}),
        times=MappingProxyType(dict(frag.times)),
        dist_tags=MappingProxyType(dict(frag.dist_tags)),
        maintainers=tuple(MappingProxyType(m) for m in frag.maintainers),
        users=MappingProxyType({"bob": True}),
    )
    doc = compose(NAME, frozen, None)
    assert type(doc["versions"]["1.0.0"]) is dict
    assert doc["versions"]["1.0.0"] == frag.versions["1.0.0"]
    assert all(type(m) is dict for m in doc["maintainers"])
    orjson.dumps(doc)


def test_all_unpublished_gives_no_versions() -> None:
    frag = fragment(versions=(), unpublished={"1.0.0": "2022-03-01T00:00:00.000Z"},
                    times={"1.0.0": "2022-01-01T00:00:00.000Z"})
    doc = compose(NAME, frag, None)
    assert doc["versions"] == {} and doc["dist-tags"] == {}
    assert doc["time"]["1.0.0"] == "2022-01-01T00:00:00.000Z"  # tombstones keep their time


# --- overlay ------------------------------------------------------------------


def test_published_shadows_upstream_version_with_same_number() -> None:
    up = upstream()
    frag = fragment(versions=("1.0.0",))
    doc = compose(NAME, frag, up)
    assert doc["versions"]["1.0.0"] == frag.versions["1.0.0"]
    assert doc["versions"]["1.1.0"] is up["versions"]["1.1.0"]
    assert doc["time"]["1.0.0"] == frag.times["1.0.0"]
    assert doc["time"]["1.1.0"] == up["time"]["1.1.0"]


def test_tombstone_hides_upstream_version_and_its_tags() -> None:
    up = upstream()
    frag = fragment(versions=("3.0.0",), unpublished={"2.0.0-beta.1": "2022-05-01T00:00:00.000Z"},
                    dist_tags={"latest": "3.0.0"})
    doc = compose(NAME, frag, up)
    assert "2.0.0-beta.1" not in doc["versions"]
    assert "next" not in doc["dist-tags"]  # pointed at the hidden version
    assert doc["dist-tags"]["latest"] == "3.0.0"


def test_published_dist_tags_win() -> None:
    up = upstream()
    frag = fragment(versions=("1.0.0-acme.1",), dist_tags={"latest": "1.0.0-acme.1", "next": "1.0.0-acme.1"})
    doc = compose(NAME, frag, up)
    assert doc["dist-tags"] == {"latest": "1.0.0-acme.1", "next": "1.0.0-acme.1"}
    assert doc["description"] == "published 1.0.0-acme.1"  # latest is published
    assert doc["license"] == "MIT"  # upstream top level kept otherwise


def test_latest_from_upstream_keeps_upstream_top_level() -> None:
    frag = fragment(versions=("0.5.0",), dist_tags={"old": "0.5.0"})
    doc = compose(NAME, frag, upstream())
    assert doc["dist-tags"]["latest"] == "1.1.0"
    assert doc["dist-tags"]["old"] == "0.5.0"
    assert doc["description"] == "upstream description"
    assert doc["maintainers"] == [{"name": "alice", "email": "alice@example.invalid"}]
    assert "users" not in doc  # stars are local once something is published


def test_deprecation_applies_to_a_copy_of_published_versions_only() -> None:
    up = upstream()
    frag = fragment(versions=("1.0.0", "3.0.0"), deprecations={"1.0.0": "use 3", "1.1.0": "nope"})
    doc = compose(NAME, frag, up)
    assert doc["versions"]["1.0.0"] == {**frag.versions["1.0.0"], "deprecated": "use 3"}
    assert "deprecated" not in frag.versions["1.0.0"]
    assert doc["versions"]["1.1.0"] is up["versions"]["1.1.0"]  # upstream: unchanged
    assert "deprecated" not in doc["versions"]["3.0.0"]


@pytest.mark.parametrize(
    ("versions", "tags", "latest"),
    [
        (("1.0.0", "2.0.0-rc.1"), {}, "1.0.0"),
        (("1.0.0-a", "1.0.0-b"), {}, "1.0.0-b"),
        (("1.0.0", "2.0.0"), {"latest": "9.9.9"}, "2.0.0"),
    ],
)
def test_latest_is_fixed_up(versions: tuple[str, ...], tags: dict[str, str], latest: str) -> None:
    doc = compose(NAME, fragment(versions=versions, dist_tags=tags), None)
    assert doc["dist-tags"]["latest"] == latest
    assert next(iter(doc["dist-tags"])) == "latest"


def test_latest_among_invalid_versions_only() -> None:
    up = upstream(versions=("1.0.0",))
    up["versions"] = {"banana": manifest(NAME, "banana")}
    up["dist-tags"] = {}
    assert compose(NAME, None, up)["dist-tags"] == {"latest": "banana"}


# --- time ---------------------------------------------------------------------


def test_time_covers_every_version_and_bounds_publishes() -> None:
    up = upstream()
    del up["time"]["1.1.0"]
    frag = fragment(versions=("5.0.0",), times={"5.0.0": "2023-06-01T00:00:00.000Z"},
                    modified="2023-07-01T00:00:00.000Z")
    doc = compose(NAME, frag, up)
    time = doc["time"]
    assert set(doc["versions"]) <= set(time)
    assert time["modified"] == "2023-07-01T00:00:00.000Z"
    assert time["1.1.0"] == time["modified"]  # unknown: the conservative value
    assert time["created"] == "2020-01-01T00:00:00.000Z"
    assert all(time["modified"] >= t for t in time.values())
    assert list(time)[:2] == ["created", "modified"]
    assert list(time)[2:] == list(doc["versions"])


def test_no_time_at_all_means_no_time_map() -> None:
    up = upstream()
    del up["time"]
    doc = compose(NAME, None, up)
    assert "time" not in doc
    assert "modified" not in abbreviate(doc)


def test_modified_handles_missing_fraction() -> None:
    up = upstream(versions=("1.0.0", "1.1.0"))
    up["time"] = {"1.0.0": "2020-01-01T00:00:56.392Z", "1.1.0": "2020-01-01T00:00:56Z"}
    doc = compose(NAME, None, up)
    assert doc["time"]["modified"] == "2020-01-01T00:00:56.392Z"
    assert doc["time"]["created"] == "2020-01-01T00:00:56Z"


def test_upstream_time_entries_of_absent_versions_are_kept() -> None:
    up = upstream()
    up["time"]["0.0.1"] = "2019-01-01T00:00:00.000Z"  # unpublished upstream long ago
    up["time"]["unpublished"] = {"time": "2019-01-02T00:00:00.000Z"}
    doc = compose(NAME, None, up)
    assert doc["time"]["0.0.1"] == "2019-01-01T00:00:00.000Z"
    assert "unpublished" not in doc["time"]
    assert doc["time"]["created"] == "2019-01-01T00:00:00.000Z"


# --- robustness ---------------------------------------------------------------


def test_malformed_upstream_parts_are_ignored() -> None:
    up: dict[str, Any] = {
        "name": NAME,
        "versions": {"1.0.0": "not an object", "1.1.0": manifest(NAME, "1.1.0"),
                     "../evil": manifest(NAME, "x"), "created": manifest(NAME, "y"),
                     "a b": manifest(NAME, "z"), "": manifest(NAME, "e"), "1%2f": manifest(NAME, "p")},
        "time": ["not", "an", "object"],
        "dist-tags": "latest",
        "maintainers": "nobody",
    }
    doc = compose(NAME, None, up)
    assert list(doc["versions"]) == ["1.1.0"]
    assert doc["dist-tags"] == {"latest": "1.1.0"}
    assert doc["maintainers"] == []
    assert "time" not in doc
    up["versions"] = None
    assert compose(NAME, None, up)["versions"] == {}


def test_rev_is_deterministic_and_tracks_inputs() -> None:
    up, frag = upstream(), fragment()
    rev = compose(NAME, frag, up)["_rev"]
    assert rev == compose(NAME, fragment(), upstream())["_rev"]
    assert rev.startswith("10-")  # 3 (published) + 7 (upstream)
    assert compose(NAME, fragment(rev=4), up)["_rev"] != rev
    assert compose(NAME, frag, upstream(_rev="8-abc"))["_rev"] != rev
    no_rev = upstream()
    del no_rev["_rev"]
    r1 = compose(NAME, None, no_rev)["_rev"]
    no_rev["versions"]["9.0.0"] = manifest(NAME, "9.0.0")
    assert REV.match(r1) and compose(NAME, None, no_rev)["_rev"] != r1


@pytest.mark.parametrize("which", ["private", "upstream only", "both", "upstream without _rev", "malformed upstream"])
def test_revision_is_the_rev_compose_gives(which: str) -> None:
    no_rev = upstream()
    del no_rev["_rev"]
    frag, up = {
        "private": (fragment(), None),
        "upstream only": (None, upstream()),
        "both": (fragment(rev=4), upstream()),
        "upstream without _rev": (fragment(), no_rev),
        "malformed upstream": (fragment(), {**upstream(), "versions": [], "time": "x", "_rev": 7}),
    }[which]
    assert revision(NAME, frag, up) == compose(NAME, frag, up)["_rev"]


def test_same_inputs_give_same_bytes() -> None:
    a = orjson.dumps(compose(NAME, fragment(versions=("1.0.0", "4.0.0")), upstream()))
    b = orjson.dumps(compose(NAME, fragment(versions=("1.0.0", "4.0.0")), upstream()))
    assert a == b


# --- abbreviate ---------------------------------------------------------------


def test_abbreviate_keeps_only_corgi_fields() -> None:
    up = upstream()
    up["versions"]["1.0.0"].update(
        gypfile=True, readme="long", _npmOperationalInternal={"x": 1}, os=["linux"], libc=["glibc"],
        bin={"w": "cli.js"}, deprecated="old",
    )
    doc = compose(NAME, None, up)
    small = abbreviate(doc)
    assert tuple(small) == ABBREVIATED_FIELDS
    assert small["modified"] == doc["time"]["modified"]
    assert small["dist-tags"] == doc["dist-tags"]
    v1 = small["versions"]["1.0.0"]
    assert set(v1) <= ABBREVIATED_VERSION_FIELDS
    assert v1["hasInstallScript"] is True  # gypfile
    assert v1["os"] == ["linux"] and v1["libc"] == ["glibc"] and v1["deprecated"] == "old"
    assert v1["dist"] == up["versions"]["1.0.0"]["dist"]
    assert "hasInstallScript" not in small["versions"]["1.1.0"]
    assert "readme" not in v1 and "scripts" not in v1
    assert "gypfile" not in up["versions"]["1.1.0"]  # input untouched


@pytest.mark.parametrize(
    ("m", "expected"),
    [
        ({"scripts": {"postinstall": "x"}}, True),
        ({"scripts": {"preinstall": "x"}}, True),
        ({"scripts": {"install": "node-gyp rebuild"}}, True),
        ({"scripts": {"test": "x", "prepare": "y"}}, False),
        ({"gypfile": True}, True),
        ({"hasInstallScript": True}, True),
        ({"scripts": "nonsense"}, False),
        ({}, False),
    ],
)
def test_has_install_script(m: dict[str, Any], expected: bool) -> None:
    assert has_install_script(m) is expected
