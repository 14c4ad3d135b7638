"""Tests for overlaystore.versions: strict parsing, total order, highest."""

from __future__ import annotations

import random

import pytest
import semver
from hypothesis import given
from hypothesis import strategies as st

from overlaystore.errors import InvalidInput, InvalidVersion
from overlaystore.versions import (
    MAX_SAFE_INTEGER,
    highest,
    is_prerelease,
    is_valid,
    parse_version,
    sort_versions,
    version_key,
)

# The precedence example of semver.org §11, ascending.
SPEC_ORDER = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "2.0.0",
    "2.1.0",
    "2.1.1",
    "10.0.0",
]


@pytest.mark.parametrize(
    "raw",
    ["0.0.0", "1.2.3", "10.20.30", "1.0.0-rc.1", "1.0.0-0a", "1.0.0-x-y.7", "1.0.0+001",
     "1.0.0-alpha+build.5", f"{MAX_SAFE_INTEGER}.0.0"],
)
def test_parse_version_accepts_strict_semver(raw: str) -> None:
    assert parse_version(raw) == raw


@pytest.mark.parametrize(
    "raw",
    ["", "v1.2.3", "V1.2.3", "=1.2.3", "1.2", "1", "01.2.3", "1.02.3", "1.2.3-01", "1.2.3-",
     "1.2.3+", "1.2.3-a..b", " 1.2.3", "1.2.3 ", "1.2.3\n", "\u0661.2.3", "1.2.3-\u00e9",
     "1.2.3/../x", f"{MAX_SAFE_INTEGER + 1}.0.0", "1.0.0-" + "a" * 300, "latest", "*"],
)
def test_parse_version_rejects(raw: str) -> None:
    with pytest.raises(InvalidVersion) as info:
        parse_version(raw)
    assert isinstance(info.value, InvalidInput)


def test_parse_version_rejects_non_strings() -> None:
    with pytest.raises(InvalidVersion):
        parse_version(123)  # type: ignore[arg-type]


def test_spec_precedence_order() -> None:
    shuffled = SPEC_ORDER[:]
    random.Random(4).shuffle(shuffled)
    assert sort_versions(shuffled) == SPEC_ORDER


def test_numeric_prerelease_identifiers_compare_numerically() -> None:
    assert sort_versions(["1.0.0-10", "1.0.0-9", "1.0.0-a", "1.0.0-1"]) == [
        "1.0.0-1", "1.0.0-9", "1.0.0-10", "1.0.0-a",
    ]


def test_build_metadata_ties_are_broken_by_text() -> None:
    assert sort_versions(["1.0.0+b", "1.0.0", "1.0.0+a"]) == ["1.0.0", "1.0.0+a", "1.0.0+b"]


def test_invalid_strings_sort_after_valid_ones() -> None:
    got = sort_versions(["zzz", "2.0.0", "1.0", "", "1.0.0-rc.1", "v1.0.0"])
    assert got == ["1.0.0-rc.1", "2.0.0", "", "1.0", "v1.0.0", "zzz"]


def test_version_key_never_raises_on_non_strings() -> None:
    keys = [version_key(x) for x in (None, 1, 1.5, ("a",))]  # type: ignore[arg-type]
    assert sorted(keys)  # comparable with each other


def test_is_prerelease() -> None:
    assert is_prerelease("1.0.0-rc.1")
    assert is_prerelease("1.0.0-0+build")
    assert not is_prerelease("1.0.0")
    assert not is_prerelease("1.0.0+build-1")
    assert not is_prerelease("nonsense-1")


def test_highest_prefers_stable() -> None:
    vs = ["1.0.0", "2.0.0-rc.1", "1.5.0", "junk"]
    assert highest(vs) == "1.5.0"
    assert highest(vs, prefer_stable=False) == "2.0.0-rc.1"


def test_highest_falls_back_to_prerelease_and_none() -> None:
    assert highest(["1.0.0-a", "1.0.0-b"]) == "1.0.0-b"
    assert highest(["junk", "v1.0.0"]) is None
    assert highest([]) is None


def test_highest_accepts_any_iterable() -> None:
    assert highest(iter(["0.1.0", "0.2.0"])) == "0.2.0"
    assert highest({"3.0.0": 1, "2.0.0": 2}) == "3.0.0"


# --- properties -------------------------------------------------------------

_num = st.one_of(st.just("0"), st.integers(1, 10**6).map(str))
_alnum = st.from_regex(r"[0-9]*[a-zA-Z-][0-9a-zA-Z-]{0,5}", fullmatch=True)
_pre = st.lists(st.one_of(_num, _alnum), min_size=1, max_size=4).map(".".join)
_build = st.lists(st.from_regex(r"[0-9a-zA-Z-]{1,5}", fullmatch=True), min_size=1, max_size=2).map(".".join)
valid_versions = st.builds(
    lambda a, b, c, pre, build: f"{a}.{b}.{c}" + (f"-{pre}" if pre else "") + (f"+{build}" if build else ""),
    _num, _num, _num, st.one_of(st.none(), _pre), st.one_of(st.none(), _build),
)
version_like = st.one_of(valid_versions, st.text(max_size=20), st.from_regex(r"[0-9.+a-z-]{1,12}", fullmatch=True))


@given(valid_versions)
def test_generated_versions_parse(v: str) -> None:
    assert parse_version(v) == v
    assert is_valid(v)


@given(version_like)
def test_validity_agrees_with_semver_package(raw: str) -> None:
    try:
        semver.Version.parse(raw)
        expected = True
    except ValueError:
        expected = False
    assert is_valid(raw) is expected


@given(valid_versions, valid_versions)
def test_order_agrees_with_semver_precedence(a: str, b: str) -> None:
    cmp = semver.Version.parse(a).compare(b)
    ka, kb = version_key(a), version_key(b)
    if cmp < 0:
        assert ka < kb
    elif cmp > 0:
        assert ka > kb
    else:  # equal precedence: decided by the text, deterministically
        assert (ka < kb) == (a < b)


@given(st.lists(version_like, max_size=30))
def test_order_is_total_and_deterministic(vs: list[str]) -> None:
    once = sort_versions(vs)
    assert sort_versions(list(reversed(vs))) == once
    keys = [version_key(v) for v in once]
    assert keys == sorted(keys)
    valid = [v for v in once if is_valid(v)]
    assert once[: len(valid)] == valid  # valid first


@given(st.lists(version_like, max_size=30))
def test_highest_is_max_of_valid(vs: list[str]) -> None:
    valid = [v for v in vs if is_valid(v)]
    top = highest(vs, prefer_stable=False)
    assert top == (max(valid, key=version_key) if valid else None)
    stable = [v for v in valid if not is_prerelease(v)]
    expect = max(stable, key=version_key) if stable else top
    assert highest(vs) == expect
