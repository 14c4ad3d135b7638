"""Backup and restore of the published store (plus a few small extra files,
such as the server's user and token files) as one ``tar.gz`` archive.

Archive layout (a gzip-compressed tar, written as a stream)::

    published/<key>            every file of the published store, by key
    extra/<name>               each extra file (e.g. extra/auth/htpasswd)
    overlaystore-backup.json   the manifest, last: format, version, created,
                               and every member's path, size and sha256

Invariants:

* **Consistent while the store is in use.** For each package, the file list
  and ``package-meta.json`` are read under the package lock (in-process and
  cross-process, the one every publish takes), so a snapshot never holds a
  half-published version or a metadata document that names versions it does
  not contain. The version files and tarballs listed are write-once and never
  removed, so they are copied after the lock is released. A tarball without
  its version file (a publish in flight, or the orphan of a crashed one) is
  left out: nothing serves it. Extra files are read by their owner's
  ``read`` (under its lock).
* **The archive appears whole or not at all**: written to a temp file beside
  the target, fsynced, then linked into place; an existing file is never
  overwritten.
* **Restore verifies before it writes.** The whole archive is read once and
  every member checked against the manifest (nothing missing, nothing extra,
  sizes and digests equal, paths safe) before the first byte is written; a
  corrupt or tampered archive is refused.
* **Restore only into an empty published store** (and only over absent or
  empty extra files), never touching anything else (the cache is not even
  opened). Files are written through the layer (temp + fsync + link, or
  rename for the metadata, + directory fsync), package by package under the
  package lock, tarballs first, version files next, metadata last: the order
  of a publish, so a server running on the store sees each package appear
  consistently (its watcher notices; no restart needed).

Everything blocking (tar, gzip, hashing) runs off the event loop.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import orjson

from . import atomic
from .backend import BlobInfo, check_key, package_of
from .errors import Conflict, InvalidInput, StorageError
from .names import parse_name, tarball_basename
from .published import PublishedLayer, meta_key
from .store_marker import FORMATS

MANIFEST_NAME: Final = "overlaystore-backup.json"
FORMAT: Final = "overlaystore-backup"
FORMAT_VERSION: Final = 1
PUBLISHED_PREFIX: Final = "published/"
EXTRA_PREFIX: Final = "extra/"
GZIP_LEVEL: Final = 6

#: ``progress(phase, done, total)``: phase "backup" / "verify" / "restore" counts packages or files.
Progress = Callable[[str, int, int], None]


class BackupError(InvalidInput):
    """The archive is not an intact overlaystore backup (corrupt, truncated, tampered)."""


class StoreNotEmpty(Conflict):
    """A restore target already holds data."""


@dataclass(frozen=True, slots=True)
class ExtraFile:
    """A small file saved beside the published store.

    ``read()`` returns its bytes (None: absent) consistently, e.g. under its
    owner's lock; ``write(data)`` replaces it atomically. Both block.
    """

    name: str
    read: Callable[[], bytes | None]
    write: Callable[[bytes], None]


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class BackupManifest:
    created: str
    packages: int
    files: tuple[FileEntry, ...]
    #: the published store's on-disk format the files are in (store_marker.FORMATS)
    store_format: int = 1

    @property
    def extras(self) -> list[str]:
        return [f.path[len(EXTRA_PREFIX):] for f in self.files if f.path.startswith(EXTRA_PREFIX)]


@dataclass(frozen=True, slots=True)
class BackupReport:
    path: Path
    packages: int
    files: int
    bytes: int
    extras: tuple[str, ...]
    #: Tarballs left out because no version file names them (publishes in flight).
    orphans: int
    #: Top-level directories left out because they are not package names.
    ignored: tuple[str, ...]
    seconds: float


@dataclass(frozen=True, slots=True)
class RestoreReport:
    path: Path
    created: str
    packages: int
    files: int
    bytes: int
    extras: tuple[str, ...]
    seconds: float


# ------------------------------------------------------------------ backup


async def create_backup(
    published: PublishedLayer,
    target: Path,
    *,
    extras: Sequence[ExtraFile] = (),
    progress: Progress | None = None,
) -> BackupReport:
    """Write a consistent snapshot of ``published`` (and ``extras``) to ``target``.

    Raises Conflict if ``target`` exists, StorageError if the store fails or
    a listed file vanishes (the store is not supposed to lose files).
    """
    started = time.perf_counter()
    target = Path(target)
    if target.exists():
        raise Conflict(f"{target} exists; a backup never overwrites a file")
    writer = await _io(f"creating {target}", _ArchiveWriter, target)
    try:
        names = await published.names()
        packages = orphans = 0
        ignored: list[str] = []
        if progress is not None:
            progress("backup", 0, len(names))
        for done, name in enumerate(names, 1):
            try:
                parse_name(name)
            except InvalidInput:
                ignored.append(name)  # e.g. lost+found: not a package, nothing serves it
                continue
            async with published.transaction(name):
                infos = await published.keys(f"{name}/")
                meta = await published.get(meta_key(name))
            immutable, skipped = _snapshot_keys(name, infos)
            orphans += skipped
            if immutable or meta is not None:
                packages += 1
            for info in immutable:
                data = await published.get(info.key)
                if data is None:
                    raise StorageError(f"{info.key} vanished during the backup")
                await _io("writing the archive", writer.add, PUBLISHED_PREFIX + info.key, data, info.mtime, 0o644)
            if meta is not None:
                await _io("writing the archive", writer.add, PUBLISHED_PREFIX + meta_key(name), meta, time.time(), 0o644)
            if progress is not None:
                progress("backup", done, len(names))
        saved: list[str] = []
        for extra in extras:
            data = await asyncio.to_thread(extra.read)
            if data is not None:
                await _io("writing the archive", writer.add, EXTRA_PREFIX + _extra_name(extra.name), data,
                          time.time(), 0o600)
                saved.append(extra.name)
        await _io(f"writing {target}", writer.finish, packages)
    except BaseException:
        await asyncio.to_thread(writer.abort)
        raise
    return BackupReport(
        path=target, packages=packages, files=len(writer.entries),
        bytes=sum(e.size for e in writer.entries), extras=tuple(saved), orphans=orphans,
        ignored=tuple(ignored), seconds=time.perf_counter() - started,
    )


def _snapshot_keys(name: str, infos: Iterable[BlobInfo]) -> tuple[list[BlobInfo], int]:
    """The write-once files of a package to copy, in publish order (tarballs,
    version files, anything else); and how many orphan tarballs were left out."""
    by_key = {info.key: info for info in infos}
    meta = meta_key(name)
    stem = f"{name}/{tarball_basename(parse_name(name))}-"
    tarballs: list[BlobInfo] = []
    versions: list[BlobInfo] = []
    other: list[BlobInfo] = []
    orphans = 0
    for key, info in sorted(by_key.items()):
        if key == meta:
            continue
        if key.startswith(f"{name}/versions/"):
            versions.append(info)
        elif key.startswith(stem) and key.endswith(".tgz") and "/" not in key[len(stem):]:
            version = key[len(stem):-len(".tgz")]
            if f"{name}/versions/{version}.json" in by_key:
                tarballs.append(info)
            else:
                orphans += 1
        else:
            other.append(info)
    return tarballs + versions + other, orphans


def _extra_name(name: str) -> str:
    check_key(name)
    return name


class _Sink:
    """The write end tarfile's stream mode needs, on an AtomicFile."""

    def __init__(self, handle: atomic.AtomicFile) -> None:
        self._handle = handle

    def write(self, data: bytes) -> int:
        self._handle.write(data)
        return len(data)


