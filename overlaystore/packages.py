"""PackageStore: npm packages on a LayeredStore; what the server calls.

Published side (on-disk layout, keys relative to the published root)::

    <name>/versions/<version>.json   {"time": iso, "rev": n, "dist-tags": {...},
                                      "manifest": {...}}                  write-once
    <name>/<basename>-<version>.tgz  the tarball                         write-once
    <name>/package-meta.json         rev, created, modified, dist-tags, deprecated,
                                     unpublished (tombstones), maintainers, users

Invariants:

* **Write-once, crash-safe publish.** Under the package lock (in-process and
  cross-process), publish checks that the version has no version file and no
  tombstone, writes the tarball, then the version file (**the commit point**),
  then, on a first publish, an import and every ``fold_after`` publishes, the
  metadata. A crash leaves either the whole version or an orphan tarball,
  which nothing serves and the next publish of that version (or the recovery
  on open, after an hour) replaces.
* **The version files are the truth about which versions exist**; the
  metadata only adds to them. A version whose file exists is live unless
  tombstoned, even if the metadata does not mention it. A version file
  records the ``rev`` its publish gave the package and the dist-tags it set:
  reads replay, oldest first, those newer than the metadata's ``rev``. Reads
  then normalise (tags point at live versions only, a ``latest`` left
  dangling moves to the highest live version), and the next metadata write
  persists the normalised document.
* **``latest`` is never invented on read.** A publish sets it when absent
  (unless ``default_latest=False``: an overlay must keep the upstream's
  ``latest`` unless the publisher tagged one); a fragment without it leaves
  the choice to :func:`~overlaystore.compose.compose`, which fixes up a missing
  ``latest`` over the merged versions.
* **Nothing published is deleted.** Unpublish writes tombstones; a tombstoned
  number can never be published again; its tarball is no longer served.
* **Coherence.** Subscribers are called synchronously, before the call
  returns, after every write that can change a packument: every published
  write, and cached packument stores, touches and drops (not cached tarballs).

Cache side: ``<name>/packument.json`` (upstream bytes as received),
``<name>/packument.meta`` (freshness, plus an xxh3 of the body it describes:
the two files are replaced one after the other without a lock, so a meta that
does not match its body is read as "unknown freshness" instead of pairing an
ETag with the wrong bytes), ``<name>/<basename>-<version>.tgz``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import xxhash
from cachetools import LRUCache

from ._types import JSONObject, PackageName
from .atomic import translate
from .backend import BlobWriter, check_key
from .cache import CachedPackument, CacheLayer, CacheMeta
from .errors import AlreadyPublished, InvalidInput, NotFound, StorageError
from .fragment import PublishedFragment
from .layered import LayeredStore, LayerName
from .names import parse_name, tarball_basename, tarball_filename
from .published import PublishedLayer, meta_key
from .versions import highest, parse_version, sort_versions, version_key

log = logging.getLogger(__name__)

#: Default bound of :class:`VersionDocCache`, in bytes of version files.
VERSION_CACHE_BYTES = 16 * 1024 * 1024

PACKUMENT_FILE = "packument.json"
PACKUMENT_META_FILE = "packument.meta"
#: An orphan tarball (no version file) older than this is removed on open.
ORPHAN_MAX_AGE = 3600.0
#: Default of ``PackageStore(fold_after=)``: a publish rewrites the metadata
#: document once this many publishes' dist-tags are recorded only in their
#: version files.
FOLD_AFTER = 64
#: How deeply a version manifest may nest objects and arrays. Far above any
#: real package.json (conditional ``exports`` reach 6 or 7), and far enough
#: below the JSON codec's limit (254) that the packument, which nests each
#: manifest three levels down, always serializes: a stored manifest is
#: write-once, so one that could not be served would break its package.
MAX_MANIFEST_DEPTH = 64


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def isoformat(moment: datetime) -> str:
    """npm's time format: UTC, milliseconds, "Z" (``2026-11-25T17:03:04.123Z``)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def version_file_key(name: str, version: str) -> str:
    return f"{name}/versions/{version}.json"


def tarball_key(name: PackageName, version: str) -> str:
    return f"{name}/{tarball_filename(name, version)}"


