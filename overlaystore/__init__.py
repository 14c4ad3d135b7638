"""overlaystore: npm registry storage that keeps published packages and the
upstream cache apart, and composes what clients see at request time.

The curated public surface; everything else is importable from its module
but not promised. See ``docs/design.md`` for the invariants.
"""

from __future__ import annotations

from ._types import JSONObject, PackageName, Version
from .backend import Backend, BlobInfo, BlobWriter
from .cache import CachedPackument, CacheLayer, CacheMeta, GCReport, WipeReport
from .changes import ChangeCounters
from .compose import abbreviate, compose
from .disk import FileBackend
from .errors import (
    AlreadyPublished,
    Conflict,
    IntegrityMismatch,
    InvalidInput,
    InvalidName,
    InvalidVersion,
    NotFound,
    OverlayStoreError,
    PolicyRefused,
    StorageError,
    StorageFull,
    WrongStore,
)
from .fragment import PublishedFragment
from .layered import Hit, LayeredStore, Location
from .memory import MemoryBackend
from .names import parse_name, tarball_filename, validate_new_name
from .packages import PackageStore, TarballRef
from .policy import NamePolicy, PackageRule, Provenance, ProxyMode
from .published import PublishedLayer
from .render import Rendered, Variant, render
from .versions import highest, parse_version, sort_versions, version_key
from .view import ComposedView, ViewStats
from .watch import Watcher

__all__ = [
    "AlreadyPublished",
    "Backend",
    "BlobInfo",
    "BlobWriter",
    "CacheLayer",
    "CacheMeta",
    "CachedPackument",
    "ChangeCounters",
    "ComposedView",
    "Conflict",
    "FileBackend",
    "GCReport",
    "Hit",
    "IntegrityMismatch",
    "InvalidInput",
    "InvalidName",
    "InvalidVersion",
    "JSONObject",
    "LayeredStore",
    "Location",
    "MemoryBackend",
    "NamePolicy",
    "NotFound",
    "OverlayStoreError",
    "PackageName",
    "PackageRule",
    "PackageStore",
    "PolicyRefused",
    "Provenance",
    "ProxyMode",
    "PublishedFragment",
    "PublishedLayer",
    "Rendered",
    "StorageError",
    "StorageFull",
    "TarballRef",
    "Variant",
    "Version",
    "ViewStats",
    "Watcher",
    "WipeReport",
    "WrongStore",
    "abbreviate",
    "compose",
    "highest",
    "parse_name",
    "parse_version",
    "render",
    "sort_versions",
    "tarball_filename",
    "validate_new_name",
    "version_key",
]
