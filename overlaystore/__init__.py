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
    "abbreviate",
    "AlreadyPublished",
    "Backend",
    "BlobInfo",
    "BlobWriter",
    "CachedPackument",
    "CacheLayer",
    "CacheMeta",
    "ChangeCounters",
    "compose",
    "ComposedView",
    "Conflict",
    "FileBackend",
    "GCReport",
    "highest",
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
    "parse_name",
    "parse_version",
    "PolicyRefused",
    "Provenance",
    "ProxyMode",
    "PublishedFragment",
    "PublishedLayer",
    "render",
    "Rendered",
    "sort_versions",
    "StorageError",
    "StorageFull",
    "tarball_filename",
    "TarballRef",
    "validate_new_name",
    "Variant",
    "Version",
    "version_key",
    "ViewStats",
    "Watcher",
    "WipeReport",
    "WrongStore",
]