@dataclass(frozen=True, slots=True)
class TarballRef:
    """A tarball found for serving: which layer, its size, a local path for
    sendfile (None on backends without one) and :meth:`read` for the bytes."""

    layer: LayerName
    size: int
    path: Path | None
    key: str
    _reader: Callable[[str], Awaitable[bytes | None]] = field(repr=False, compare=False)

    async def read(self) -> bytes:
        """The tarball bytes. Raises NotFound if it vanished meanwhile (a cache wipe)."""
        data = await self._reader(self.key)
        if data is None:
            raise NotFound(f"{self.key} is no longer stored")
        return data

    async def open(self) -> BinaryIO | None:
        """The local file opened for reading, or None if there is no local
        path or the file vanished meanwhile (a cache wipe or GC). Once open,
        the bytes stay readable whole even if the file is removed: serve from
        this, not from ``path``, when the layer may delete under you."""
        if self.path is None:
            return None
        path = self.path
        try:
            return await asyncio.to_thread(open, path, "rb")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise translate(exc, f"opening {self.key}") from exc


@dataclass(slots=True)
class _Meta:
    """The mutable package metadata document (a working copy)."""

    rev: int = 0
    created: str | None = None
    modified: str | None = None
    dist_tags: dict[str, str] = field(default_factory=dict)
    deprecated: dict[str, str] = field(default_factory=dict)
    unpublished: dict[str, str] = field(default_factory=dict)
    maintainers: list[dict[str, str]] = field(default_factory=list)
    users: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> _Meta:
        rev = doc.get("rev")
        return cls(
            rev=rev if isinstance(rev, int) else 0,
            created=doc.get("created") if isinstance(doc.get("created"), str) else None,
            modified=doc.get("modified") if isinstance(doc.get("modified"), str) else None,
            dist_tags=_str_map(doc.get("dist-tags")),
            deprecated=_str_map(doc.get("deprecated")),
            unpublished=_str_map(doc.get("unpublished")),
            maintainers=[dict(m) for m in doc.get("maintainers") or () if isinstance(m, dict)],
            users={k: True for k, v in (doc.get("users") or {}).items() if v is True},
        )

    def dump(self) -> bytes:
        return orjson.dumps(
            {
                "rev": self.rev,
                "created": self.created,
                "modified": self.modified,
                "dist-tags": self.dist_tags,
                "deprecated": self.deprecated,
                "unpublished": self.unpublished,
                "maintainers": self.maintainers,
                "users": self.users,
            }
        )

    def copy(self) -> _Meta:
        return _Meta(
            self.rev,
            self.created,
            self.modified,
            dict(self.dist_tags),
            dict(self.deprecated),
            dict(self.unpublished),
            [dict(m) for m in self.maintainers],
            dict(self.users),
        )


