"""Properties of composition (design invariant 4) on generated packuments.

Every live published version appears with exactly its published manifest
(plus ``deprecated``); every upstream version whose number is neither
published nor tombstoned appears unchanged; published dist-tags win; ``time``
covers every version and bounds every publish; the same inputs give the same
bytes and ETag; the abbreviated form keeps only the allowed fields.
"""

from __future__ import annotations

import copy
import os
import random
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overlaystore._types import PackageName
from overlaystore.compose import ABBREVIATED_FIELDS, ABBREVIATED_VERSION_FIELDS, compose
from overlaystore.fragment import PublishedFragment
from overlaystore.prepared import PLACEHOLDER_BYTES, PreparedUpstream
from overlaystore.render import Variant, render
from overlaystore.versions import version_key

URL = "http://127.0.0.1:4873"

# --- strategies -------------------------------------------------------------------

_component = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,8}", fullmatch=True)
names = st.one_of(
    _component,
    st.builds(lambda scope, base: f"@{scope}/{base}", _component, _component),
).map(PackageName)

_num = st.integers(0, 12).map(str)
_pre = st.lists(st.one_of(_num, st.sampled_from(["alpha", "beta", "rc", "acme", "x-1"])), min_size=1, max_size=3)
versions = st.builds(
    lambda a, b, c, pre: f"{a}.{b}.{c}" + (("-" + ".".join(pre)) if pre else ""),
    _num, _num, _num, st.one_of(st.none(), _pre),
)
_stamps = st.builds(
    lambda y, mo, d, ms: f"{y}-{mo:02d}-{d:02d}T12:00:00.{ms:03d}Z",
    st.integers(2015, 2026), st.integers(1, 12), st.integers(1, 28), st.integers(0, 999),
)


def manifest(name: str, version: str, origin: str, n: int) -> dict[str, Any]:
    m: dict[str, Any] = {
        "name": name,
        "version": version,
        "origin": origin,  # tells published and upstream manifests apart
        "dist": {"tarball": f"http://{origin}.invalid/{name}/-/x-{version}.tgz", "shasum": f"{n:040x}"},
    }
    if n % 3 == 0:
        m["scripts"] = {"postinstall": "node x.js"}
    if n % 4 == 0:
        m["readme"] = "long " * 10
    return m


@dataclass
class Case:
    name: PackageName
    published: PublishedFragment | None
    upstream: dict[str, Any] | None


@st.composite
def cases(draw: st.DrawFn, min_versions: int = 0, max_versions: int = 12) -> Case:
    name = draw(names)
    up_vs = draw(st.lists(versions, min_size=min_versions, max_size=max_versions, unique=True))
    pub_vs = draw(st.lists(versions, max_size=max_versions, unique=True))
    # Tombstones: some published-before numbers, possibly shadowing upstream ones.
    hidden_vs = draw(st.lists(st.sampled_from(up_vs + ["99.0.0"]), max_size=3, unique=True)) if up_vs else []
    hidden_vs = [v for v in hidden_vs if v not in pub_vs]
    upstream: dict[str, Any] | None = None
    with_upstream: bool = bool(up_vs) or draw(st.booleans())
    if with_upstream:
        up_time: dict[str, Any] = {v: draw(_stamps) for v in up_vs if draw(st.integers(0, 9))}  # some missing
        if draw(st.booleans()):
            up_time["created"] = draw(_stamps)
            up_time["modified"] = draw(_stamps)
        tag_targets = up_vs + ["404.0.0"]
        upstream = {
            "_id": name,
            "name": name,
            "versions": {v: manifest(name, v, "upstream", i) for i, v in enumerate(up_vs)},
            "time": up_time,
            "dist-tags": {t: draw(st.sampled_from(tag_targets)) for t in draw(st.sets(st.sampled_from(["latest", "next", "beta"])))},
            "description": "from upstream",
            "_attachments": {"x": 1},
        }
        if draw(st.booleans()):
            upstream["_rev"] = f"{draw(st.integers(1, 999))}-{draw(st.integers(0, 2**32)):x}"
    published: PublishedFragment | None = None
    if pub_vs or hidden_vs or upstream is None:
        times = {v: draw(_stamps) for v in pub_vs + hidden_vs}
        tag_targets = pub_vs + ["405.0.0"]
        published = PublishedFragment(
            name=name,
            versions={v: manifest(name, v, "published", i) for i, v in enumerate(pub_vs)},
            times=times,
            created=min(times.values()) if times else None,
            modified=(max(times.values()) if times else None),
            dist_tags={t: draw(st.sampled_from(tag_targets)) for t in draw(st.sets(st.sampled_from(["latest", "next", "acme"])))},
            deprecations={v: "deprecated " + v for v in pub_vs if draw(st.integers(0, 3)) == 0},
            unpublished={v: draw(_stamps) for v in hidden_vs},
            maintainers=({"name": "alice", "email": "a@example.invalid"},),
            users={"bob": True} if draw(st.booleans()) else {},
            rev=draw(st.integers(0, 50)),
        )
    return Case(name, published, upstream)


