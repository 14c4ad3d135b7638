"""The published fragment: everything the published store knows of one name.

A :class:`PublishedFragment` is the published layer's half of a packument, as
read from the write-once version files and the mutable package metadata
document. :func:`overlaystore.compose.compose` lays it over the upstream
packument (if the name policy allows one) to make what clients see.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._types import PackageName


@dataclass(frozen=True, slots=True)
class PublishedFragment:
    """The published data of one package name (read-only mappings).

    * ``versions``: live versions only (not unpublished), each the stored
      manifest exactly as published; deprecations are *not* applied here.
    * ``times``: version → ISO-8601 publish time, for live **and** unpublished
      versions.
    * ``created`` / ``modified``: first publish; last change of anything.
    * ``deprecations``: version → non-empty message.
    * ``unpublished``: version → unpublish time (tombstones; never reusable).
    * ``rev``: a counter bumped by every change of this package.
    """

    name: PackageName
    versions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    times: Mapping[str, str] = field(default_factory=dict)
    created: str | None = None
    modified: str | None = None
    dist_tags: Mapping[str, str] = field(default_factory=dict)
    deprecations: Mapping[str, str] = field(default_factory=dict)
    unpublished: Mapping[str, str] = field(default_factory=dict)
    maintainers: tuple[Mapping[str, str], ...] = ()
    users: Mapping[str, bool] = field(default_factory=dict)
    rev: int = 0

    @property
    def is_live(self) -> bool:
        """True while at least one version is published and not unpublished."""
        return bool(self.versions)


__all__ = ["PublishedFragment"]