@dataclass(slots=True)
class _Package:
    """Everything stored for one name: metadata (if any) and version docs."""

    meta: _Meta | None
    docs: dict[str, JSONObject]  # version -> {"time", "manifest"}

    @property
    def exists(self) -> bool:
        return self.meta is not None or bool(self.docs)

    def live(self, meta: _Meta) -> list[str]:
        return sort_versions(v for v in self.docs if v not in meta.unpublished)

    def unfolded(self) -> list[tuple[int, dict[str, str]]]:
        """``(rev, dist-tags)`` of the publishes newer than the metadata
        document, oldest first: their tags live only in their version files."""
        base = self.meta.rev if self.meta is not None else 0
        found = [(doc["rev"], doc.get("dist-tags")) for doc in self.docs.values()
                 if type(doc.get("rev")) is int and doc["rev"] > base]
        found.sort(key=lambda pair: pair[0])
        return [(rev, _str_map(tags)) for rev, tags in found]

    def normalized(self) -> _Meta:
        """The metadata as it should be, given the version files (see module doc)."""
        meta = self.meta.copy() if self.meta is not None else _Meta()
        for rev, tags in self.unfolded():
            meta.dist_tags.update(tags)
            meta.rev = rev
        # A set, not live(): sorting every version on each normalisation was
        # a visible share of a publish in packages with many versions.
        live_set = {v for v in self.docs if v not in meta.unpublished}
        dangling = "latest" in meta.dist_tags and meta.dist_tags["latest"] not in live_set
        meta.dist_tags = {t: v for t, v in meta.dist_tags.items() if v in live_set}
        if dangling and live_set:
            meta.dist_tags["latest"] = highest(live_set) or max(live_set, key=version_key)
        meta.deprecated = {v: m for v, m in meta.deprecated.items() if v in live_set and m}
        times = [str(doc["time"]) for doc in self.docs.values()]
        if times:
            meta.created = meta.created or min(times)
            meta.modified = max(meta.modified or "", max(times))
        if self.meta is None and self.docs:
            # A first publish crashed before its metadata: its publisher is
            # the natural maintainer.
            first = min(self.docs.values(), key=lambda doc: str(doc["time"]))
            user = first["manifest"].get("_npmUser")
            if isinstance(user, dict) and isinstance(user.get("name"), str):
                meta.maintainers = [dict(user)]
        return meta

    def fragment(self, name: PackageName, meta: _Meta | None = None) -> PublishedFragment | None:
        """The published fragment; ``meta``: :meth:`normalized`, if the caller has it."""
        if not self.exists:
            return None
        meta = self.normalized() if meta is None else meta
        ordered = sort_versions(self.docs)
        return PublishedFragment(
            name=name,
            versions={v: self.docs[v]["manifest"] for v in ordered if v not in meta.unpublished},
            times={v: str(self.docs[v]["time"]) for v in ordered},
            created=meta.created,
            modified=meta.modified,
            dist_tags=meta.dist_tags,
            deprecations=meta.deprecated,
            unpublished=meta.unpublished,
            maintainers=tuple(meta.maintainers),
            users=meta.users,
            rev=meta.rev,
        )


@dataclass(frozen=True, slots=True)
class _CachedDoc:
    tag: str
    size: int
    doc: JSONObject | None  # None: not a version document (skipped, like on a fresh read)


@dataclass(frozen=True, slots=True)
class _CachedDir:
    """The parsed version files of one package as last listed (never mutated:
    a change makes a new one)."""

    entries: Mapping[str, _CachedDoc]
    size: int


