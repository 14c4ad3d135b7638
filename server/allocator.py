"""glibc ``malloc`` settings for a long-running serving process.

Two glibc defaults keep freed memory resident in a server like this one
(measured, benchmarks/README.md: RSS after serving the synthetic corpus twice
went from 371 MiB to 276 MiB with both changed):

* one arena per thread: renders and file reads run in worker threads, and
  each thread's arena keeps what it freed for itself;
* the dynamic mmap threshold: once a multi-megabyte buffer is freed, glibc
  raises the threshold, so later large buffers (packument bodies, gzip output)
  come from the heap, which rarely shrinks, instead of from ``mmap``, which
  returns pages on free.

An operator's own ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` win.
Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("overlaystore.server")

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
ARENA_MAX = 2
MMAP_THRESHOLD = 256 * 1024


def tune_allocator() -> None:
    """Apply the settings above; call before the process starts threads."""
    if os.environ.get("MALLOC_ARENA_MAX") and os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path) if path else None
    except OSError:
        libc = None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):
        return
    if not os.environ.get("MALLOC_ARENA_MAX") and not mallopt(_M_ARENA_MAX, ARENA_MAX):
        log.debug("mallopt(M_ARENA_MAX) refused")
    if not os.environ.get("MALLOC_MMAP_THRESHOLD_") and not mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")