class _ArchiveWriter:
    """A streaming tar.gz under a temp name; linked into place by :meth:`finish`."""

    def __init__(self, target: Path) -> None:
        self._handle = atomic.AtomicFile(target)
        # Level 6, not tarfile's 9: the tarballs are compressed already, the
        # JSON compresses about as well, and 9 costs far more time.
        self._gzip = gzip.GzipFile(filename="", mode="wb", fileobj=_Sink(self._handle),  # type: ignore[arg-type]
                                   compresslevel=GZIP_LEVEL, mtime=0)
        self._tar = tarfile.open(fileobj=self._gzip, mode="w|", format=tarfile.PAX_FORMAT)
        self.entries: list[FileEntry] = []

    def add(self, path: str, data: bytes, mtime: float, mode: int) -> None:
        info = tarfile.TarInfo(path)
        info.size, info.mtime, info.mode = len(data), int(mtime), mode
        self._tar.addfile(info, io.BytesIO(data))
        self.entries.append(FileEntry(path, len(data), hashlib.sha256(data).hexdigest()))

    def finish(self, packages: int) -> None:
        manifest = orjson.dumps(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "created": _now(),
                "packages": packages,
                "store_format": FORMATS["published"],
                "files": [{"path": e.path, "size": e.size, "sha256": e.sha256} for e in self.entries],
            },
            option=orjson.OPT_INDENT_2,
        )
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size, info.mtime, info.mode = len(manifest), int(time.time()), 0o644
        self._tar.addfile(info, io.BytesIO(manifest))
        self._tar.close()
        self._gzip.close()
        try:
            self._handle.commit(replace=False)
        except FileExistsError as exc:
            raise Conflict(f"{exc.filename or 'the target'} appeared meanwhile; not overwritten") from exc

    def abort(self) -> None:
        try:
            self._tar.close()
            self._gzip.close()
        except (OSError, tarfile.TarError, ValueError):
            pass
        self._handle.abort()


