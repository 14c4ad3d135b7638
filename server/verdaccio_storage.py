"""Reading a Verdaccio storage directory: which versions were published there
and which were merely cached from an uplink. Read-only: nothing here opens a
source file for writing, creates or removes anything.

The format (``@verdaccio/local-storage``, Verdaccio 5 and 6): one directory per
package (``@scope/name/`` for scoped names) with a ``package.json`` that blends
published and proxied data, and the tarballs beside it; ``.verdaccio-db.json``
at the root lists the names that have local publishes. In ``package.json``:

* ``_distfiles[file]``: the version was learned from an uplink (``{url, sha}``);
* ``_attachments[file]``: the tarball is stored here. Verdaccio 5 marks a
  local publish with ``version``; a tarball it cached from an uplink gets a
  version-less entry (and keeps its ``_distfiles`` record). Verdaccio 6 writes
  no ``version`` on publish (the entry is made after the version) and no
  entry at all for a cached tarball.

Hence the rule, per version (``file`` = last path segment of ``dist.tarball``):

1. a ``_distfiles`` record → **proxied**;
2. an ``_attachments`` entry whose ``version`` is this one → **published**;
3. a version-less ``_attachments`` entry, and the name is in
   ``.verdaccio-db.json`` (or that file is missing) → **published**
   (Verdaccio 6);
4. an ``_attachments`` entry naming another version → **skipped**
   (inconsistent record, reported);
5. no record at all → **proxied** (versions cached by other Verdaccio
   releases may lack their ``_distfiles`` record; a local publish always
   leaves an attachment).

Deprecations live in the version manifests (``deprecated``); dist-tags are one
map for both kinds, so each tag goes with the kind of version it points at.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from overlaystore._types import PackageName
from overlaystore.errors import InvalidInput
from overlaystore.names import parse_name, tarball_basename
from overlaystore.versions import version_key

PACKAGE_FILE = "package.json"
DB_FILE = ".verdaccio-db.json"

Origin = Literal["published", "proxied", "skipped"]


@dataclass(frozen=True, slots=True)
class SourceVersion:
    """One version of a Verdaccio package and where it came from."""

    version: str
    manifest: Mapping[str, Any]
    origin: Origin
    #: ``time[version]`` as Verdaccio recorded it (None if absent).
    time: str | None
    #: The tarball beside package.json, if the file exists.
    tarball: Path | None
    #: Why the version was skipped, or a note about how it was classified.
    note: str = ""


@dataclass(frozen=True, slots=True)
class SourcePackage:
    """A Verdaccio ``package.json``, split into published and proxied versions."""

    name: str
    directory: Path
    versions: tuple[SourceVersion, ...]
    dist_tags: Mapping[str, str]
    time: Mapping[str, str]
    readme: str | None
    users: Mapping[str, bool]
    #: Top-level ``maintainers`` (Verdaccio 6), else empty.
    maintainers: tuple[Mapping[str, str], ...]
    #: The latest ``_uplinks[*].fetched`` (epoch seconds), or None.
    fetched_at: float | None
    in_db_list: bool

    def of(self, origin: Origin) -> list[SourceVersion]:
        return [v for v in self.versions if v.origin == origin]


@dataclass(frozen=True, slots=True)
class SourceProblem:
    """A directory that could not be read as a package."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class SourceStorage:
    """The package directories of a Verdaccio storage and its database."""

    root: Path
    package_dirs: tuple[tuple[str, Path], ...]
    #: Names in ``.verdaccio-db.json`` (None: no readable database).
    db_list: frozenset[str] | None
    problems: tuple[SourceProblem, ...] = field(default=())


