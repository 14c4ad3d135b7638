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
from .compose import abbreviate
from .errors import InvalidInput
from .names import tarball_basename

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


def rewrite_tarballs(
    versions: Mapping[str, Any], name: str, public_url: str, *, owned: bool = False
) -> dict[str, Any]:
    """``versions`` with every ``dist.tarball`` pointing at ``public_url``.

    Copy-on-write: a manifest whose URL is already right is shared; otherwise
    the manifest (unless ``owned``, i.e. the caller built it and may let it be
    changed) and its ``dist`` are copied. Manifests without a ``dist`` object
    are left as they are.
    """
    prefix = f"{public_url.rstrip('/')}/{name}/-/{tarball_basename(PackageName(name))}-"
    out: dict[str, Any] = {}
    for v, manifest in versions.items():
        dist = manifest.get("dist") if isinstance(manifest, Mapping) else None
        if isinstance(dist, Mapping):
            url = f"{prefix}{v}.tgz"
            if dist.get("tarball") != url:
                new_dist = dist.copy() if type(dist) is dict else dict(dist)
                new_dist["tarball"] = url
                if not owned:
                    manifest = manifest.copy() if type(manifest) is dict else dict(manifest)
                manifest["dist"] = new_dist
        out[v] = manifest
    return out


def render(
    doc: JSONObject, variant: Variant, public_url: str, *, gzip_level: int | None = None
) -> Rendered:
    """Serialize the composed ``doc`` as ``variant`` for clients of ``public_url``.

    ``public_url`` is the externally visible base URL without trailing slash;
    tarball URLs become ``{public_url}/{name}/-/{basename}-{version}.tgz``
    (name unencoded: ``/@acme/w/-/w-1.0.0.tgz``). Raises
    :class:`InvalidInput` if the document holds something JSON cannot
    represent (e.g. an integer beyond 64 bits).
    """
    name = doc["name"]
    versions = doc.get("versions")
    if not isinstance(versions, Mapping):
        versions = {}
    if variant is Variant.ABBREVIATED:
        out = abbreviate(doc)  # new top level and version dicts: ours to change
        out["versions"] = rewrite_tarballs(out["versions"], name, public_url, owned=True)
        modified = out.get("modified")
    else:
        out = dict(doc)
        out["versions"] = rewrite_tarballs(versions, name, public_url)
        time_doc = doc.get("time")
        modified = time_doc.get("modified") if isinstance(time_doc, Mapping) else None
    try:
        body = orjson.dumps(out, default=_json_default)
    except orjson.JSONEncodeError as exc:
        raise InvalidInput(f"{name}: the packument cannot be serialized: {exc}") from exc
    return Rendered(
        body=body,
        gzip=gzip_bytes(body, gzip_level),
        etag=f'"{xxhash.xxh3_128_hexdigest(body)}"',
        last_modified=http_date(modified),
        size=len(body),
    )


__all__ = [
    "GZIP_LEVEL_LARGE",
    "GZIP_LEVEL_SMALL",
    "GZIP_SMALL_LIMIT",
    "Rendered",
    "Variant",
    "gzip_bytes",
    "http_date",
    "render",
    "rewrite_tarballs",
]
