"""The exception hierarchy of overlaystore.

Every error the library (and the server built on it) raises on purpose is an
:class:`OverlayStoreError`. The server maps these classes to HTTP statuses in
exactly one place (``server/http_errors.py``), walking the MRO, so a new
subclass inherits its parent's status unless it is given its own.

::

    OverlayStoreError
    ├── NotFound                    nothing stored under that name/key/version
    ├── Conflict                    the write contradicts what is stored
    │   └── AlreadyPublished        write-once: that key/version exists (or existed)
    ├── InvalidInput                the caller's data is malformed
    │   ├── InvalidName             not an acceptable npm package name
    │   ├── InvalidVersion          not a valid semver version
    │   └── IntegrityMismatch       bytes do not match a declared digest/length
    ├── PolicyRefused               the name policy forbids the operation
    ├── StorageError                the backend failed (I/O); wraps OSError
    │   └── StorageFull             no space left on the backend
    └── (server-side subclasses live in server/errors.py: authentication,
         authorization, upstream failures)

Library code translates ``OSError`` and JSON decode errors into these once, at
the layer boundary, with ``raise ... from exc``.
"""

from __future__ import annotations


class OverlayStoreError(Exception):
    """Base of every deliberate overlaystore error. ``str(err)`` is user-facing."""


class NotFound(OverlayStoreError):
    """Nothing is stored under the requested name, key or version."""


class Conflict(OverlayStoreError):
    """The write contradicts what is already stored."""


class AlreadyPublished(Conflict):
    """A write-once key (or a version number) already exists or once existed."""

    def __init__(self, key: str, message: str | None = None) -> None:
        self.key = key
        super().__init__(message or f"{key} is already published and cannot be replaced")


class InvalidInput(OverlayStoreError, ValueError):
    """The caller's data is malformed; nothing was written."""


class InvalidName(InvalidInput):
    """Not an acceptable npm package name (or a path-traversal attempt)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"invalid package name {name!r}: {reason}")


class InvalidVersion(InvalidInput):
    """Not a valid semantic version."""

    def __init__(self, version: str) -> None:
        self.version = version
        super().__init__(f"invalid version {version!r}: not a valid semver version")


class IntegrityMismatch(InvalidInput):
    """Bytes do not match a declared digest or length."""


class PolicyRefused(OverlayStoreError):
    """The name policy forbids the operation (e.g. shadowing an upstream name)."""


class StorageError(OverlayStoreError):
    """The storage backend failed; the operation wrote nothing durable."""


class StorageFull(StorageError):
    """The storage backend has no space left."""


class WrongStore(StorageError):
    """A store root holds the other store, or a format this version does not read."""


__all__ = [
    "AlreadyPublished",
    "Conflict",
    "IntegrityMismatch",
    "InvalidInput",
    "InvalidName",
    "InvalidVersion",
    "NotFound",
    "OverlayStoreError",
    "PolicyRefused",
    "StorageError",
    "StorageFull",
    "WrongStore",
]
