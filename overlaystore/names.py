"""Validation of npm package names, once, at the edge.

Two levels, because the registry must *serve* names that npm no longer lets
anyone *create*:

* :func:`parse_name` accepts any name the npm ecosystem contains (legacy
  names with capitals or ``~!()*'``), but nothing that could escape a storage
  root: no ``..``, no backslash, no percent sign, no control characters. The
  result is safe to use as one (unscoped) or two (scoped) path components.
* :func:`validate_new_name` additionally applies the rules npm enforces for new
  packages (lower case, URL-safe, not a Node.js core module), used on publish.
"""

from __future__ import annotations

import re

from ._types import PackageName
from .errors import InvalidName

MAX_NAME_LENGTH = 214

# A component starts with a letter or digit (npm forbids a leading "." or "_",
# which also rules out "." and ".."), then URL-safe characters only.
_LEGACY_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~!()*'-]*\Z")
_SCOPE = re.compile(r"[a-z0-9][a-z0-9._~-]*\Z", re.IGNORECASE)
_NEW_COMPONENT = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")

_BLOCKED = frozenset({"node_modules", "favicon.ico"})

# Node.js core modules: npm refuses them as new package names.
_NODE_BUILTINS = frozenset(
    """assert async_hooks buffer child_process cluster console constants crypto
    dgram diagnostics_channel dns domain events fs http http2 https inspector
    module net os path perf_hooks process punycode querystring readline repl
    stream string_decoder sys timers tls trace_events tty url util v8 vm wasi
    worker_threads zlib""".split()
)


def _split(raw: str) -> tuple[str | None, str]:
    if raw.startswith("@"):
        scope, sep, rest = raw[1:].partition("/")
        if not sep or not scope or not rest:
            raise InvalidName(raw, "a scoped name has the form @scope/name")
        return scope, rest
    return None, raw


def parse_name(raw: str) -> PackageName:
    """Return ``raw`` as a :class:`PackageName` if the ecosystem can contain it.

    Raises :class:`InvalidName` for anything else, in particular for any
    attempt at path traversal.
    """
    if not isinstance(raw, str) or not raw:
        raise InvalidName(str(raw), "the name is empty")
    if len(raw) > MAX_NAME_LENGTH:
        raise InvalidName(raw, f"longer than {MAX_NAME_LENGTH} characters")
    if raw != raw.strip():
        raise InvalidName(raw, "leading or trailing white space")
    scope, base = _split(raw)
    if scope is not None and not _SCOPE.match(scope):
        raise InvalidName(raw, "the scope contains characters that are not URL-safe")
    if not _LEGACY_COMPONENT.match(base):
        raise InvalidName(
            raw,
            "a name starts with a letter or digit and contains only URL-safe characters",
        )
    if base.lower() in _BLOCKED and scope is None:
        raise InvalidName(raw, f"{base!r} is a reserved name")
    return PackageName(raw)


def validate_new_name(raw: str) -> PackageName:
    """Return ``raw`` as a :class:`PackageName` if npm allows publishing it."""
    name = parse_name(raw)
    scope, base = _split(name)
    if name != name.lower():
        raise InvalidName(raw, "new package names must be lower case")
    if not _NEW_COMPONENT.match(base) or (scope is not None and not _NEW_COMPONENT.match(scope)):
        raise InvalidName(raw, "new package names may contain only a-z, 0-9, '.', '_' and '-'")
    if scope is None and base in _NODE_BUILTINS:
        raise InvalidName(raw, f"{base!r} is a Node.js core module name")
    return name


def tarball_basename(name: PackageName) -> str:
    """The unscoped part of a name, as used in tarball file names."""
    return name.rpartition("/")[2]


def tarball_filename(name: PackageName, version: str) -> str:
    """The canonical tarball file name: ``<basename>-<version>.tgz``."""
    return f"{tarball_basename(name)}-{version}.tgz"


__all__ = [
    "MAX_NAME_LENGTH",
    "parse_name",
    "tarball_basename",
    "tarball_filename",
    "validate_new_name",
]