class VersionDocCache:
    """Parsed version files by package, LRU-bounded by the bytes of the files
    they came from.

    Version files are write-once, so a parsed document stays right for as
    long as its file exists. Readers still list the versions directory every
    time and reuse an entry only if the key is listed with the same change
    tag: a file that is gone is never served (and is dropped), a new one
    (another process's publish) is read, and one re-created under its old
    name with a new tag is read again. On disk a re-created file may get its
    old inode back, hence its old tag; a read in between (every publish reads
    first) sees it absent and drops it, which is what then keeps the old
    document from coming back. The documents are shared between reads, hence
    never mutated (packument code already treats manifests as copy-on-write).
    """

    def __init__(self, max_bytes: int = VERSION_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise InvalidInput("the version cache size cannot be negative")
        # Whole packages, not single files, are the LRU unit: a read looks
        # every version up, and one plain dict per package keeps that cheap.
        self._dirs: LRUCache[str, _CachedDir] = LRUCache(maxsize=max_bytes, getsizeof=_dir_cost)

    def __len__(self) -> int:
        """The number of cached version documents."""
        return sum(len(d.entries) for d in self._dirs.values())

    @property
    def max_bytes(self) -> int:
        return int(self._dirs.maxsize)

    @property
    def bytes(self) -> int:
        return int(self._dirs.currsize)

    def entries(self, prefix: str) -> Mapping[str, _CachedDoc]:
        found = self._dirs.get(prefix)
        return found.entries if found is not None else {}

    def add(self, prefix: str, key: str, entry: _CachedDoc) -> None:
        """``entry`` for ``key``, next to what is cached for ``prefix``."""
        self.store(prefix, {**self.entries(prefix), key: entry})

    def store(self, prefix: str, entries: dict[str, _CachedDoc]) -> None:
        cached = _CachedDir(entries, sum(e.size for e in entries.values()))
        if not entries or _dir_cost(cached) > self._dirs.maxsize:
            self._dirs.pop(prefix, None)  # LRUCache refuses it; drop a stale one
            return
        self._dirs[prefix] = cached


def _dir_cost(cached: _CachedDir) -> int:
    # Empty files still hold slots: no entry may count as free.
    return max(cached.size, len(cached.entries))


class PackageStore:
    """npm operations on a :class:`LayeredStore` (see the module docstring)."""

    def __init__(
        self,
        layered: LayeredStore,
        *,
        clock: Callable[[], datetime] = utcnow,
        version_cache_bytes: int = VERSION_CACHE_BYTES,
        fold_after: int = FOLD_AFTER,
    ) -> None:
        if fold_after < 1:
            raise InvalidInput("fold_after must be at least 1")
        self._layered = layered
        self._clock = clock
        self._fold_after = fold_after
        self._subscribers: list[Callable[[PackageName], None]] = []
        self._cache_writers: list[Callable[[PackageName], None]] = []
        self._version_docs = VersionDocCache(version_cache_bytes)

    @classmethod
    async def open_directories(
        cls, published_root: Path, cache_root: Path, *, recover_cache: bool = True
    ) -> PackageStore:
        """A store on two directories: created if missing, crash-recovered
        (temp files of dead writers, interrupted wipes, orphan tarballs older
        than an hour). ``recover_cache``: see :meth:`LayeredStore.open_directories`."""
        layered = await LayeredStore.open_directories(
            Path(published_root), Path(cache_root), recover_cache=recover_cache
        )
        store = cls(layered)
        await store.repair_orphans()
        return store

    @property
    def layered(self) -> LayeredStore:
        return self._layered

    @property
    def _published(self) -> PublishedLayer:
        return self._layered.published

    @property
    def _cache(self) -> CacheLayer:
        return self._layered.cache

    def subscribe(self, callback: Callable[[PackageName], None]) -> None:
        """Call ``callback(name)`` synchronously after every write that can
        change the packument of ``name``, before the write returns."""
        self._subscribers.append(callback)

    def subscribe_cache_writes(self, callback: Callable[[PackageName], None]) -> None:
        """Call ``callback(name)`` just before this store writes the cached
        packument of ``name``: a file watcher then knows which of the changes
        it reports under the cache root are this process's own."""
        self._cache_writers.append(callback)

    def _before_cache_write(self, name: PackageName) -> None:
        for callback in list(self._cache_writers):
            callback(name)

    def _notify(self, name: PackageName) -> None:
        for callback in list(self._subscribers):
            try:
                callback(name)
            except Exception:  # the write is done; a failing listener must not undo that
                log.exception("change subscriber %r failed for %s", callback, name)

    def _now(self) -> str:
        return isoformat(self._clock())

    # --- published side: reads

    async def _read(self, name: PackageName) -> _Package:
        # The metadata is read before the version directory is listed, so every
        # version it mentions has its file in the listing. Only the version
        # files the cache has not seen are read: re-reading and re-parsing all
        # of them made every publish O(versions).
        mkey, prefix = meta_key(name), f"{name}/versions/"
        raw_meta, listed = await self._published.get_and_list(mkey, prefix)
        meta = _Meta.parse(_load(raw_meta, mkey)) if raw_meta is not None else None
        cached = self._version_docs.entries(prefix)
        entries: dict[str, _CachedDoc] = {}
        missing: list[str] = []
        for key, tag in listed.items():
            if not key.endswith(".json"):
                continue
            entry = cached.get(key)
            if entry is not None and entry.tag == tag:
                entries[key] = entry
            else:
                missing.append(key)
        if missing:
            found = await self._published.get_many(missing)
            for key in missing:
                data = found.get(key)
                if data is None:
                    continue  # removed since the listing: as if never listed
                loaded = _load(data, key)
                valid = isinstance(loaded.get("manifest"), dict) and isinstance(loaded.get("time"), str)
                # Under the listed tag: if the file was re-created in between,
                # the next listing's tag will not match and it is read again.
                entries[key] = _CachedDoc(listed[key], len(data), loaded if valid else None)
        if missing or len(entries) != len(cached):
            self._version_docs.store(prefix, entries)
        docs: dict[str, JSONObject] = {}
        for key, entry in entries.items():
            doc = entry.doc
            if doc is not None:
                docs[key[len(prefix) : -len(".json")]] = doc
        return _Package(meta, docs)

    async def fragment(self, name: PackageName) -> PublishedFragment | None:
        """The published data of ``name``; None if it was never published here."""
        name = parse_name(name)
        return (await self._read(name)).fragment(name)

    async def published_names(self) -> list[PackageName]:
        """Names with published data (fully unpublished ones included), sorted."""
        return await self._published.names()

    # --- published side: writes

    async def publish(
        self,
        name: PackageName,
        version: str,
        manifest: JSONObject,
        tarball: bytes,
        *,
        tags: Mapping[str, str],
        user: Mapping[str, str],
        default_latest: bool = True,
        published_at: datetime | None = None,
        authorize: Callable[[PublishedFragment | None], Awaitable[None]] | None = None,
    ) -> PublishedFragment:
        """Publish one version (see the module docstring for the protocol).

        ``authorize`` is awaited under the package lock with what is published
        so far (None: nothing), before anything is written; it raises to
        refuse. Under the lock, no owner change can slip in between the check
        and the write.

        ``tags`` pointing at live versions (this one included) are set; then,
        if ``default_latest`` and the package has no ``latest``, it is set to
        this version (npm/Verdaccio behaviour for private packages; pass False
        for an overlay, whose ``latest`` should stay the upstream's).

        ``published_at`` (an import from another registry) is recorded as the
        version's publish time instead of now; ``created`` becomes the
        earliest version time, ``modified`` stays the time of this write.

        Raises AlreadyPublished if the version exists or was unpublished,
        InvalidVersion / InvalidName / InvalidInput for malformed input.
        """
        name = parse_name(name)
        version = parse_version(version)
        if not isinstance(manifest, dict):
            raise InvalidInput("the manifest must be a JSON object")
        tags = _check_tags(tags)
        if not isinstance(tarball, (bytes, bytearray, memoryview)):
            raise InvalidInput("the tarball must be bytes")
        vkey = version_file_key(name, version)
        if _depth(manifest) > MAX_MANIFEST_DEPTH:
            raise InvalidInput(f"the manifest nests objects and arrays deeper than {MAX_MANIFEST_DEPTH} levels")
        try:
            # Serialized before anything is written, so a bad manifest cannot
            # leave an orphan tarball behind.
            manifest_json = orjson.dumps(manifest)
        except TypeError as exc:
            raise InvalidInput(f"the manifest is not JSON-serializable: {exc}") from exc
        wrote = False
        try:
            async with self._published.transaction(name) as txn:
                pkg = await self._read(name)
                meta = pkg.normalized()
                if authorize is not None:
                    await authorize(pkg.fragment(name, meta.copy()))
                if version in pkg.docs or version in meta.unpublished:
                    raise AlreadyPublished(
                        vkey, f"You cannot publish over the previously published versions: {version}."
                    )
                now = self._now()
                stamp = now if published_at is None else isoformat(published_at)
                first = pkg.meta is None
                if first and not meta.maintainers:
                    meta.maintainers = [dict(user)] if user else []
                if not meta.created or (published_at is not None and stamp < meta.created):
                    meta.created = stamp  # an imported older version moves it back
                applied = {t: v for t, v in tags.items()
                           if v == version or (v in pkg.docs and v not in meta.unpublished)}
                if default_latest and "latest" not in meta.dist_tags and "latest" not in applied:
                    applied["latest"] = version
                meta.dist_tags.update(applied)
                # Publishes since the metadata document (replayed into meta.rev).
                unfolded = meta.rev - (pkg.meta.rev if pkg.meta is not None else 0)
                meta.rev += 1
                meta.modified = now
                # The version file records the tags this publish set and the
                # rev it gave the package, so the metadata document need not
                # be rewritten (a third durable write) on every publish: reads
                # replay what is newer than it (see _Package.unfolded). It is
                # written when it holds what the version file cannot say, and
                # every ``fold_after`` publishes, which bounds that replay.
                write_meta = first or published_at is not None or unfolded >= self._fold_after
                doc: JSONObject = {"time": stamp, "rev": meta.rev, "dist-tags": applied, "manifest": manifest}
                doc_json = b"".join((
                    b'{"time":', orjson.dumps(stamp), b',"rev":', str(meta.rev).encode(),
                    b',"dist-tags":', orjson.dumps(applied), b',"manifest":', manifest_json, b"}",
                ))
                pkg.docs[version] = doc
                pkg.meta = meta
                final = pkg.normalized()
                wrote = True
                # The version file is the commit point. A tarball already
                # there is the orphan of a crashed publish (we hold the lock,
                # so no publish of this version is in flight): never served,
                # so it is replaced.
                tag = await txn.commit_version(
                    (tarball_key(name, version), bytes(tarball)), (vkey, doc_json), final.dump() if write_meta else None
                )
                # What the next read would parse, kept: it lists the file under this tag.
                self._version_docs.add(f"{name}/versions/", vkey, _CachedDoc(tag, len(doc_json), _load(doc_json, vkey)))
                fragment = pkg.fragment(name, final)
        finally:
            if wrote:
                self._notify(name)
        assert fragment is not None
        return fragment

    async def _update(self, name: PackageName, change: Callable[[_Package, _Meta, str], bool]) -> PublishedFragment:
        """Apply ``change(pkg, meta, now)`` (True if it changed ``meta``) to the
        normalised metadata of ``name`` under the lock, and persist it."""
        name = parse_name(name)
        attempted = False
        try:
            async with self._published.transaction(name) as txn:
                pkg = await self._read(name)
                if not pkg.exists:
                    raise NotFound(f"{name} is not published here")
                meta = pkg.normalized()
                now = self._now()
                if change(pkg, meta, now):
                    meta.rev += 1
                    meta.modified = now
                    pkg.meta = meta
                    attempted = True
                    await txn.replace_meta(pkg.normalized().dump())
                fragment = pkg.fragment(name)
        finally:
            if attempted:
                self._notify(name)
        assert fragment is not None
        return fragment

    async def unpublish(self, name: PackageName, versions: Collection[str]) -> PublishedFragment:
        """Tombstone ``versions`` (files stay; the numbers are never reusable).
        Versions that are not live are ignored. Tags pointing at them are
        dropped; ``latest`` moves to the highest remaining version."""
        wanted = set(versions)

        def change(pkg: _Package, meta: _Meta, now: str) -> bool:
            removed = [v for v in pkg.live(meta) if v in wanted]
            for v in removed:
                meta.unpublished[v] = now
            return bool(removed)

        return await self._update(name, change)

    async def unpublish_all(self, name: PackageName) -> None:
        """Tombstone every live version of ``name`` (NotFound if never published)."""

        def change(pkg: _Package, meta: _Meta, now: str) -> bool:
            removed = pkg.live(meta)
            for v in removed:
                meta.unpublished[v] = now
            return bool(removed)

        await self._update(name, change)

    async def set_dist_tag(self, name: PackageName, tag: str, version: str) -> PublishedFragment:
        """Point ``tag`` at ``version``; NotFound if that version is not live."""
        _check_tags({tag: version})

        def change(pkg: _Package, meta: _Meta, now: str) -> bool:
            if version not in pkg.live(meta):
                raise NotFound(f"{name}@{version} is not published here")
            if meta.dist_tags.get(tag) == version:
                return False
            meta.dist_tags[tag] = version
            return True

        return await self._update(name, change)

    async def remove_dist_tag(self, name: PackageName, tag: str) -> PublishedFragment:
        """Remove ``tag``; InvalidInput for ``latest``, NotFound if it is not set."""
        if tag == "latest":
            raise InvalidInput("the latest tag cannot be removed")

        def change(pkg: _Package, meta: _Meta, now: str) -> bool:
            if meta.dist_tags.pop(tag, None) is None:
                raise NotFound(f"{name} has no dist-tag {tag!r}")
            return True

        return await self._update(name, change)

    async def set_deprecations(self, name: PackageName, messages: Mapping[str, str]) -> PublishedFragment:
        """Set the deprecation message of each version (``""`` removes it).
        Versions that are not live are ignored."""
        if not all(isinstance(v, str) and isinstance(m, str) for v, m in messages.items()):
            raise InvalidInput("deprecation messages must be strings")

        def change(pkg: _Package, meta: _Meta, now: str) -> bool:
            before = dict(meta.deprecated)
            live = set(pkg.live(meta))
            for v, message in messages.items():
                if v not in live:
                    continue
                if message:
                    meta.deprecated[v] = message
                else:
                    meta.deprecated.pop(v, None)
            return meta.deprecated != before

        return await self._update(name, change)

    async def set_maintainers(self, name: PackageName, maintainers: Sequence[Mapping[str, str]]) -> PublishedFragment:
        """Replace the maintainer list (each entry has a ``name``; not empty)."""
        if not maintainers:
            raise InvalidInput("a package needs at least one maintainer")
        if not all(isinstance(m, Mapping) and isinstance(m.get("name"), str) and m["name"] for m in maintainers):
            raise InvalidInput("every maintainer needs a name")
        wanted = [{k: v for k, v in m.items() if isinstance(v, str)} for m in maintainers]

        def change(pkg: _Package, meta: _Meta, now: str) -> bool:
            if meta.maintainers == wanted:
                return False
            meta.maintainers = wanted
            return True

        return await self._update(name, change)

    async def set_star(self, name: PackageName, user: str, starred: bool) -> PublishedFragment:
        """Star (or unstar) ``name`` for ``user``."""
        if not isinstance(user, str) or not user:
            raise InvalidInput("a star needs a user name")

        def change(pkg: _Package, meta: _Meta, now: str) -> bool:
            if starred == (user in meta.users):
                return False
            if starred:
                meta.users[user] = True
            else:
                del meta.users[user]
            return True

        return await self._update(name, change)

    async def repair_orphans(self, *, older_than: float = ORPHAN_MAX_AGE) -> int:
        """Remove published tarballs without a version file (a crashed publish)
        older than ``older_than`` seconds; younger ones are left for a retried
        publish to replace. Returns the number removed."""
        infos = await self._published.keys("")
        keys = {info.key for info in infos}
        cutoff = time.time() - older_than
        removed = 0
        for info in infos:
            name, version = _split_tarball_key(info.key)
            if name is None or version is None or info.mtime >= cutoff:
                continue
            vkey = version_file_key(name, version)
            if vkey in keys:
                continue
            async with self._published.transaction(name) as txn:
                # Re-check under the lock: a publish may have committed since.
                if await self._published.info(vkey) is None:
                    removed += await txn.remove_orphan(info.key)
        return removed

    # --- tarballs

    async def tarball(self, name: PackageName, filename: str) -> TarballRef | None:
        """The tarball ``filename`` of ``name``: published first (only for a
        committed, not unpublished version), then the cache. None if neither
        has it, or if the version is unpublished."""
        name = parse_name(name)
        key = _tarball_file_key(name, filename)
        version = _version_of(name, filename)
        committed = False
        if version is not None:
            mkey, vkey = meta_key(name), version_file_key(name, version)
            found = await self._published.get_many([mkey, vkey])
            if mkey in found and version in _Meta.parse(_load(found[mkey], mkey)).unpublished:
                return None
            committed = vkey in found
        location = await self._layered.locate(key, published=committed)
        if location is None:
            return None
        layer = self._published if location.layer == "published" else self._cache
        return TarballRef(location.layer, location.size, location.path, key, layer.get)

    # --- cache side

    async def cached_packument(self, name: PackageName) -> CachedPackument | None:
        """The cached upstream packument of ``name`` (bytes as received) and
        its freshness; None if not cached. A meta that is missing, corrupt or
        that does not describe this body reads as fetched at 0 with no validators."""
        name = parse_name(name)
        bkey, mkey = f"{name}/{PACKUMENT_FILE}", f"{name}/{PACKUMENT_META_FILE}"
        found = await self._cache.get_many([bkey, mkey])
        body = found.get(bkey)
        if body is None:
            return None
        meta = CacheMeta(fetched_at=0.0)
        try:
            doc = orjson.loads(found[mkey]) if mkey in found else None
        except orjson.JSONDecodeError:
            doc = None
        digest = _digest(body)
        if isinstance(doc, dict) and doc.get("body_xxh3") == digest:
            meta = CacheMeta(
                fetched_at=float(doc.get("fetched_at") or 0.0),
                etag=doc.get("etag") if isinstance(doc.get("etag"), str) else None,
                last_modified=doc.get("last_modified") if isinstance(doc.get("last_modified"), str) else None,
            )
        return CachedPackument(body=body, meta=meta, body_xxh3=digest)

    async def store_packument(self, name: PackageName, body: bytes, meta: CacheMeta) -> None:
        """Cache an upstream packument (body first, then its meta)."""
        name = parse_name(name)
        self._before_cache_write(name)
        try:
            await self._cache.put(f"{name}/{PACKUMENT_FILE}", bytes(body))
            await self._cache.put(f"{name}/{PACKUMENT_META_FILE}", _dump_cache_meta(meta, body))
        finally:
            self._notify(name)

    async def touch_packument(self, name: PackageName, meta: CacheMeta) -> None:
        """Record a revalidation (upstream 304): new freshness, same body.
        Nothing happens if the body is no longer cached."""
        name = parse_name(name)
        body = await self._cache.get(f"{name}/{PACKUMENT_FILE}")
        if body is None:
            return
        self._before_cache_write(name)
        try:
            await self._cache.put(f"{name}/{PACKUMENT_META_FILE}", _dump_cache_meta(meta, body))
        finally:
            self._notify(name)

    async def drop_cached(self, name: PackageName) -> None:
        """Forget everything cached for ``name`` (upstream said 404)."""
        name = parse_name(name)
        try:
            await self._cache.evict_package(name)
        finally:
            self._notify(name)

    async def open_cache_tarball(self, name: PackageName, filename: str) -> BlobWriter:
        """A writer for a verified upstream tarball; commit replaces atomically."""
        name = parse_name(name)
        return await self._cache.open_writer(_tarball_file_key(name, filename))


def _depth(value: object) -> int:
    """How deeply ``value`` nests objects and arrays (a scalar: 0). A loop,
    not recursion: the value may nest deeper than Python's stack allows."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, Mapping):
            children: Iterable[object] = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def _load(data: bytes, key: str) -> JSONObject:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StorageError(f"corrupt stored document {key}") from exc
    if not isinstance(doc, dict):
        raise StorageError(f"corrupt stored document {key}: not an object")
    return doc


def packument_digest(body: bytes) -> str:
    """The digest of a cached packument body (``CachedPackument.body_xxh3``)."""
    return xxhash.xxh3_64_hexdigest(body)


_digest = packument_digest


def _dump_cache_meta(meta: CacheMeta, body: bytes) -> bytes:
    return orjson.dumps(
        {
            "fetched_at": meta.fetched_at,
            "etag": meta.etag,
            "last_modified": meta.last_modified,
            "body_xxh3": _digest(body),
        }
    )


def _str_map(value: Any) -> dict[str, str]:
    return {k: v for k, v in value.items() if isinstance(v, str)} if isinstance(value, dict) else {}


def _check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for tag, version in tags.items():
        if not isinstance(tag, str) or not tag or tag != tag.strip() or not isinstance(version, str):
            raise InvalidInput(f"invalid dist-tag {tag!r}")
        out[tag] = version
    return out


def _tarball_file_key(name: PackageName, filename: str) -> str:
    if not isinstance(filename, str) or "/" in filename or not filename.endswith(".tgz"):
        raise InvalidInput(f"invalid tarball file name {filename!r}")
    return check_key(f"{name}/{filename}")


def _version_of(name: PackageName, filename: str) -> str | None:
    """The version in a canonical tarball file name of ``name``, if it is one."""
    stem = f"{tarball_basename(name)}-"
    if filename.startswith(stem) and filename.endswith(".tgz") and len(filename) > len(stem) + 4:
        return filename[len(stem) : -len(".tgz")]
    return None


def _split_tarball_key(key: str) -> tuple[PackageName | None, str | None]:
    """(name, version) for a published key of the form ``<name>/<base>-<v>.tgz``."""
    head, _, filename = key.rpartition("/")
    if not head or not filename.endswith(".tgz"):
        return None, None
    try:
        name = parse_name(head)
    except InvalidInput:
        return None, None
    return name, _version_of(name, filename)


__all__ = [
    "ORPHAN_MAX_AGE",
    "PACKUMENT_FILE",
    "PACKUMENT_META_FILE",
    "PackageStore",
    "TarballRef",
    "VERSION_CACHE_BYTES",
    "VersionDocCache",
    "isoformat",
    "packument_digest",
    "utcnow",
]
