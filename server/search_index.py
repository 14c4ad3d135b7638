"""What ``GET /-/v1/search``, ``npm stars`` and ``npm access list packages``
know of each published package, kept between requests.

A search matches every published package's latest version, and reading a
package from the store costs a directory listing and a thread hop: per search
that was linear in the number of published packages (about a millisecond
each). The index keeps, per name, the search entry and the text it is matched
against, and drops a name whenever the composed view would: on an in-process
write (a store subscriber), on a watcher report, and, with several workers,
when the name's shared change counter moved (checked on every use, as the
view checks its hits). The list of names is read from the store on every
search, so a package another process publishes is found at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from overlaystore._types import PackageName
from overlaystore.changes import ChangeCounters
from overlaystore.fragment import PublishedFragment
from overlaystore.packages import PackageStore


@dataclass(frozen=True, slots=True)
class Summary:
    """A package as search sees it: its entry (None when it has no live
    ``latest``) and the lowercased text of its name, description and
    keywords; who starred it and who maintains it (nobody, once no version
    is live)."""

    entry: dict[str, Any] | None
    text: str
    stamp: int  # the name's change counter when it was read (0 with one worker)
    starred_by: frozenset[str] = frozenset()
    maintained_by: frozenset[str] = frozenset()

    def matches(self, words: Iterable[str]) -> bool:
        return all(word in self.text for word in words)


def summarize(fragment: PublishedFragment, stamp: int = 0) -> Summary:
    live = bool(fragment.versions)
    starred_by = frozenset(u for u, starred in fragment.users.items() if starred and live)
    maintained_by = frozenset(str(m["name"]) for m in fragment.maintainers if m.get("name") and live)
    latest = fragment.dist_tags.get("latest")
    manifest = fragment.versions.get(latest or "")
    if manifest is None:
        return Summary(None, "", stamp, starred_by, maintained_by)
    keywords = manifest.get("keywords")
    keywords = [str(k) for k in keywords] if isinstance(keywords, list) else []
    npm_user = manifest.get("_npmUser") or {}
    entry = {
        "package": {
            "name": fragment.name,
            "scope": fragment.name[1:].partition("/")[0] if fragment.name.startswith("@") else "unscoped",
            "version": latest,
            "description": manifest.get("description", ""),
            "keywords": keywords,
            "date": fragment.times.get(latest or "", fragment.modified),
            "links": {},
            "publisher": {"username": npm_user.get("name", ""), "email": npm_user.get("email", "")},
            "maintainers": [{"username": m.get("name", ""), "email": m.get("email", "")}
                            for m in fragment.maintainers],
        },
        "score": {"final": 1.0, "detail": {"quality": 1.0, "popularity": 1.0, "maintenance": 1.0}},
        "searchScore": 1.0,
    }
    text = " ".join([fragment.name, str(manifest.get("description", "")), *keywords]).lower()
    return Summary(entry, text, stamp, starred_by, maintained_by)


class SearchIndex:
    """Summaries of the published packages of ``store`` (see the module docstring)."""

    def __init__(self, store: PackageStore, changes: ChangeCounters | None = None) -> None:
        self._store = store
        self._changes = changes
        self._summaries: dict[PackageName, Summary] = {}
        # A token per name being read; invalidating the name drops it. A
        # summary whose token is gone when its read ends may predate a
        # write: it is used for that search but not kept. Only names in
        # flight are tracked, and only their own invalidations count (upstream
        # refreshes invalidate names all the time).
        self._reading: dict[PackageName, object] = {}
        if changes is not None:
            changes.on_reset(self.invalidate_all)

    def __len__(self) -> int:
        return len(self._summaries)

    def invalidate(self, name: PackageName) -> None:
        self._summaries.pop(name, None)
        self._reading.pop(name, None)

    def invalidate_all(self) -> None:
        self._summaries.clear()
        self._reading.clear()

    async def summaries(self) -> list[tuple[PackageName, Summary]]:
        """Every published name (sorted) with its summary."""
        names = await self._store.published_names()
        for gone in self._summaries.keys() - set(names):
            del self._summaries[gone]
        found: list[tuple[PackageName, Summary]] = []
        for name in names:
            stamp = self._changes.read(name) if self._changes is not None else 0
            summary = self._summaries.get(name)
            if summary is None or summary.stamp != stamp:
                token = self._reading[name] = object()
                try:
                    fragment = await self._store.fragment(name)
                finally:
                    kept = self._reading.get(name) is token
                    if kept:
                        del self._reading[name]
                if fragment is None:  # removed since the listing
                    continue
                summary = summarize(fragment, stamp)
                if kept:
                    self._summaries[name] = summary
            found.append((name, summary))
        return found


__all__ = ["SearchIndex", "Summary", "summarize"]
