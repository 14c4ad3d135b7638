"""Hypothesis strategies for hostile registry input."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

from hypothesis import strategies as st

from overlaystore.errors import InvalidInput
from overlaystore.names import validate_new_name

#: Path-traversal and confusion tokens, as raw URL text (percent escapes are
#: sent as written; non-ASCII is UTF-8 percent-encoded by :func:`url_segment`).
TRAVERSAL = [
    "..", ".", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "..%2f", "..%2F", "%2f", "%2F", "%2f..%2f",
    "\\", "%5c", "%5C", "..\\", "..%5c", "%00", "%0a", "%0d%0a", "%09", "%20", "%7f",
    "%c0%ae%c0%ae",            # overlong UTF-8 dots
    "%252e%252e", "%252f",      # double-encoded
    "\u2024\u2024",             # ONE DOT LEADER x2
    "\uff0e\uff0e",             # FULLWIDTH FULL STOP x2
    "\u2215",                   # DIVISION SLASH
    "\uff0f",                   # FULLWIDTH SOLIDUS
    "\u29f5",                   # REVERSE SOLIDUS OPERATOR
    "\u0430",                   # CYRILLIC a
    "\u200b",                   # ZERO WIDTH SPACE
    "\u202e",                   # RIGHT-TO-LEFT OVERRIDE
    "/etc/passwd", "~", "@", "@%2e%2e", "*", "?x=1", "#frag", ";x", "'", '"', "<", ">", "|",
    "CON", "aux", "nul", "node_modules", "favicon.ico", "fs", "http",
    "__proto__", "constructor", "prototype",
    ".hidden", "_under", "-dash", "UPPER", " lead", "trail ",
]

#: The same ideas as JSON string content (real control characters included).
TRAVERSAL_TEXT = TRAVERSAL + ["\x00", "\n", "\r\n", "\t", "\x7f", "../", "..\\", "./", "/", "\\\\server\\share"]


def url_segment(token: str) -> str:
    """``token`` as raw URL text: existing escapes kept, everything a request
    line cannot carry (space, controls, non-ASCII) percent-encoded."""
    return quote(token, safe="!$&'()*+,;=:@%/\\-._~?#<>|\"[]{}^`")


def as_server_sees(segment: str) -> str:
    """The decoded path segment the server gets (a raw ``?`` starts the query,
    a ``#`` the fragment)."""
    return unquote(segment.split("?", 1)[0].split("#", 1)[0])


def invalid_new_name(raw: str) -> bool:
    try:
        validate_new_name(raw)
    except InvalidInput:
        return True
    return False


def _join(parts: list[str]) -> str:
    return "".join(parts)


#: Raw URL segments for a package name that npm would not let anyone publish
#: (checked against the decoded form, as the server sees it).
hostile_name_segments = st.lists(
    st.one_of(
        st.sampled_from(TRAVERSAL),
        st.sampled_from(["foo", "bar", "@acme", "@acme%2f", "@acme/", "-", "1.0.0", ".tgz", "a" * 215]),
        st.text(min_size=1, max_size=6),
    ),
    min_size=1,
    max_size=4,
).map(_join).map(url_segment)

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(TRAVERSAL_TEXT),
)

json_values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(TRAVERSAL_TEXT)), children, max_size=4),
    ),
    max_leaves=12,
)


class Huge(str):
    """A long string with a short repr (Hypothesis prints failing examples)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Huge({self[:8]!r} ... {len(self)} characters)"


def huge_strings(max_size: int = 2_000_000) -> st.SearchStrategy[str]:
    return st.builds(
        lambda unit, n: Huge(unit * n),
        st.sampled_from(["a", "\u00e9", "\U0001f600", "\x00", "../", "\\u0000", '"']),
        st.integers(min_value=10_000, max_value=max_size),
    )


def nested(depth: int, leaf: Any = 1) -> Any:
    """``depth`` levels of alternating objects and arrays around ``leaf``."""
    value = leaf
    for i in range(depth):
        value = {"a": value} if i % 2 else [value]
    return value


def deep_json_bytes(depth: int, kind: str) -> bytes:
    if kind == "arrays":
        return b"[" * depth + b"]" * depth
    if kind == "objects":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"versions":' * depth + b"{}" + b"}" * depth


raw_garbage = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b"{", b"}", b"null", b"[]", b'"str"', b"1e999", b"NaN", b"-Infinity", b"{'a': 1}",
                     b'{"a":1,}', b'{"a"}', b"\xef\xbb\xbf{}", b"\x00{}", b'{"\\ud800": 1}', b"\xff\xfe{\x00}\x00"]),
    st.builds(deep_json_bytes, st.integers(min_value=1, max_value=5000), st.sampled_from(["arrays", "objects", "versions"])),
)

wrong_types = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30), st.lists(leaves, max_size=3), st.dictionaries(st.text(max_size=5), leaves, max_size=3),
    st.builds(nested, st.integers(min_value=50, max_value=400)),
    huge_strings(200_000),
)
