"""Which store a directory holds, and in which format: a marker at its root.

The published store and the cache live in two directories that nothing but
configuration tells apart, and one of them is wiped wholesale, by design. A
configuration that swaps them, or points the cache at an old published
store, would have the next ``cache clear`` (or GC) delete published
packages. So each root carries ``.overlaystore-store`` (hidden, hence
skipped by listings, wipes and the watcher) naming its role and format, and
a store is opened only in the role it was created for.

The format number is the on-disk layout this version writes. A store marked
with a newer one was written by a newer overlaystore, whose data this one
could misread (and then rewrite): it is refused, with a message saying so,
instead of being served. A future layout change bumps the number and brings
its migration along.

A root without a marker is claimed for the role asked, unless its contents
show the other role's layout (``package-meta.json`` or ``versions/`` for a
published package, ``packument.json`` for a cached one). Stores made before
markers existed are claimed that way on their first open.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final, Literal

from .atomic import translate, write_file
from .errors import WrongStore

Role = Literal["published", "cache"]

MARKER: Final = ".overlaystore-store"
#: The layout each role is written in by this version (see the module docstring).
FORMATS: Final[dict[Role, int]] = {"published": 1, "cache": 1}

#: What a package directory of each role holds (and the other's never does).
_SIGNS: Final[dict[Role, tuple[str, ...]]] = {
    "published": ("package-meta.json", "versions"),
    "cache": ("packument.json", "packument.meta"),
}
#: Package directories looked into when guessing an unmarked root's role.
_SAMPLE: Final = 64


def claim(root: Path, role: Role) -> None:
    """Check that ``root`` is a ``role`` store this version reads, marking it
    (and creating it) if it is not marked yet. Raises :class:`WrongStore`.
    Blocking: call it in a thread from async code."""
    marker = root / MARKER
    found = _read(marker)
    if found is None:
        seen = _layout_of(root)
        if seen is not None and seen != role:
            raise WrongStore(_swapped(root, role, seen))
        try:
            write_file(marker, json.dumps({"store": role, "format": FORMATS[role]}).encode(), replace=False)
            return
        except FileExistsError:  # another process claimed it first: check what it wrote
            found = _read(marker)
        except OSError as exc:
            raise translate(exc, f"marking {root} as the {role} store") from exc
        if found is None:
            raise WrongStore(f"{marker} vanished while it was being read")
    store, version = found
    if store != role:
        raise WrongStore(_swapped(root, role, store))
    if version > FORMATS[role]:
        raise WrongStore(
            f"{root} is a {role} store in format {version}, written by a newer overlaystore; this version "
            f"reads format {FORMATS[role]}. Run the newer version, or restore a backup made for this one"
        )


def _read(marker: Path) -> tuple[str, int] | None:
    try:
        raw = marker.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise translate(exc, f"reading {marker}") from exc
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("store") not in FORMATS or \
            not isinstance(doc.get("format"), int) or doc["format"] < 1:
        raise WrongStore(f"{marker} is not an overlaystore store marker; "
                         'it should read {"store": "published" | "cache", "format": <n>}')
    return doc["store"], doc["format"]


def _layout_of(root: Path) -> Role | None:
    """The role the package directories under ``root`` show, if any."""
    try:
        tops = [e for e in os.scandir(root) if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise translate(exc, f"listing {root}") from exc
    packages: list[str] = []
    for top in tops[:_SAMPLE]:
        if top.name.startswith("@"):
            try:
                packages += [e.path for e in os.scandir(top.path) if e.is_dir(follow_symlinks=False)][:4]
            except OSError:
                continue
        else:
            packages.append(top.path)
    for package in packages[:_SAMPLE]:
        for role, signs in _SIGNS.items():
            if any(os.path.lexists(os.path.join(package, sign)) for sign in signs):
                return role
    return None


def _swapped(root: Path, role: Role, other: str) -> str:
    return (f"{root} holds the {other} store, not the {role} store: check [storage] (published and cache "
            f"may be swapped). Nothing was changed")


__all__ = ["FORMATS", "MARKER", "Role", "claim"]