def open_storage(root: Path) -> SourceStorage:
    """List the package directories under ``root`` (``name``, ``@scope/name``).

    Raises InvalidInput if ``root`` is not a directory. Directories without a
    ``package.json`` and hidden entries are not packages; those with an
    invalid name are reported as problems.
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a directory (expected Verdaccio's storage directory)")
    dirs: list[tuple[str, Path]] = []
    problems: list[SourceProblem] = []
    for name, path in _walk(root):
        if not (path / PACKAGE_FILE).is_file():
            problems.append(SourceProblem(name, f"no {PACKAGE_FILE}: not a package directory, ignored"))
            continue
        try:
            parse_name(name)
        except InvalidInput as exc:
            problems.append(SourceProblem(name, str(exc)))
            continue
        dirs.append((name, path))
    dirs.sort(key=lambda item: item[0])
    return SourceStorage(root, tuple(dirs), _db_list(root), tuple(problems))


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    for top in sorted(os.listdir(root)):
        path = root / top
        if top.startswith(".") or not path.is_dir() or path.is_symlink():
            continue
        if top.startswith("@"):
            for sub in sorted(os.listdir(path)):
                if not sub.startswith(".") and (path / sub).is_dir() and not (path / sub).is_symlink():
                    yield f"{top}/{sub}", path / sub
        else:
            yield top, path


def _db_list(root: Path) -> frozenset[str] | None:
    try:
        doc = json.loads((root / DB_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    names = doc.get("list") if isinstance(doc, dict) else None
    if not isinstance(names, list):
        return None
    return frozenset(n for n in names if isinstance(n, str))


def read_package(storage: SourceStorage, name: str, directory: Path) -> SourcePackage:
    """Parse and classify one package directory. Raises InvalidInput if its
    ``package.json`` is unreadable or names another package."""
    try:
        doc = json.loads((directory / PACKAGE_FILE).read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{name}: cannot read {PACKAGE_FILE}: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidInput(f"{name}: {PACKAGE_FILE} is not a JSON object")
    if doc.get("name", name) != name:
        raise InvalidInput(f"{name}: {PACKAGE_FILE} names {doc.get('name')!r}, not its directory")
    versions = _obj(doc.get("versions"))
    attachments = dict(_obj(doc.get("_attachments")))
    for key, record in list(attachments.items()):
        # Some releases key a scoped tarball by its full name ("@scope/name-1.0.0.tgz").
        scope, sep, rest = key.partition("/")
        if sep and scope.startswith("@"):
            attachments.setdefault(rest, record)
    distfiles = _obj(doc.get("_distfiles"))
    time = {k: v for k, v in _obj(doc.get("time")).items() if isinstance(v, str)}
    in_db = storage.db_list is None or name in storage.db_list
    out: list[SourceVersion] = []
    for version in sorted((v for v in versions if isinstance(v, str)), key=version_key):
        manifest = versions[version]
        if not isinstance(manifest, dict):
            out.append(SourceVersion(version, {}, "skipped", time.get(version), None, "the manifest is not an object"))
            continue
        files = _candidate_files(name, version, manifest)
        origin, note = _classify(version, files, attachments, distfiles, in_db)
        tarball = next((directory / f for f in files if (directory / f).is_file()), None)
        out.append(SourceVersion(version, manifest, origin, time.get(version), tarball, note))
    fetched = [
        float(u["fetched"]) / 1000.0
        for u in _obj(doc.get("_uplinks")).values()
        if isinstance(u, dict) and isinstance(u.get("fetched"), (int, float)) and not isinstance(u["fetched"], bool)
    ]
    maintainers = tuple(
        {k: v for k, v in m.items() if isinstance(v, str)}
        for m in doc.get("maintainers") or ()
        if isinstance(m, dict) and isinstance(m.get("name"), str) and m["name"]
    )
    return SourcePackage(
        name=name,
        directory=directory,
        versions=tuple(out),
        dist_tags={t: v for t, v in _obj(doc.get("dist-tags")).items() if isinstance(t, str) and isinstance(v, str)},
        time=time,
        readme=doc["readme"] if isinstance(doc.get("readme"), str) and doc["readme"].strip() else None,
        users={u: True for u, starred in _obj(doc.get("users")).items() if starred is True},
        maintainers=maintainers,
        fetched_at=max(fetched) if fetched else None,
        in_db_list=storage.db_list is not None and name in storage.db_list,
    )


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _candidate_files(name: str, version: str, manifest: Mapping[str, Any]) -> list[str]:
    """Tarball file names of a version: the last segment of ``dist.tarball``
    (what Verdaccio keys its records by), then the canonical name."""
    files: list[str] = []
    dist = manifest.get("dist")
    url = dist.get("tarball") if isinstance(dist, dict) else None
    if isinstance(url, str) and url:
        segment = urlsplit(url).path.rpartition("/")[2]
        if segment.endswith(".tgz") and not segment.startswith("."):
            files.append(segment)
    canonical = f"{tarball_basename(PackageName(name))}-{version}.tgz"
    if canonical not in files:
        files.append(canonical)
    return files


def _classify(
    version: str,
    files: list[str],
    attachments: Mapping[str, Any],
    distfiles: Mapping[str, Any],
    in_db: bool,
) -> tuple[Origin, str]:
    if any(f in distfiles for f in files):
        return "proxied", ""
    attachment = next((attachments[f] for f in files if isinstance(attachments.get(f), dict)), None)
    if attachment is None:
        return "proxied", "no _distfiles record (cached by another Verdaccio release)"
    owner = attachment.get("version")
    if owner == version:
        return "published", ""
    if owner is None:
        if in_db:
            return "published", "attachment without a version (Verdaccio 6 publish)"
        return "proxied", "version-less attachment of a name not in .verdaccio-db.json"
    return "skipped", f"its tarball's attachment record names version {owner!r}"


__all__ = [
    "DB_FILE",
    "PACKAGE_FILE",
    "SourcePackage",
    "SourceProblem",
    "SourceStorage",
    "SourceVersion",
    "open_storage",
    "read_package",
]
