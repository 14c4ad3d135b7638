"""Which changes the cache watcher reports are this process's own writes.

Every upstream refresh writes the cached packument; the watcher reports that
write back some tens of milliseconds later, and invalidating on it would drop
the rendering just made from the very same data (measured: after GETting the
whole benchmark corpus once, 5 of 750 renderings were left in the LRU; every
other one had been composed twice). In-process writes already invalidate
synchronously, so a reported change to a name this process itself wrote
within :data:`ECHO_WINDOW_S`, whose cached packument still exists, is skipped.

What that can miss is another process rewriting the same cached packument
within the window: upstream data, still within its freshness, and with
several workers the change counters see it anyway. A removal (cache clear,
GC, an operator's ``rm``) is never skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from overlaystore._types import PackageName
from overlaystore.packages import PACKUMENT_FILE

#: How long after its own write a reported change counts as its echo.
ECHO_WINDOW_S = 2.0


class CacheEchoes:
    """Remembers this process's cache writes for :data:`ECHO_WINDOW_S`."""

    def __init__(self, cache_root: Path, *, clock: Callable[[], float] = time.monotonic,
                 window_s: float = ECHO_WINDOW_S) -> None:
        self._root = cache_root
        self._clock = clock
        self._window = window_s
        self._written: dict[PackageName, float] = {}

    def wrote(self, name: PackageName) -> None:
        """Record a write of ``name``'s cached packument (subscribe this to the store)."""
        now = self._clock()
        self._written.pop(name, None)  # re-insert: the dict stays in write order
        self._written[name] = now
        self._forget_before(now - self._window)

    def foreign(self, names: Iterable[PackageName]) -> set[PackageName]:
        """The reported ``names`` that are not just echoes of our own writes."""
        self._forget_before(self._clock() - self._window)
        return {name for name in names if name not in self._written or not self._still_cached(name)}

    def _still_cached(self, name: PackageName) -> bool:
        return (self._root / name / PACKUMENT_FILE).is_file()

    def _forget_before(self, cutoff: float) -> None:
        while self._written:
            name, at = next(iter(self._written.items()))
            if at >= cutoff:
                return
            del self._written[name]
