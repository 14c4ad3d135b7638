"""Parsed upstream packuments kept for re-use, and what rendering takes from them.

A composed-view miss caused by an invalidation (a publish to an overlaid name,
a second variant or public URL, an LRU eviction, an upstream 304) finds the
upstream body unchanged: parsing it again (``orjson.loads``, ~180 ms for a
10 MB document on the reference VM) and re-doing the per-version tarball URL
rewrite would be wasted. Two things are kept instead:

* :class:`PreparedUpstream`: the parsed document plus, built on first use and
  per variant, each upstream version's manifest **already serialized** with
  its tarball URL rewritten to a placeholder (an ``orjson.Fragment`` per
  version). :func:`overlaystore.render.render` splices those fragments in for
  every version that :func:`~overlaystore.compose.compose` passed through
  unchanged (checked by object identity, so a fragment is only ever used for
  the very manifest it was made from), then substitutes the placeholder with
  the public URL in the serialized bytes.
* :class:`ParsedCache`: an LRU of those, one entry per package name, valid
  only for the body it was parsed from (name + xxh3 digest + length of the
  cached body, see ``CachedPackument.body_xxh3``), bounded by an estimate of
  its memory.

The placeholder is ``@`` + 32 random hex digits drawn once per process
(:data:`PLACEHOLDER`). Nothing outside this process can know it, so no
string from upstream or from a publisher can contain it by accident or on
purpose, and ``bytes.replace`` rewrites exactly the tarball values. JSON
escaping is per character, so replacing the placeholder's bytes with the
JSON-escaped public URL gives exactly the bytes a direct rewrite would:
rendering stays a pure function of the composed document (the same bytes
and ETag in every process, whatever its placeholder).

Everything here is read-only once built: the parsed document is shared with
:func:`compose` results and must never be mutated. Fragments are built
lazily; two threads building the same set concurrently waste work but both
results are equal and the attribute is replaced atomically.

Memory: a parsed packument costs ~5x its JSON size in Python objects
(measured: 51 MB for a 10 MB document, 5.2 MB for 1 MB), the fragments of
one variant about 1x. :class:`ParsedCache` charges ``PARSED_FACTOR * len(body)``
per entry plus the fragment bytes built so far (recharged on each lookup).
The cyclic GC: a full (generation 2) collection walks every container of
every cached document, ~7 per version; measured on the reference VM, each
10 MB document held adds 50-100 ms to such a collection (see
benchmarks/README.md, ``gc_full_collect``). Full collections are rare (when
the objects that survived since the last one reach 25 % of all long-lived
ones), but they stall the event loop: keep ``max_bytes`` modest.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .compose import abbreviate_version
from .names import tarball_basename
from ._types import PackageName

#: Per-process placeholder for the public base URL inside fragment bytes.
#: ``@`` + hex: no JSON escaping, cannot be produced by anything outside
#: this process (see the module docstring).
PLACEHOLDER = "@" + secrets.token_hex(16)
PLACEHOLDER_BYTES = PLACEHOLDER.encode("ascii")

#: Estimated bytes of parsed Python objects per byte of packument JSON.
PARSED_FACTOR = 5
#: Default bound of :class:`ParsedCache`.
DEFAULT_MAX_BYTES = 256 * 2**20

# Variant keys (render's Variant enum lives in render.py, which imports us).
FULL = "full"
ABBREVIATED = "abbreviated"


class PreparedUpstream:
    """A parsed upstream packument and its lazily serialized versions.

    ``doc`` is the parsed document as received (treat as read-only);
    ``digest`` and ``body_size`` identify the body it was parsed from ("" if
    unknown: such an entry is never found in a :class:`ParsedCache`).
    """

    __slots__ = ("name", "doc", "digest", "body_size", "versions", "_fragments", "_fragment_bytes")

    def __init__(self, name: str, doc: Mapping[str, Any], *, digest: str = "", body_size: int = 0) -> None:
        self.name = name
        self.doc = doc
        self.digest = digest
        self.body_size = body_size
        versions = doc.get("versions")
        #: The document's ``versions`` mapping (empty if malformed).
        self.versions: Mapping[str, Any] = versions if isinstance(versions, Mapping) else {}
        self._fragments: dict[str, dict[str, orjson.Fragment]] = {}
        self._fragment_bytes = 0

    @property
    def nbytes(self) -> int:
        """Estimated memory: parsed objects plus the fragments built so far."""
        return PARSED_FACTOR * self.body_size + self._fragment_bytes

    def fragments(self, variant: str) -> Mapping[str, orjson.Fragment]:
        """version → serialized manifest (``variant`` "full" or "abbreviated"),
        tarball URL as a placeholder URL. Built on first call. A version whose
        manifest is not a JSON object, or cannot be serialized, has no entry."""
        built = self._fragments.get(variant)
        if built is None:
            built, size = self._build(variant)
            if variant not in self._fragments:  # another thread may have won the race
                self._fragment_bytes += size
                self._fragments[variant] = built
        return built

    def _build(self, variant: str) -> tuple[dict[str, orjson.Fragment], int]:
        prefix = f"{PLACEHOLDER}/{self.name}/-/{tarball_basename(PackageName(self.name))}-"
        abbreviated = variant == ABBREVIATED
        dumps, fragment = orjson.dumps, orjson.Fragment
        out: dict[str, orjson.Fragment] = {}
        size = 0
        for v, manifest in self.versions.items():
            # (``type() is dict`` first: parsed JSON, and cheaper than the ABC check.)
            if not (type(manifest) is dict or isinstance(manifest, Mapping)) or type(v) is not str:
                continue
            # Exactly what render's copy-on-write rewrite produces (same key
            # order), with the placeholder where the public URL goes.
            m: Any = abbreviate_version(manifest) if abbreviated else manifest
            dist = m.get("dist")
            if type(dist) is dict or isinstance(dist, Mapping):
                new_dist = dist.copy() if type(dist) is dict else dict(dist)
                new_dist["tarball"] = f"{prefix}{v}.tgz"
                if not abbreviated:
                    m = manifest.copy() if type(manifest) is dict else dict(manifest)
                m["dist"] = new_dist
            try:
                # An exact-size copy: orjson's result keeps its ~32 KB output
                # buffer (measured: 3.5x the JSON in RSS for 3 KB manifests,
                # 1.16x copied), and the copy lets the next dumps reuse it.
                data = bytes(memoryview(dumps(m)))
            except (TypeError, orjson.JSONEncodeError):
                continue  # render's ordinary path reports it
            out[v] = fragment(data)
            size += len(data) + 100  # + bytes and Fragment object headers
        return out, size


@dataclass(frozen=True, slots=True)
class ParsedCacheStats:
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int


class ParsedCache:
    """LRU of :class:`PreparedUpstream` per package name, bounded in estimated bytes.

    :meth:`get` returns the entry only if it was parsed from a body with the
    given digest and length. Use it from one thread (the event loop).
    ``max_bytes`` 0 disables it (nothing is kept).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self._max = max_bytes
        self._entries: OrderedDict[str, PreparedUpstream] = OrderedDict()
        self._charged: dict[str, int] = {}
        self._total = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def get(self, name: str, digest: str, body_size: int) -> PreparedUpstream | None:
        entry = self._entries.get(name)
        if entry is None or not digest or entry.digest != digest or entry.body_size != body_size:
            self._misses += 1
            return None
        self._hits += 1
        self._entries.move_to_end(name)
        self._charge(name, entry)
        return entry

    def put(self, prepared: PreparedUpstream) -> None:
        """Keep ``prepared`` (replacing any entry of its name) if it has a digest and fits."""
        name = prepared.name
        self.drop(name)
        if not prepared.digest or prepared.nbytes > self._max:
            return
        self._entries[name] = prepared
        self._charge(name, prepared)

    def holds(self, prepared: PreparedUpstream) -> bool:
        """Whether ``prepared`` is (still) an entry: only then is it worth
        building fragments on it (they are re-used through the cache)."""
        return self._entries.get(prepared.name) is prepared

    def drop(self, name: str) -> None:
        if self._entries.pop(name, None) is not None:
            self._total -= self._charged.pop(name)

    def clear(self) -> None:
        self._entries.clear()
        self._charged.clear()
        self._total = 0

    @property
    def stats(self) -> ParsedCacheStats:
        return ParsedCacheStats(self._hits, self._misses, self._evictions, len(self._entries), self._total)

    @property
    def max_bytes(self) -> int:
        return self._max

    def __len__(self) -> int:
        return len(self._entries)

    def _charge(self, name: str, entry: PreparedUpstream) -> None:
        size = entry.nbytes
        self._total += size - self._charged.get(name, 0)
        self._charged[name] = size
        while self._total > self._max and self._entries:
            victim, _ = self._entries.popitem(last=False)
            self._total -= self._charged.pop(victim)
            self._evictions += 1


__all__ = [
    "DEFAULT_MAX_BYTES",
    "PARSED_FACTOR",
    "PLACEHOLDER",
    "ParsedCache",
    "ParsedCacheStats",
    "PreparedUpstream",
]