def _now() -> str:
    moment = datetime.now(timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


async def _io(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return await asyncio.to_thread(fn, *args)
    except OSError as exc:
        raise atomic.translate(exc, what) from exc


# ------------------------------------------------------------------ verify


_CORRUPT = (tarfile.TarError, EOFError, zlib.error, OSError, UnicodeError)


def verify_backup(source: Path, *, progress: Progress | None = None) -> BackupManifest:
    """Read the whole archive and check it against its manifest. Blocking.

    Raises BackupError for anything but an intact archive of this format.
    """
    seen: dict[str, FileEntry] = {}
    manifest_bytes: bytes | None = None
    try:
        with open(source, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for member in tar:
                name = member.name
                if name == MANIFEST_NAME and manifest_bytes is None:
                    manifest_bytes = _member_bytes(tar, member)
                    continue
                if manifest_bytes is not None:
                    raise BackupError(f"{name}: a member after the manifest")
                _check_member_name(name)
                if not member.isreg():
                    raise BackupError(f"{name}: not a regular file")
                if name in seen:
                    raise BackupError(f"{name}: appears twice")
                digest, size = _hash_member(tar, member)
                seen[name] = FileEntry(name, size, digest)
                if progress is not None:
                    progress("verify", len(seen), 0)
    except FileNotFoundError as exc:
        raise InvalidInput(f"{source}: no such file") from exc
    except BackupError as exc:
        raise BackupError(f"{source} is not an intact overlaystore backup: {exc}") from None
    except _CORRUPT as exc:
        raise BackupError(f"{source} is not an intact overlaystore backup (corrupt or truncated): {exc}") from exc
    if manifest_bytes is None:
        raise BackupError(f"{source} is not an intact overlaystore backup: no {MANIFEST_NAME} (truncated?)")
    manifest = _parse_manifest(source, manifest_bytes)
    listed = {f.path: f for f in manifest.files}
    missing = sorted(set(listed) - set(seen))
    extra = sorted(set(seen) - set(listed))
    changed = sorted(p for p in set(listed) & set(seen) if listed[p] != seen[p])
    problems = [f"missing {p}" for p in missing[:5]] + [f"not in the manifest: {p}" for p in extra[:5]] + [
        f"size or sha256 differs: {p}" for p in changed[:5]
    ]
    if problems:
        raise BackupError(f"{source} does not match its manifest: " + "; ".join(problems))
    return manifest


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise BackupError(f"{member.name}: not a regular file")
    with handle:
        return handle.read()


def _hash_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[str, int]:
    handle = tar.extractfile(member)
    if handle is None:
        raise BackupError(f"{member.name}: not a regular file")
    digest = hashlib.sha256()
    size = 0
    with handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _check_member_name(name: str) -> None:
    try:
        if name.startswith(PUBLISHED_PREFIX):
            key = check_key(name[len(PUBLISHED_PREFIX):])
            parse_name(package_of(key))
            return
        if name.startswith(EXTRA_PREFIX):
            check_key(name[len(EXTRA_PREFIX):])
            return
    except InvalidInput as exc:
        raise BackupError(f"{name!r}: unsafe path ({exc})") from None
    raise BackupError(f"{name!r}: unexpected member")


def _parse_manifest(source: Path, data: bytes) -> BackupManifest:
    try:
        doc = orjson.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("not an overlaystore backup manifest")
        if doc.get("version") != FORMAT_VERSION:
            raise ValueError(f"format version {doc.get('version')!r} is not supported (this is {FORMAT_VERSION})")
        files = tuple(
            FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in doc["files"]
        )
        # Backups from before the field are in format 1, the only one there was.
        store_format = doc.get("store_format", 1)
        if not isinstance(store_format, int) or store_format < 1:
            raise ValueError(f"store_format must be a positive integer, got {store_format!r}")
        return BackupManifest(created=str(doc.get("created")), packages=int(doc.get("packages") or 0), files=files,
                              store_format=store_format)
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{source}: unreadable manifest: {exc}") from exc


# ------------------------------------------------------------------ restore


async def restore_backup(
    source: Path,
    published: PublishedLayer,
    *,
    extras: Sequence[ExtraFile] = (),
    progress: Progress | None = None,
) -> RestoreReport:
    """Restore the archive ``source`` into the empty ``published`` layer (and
    the ``extras`` it holds). Extras not passed are not restored.

    Raises StoreNotEmpty if the layer holds any file or a passed extra file
    has content, BackupError if the archive is not intact; either way nothing
    was written.
    """
    started = time.perf_counter()
    source = Path(source)
    await _check_empty(published, extras)
    manifest = await asyncio.to_thread(verify_backup, source)
    if manifest.store_format > FORMATS["published"]:
        raise BackupError(f"{source} holds a published store in format {manifest.store_format}, made by a newer "
                          f"overlaystore; this version reads format {FORMATS['published']}: restore it with that one")
    wanted = {EXTRA_PREFIX + e.name: e for e in extras}
    expected = {f.path: f for f in manifest.files}
    total = len(manifest.files)
    files = size = 0
    restored_extras: list[str] = []
    packages: set[str] = set()
    raw = await _io(f"reading {source}", open, source, "rb")
    try:
        tar = await _io(f"reading {source}", tarfile.open, None, "r|*", raw)
        async with AsyncExitStack() as stack:
            locked: str | None = None
            while True:
                item = await _io(f"reading {source}", _next_file, tar)
                if item is None:
                    break
                path, data = item
                entry = expected.get(path)
                if entry is None or entry.size != len(data) or entry.sha256 != hashlib.sha256(data).hexdigest():
                    # Verified a moment ago: the file changed under us.
                    raise BackupError(f"{source} changed during the restore ({path}); the restore is incomplete")
                if path.startswith(PUBLISHED_PREFIX):
                    key = path[len(PUBLISHED_PREFIX):]
                    name = package_of(key)
                    if name != locked:
                        await stack.aclose()
                        txn = await stack.enter_async_context(published.transaction(name))
                        locked = name
                        packages.add(name)
                    if key == meta_key(name):
                        await txn.replace_meta(data)
                    else:
                        await published.put(key, data)
                elif path in wanted:
                    await stack.aclose()
                    locked = None
                    await _io(f"restoring {wanted[path].name}", wanted[path].write, data)
                    restored_extras.append(wanted[path].name)
                else:
                    continue
                files += 1
                size += len(data)
                if progress is not None:
                    progress("restore", files, total)
    finally:
        await asyncio.to_thread(raw.close)
    return RestoreReport(
        path=source, created=manifest.created, packages=len(packages), files=files, bytes=size,
        extras=tuple(restored_extras), seconds=time.perf_counter() - started,
    )


async def _check_empty(published: PublishedLayer, extras: Sequence[ExtraFile]) -> None:
    names = await published.names()
    stored = await published.keys("") if not names else []
    if names or stored:
        sample = ", ".join(names[:3]) if names else stored[0].key
        raise StoreNotEmpty(
            f"refusing to restore: the published store is not empty ({len(names) or len(stored)} "
            f"package(s), e.g. {sample}); restore needs an empty store: move the current one aside first"
        )
    for extra in extras:
        if await asyncio.to_thread(extra.read):
            raise StoreNotEmpty(
                f"refusing to restore: {extra.name} already has content; move it aside first "
                "(or restore the published store only)"
            )


def _next_file(tar: tarfile.TarFile) -> tuple[str, bytes] | None:
    """The next member's path and bytes (the manifest skipped); None at the end."""
    while True:
        member = tar.next()
        if member is None:
            return None
        if member.name == MANIFEST_NAME:
            continue
        return member.name, _member_bytes(tar, member)


__all__ = [
    "EXTRA_PREFIX",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "PUBLISHED_PREFIX",
    "BackupError",
    "BackupManifest",
    "BackupReport",
    "ExtraFile",
    "FileEntry",
    "RestoreReport",
    "StoreNotEmpty",
    "create_backup",
    "restore_backup",
    "verify_backup",
]
