"""Version numbers: strict validation for publishing, a total order for serving.

Two levels, like :mod:`overlaystore.names`:

* :func:`parse_version` is the gate for *new* versions (publish): strict
  SemVer 2.0 as implemented by the ``semver`` package, plus what npm refuses
  on top (a leading ``v``/``=``, more than 256 characters, numeric parts above
  ``Number.MAX_SAFE_INTEGER``). The result is safe as a path component.
* :func:`version_key` orders *any* string, because upstream documents are
  not ours to validate. It never raises. Invariants:

  - valid versions sort by SemVer precedence (release after its
    prereleases, numeric identifiers numerically and before alphanumeric
    ones, a longer identifier list after its prefix);
  - versions of equal precedence (differing only in build metadata) are
    ordered by their text, so the order is total and deterministic;
  - every invalid string sorts after every valid one, invalid strings among
    themselves by their text (so :func:`highest`, which ignores them, and
    a stable serialization order are both easy).

:func:`version_key` uses its own compiled copy of the SemVer 2.0 grammar
(the same one ``semver`` uses) instead of ``semver.Version.parse``, because
composition sorts thousands of versions per request and the package's
object construction dominates that cost; a property test checks that both
agree on validity.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import semver

from ._types import Version
from .errors import InvalidVersion

#: npm refuses longer version strings.
MAX_VERSION_LENGTH = 256
#: npm's semver rejects numeric parts above JavaScript's Number.MAX_SAFE_INTEGER.
MAX_SAFE_INTEGER = 2**53 - 1

# SemVer 2.0 (https://semver.org, the recommended regex), ASCII only, as in
# semver.Version._REGEX; `\Z` so that a trailing newline does not match.
_SEMVER = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
    r"(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?\Z",
    re.ASCII,
)

# Rank of the first element of a key: valid versions before invalid strings.
_VALID = 0
_INVALID = 1
# A release sorts after all prereleases of the same major.minor.patch.
_PRERELEASE = 0
_RELEASE = 1


def parse_version(raw: str) -> Version:
    """Return ``raw`` as a :class:`Version` if it is strict SemVer 2.0.

    The string is returned unchanged (strict SemVer has one spelling per
    version, build metadata aside). Raises :class:`InvalidVersion` otherwise,
    including for ``v1.2.3``/``=1.2.3`` (npm would silently clean them; we
    refuse rather than store a second spelling), for strings longer than
    :data:`MAX_VERSION_LENGTH` and for numbers npm cannot represent.
    """
    if not isinstance(raw, str):
        raise InvalidVersion(repr(raw))
    if not raw or len(raw) > MAX_VERSION_LENGTH or raw[0] in "vV=":
        raise InvalidVersion(raw)
    try:
        parsed = semver.Version.parse(raw)
    except (ValueError, TypeError) as exc:
        raise InvalidVersion(raw) from exc
    if max(parsed.major, parsed.minor, parsed.patch) > MAX_SAFE_INTEGER:
        raise InvalidVersion(raw)
    return Version(raw)


def _identifier_key(identifier: str) -> tuple[int, int | str]:
    # Numeric identifiers have lower precedence than alphanumeric ones.
    if identifier.isdigit():
        return (0, int(identifier))
    return (1, identifier)


def version_key(raw: str) -> tuple[Any, ...]:
    """A sort key giving the total order described in the module docstring.

    Never raises, whatever ``raw`` is (non-strings sort last, by ``repr``).
    """
    if not isinstance(raw, str):
        return (_INVALID, repr(raw))
    return _str_version_key(raw)


# Memoized: every composition of a package sorts the same version strings
# again (~1.5 us a parse on the reference VM, ~0.2 us a hit). Keys are
# immutable tuples, so sharing them is safe; the bound keeps memory < ~15 MB.
@lru_cache(maxsize=1 << 16)
def _str_version_key(raw: str) -> tuple[Any, ...]:
    match = _SEMVER.match(raw) if len(raw) <= MAX_VERSION_LENGTH else None
    if match is None:
        return (_INVALID, raw)
    major, minor, patch, pre, _build = match.groups()
    if pre is None:
        return (_VALID, int(major), int(minor), int(patch), _RELEASE, (), raw)
    ids = tuple(_identifier_key(i) for i in pre.split("."))
    return (_VALID, int(major), int(minor), int(patch), _PRERELEASE, ids, raw)


def is_valid(raw: str) -> bool:
    """True if ``raw`` is SemVer 2.0 (loosely: no npm-specific limits)."""
    return bool(version_key(raw)[0] == _VALID)


def sort_versions(vs: Iterable[str]) -> list[str]:
    """``vs`` in ascending :func:`version_key` order (invalid strings last)."""
    return sorted(vs, key=version_key)


def is_prerelease(v: str) -> bool:
    """True if ``v`` is a valid version with a prerelease part (``1.0.0-rc.1``)."""
    key = version_key(v)
    return bool(key[0] == _VALID and key[4] == _PRERELEASE)


def highest(vs: Iterable[str], *, prefer_stable: bool = True) -> str | None:
    """The highest valid version of ``vs``; ``None`` if there is none.

    With ``prefer_stable`` a release wins over any prerelease, and the
    highest prerelease is returned only when there is no release at all
    (npm's rule for resetting ``latest``). Invalid strings are ignored.
    """
    best: tuple[Any, ...] | None = None
    best_stable: tuple[Any, ...] | None = None
    for v in vs:
        key = version_key(v)
        if key[0] != _VALID:
            continue
        if best is None or key > best:
            best = key
        if key[4] == _RELEASE and (best_stable is None or key > best_stable):
            best_stable = key
    chosen = best_stable if prefer_stable and best_stable is not None else best
    return None if chosen is None else str(chosen[-1])


__all__ = [
    "MAX_SAFE_INTEGER",
    "MAX_VERSION_LENGTH",
    "highest",
    "is_prerelease",
    "is_valid",
    "parse_version",
    "sort_versions",
    "version_key",
]