# --- the invariant ------------------------------------------------------------------


def check_invariant_4(case: Case, doc: dict[str, Any]) -> None:
    pub = case.published
    up = case.upstream or {}
    pub_versions = dict(pub.versions) if pub else {}
    hidden = set(pub.unpublished) if pub else set()
    deprecations = dict(pub.deprecations) if pub else {}
    up_versions = up.get("versions", {})

    expected = set(pub_versions) | (set(up_versions) - hidden)
    assert set(doc["versions"]) == expected
    assert list(doc["versions"]) == sorted(expected, key=version_key)
    for v, m in doc["versions"].items():
        if v in pub_versions:
            want = dict(pub_versions[v])
            if v in deprecations:
                want["deprecated"] = deprecations[v]
            assert m == want
        else:
            assert m is up_versions[v]  # unchanged: the very same object

    tags = doc["dist-tags"]
    assert all(target in doc["versions"] for target in tags.values())
    assert ("latest" in tags) == bool(doc["versions"])
    for tag, target in (pub.dist_tags if pub else {}).items():
        if target in doc["versions"]:
            assert tags[tag] == target
    for tag, target in up.get("dist-tags", {}).items():
        if target in doc["versions"] and tag not in (pub.dist_tags if pub else {}):
            assert tags[tag] == target

    time = doc.get("time")
    if doc["versions"] and time is None:
        # Only when no time at all is known.
        assert not (pub and pub_versions) and not up.get("time")
    if time is not None:
        assert set(doc["versions"]) <= set(time)
        stamps = [t for k, t in time.items()]
        assert time["modified"] == max(stamps) and time["created"] == min(stamps)
        for v in pub_versions:
            assert time[v] == pub.times[v]  # type: ignore[union-attr]
        if pub and pub.modified:
            assert time["modified"] >= pub.modified

    assert doc["_id"] == doc["name"] == case.name
    assert "_attachments" not in doc
    rev_n, _, rev_hex = doc["_rev"].partition("-")
    assert rev_n.isdigit() and rev_hex and all(c in "0123456789abcdef" for c in rev_hex)


@given(cases())
def test_composition_is_exact(case: Case) -> None:
    before = copy.deepcopy((case.published, case.upstream))
    doc = compose(case.name, case.published, case.upstream)
    check_invariant_4(case, doc)
    assert (case.published, case.upstream) == before  # inputs untouched


@given(cases())
def test_same_inputs_same_bytes_and_etag(case: Case) -> None:
    twin = copy.deepcopy(case)
    for variant in Variant:
        a = render(compose(case.name, case.published, case.upstream), variant, URL)
        b = render(compose(twin.name, twin.published, twin.upstream), variant, URL)
        assert (a.body, a.gzip, a.etag) == (b.body, b.gzip, b.etag)


@given(cases())
def test_rendered_documents(case: Case) -> None:
    doc = compose(case.name, case.published, case.upstream)
    base = case.name.rpartition("/")[2]
    full = orjson.loads(render(doc, Variant.FULL, URL).body)
    abbr = orjson.loads(render(doc, Variant.ABBREVIATED, URL).body)
    assert set(abbr) <= set(ABBREVIATED_FIELDS)
    assert abbr["dist-tags"] == full["dist-tags"] == doc["dist-tags"]
    assert list(abbr["versions"]) == list(full["versions"]) == list(doc["versions"])
    for v, m in abbr["versions"].items():
        assert set(m) <= ABBREVIATED_VERSION_FIELDS
        url = f"{URL}/{case.name}/-/{base}-{v}.tgz"
        assert m["dist"]["tarball"] == full["versions"][v]["dist"]["tarball"] == url
        assert m.get("hasInstallScript", False) == ("scripts" in full["versions"][v])
        # Apart from the tarball URL, the full form carries the manifest unchanged.
        served = dict(full["versions"][v], dist={**full["versions"][v]["dist"], "tarball": None})
        source = dict(doc["versions"][v], dist={**doc["versions"][v]["dist"], "tarball": None})
        assert served == source


_urls = st.sampled_from([URL, "https://npm.example.com/", 'http://h/a"b\\c', "http://h/\u00e9\u2028/x"])


