"""``overlaystore import verdaccio``: split a blended Verdaccio storage into a
published store and a proxy cache.

What goes where (the classification is :mod:`server.verdaccio_storage`'s):

* **Published versions** are published into the published store through
  :meth:`PackageStore.publish`, one by one in the order Verdaccio published
  them, each with its original ``time`` and its tarball, which must match the
  manifest's ``dist.integrity`` / ``dist.shasum`` (else the version is
  reported and not imported). The manifest is stored as Verdaccio kept it,
  except that ``deprecated`` moves to the package metadata (as a publish
  here does) and, for a purely local package, the package readme goes back
  into the manifest of the version it came from (Verdaccio moves it to the
  top level). Dist-tags pointing at published versions, deprecations, the
  maintainers and stars follow. For a package with proxied versions too (a
  fork published under an upstream name) ``latest`` is not invented: the
  upstream's stays, and the report says which overlay rule the name needs.
* **Proxied versions** go to the proxy cache as an upstream-like packument
  (those versions, the tags pointing at them, their times; fetched when
  Verdaccio last fetched it, no validators, so the next refresh is a full
  GET) plus the cached tarballs that match their manifests; with
  ``drop_cache`` they are dropped. The cache is never overwritten: a name
  the cache already holds keeps its (newer) copy.
* **Users** from a Verdaccio ``htpasswd`` are merged into overlaystore's (the
  same format): new names are added line for line, a name with the same hash
  is already there, a name with another hash is a conflict, left alone.

Invariants: the source is only ever read (and the destination may not lie
inside it, nor it inside the destination). An import is idempotent: a
version already published with identical bytes is skipped, one with other
bytes is a conflict and left alone, metadata is applied only for versions
imported by this run (so an operator's later changes are never undone), and a
second run writes nothing. A dry run opens the stores without recovery and
writes nothing at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from overlaystore._types import JSONObject, PackageName
from overlaystore.cache import CacheLayer, CacheMeta
from overlaystore.disk import FileBackend
from overlaystore.errors import AlreadyPublished, InvalidInput, OverlayStoreError
from overlaystore.fragment import PublishedFragment
from overlaystore.layered import LayeredStore
from overlaystore.names import tarball_filename
from overlaystore.packages import PackageStore
from overlaystore.policy import NamePolicy, ProxyMode
from overlaystore.published import PublishedLayer
from overlaystore.versions import parse_version, version_key

from .authfiles import SharedFile
from .htpasswd import Htpasswd, validate_user_name
from .publish import check_integrity
from .verdaccio_storage import SourcePackage, SourceVersion, open_storage, read_package

#: ``progress(phase, done, total)``, as in :mod:`overlaystore.cache`.
Progress = Callable[[str, int, int], None]


@dataclass(slots=True)
class PackageResult:
    """What the import did (or, dry, would do) with one package."""

    name: str
    published: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    cache_tarballs: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    overlay_rule_needed: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.published or self.cached or self.cache_tarballs)


@dataclass(slots=True)
class UsersResult:
    source: str
    added: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ImportReport:
    source: str
    published_root: str
    cache_root: str
    dry_run: bool
    drop_cache: bool
    packages: list[PackageResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    users: UsersResult | None = None

    @property
    def ok(self) -> bool:
        """No conflict, and every published version was imported (or was already)."""
        users_ok = self.users is None or not (self.users.conflicts or self.users.skipped)
        return users_ok and not any(p.conflicts or p.skipped for p in self.packages)

    @property
    def changed(self) -> bool:
        return any(p.changed for p in self.packages) or bool(self.users and self.users.added)

    def render(self) -> str:
        return _render(self)


async def import_verdaccio(
    source: Path,
    *,
    published_root: Path,
    cache_root: Path,
    users_file: Path,
    htpasswd: Path | None = None,
    policy: NamePolicy | None = None,
    drop_cache: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> ImportReport:
    """Import the Verdaccio storage directory ``source`` (see the module docstring).

    Raises InvalidInput if ``source`` is not a directory or overlaps a
    destination. Per-package problems are reported, not raised.
    """
    source = Path(source)
    _check_apart(source, {"published store": published_root, "proxy cache": cache_root,
                          "user file": users_file})
    storage = open_storage(source)
    policy = policy or NamePolicy()
    report = ImportReport(str(source), str(published_root), str(cache_root), dry_run, drop_cache)
    report.problems.extend(f"{p.path}: {p.reason}" for p in storage.problems)
    if storage.db_list is None:
        report.problems.append(".verdaccio-db.json missing or unreadable: version-less attachments "
                               "count as published")
    if dry_run:
        # No recovery, no directories created: a dry run writes nothing.
        store = PackageStore(LayeredStore(PublishedLayer(FileBackend(published_root)),
                                          CacheLayer(FileBackend(cache_root))))
    else:
        store = await PackageStore.open_directories(published_root, cache_root)
    total = len(storage.package_dirs)
    if progress is not None:
        progress("packages", 0, total)
    for done, (name, directory) in enumerate(storage.package_dirs, 1):
        try:
            pkg = await asyncio.to_thread(read_package, storage, name, directory)
        except InvalidInput as exc:
            report.problems.append(str(exc))
        else:
            report.packages.append(await _import_package(store, pkg, policy, dry_run=dry_run, drop_cache=drop_cache))
        if progress is not None:
            progress("packages", done, total)
    if htpasswd is not None:
        report.users = await asyncio.to_thread(merge_users, Path(htpasswd), Path(users_file), dry_run=dry_run)
    else:
        for candidate in (source.parent / "htpasswd", source / "htpasswd"):
            if candidate.is_file():
                report.problems.append(f"found {candidate}: pass --htpasswd {candidate} to import its users")
                break
    return report


def _check_apart(source: Path, destinations: Mapping[str, Path]) -> None:
    src = source.resolve()
    for what, path in destinations.items():
        dest = Path(path).resolve()
        if dest == src or src in dest.parents or dest in src.parents:
            raise InvalidInput(
                f"the {what} {dest} and the Verdaccio storage {src} overlap; the source must stay "
                "untouched: choose destinations outside it (--published-storage, --cache-storage, "
                "[auth] htpasswd)"
            )


# ------------------------------------------------------------------ one package


async def _import_package(
    store: PackageStore, pkg: SourcePackage, policy: NamePolicy, *, dry_run: bool, drop_cache: bool
) -> PackageResult:
    name = PackageName(pkg.name)  # checked by open_storage
    result = PackageResult(pkg.name)
    published = sorted(pkg.of("published"), key=lambda v: (v.time or "", version_key(v.version)))
    proxied = pkg.of("proxied")
    result.skipped.extend(f"{v.version}: {v.note}" for v in pkg.of("skipped"))
    by_note: dict[str, list[str]] = {}
    for v in pkg.versions:
        if v.note and v.origin != "skipped":
            by_note.setdefault(v.note, []).append(v.version)
    result.notes.extend(f"{note}: {_list(versions)}" for note, versions in by_note.items())
    if published:
        await _import_published(store, name, pkg, published, result, mixed=bool(proxied), dry_run=dry_run)
        rule = policy.rule_for(name)
        if proxied and rule.proxy is not ProxyMode.OVERLAY:
            result.overlay_rule_needed = True
            result.notes.append(
                f"published versions over an upstream package: served as private (published versions "
                f'only) until an overlay rule covers it: [[packages]] pattern = "{name}" proxy = "overlay"'
            )
    if proxied:
        if drop_cache:
            result.dropped = [v.version for v in proxied]
        else:
            await _import_proxied(store, name, pkg, proxied, result, dry_run=dry_run)
    return result


async def _import_published(
    store: PackageStore,
    name: PackageName,
    pkg: SourcePackage,
    versions: Sequence[SourceVersion],
    result: PackageResult,
    *,
    mixed: bool,
    dry_run: bool,
) -> None:
    before = await store.fragment(name)
    # Verdaccio keeps one readme, the last publish's, at the top level.
    readme_owner = versions[-1].version if pkg.readme and not mixed else None
    maintainers = _maintainers(pkg, versions)
    user = maintainers[0] if maintainers else {}
    imported: dict[str, JSONObject] = {}
    for sv in versions:
        loaded = await asyncio.to_thread(_load_tarball, sv)
        if isinstance(loaded, str):
            result.skipped.append(f"{sv.version}: {loaded}")
            continue
        data, note = loaded
        if note:
            result.notes.append(f"{sv.version}: {note}")
        manifest = _stored_manifest(sv, pkg.readme if sv.version == readme_owner else None)
        verdict = await _compare(store, name, before, sv.version, manifest, data)
        if verdict is None and not dry_run:
            try:
                await store.publish(
                    name, sv.version, manifest, data,
                    tags={t: v for t, v in pkg.dist_tags.items() if v == sv.version},
                    user=user, default_latest=not mixed, published_at=_parse_time(sv.time),
                )
            except AlreadyPublished:  # someone else was quicker: judge what is there now
                verdict = await _compare(store, name, await store.fragment(name), sv.version, manifest, data)
        if verdict is None:
            result.published.append(sv.version)
            imported[sv.version] = dict(sv.manifest)
        elif verdict == "":
            result.already.append(sv.version)
        else:
            result.conflicts.append(f"{sv.version}: {verdict}")
    if dry_run or not imported:
        return
    deprecations = {v: m["deprecated"] for v, m in imported.items()
                    if isinstance(m.get("deprecated"), str) and m["deprecated"]}
    if deprecations:
        await store.set_deprecations(name, deprecations)
    if before is None:  # a package new to this store: its people come along
        if len(maintainers) > 1:
            await store.set_maintainers(name, maintainers)
        for starred_by in pkg.users:
            try:
                await store.set_star(name, starred_by, True)
            except InvalidInput:
                result.notes.append(f"star of {starred_by!r} not imported")


async def _compare(
    store: PackageStore, name: PackageName, fragment: PublishedFragment | None,
    version: str, manifest: JSONObject, data: bytes,
) -> str | None:
    """None: not published here; "": published with identical bytes; else the conflict."""
    if fragment is None:
        return None
    if version in fragment.unpublished:
        return "unpublished here (the number cannot be reused); left alone"
    if version not in fragment.versions:
        return None
    stored = await store.layered.published.get(f"{name}/{tarball_filename(name, version)}")
    if stored != data:
        return "already published here with a different tarball; left alone"
    if dict(fragment.versions[version]) != manifest:
        return "already published here with a different manifest; left alone"
    return ""


def _load_tarball(sv: SourceVersion) -> tuple[bytes, str] | str:
    """The verified tarball bytes and a note, or why the version cannot be imported."""
    try:
        parse_version(sv.version)
    except InvalidInput as exc:
        return str(exc)
    if sv.tarball is None:
        return "its tarball is missing from the storage"
    try:
        data = sv.tarball.read_bytes()
    except OSError as exc:
        return f"cannot read {sv.tarball.name}: {exc.strerror or exc}"
    dist = sv.manifest.get("dist")
    dist = dist if isinstance(dist, dict) else {}
    if not isinstance(dist.get("integrity"), str) and not isinstance(dist.get("shasum"), str):
        return data, "no dist.integrity or dist.shasum: imported unverified"
    try:
        check_integrity(data, dist)
    except InvalidInput as exc:
        return f"{sv.tarball.name}: {exc}"
    return data, ""


def _stored_manifest(sv: SourceVersion, readme: str | None) -> JSONObject:
    manifest = dict(sv.manifest)
    manifest.pop("deprecated", None)  # package metadata here, as on a publish
    if readme is not None and not manifest.get("readme"):
        manifest["readme"] = readme
    return manifest


def _maintainers(pkg: SourcePackage, versions: Sequence[SourceVersion]) -> list[dict[str, str]]:
    """Top-level maintainers (Verdaccio 6), else those of the last published
    version, else the first publisher."""
    if pkg.maintainers:
        return [dict(m) for m in pkg.maintainers]
    for manifest in (v.manifest for v in reversed(versions)):
        listed = [
            {k: v for k, v in m.items() if isinstance(v, str)}
            for m in manifest.get("maintainers") or ()
            if isinstance(m, dict) and isinstance(m.get("name"), str) and m["name"]
        ]
        if listed:
            return listed
    for manifest in (v.manifest for v in versions):
        user = manifest.get("_npmUser")
        if isinstance(user, dict) and isinstance(user.get("name"), str) and user["name"]:
            return [{k: v for k, v in user.items() if isinstance(v, str)}]
    return []


def _parse_time(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


async def _import_proxied(
    store: PackageStore,
    name: PackageName,
    pkg: SourcePackage,
    versions: Sequence[SourceVersion],
    result: PackageResult,
    *,
    dry_run: bool,
) -> None:
    if await store.cached_packument(name) is None:
        result.cached = [v.version for v in versions]
        if not dry_run:
            body = upstream_document(pkg, versions)
            await store.store_packument(name, body, CacheMeta(fetched_at=pkg.fetched_at or 0.0))
    cache = store.layered.cache
    for sv in versions:
        if sv.tarball is None:
            continue
        try:
            filename = tarball_filename(name, sv.version)
            key = f"{name}/{filename}"
            if await cache.info(key) is not None:
                continue
        except InvalidInput:
            result.notes.append(f"{sv.version}: not a storable version number; tarball not cached")
            continue
        data = await asyncio.to_thread(_verified_cache_tarball, sv)
        if data is None:
            result.notes.append(f"{sv.version}: cached tarball does not match its manifest; not cached")
            continue
        result.cache_tarballs.append(sv.version)
        if not dry_run:
            writer = await store.open_cache_tarball(name, filename)
            async with writer:
                await writer.write(data)
                await writer.commit()


def _verified_cache_tarball(sv: SourceVersion) -> bytes | None:
    assert sv.tarball is not None
    dist = sv.manifest.get("dist")
    try:
        data = sv.tarball.read_bytes()
        check_integrity(data, dist if isinstance(dist, dict) else {})
    except (OSError, OverlayStoreError):
        return None
    return data


def upstream_document(pkg: SourcePackage, versions: Sequence[SourceVersion]) -> bytes:
    """The packument the upstream served Verdaccio, as far as its storage
    still tells: the proxied versions, the tags pointing at them, their times."""
    manifests = {v.version: v.manifest for v in sorted(versions, key=lambda v: version_key(v.version))}
    time = {k: pkg.time[k] for k in ("created", "modified") if k in pkg.time}
    time.update({v: pkg.time[v] for v in manifests if v in pkg.time})
    doc: dict[str, Any] = {
        "_id": pkg.name,
        "name": pkg.name,
        "dist-tags": {t: v for t, v in pkg.dist_tags.items() if v in manifests},
        "versions": manifests,
        "time": time,
    }
    if pkg.readme and not pkg.of("published"):
        doc["readme"] = pkg.readme
    return orjson.dumps(doc)


# ------------------------------------------------------------------ users


def merge_users(source: Path, target: Path, *, dry_run: bool) -> UsersResult:
    """Merge the users of the htpasswd ``source`` into ``target`` (see the module docstring)."""
    try:
        incoming = Htpasswd.parse(source.read_text("utf-8", errors="replace"))
    except OSError as exc:
        raise InvalidInput(f"cannot read {source}: {exc.strerror or exc}") from exc
    result = UsersResult(str(source))
    shared = SharedFile(target)

    def merge(current: Htpasswd) -> Htpasswd:
        updated = current
        for entry in incoming.users.values():
            try:
                validate_user_name(entry.name)
            except InvalidInput as exc:
                result.skipped.append(f"{entry.name}: {exc}")
                continue
            existing = current.users.get(entry.name)
            if existing is None:
                updated = updated.with_user(entry)
                result.added.append(entry.name)
            elif existing.hash == entry.hash:
                result.present.append(entry.name)
            else:
                result.conflicts.append(f"{entry.name}: exists here with another password; left alone")
        return updated

    if dry_run:
        merge(_parse_users(shared.read()))
        return result
    with shared.locked():
        current = _parse_users(shared.read())
        updated = merge(current)
        if updated is not current:
            shared.replace(updated.render())
    return result


def _parse_users(data: bytes | None) -> Htpasswd:
    return Htpasswd.parse(data.decode("utf-8", errors="replace") if data else "")


# ------------------------------------------------------------------ report


def _list(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def _render(report: ImportReport) -> str:
    dry = report.dry_run

    def did(now: str, past: str) -> str:
        return f"would {now}" if dry else past

    lines = [
        f"Verdaccio import from {report.source}" + (" (dry run: nothing written)" if dry else ""),
        f"  published store: {report.published_root}",
        f"  proxy cache:     {report.cache_root}" + (" (not used: --drop-cache)" if report.drop_cache else ""),
        "",
    ]
    for p in report.packages:
        parts: list[str] = []
        if p.published:
            parts.append(f"{did('publish', 'published')} {_list(p.published)}")
        if p.already:
            parts.append(f"already imported: {_list(p.already)}")
        if p.cached:
            parts.append(f"{did('cache', 'cached')} {len(p.cached)} upstream version(s)")
        if p.cache_tarballs:
            parts.append(f"{did('cache', 'cached')} {len(p.cache_tarballs)} tarball(s)")
        if p.dropped:
            parts.append(f"{did('drop', 'dropped')} {len(p.dropped)} proxied version(s)")
        if not (p.changed or p.dropped or p.conflicts or p.skipped):
            parts = ["already imported"]
        lines.append(f"{p.name}: " + "; ".join(parts))
        lines.extend(f"    CONFLICT {c}" for c in p.conflicts)
        lines.extend(f"    skipped {s}" for s in p.skipped)
        lines.extend(f"    note: {n}" for n in p.notes)
    if report.users is not None:
        u = report.users
        lines.append(f"users from {u.source}: {did('add', 'added')} {len(u.added)}"
                     + (f" ({_list(u.added)})" if u.added else "")
                     + f"; already present {len(u.present)}")
        lines.extend(f"    CONFLICT user {c}" for c in u.conflicts)
        lines.extend(f"    skipped user {s}" for s in u.skipped)
    for problem in report.problems:
        lines.append(f"note: {problem}")
    total = {
        key: sum(len(getattr(p, key)) for p in report.packages)
        for key in ("published", "already", "conflicts", "skipped", "cache_tarballs", "dropped")
    }
    packuments = sum(1 for p in report.packages if p.cached)
    lines.append("")
    lines.append(
        f"{len(report.packages)} package(s): {total['published']} version(s) "
        f"{'to publish' if dry else 'published'}, {total['already']} already imported, "
        f"{total['conflicts']} conflict(s), {total['skipped']} skipped; cache: {packuments} packument(s) and "
        f"{total['cache_tarballs']} tarball(s) {'to write' if dry else 'written'}"
        + (f", {total['dropped']} proxied version(s) dropped" if total["dropped"] else "")
    )
    if not report.changed and not dry:
        lines.append("already imported: nothing changed")
    return "\n".join(lines) + "\n"


__all__ = ["ImportReport", "PackageResult", "UsersResult", "import_verdaccio", "merge_users", "upstream_document"]
