"""Rendering: a composed packument → the bytes served, once per (name, variant, URL).

:func:`render` rewrites every ``versions[*].dist.tarball`` to point at this
server (the rewrite happens here, at serve time, never in stored data),
abbreviates when asked, serializes with orjson, gzips, and computes a strong
ETag. Invariants:

* the input document is never mutated: version and ``dist`` dicts whose
  tarball URL changes are copied (copy-on-write), everything else is shared;
* the output is a pure function of the input: dict insertion order is
  deterministic (compose builds it so), the gzip stream has a zero mtime, so
  the same document gives the same body, gzip bytes and ETag;
* the ETag is ``'"<xxh3_128 hex of body>"'``; the gzip bytes are one encoding
  of that same representation (the server may add a suffix for them).

With ``upstream=`` (a :class:`~overlaystore.prepared.PreparedUpstream`, the
parsed upstream document ``doc`` was composed from), every version manifest
that *is* (by identity) the upstream one is spliced in as a pre-serialized
fragment and its tarball placeholder replaced in the bytes: no per-version
copy, and orjson copies bytes instead of re-encoding them (10 MB document:
~15 ms instead of ~70 ms for rewrite + serialization). The output bytes are
identical to the plain path's. :func:`serialize` is :func:`render` without
the gzip step.

gzip level: zlib level 6 (the usual default) costs ~25 ms/MB on the
reference machine and dominates rendering of big documents, while level 1
is ~2.5x faster for ~15% more bytes (see benchmarks/README.md). Bodies up to
:data:`GZIP_SMALL_LIMIT` use :data:`GZIP_LEVEL_SMALL`, larger ones
:data:`GZIP_LEVEL_LARGE`; ``gzip_level=`` overrides.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

import orjson
import xxhash

from ._types import JSONObject, PackageName
from .compose import abbreviate, abbreviate_version
from .errors import InvalidInput
from .names import tarball_basename
from .prepared import PLACEHOLDER_BYTES, PreparedUpstream

GZIP_LEVEL_SMALL = 6
GZIP_LEVEL_LARGE = 1
GZIP_SMALL_LIMIT = 256 * 1024


class Variant(enum.Enum):
    """The two packument representations (protocol doc §3.1)."""

    FULL = "full"
    ABBREVIATED = "abbreviated"


@dataclass(frozen=True, slots=True)
class Rendered:
    """Serialized packument: what the server sends and the view caches."""

    body: bytes
    gzip: bytes
    etag: str  # strong, quoted: '"<hex>"'
    last_modified: str | None  # HTTP-date of time.modified, if known
    size: int  # len(body)


def _json_default(obj: Any) -> Any:
    # Read-only mappings (MappingProxyType) from the published store.
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def gzip_bytes(body: bytes, level: int | None = None) -> bytes:
    """gzip ``body`` deterministically (mtime 0); ``level`` None = by size."""
    if level is None:
        level = GZIP_LEVEL_SMALL if len(body) <= GZIP_SMALL_LIMIT else GZIP_LEVEL_LARGE
    # wbits=31: gzip container, header with mtime 0, so output is reproducible.
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    return compressor.compress(body) + compressor.flush()


def http_date(stamp: object) -> str | None:
    """An ISO-8601 time as an HTTP-date (RFC 9110), or None if unparseable."""
    if not isinstance(stamp, str):
        return None
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return format_datetime(parsed.astimezone(timezone.utc).replace(microsecond=0), usegmt=True)


def _tarball_prefix(name: str, public_url: str) -> str:
    return f"{public_url.rstrip('/')}/{name}/-/{tarball_basename(PackageName(name))}-"


def _rewrite_one(manifest: Any, version: str, prefix: str, owned: bool) -> Any:
    dist = manifest.get("dist") if isinstance(manifest, Mapping) else None
    if isinstance(dist, Mapping):
        url = f"{prefix}{version}.tgz"
        if dist.get("tarball") != url:
            new_dist = dist.copy() if type(dist) is dict else dict(dist)
            new_dist["tarball"] = url
            if not owned:
                manifest = manifest.copy() if type(manifest) is dict else dict(manifest)
            manifest["dist"] = new_dist
    return manifest


def rewrite_tarballs(
    versions: Mapping[str, Any], name: str, public_url: str, *, owned: bool = False
) -> dict[str, Any]:
    """``versions`` with every ``dist.tarball`` pointing at ``public_url``.

    Copy-on-write: a manifest whose URL is already right is shared; otherwise
    the manifest (unless ``owned``, i.e. the caller built it and may let it be
    changed) and its ``dist`` are copied. Manifests without a ``dist`` object
    are left as they are.
    """
    prefix = _tarball_prefix(name, public_url)
    return {v: _rewrite_one(manifest, v, prefix, owned) for v, manifest in versions.items()}


def _spliced_versions(
    versions: Mapping[str, Any], name: str, public_url: str, upstream: PreparedUpstream, variant: Variant
) -> tuple[dict[str, Any], bool]:
    """The ``versions`` object as :func:`rewrite_tarballs` (after abbreviation
    for that variant) would make it, with the pre-serialized fragment of every
    manifest that *is* the prepared upstream one. Also returns whether a
    fragment (hence the placeholder) was used."""
    abbreviated = variant is Variant.ABBREVIATED
    fragments = upstream.fragments(variant.value)
    originals = upstream.versions
    prefix = _tarball_prefix(name, public_url)
    out: dict[str, Any] = {}
    used = False
    for v, manifest in versions.items():
        fragment = fragments.get(v)
        if fragment is not None and originals.get(v) is manifest:
            out[v] = fragment
            used = True
        elif abbreviated:
            if isinstance(manifest, Mapping):  # as abbreviate() filters
                out[v] = _rewrite_one(abbreviate_version(manifest), v, prefix, True)
        else:
            out[v] = _rewrite_one(manifest, v, prefix, False)
    return out, used


@dataclass(frozen=True, slots=True)
class Serialized:
    """What :func:`serialize` returns: :class:`Rendered` without the gzip bytes."""

    body: bytes
    etag: str
    last_modified: str | None


def serialize(
    doc: JSONObject, variant: Variant, public_url: str, *, upstream: PreparedUpstream | None = None
) -> Serialized:
    """The body, ETag and Last-Modified of ``doc`` as ``variant`` (see :func:`render`)."""
    name = doc["name"]
    versions = doc.get("versions")
    if not isinstance(versions, Mapping):
        versions = {}
    splice = upstream is not None and upstream.name == name
    used = False
    if variant is Variant.ABBREVIATED:
        if splice:
            # The top level as abbreviate() makes it; versions spliced below.
            out = abbreviate({**doc, "versions": {}})
        else:
            out = abbreviate(doc)  # new top level and version dicts: ours to change
            out["versions"] = rewrite_tarballs(out["versions"], name, public_url, owned=True)
        modified = out.get("modified")
    else:
        out = dict(doc)
        if not splice:
            out["versions"] = rewrite_tarballs(versions, name, public_url)
        time_doc = doc.get("time")
        modified = time_doc.get("modified") if isinstance(time_doc, Mapping) else None
    if splice:
        assert upstream is not None
        out["versions"], used = _spliced_versions(versions, name, public_url, upstream, variant)
    try:
        body = orjson.dumps(out, default=_json_default)
    except orjson.JSONEncodeError as exc:
        raise InvalidInput(f"{name}: the packument cannot be serialized: {exc}") from exc
    if used:
        # JSON escaping is per character: escaped(base) + escaped(rest) is
        # escaped(base + rest), so this is the direct rewrite's bytes.
        body = body.replace(PLACEHOLDER_BYTES, orjson.dumps(public_url.rstrip("/"))[1:-1])
    return Serialized(body, f'"{xxhash.xxh3_128_hexdigest(body)}"', http_date(modified))


def render(
    doc: JSONObject,
    variant: Variant,
    public_url: str,
    *,
    gzip_level: int | None = None,
    upstream: PreparedUpstream | None = None,
) -> Rendered:
    """Serialize the composed ``doc`` as ``variant`` for clients of ``public_url``.

    ``public_url`` is the externally visible base URL without trailing slash;
    tarball URLs become ``{public_url}/{name}/-/{basename}-{version}.tgz``
    (name unencoded: ``/@acme/w/-/w-1.0.0.tgz``). Raises
    :class:`InvalidInput` if the document holds something JSON cannot
    represent (e.g. an integer beyond 64 bits).

    ``upstream``: the prepared upstream document ``doc`` was composed from,
    if any. Versions that compose passed through unchanged are then spliced
    in pre-serialized (see :mod:`overlaystore.prepared`); the bytes are the
    same either way.
    """
    serialized = serialize(doc, variant, public_url, upstream=upstream)
    body = serialized.body
    return Rendered(
        body=body,
        gzip=gzip_bytes(body, gzip_level),
        etag=serialized.etag,
        last_modified=serialized.last_modified,
        size=len(body),
    )


__all__ = [
    "GZIP_LEVEL_LARGE",
    "GZIP_LEVEL_SMALL",
    "GZIP_SMALL_LIMIT",
    "Rendered",
    "Serialized",
    "Variant",
    "gzip_bytes",
    "http_date",
    "render",
    "rewrite_tarballs",
    "serialize",
]
