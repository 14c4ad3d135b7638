"""Type aliases shared across the library.

`PackageName` and `Version` are NewTypes: a plain ``str`` becomes one only by
passing through the validators in :mod:`overlaystore.names` (or, for versions,
:func:`overlaystore.versions.parse_version`), so a value of that type is known
to be safe to use as a storage path component.
"""

from __future__ import annotations

from typing import Any, NewType

PackageName = NewType("PackageName", str)
Version = NewType("Version", str)

#: A decoded JSON object (a packument, a version manifest, a metadata doc).
JSONObject = dict[str, Any]

__all__ = ["JSONObject", "PackageName", "Version"]
