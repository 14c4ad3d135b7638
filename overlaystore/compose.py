"""Composition: published fragment ⊕ upstream packument → the packument clients see.

:func:`compose` is pure and deterministic; :func:`abbreviate` derives the
"corgi" form from its result. Neither does I/O, neither mutates its inputs,
and neither deep-copies: the result *shares* every sub-object it does not
change (upstream version manifests, published manifests, ``users``...), so
callers must treat both inputs and output as read-only. Only what changes is
copied (a published manifest that gets ``deprecated``, the top-level dicts
being built). That keeps a 3,000-version upstream document cheap to compose.

Invariant 4 of the design (checked by ``tests/properties``):

* every live published version appears with exactly its published manifest,
  plus ``deprecated`` when a deprecation message is set for it;
* every upstream version whose number is neither published nor tombstoned
  (unpublished here) appears unchanged (the same object);
* dist-tags are upstream ⊕ published, published winning, tags pointing at
  versions that are not in the result dropped, ``latest`` recomputed when
  missing (highest release, else highest prerelease);
* ``time`` has ``created`` (min), ``modified`` (max, so never earlier than
  any publish) and an entry for *every* version present, because pnpm drops
  the whole map otherwise; a version without a known time gets ``modified``
  (the conservative choice for minimum-release-age checks); when no time is
  known at all, ``time`` is omitted ("all or nothing");
* versions are ordered by :func:`overlaystore.versions.version_key`;
* ``_rev`` (``"<n>-<hex>"``, URL-safe) is a function of the published rev and
  the upstream ``_rev`` (or, without one, the upstream ``time.modified`` and
  version list), so the same inputs always give the same bytes.

Published deprecations apply to published versions only: an upstream version
is served exactly as upstream has it. Upstream version keys that could not be
a tarball file name (empty, longer than 256 characters, containing ``/``,
``\\``, ``%``, white space or control characters) are dropped, since they
would produce unusable tarball URLs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import xxhash

from ._types import JSONObject, PackageName
from .errors import NotFound
from .fragment import PublishedFragment
from .versions import MAX_VERSION_LENGTH, highest, version_key

#: Per-version keys kept in the abbreviated form (protocol doc §3.3, plus
#: ``libc``, ``bundledDependencies`` and ``_npmUser`` which pnpm reads).
ABBREVIATED_VERSION_FIELDS = frozenset(
    {
        "name",
        "version",
        "deprecated",
        "dependencies",
        "acceptDependencies",
        "optionalDependencies",
        "devDependencies",
        "bundleDependencies",
        "bundledDependencies",
        "peerDependencies",
        "peerDependenciesMeta",
        "bin",
        "directories",
        "dist",
        "engines",
        "_hasShrinkwrap",
        "hasInstallScript",
        "funding",
        "cpu",
        "os",
        "libc",
        "_npmUser",
    }
)
#: Top-level keys of the abbreviated form.
ABBREVIATED_FIELDS = ("name", "modified", "dist-tags", "versions")

# Top-level fields copied from the latest version when it is a published one
# (npm keeps the package-level description/readme of the latest publish).
_FROM_LATEST = (
    "description",
    "readme",
    "readmeFilename",
    "license",
    "homepage",
    "repository",
    "bugs",
    "keywords",
    "author",
    "contributors",
)
# Top-level keys compose() builds itself; upstream values for them are not copied.
_BUILT = frozenset(
    {"_id", "_rev", "name", "dist-tags", "versions", "time", "maintainers", "users", "_attachments"}
)
_INSTALL_SCRIPTS = ("preinstall", "install", "postinstall")
_TIME_META = frozenset({"created", "modified", "unpublished"})
_UNSAFE_VERSION = re.compile(r"[/\\%\s\x00-\x1f\x7f]")
_REV_NUMBER = re.compile(r"([0-9]{1,15})-")


def _time_key(stamp: str) -> str:
    # ISO-8601 strings in npm's format (".sssZ") compare correctly as text;
    # pad a missing fraction so "…:56Z" does not sort after "…:56.392Z".
    if stamp.endswith("+00:00"):
        stamp = stamp[:-6] + "Z"
    if len(stamp) > 19 and stamp[19] != ".":
        return stamp[:19] + ".000" + stamp[19:]
    return stamp


def _acceptable_upstream_version(v: object) -> bool:
    return (
        isinstance(v, str)
        and 0 < len(v) <= MAX_VERSION_LENGTH
        and v not in (".", "..")
        and v not in _TIME_META
        and _UNSAFE_VERSION.search(v) is None
    )


def _as_dict(m: Mapping[str, Any]) -> dict[str, Any]:
    # Published manifests may come as read-only mappings; the document is a dict.
    return m if type(m) is dict else dict(m)


def _rev(name: str, published: PublishedFragment | None, upstream: Mapping[str, Any] | None,
         upstream_versions: Mapping[str, Any], upstream_time: Mapping[str, Any]) -> str:
    pub_rev = published.rev if published is not None else 0
    pub_modified = (published.modified or "") if published is not None else ""
    up_n = 0
    token = ""
    if upstream is not None:
        up_rev = upstream.get("_rev")
        if isinstance(up_rev, str) and up_rev:
            token = "rev:" + up_rev
            match = _REV_NUMBER.match(up_rev)
            if match:
                up_n = int(match.group(1))
        else:
            # No upstream _rev: what identifies its content cheaply.
            modified = upstream_time.get("modified")
            token = "mod:" + (modified if isinstance(modified, str) else "") + ":" + ",".join(
                v for v in upstream_versions if isinstance(v, str)
            )
    digest = xxhash.xxh3_64_hexdigest(f"{name}\0{pub_rev}\0{pub_modified}\0{token}".encode())
    return f"{max(1, pub_rev + up_n)}-{digest}"


def revision(name: str, published: PublishedFragment | None, upstream: Mapping[str, Any] | None) -> str:
    """The ``_rev`` that :func:`compose` gives these inputs, without composing
    (a publish answers with it; composing a package of thousands of versions
    for one string would cost more than the write)."""
    up: Mapping[str, Any] = upstream if isinstance(upstream, Mapping) else {}
    raw_versions, raw_time = up.get("versions"), up.get("time")
    return _rev(name, published, upstream,
                raw_versions if isinstance(raw_versions, Mapping) else {},
                raw_time if isinstance(raw_time, Mapping) else {})


def compose(
    name: PackageName,
    published: PublishedFragment | None,
    upstream: Mapping[str, Any] | None,
) -> JSONObject:
    """Return the full packument of ``name`` (see the module docstring).

    ``published`` is what the published store holds (``None``: nothing ever
    published); ``upstream`` the decoded upstream packument (``None``: no
    upstream for this name, per the name policy or because there is none).
    Malformed upstream parts (non-object ``versions``, ``time``...) are
    ignored, never raised on. A result with no versions is possible (all
    unpublished); the caller decides to answer 404 for it.

    Raises :class:`NotFound` if both inputs are ``None``.
    """
    if published is None and upstream is None:
        raise NotFound(f"{name}: nothing published and no upstream document")

    up: Mapping[str, Any] = upstream if isinstance(upstream, Mapping) else {}
    raw_versions = up.get("versions")
    up_versions: Mapping[str, Any] = raw_versions if isinstance(raw_versions, Mapping) else {}
    raw_time = up.get("time")
    up_time: Mapping[str, Any] = raw_time if isinstance(raw_time, Mapping) else {}

    pub_versions: Mapping[str, Mapping[str, Any]] = published.versions if published else {}
    pub_times: Mapping[str, str] = published.times if published else {}
    hidden: Mapping[str, str] = published.unpublished if published else {}
    deprecations: Mapping[str, str] = published.deprecations if published else {}

    # --- versions: upstream not shadowed (shared), then published.
    merged: dict[str, Mapping[str, Any]] = {}
    for v, manifest in up_versions.items():
        if (
            v not in pub_versions
            and v not in hidden
            and isinstance(manifest, Mapping)
            and _acceptable_upstream_version(v)
        ):
            merged[v] = manifest
    from_published: set[str] = set()
    for v, manifest in pub_versions.items():
        if v in hidden:  # defensive: a tombstone always hides the number
            continue
        message = deprecations.get(v)
        if message:
            merged[v] = {**manifest, "deprecated": message}
        else:
            merged[v] = _as_dict(manifest)
        from_published.add(v)
    order = sorted(merged, key=version_key)
    versions: dict[str, Any] = {v: merged[v] for v in order}

    # --- dist-tags: upstream ⊕ published (published wins), only live targets.
    tags: dict[str, str] = {}
    raw_tags = up.get("dist-tags")
    for source in (raw_tags if isinstance(raw_tags, Mapping) else {},
                   published.dist_tags if published else {}):
        for tag, target in source.items():
            if isinstance(tag, str) and isinstance(target, str) and target in versions:
                tags[tag] = target
    if "latest" not in tags and order:
        tags = {"latest": highest(order) or order[-1], **tags}

    # --- time: created = min, modified = max, every present version covered.
    times: dict[str, str] = {}
    missing: list[str] = []
    for v in order:
        stamp = pub_times.get(v) if v in from_published else up_time.get(v)
        if isinstance(stamp, str) and stamp:
            times[v] = stamp
        else:
            missing.append(v)
    extra: dict[str, str] = {}
    for key, stamp in up_time.items():
        if key not in _TIME_META and key not in versions and isinstance(stamp, str) and stamp:
            extra[key] = stamp
    for key, stamp in pub_times.items():  # tombstoned numbers keep their time (npm does)
        if key not in versions and isinstance(stamp, str) and stamp:
            extra[key] = stamp
    candidates = [*times.values(), *extra.values()]
    for key in ("created", "modified"):
        stamp = up_time.get(key)
        if isinstance(stamp, str) and stamp:
            candidates.append(stamp)
    if published is not None:
        candidates.extend(s for s in (published.created, published.modified) if s)
    time_doc: dict[str, str] | None = None
    if candidates:
        modified = max(candidates, key=_time_key)
        if missing:
            for v in missing:
                times[v] = modified
            times = {v: times[v] for v in order}
        time_doc = {"created": min(candidates, key=_time_key), "modified": modified}
        time_doc.update(times)
        time_doc.update(extra)

    # --- top level.
    doc: JSONObject = {
        "_id": name,
        "_rev": _rev(name, published, upstream, up_versions, up_time),
        "name": name,
        "dist-tags": tags,
        "versions": versions,
    }
    if time_doc is not None:
        doc["time"] = time_doc
    if published is not None and published.maintainers:
        doc["maintainers"] = [_as_dict(m) for m in published.maintainers]
    else:
        up_maintainers = up.get("maintainers")
        doc["maintainers"] = up_maintainers if isinstance(up_maintainers, list) else []
    users: Any = _as_dict(published.users) if published is not None else up.get("users")
    if isinstance(users, Mapping) and users:
        doc["users"] = users
    for key, value in up.items():
        if key not in _BUILT:
            doc[key] = value
    latest = tags.get("latest")
    if latest is not None and latest in from_published:
        manifest = versions[latest]
        for key in _FROM_LATEST:
            if key in manifest:
                doc[key] = manifest[key]
    return doc


def has_install_script(manifest: Mapping[str, Any]) -> bool:
    """npm's ``hasInstallScript``: an install-time script or a ``binding.gyp``."""
    if manifest.get("hasInstallScript") is True or manifest.get("gypfile") is True:
        return True
    scripts = manifest.get("scripts")
    return isinstance(scripts, Mapping) and any(s in scripts for s in _INSTALL_SCRIPTS)


