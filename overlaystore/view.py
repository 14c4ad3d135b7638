"""ComposedView: the in-memory LRU of rendered packuments, bounded in bytes.

Keyed by ``(name, variant, public_url)``; holds :class:`Rendered` values
(body + gzip + ETag), so a hit costs a couple of dict lookups and no JSON work.
A package's tarballs can be held here too, keyed ``(name, TARBALL, filename)``:
they then share the byte budget, the invalidation and the cross-worker change
counters of the package's documents, so an unpublish, a name turning private
or a cache wipe drops them exactly when it drops the documents.

Invariants:

* **Bounded.** The sum of entry sizes (``len(body) + len(gzip)`` plus a fixed
  overhead) never exceeds ``max_bytes``; least recently used entries are
  evicted first; an entry larger than the whole budget is not stored.
* **No stale fill.** A caller reads :meth:`generation` *before* reading the
  stores, composes, then calls :meth:`put` with that generation. If the name
  was invalidated in between (by an in-process write or by the watcher), the
  put is dropped, so a render of old data can never be installed after the
  invalidation that should have removed it.
* **Complete invalidation.** :meth:`invalidate` removes every variant and
  public URL of a name (a per-name index of keys, kept in step with LRU
  evictions).
* **Freshness.** An entry may carry ``expires_at`` (``time.time()`` epoch
  seconds); once passed it is a miss (and is dropped).

Generations: one global counter ``_clock``; :meth:`generation` returns it
(in a :class:`Generation`), :meth:`invalidate` advances it and records the new
value for the name. A put with generation ``g`` is stale iff the name (or
everything) was invalidated at a clock value above ``g``. The per-name record
is bounded: past :data:`MAX_TRACKED_INVALIDATIONS` names it collapses into one
"everything invalidated at clock c" record, which can only make a few
in-flight puts be dropped (a later miss), never admit a stale one.

Other processes (several workers on one host): with ``changes`` (a
:class:`~overlaystore.changes.ChangeCounters` that every writer process bumps
before acknowledging a write), :meth:`generation` also records the name's
change counter, :meth:`put` stores it with the entry, and every hit compares it
with the current value: a counter that moved since the fill started is a miss
(the entry is dropped). That makes a write acknowledged by another process
visible to the very next lookup here, without waiting for the watcher. A
reset of the counters file drops everything (``invalidate_all``).

Not thread-safe: use it from the event loop thread (renders done in worker
threads must be ``put`` back from the loop).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from cachetools import LRUCache

from .render import Rendered, Variant

if TYPE_CHECKING:
    from .changes import ChangeCounters

#: Bytes charged per entry on top of body + gzip (key, tuple, object headers).
ENTRY_OVERHEAD = 512
#: Names with a recorded invalidation before the record is collapsed.
MAX_TRACKED_INVALIDATIONS = 65_536

#: The variant slot of a tarball entry (whose third key part is its file name).
TARBALL: Final = "tarball"
#: What an entry holds: a packument variant, or a tarball.
Representation = Variant | Literal["tarball"]

_Key = tuple[str, Representation, str]
# An entry: (rendered, expires_at or None, change-counter slot or -1, counter
# value when the fill started).
_Entry = tuple[Rendered, "float | None", int, int]


class Generation(NamedTuple):
    """What :meth:`ComposedView.generation` returns, to pass to :meth:`ComposedView.put`."""

    #: The view's invalidation clock.
    clock: int
    #: The name's change-counter slot, or -1 without change counters.
    slot: int = -1
    #: The slot's value (0 without change counters).
    stamp: int = 0


@dataclass(frozen=True, slots=True)
class ViewStats:
    """Counters since construction (``entries``/``bytes``: current)."""

    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int


def _entry_size(entry: _Entry) -> int:
    rendered = entry[0]
    return len(rendered.body) + len(rendered.gzip) + ENTRY_OVERHEAD


def _no_counters(slot: int) -> int:
    raise AssertionError("no change counters")


class _LRU(LRUCache[_Key, _Entry]):
    """LRUCache that reports capacity evictions (not explicit deletions)."""

    def __init__(self, maxsize: int, on_evict: Callable[[_Key], None]) -> None:
        super().__init__(maxsize, getsizeof=_entry_size)
        self._on_evict = on_evict

    def popitem(self) -> tuple[_Key, _Entry]:
        key, value = super().popitem()
        self._on_evict(key)
        return key, value


class ComposedView:
    """Byte-bounded LRU of rendered packuments with per-name invalidation."""

    def __init__(
        self,
        max_bytes: int = 256 * 2**20,
        *,
        clock: Callable[[], float] = time.time,
        changes: ChangeCounters | None = None,
    ) -> None:
        self._cache = _LRU(max_bytes, self._evicted)
        self._changes = changes
        self._read_slot: Callable[[int], int] = _no_counters
        if changes is not None:
            self._read_slot = changes.read_slot
            changes.on_reset(self.invalidate_all)
        self._by_name: dict[str, set[_Key]] = {}
        self._clock = 0  # advanced by every invalidation
        self._invalidated_at: dict[str, int] = {}
        self._all_invalidated_at = 0
        self._now = clock
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    # --- reads -------------------------------------------------------------
    def get(self, name: str, variant: Representation, public_url: str, *, count_miss: bool = True) -> Rendered | None:
        """The cached rendering, or ``None`` (absent or expired: a miss).
        For a tarball: ``get(name, TARBALL, filename)``. ``count_miss=False``:
        a look that another ``get`` follows on a miss (counted there once)."""
        key = (name, variant, public_url)
        entry = self._cache.get(key)
        if entry is None:
            self._misses += count_miss
            return None
        rendered, expires_at, slot, stamp = entry
        if (expires_at is not None and expires_at <= self._now()) or (
            slot >= 0 and self._read_slot(slot) != stamp
        ):
            self._drop(key)
            self._misses += count_miss
            return None
        self._hits += 1
        return rendered

    def generation(self, name: str) -> Generation:
        """A token to pass to :meth:`put` (read it *before* reading the stores)."""
        changes = self._changes
        if changes is None:
            return Generation(self._clock)
        slot = changes.slot(name)
        return Generation(self._clock, slot, changes.read_slot(slot))

    # --- writes ------------------------------------------------------------
    def put(
        self,
        name: str,
        variant: Representation,
        public_url: str,
        rendered: Rendered,
        *,
        generation: Generation | int,
        expires_at: float | None = None,
    ) -> bool:
        """Cache ``rendered`` unless ``name`` was invalidated after ``generation``.

        Returns whether the entry was stored (False: stale, or larger than
        the whole budget). A bare ``int`` generation is the clock alone: with
        change counters, the counter is then read now, not at the start of the
        fill (only safe when nothing can have changed in between).
        """
        if isinstance(generation, Generation):
            clock, slot, stamp = generation
        else:
            clock, slot, stamp = generation, -1, 0
        if self._changes is None:
            slot = -1
        elif slot < 0:
            slot = self._changes.slot(name)
            stamp = self._changes.read_slot(slot)
        if clock < self._all_invalidated_at or clock < self._invalidated_at.get(name, 0):
            return False
        key = (name, variant, public_url)
        try:
            self._cache[key] = (rendered, expires_at, slot, stamp)
        except ValueError:  # larger than max_bytes: serve it, don't cache it
            self._drop(key)
            return False
        self._by_name.setdefault(name, set()).add(key)
        return True

    def invalidate(self, name: str) -> None:
        """Drop every entry of ``name``; in-flight puts for it will be refused."""
        self._clock += 1
        if len(self._invalidated_at) >= MAX_TRACKED_INVALIDATIONS:
            # Collapse (see module docstring): conservative, bounded memory.
            self._invalidated_at.clear()
            self._all_invalidated_at = self._clock
        else:
            self._invalidated_at[name] = self._clock
        for key in self._by_name.pop(name, ()):
            self._cache.pop(key, None)

    def invalidate_all(self) -> None:
        """Drop everything; every in-flight put will be refused."""
        self._clock += 1
        self._all_invalidated_at = self._clock
        self._invalidated_at.clear()
        self._cache.clear()
        self._by_name.clear()

    # --- introspection -----------------------------------------------------
    @property
    def stats(self) -> ViewStats:
        return ViewStats(
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            entries=len(self._cache),
            bytes=int(self._cache.currsize),
        )

    @property
    def max_bytes(self) -> int:
        return int(self._cache.maxsize)

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: Any) -> bool:
        return key in self._cache

    # --- internals ---------------------------------------------------------
    def _drop(self, key: _Key) -> None:
        self._cache.pop(key, None)
        keys = self._by_name.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_name[key[0]]

    def _evicted(self, key: _Key) -> None:
        self._evictions += 1
        keys = self._by_name.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_name[key[0]]


__all__ = [
    "ENTRY_OVERHEAD",
    "MAX_TRACKED_INVALIDATIONS",
    "TARBALL",
    "ComposedView",
    "Generation",
    "Representation",
    "ViewStats",
]