@given(cases(), _urls)
def test_prepared_upstream_gives_the_same_bytes(case: Case, url: str) -> None:
    """Splicing pre-serialized upstream versions changes no byte, for every variant,
    also when the prepared document is re-used by a second composition."""
    if case.upstream is None:
        return
    prepared = PreparedUpstream(case.name, case.upstream, digest="d", body_size=1)
    before = copy.deepcopy(case.upstream)
    for _ in range(2):
        doc = compose(case.name, case.published, case.upstream)
        for variant in Variant:
            plain = render(doc, variant, url)
            spliced = render(doc, variant, url, upstream=prepared)
            assert spliced == plain
            assert PLACEHOLDER_BYTES not in spliced.body
    assert case.upstream == before


@st.composite
def huge_cases(draw: st.DrawFn) -> Case:
    """Thousands of versions, built from a drawn seed (drawing each one would be slow)."""
    rnd = random.Random(draw(st.integers(0, 2**32)))
    count = draw(st.integers(2000, 3500))
    name = draw(names)
    all_vs = list(dict.fromkeys(
        f"{rnd.randrange(40)}.{rnd.randrange(40)}.{rnd.randrange(10)}"
        + (f"-rc.{rnd.randrange(5)}" if rnd.random() < 0.2 else "")
        for _ in range(count)
    ))
    up_vs = all_vs[: len(all_vs) * 3 // 4]
    pub_vs = rnd.sample(all_vs, 40)
    hidden = [v for v in rnd.sample(up_vs, 30) if v not in pub_vs]
    stamp = "2020-01-01T00:00:{:02d}.{:03d}Z"
    upstream = {
        "name": name,
        "_rev": "12-ab",
        "versions": {v: manifest(name, v, "upstream", i) for i, v in enumerate(up_vs)},
        "time": {v: stamp.format(i % 60, i % 1000) for i, v in enumerate(up_vs)},
        "dist-tags": {"latest": up_vs[0]},
    }
    times = {v: "2024-01-01T00:00:00.000Z" for v in pub_vs + hidden}
    published = PublishedFragment(
        name=name,
        versions={v: manifest(name, v, "published", i) for i, v in enumerate(pub_vs)},
        times=times, created=min(times.values()), modified=max(times.values()),
        dist_tags={"acme": pub_vs[0]}, deprecations={pub_vs[1]: "old"},
        unpublished={v: "2024-02-01T00:00:00.000Z" for v in hidden}, rev=7,
    )
    return Case(name, published, upstream)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(huge_cases())
def test_thousands_of_versions(case: Case) -> None:
    doc = compose(case.name, case.published, case.upstream)
    assert len(doc["versions"]) > 1000
    check_invariant_4(case, doc)
    a = render(doc, Variant.FULL, URL)
    assert a.etag == render(compose(case.name, case.published, case.upstream), Variant.FULL, URL).etag
    assert case.upstream is not None
    prepared = PreparedUpstream(case.name, case.upstream, digest="d", body_size=1)
    for variant in Variant:
        assert render(doc, variant, URL, upstream=prepared) == render(doc, variant, URL)


_SCRIPT = textwrap.dedent(
    """
    import sys
    from overlaystore.compose import compose
    from overlaystore.fragment import PublishedFragment
    from overlaystore.prepared import PreparedUpstream
    from overlaystore.render import Variant, render
    up = {"name": "@s/p", "_rev": "3-a", "dist-tags": {"latest": "1.0.0"},
          "versions": {v: {"name": "@s/p", "version": v, "k%d" % i: i, "scripts": {"install": "x"},
                           "dist": {"tarball": "t", "shasum": "s"}}
                       for i, v in enumerate(["1.0.0", "0.1.0", "2.0.0-rc.1", "1.0.1"])},
          "time": {"1.0.0": "2020-01-01T00:00:00.000Z"}}
    pub = PublishedFragment(name="@s/p", versions={"1.0.1": {"name": "@s/p", "version": "1.0.1", "z": {"b": 1, "a": 2}}},
                            times={"1.0.1": "2021-01-01T00:00:00.000Z"}, dist_tags={"beta": "1.0.1", "alpha": "1.0.1"},
                            users={"zed": True, "amy": True}, rev=2)
    doc = compose("@s/p", pub, up)
    print(render(doc, Variant.FULL, "http://x").etag, render(doc, Variant.ABBREVIATED, "http://x").etag)
    # Each process draws its own placeholder: the spliced bytes must not show it.
    prepared = PreparedUpstream("@s/p", up, digest="d", body_size=1)
    print(render(doc, Variant.FULL, "http://x", upstream=prepared).etag,
          render(doc, Variant.ABBREVIATED, "http://x", upstream=prepared).etag)
    """
)


def test_bytes_do_not_depend_on_the_process_hash_seed() -> None:
    """Several workers must agree on ETags: no set/hash order may leak into the bytes."""
    root = Path(__file__).resolve().parents[2]
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}
        result = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True)
        outputs.add(result.stdout)
    assert len(outputs) == 1
    plain, spliced = outputs.pop().splitlines()
    assert plain == spliced