def abbreviate_version(manifest: Mapping[str, Any]) -> JSONObject:
    """The corgi form of one version manifest (a new dict; values shared)."""
    out = {k: v for k, v in manifest.items() if k in ABBREVIATED_VERSION_FIELDS}
    if has_install_script(manifest):
        out["hasInstallScript"] = True
    else:
        out.pop("hasInstallScript", None)
    return out


def abbreviate(doc: Mapping[str, Any]) -> JSONObject:
    """The abbreviated ("corgi") packument derived from a composed one.

    Top level: ``name``, ``modified`` (= ``time.modified``, omitted when there
    is no time), ``dist-tags``, ``versions``; per version only
    :data:`ABBREVIATED_VERSION_FIELDS`, with ``hasInstallScript`` computed.
    """
    out: JSONObject = {"name": doc["name"]}
    time_doc = doc.get("time")
    if isinstance(time_doc, Mapping) and isinstance(time_doc.get("modified"), str):
        out["modified"] = time_doc["modified"]
    out["dist-tags"] = doc.get("dist-tags", {})
    versions = doc.get("versions")
    out["versions"] = (
        {v: abbreviate_version(m) for v, m in versions.items() if isinstance(m, Mapping)}
        if isinstance(versions, Mapping)
        else {}
    )
    return out


__all__ = [
    "ABBREVIATED_FIELDS",
    "ABBREVIATED_VERSION_FIELDS",
    "abbreviate",
    "abbreviate_version",
    "compose",
    "has_install_script",
    "revision",
]
