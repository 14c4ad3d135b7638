"""``overlaystore cache stats | gc | clear``: the proxy cache from the command line.

Only the cache directory is opened (a :class:`~overlaystore.cache.CacheLayer`
on it); the published store is never read, let alone written. Every command
is safe while a server runs on the same storage: readers there get complete
bytes or a miss and refill from the upstream; the server's watcher drops what
it composed from removed files.

A GC run from here sees file modification times only (the server's in-memory
record of recent reads is not shared), so "least recently used" means "least
recently written" to it; the server's own background GC has both.

Progress bars (tqdm, on stderr) appear when stderr is a terminal or with
``--progress``; the summary goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from .progress import progress_bars

if TYPE_CHECKING:
    from overlaystore.cache import CacheLayer

    from .config import Config

Loader = Callable[[argparse.Namespace], "Config"]
_PHASES = {"scan": ("scanning", "packages"), "delete": ("deleting", "entries")}


def add_commands(
    commands: Any,
    config_option: Callable[[argparse.ArgumentParser], None],
    storage_options: Callable[[argparse.ArgumentParser], None],
    load: Loader,
) -> None:
    """Add ``stats``, ``gc`` and ``clear`` to the ``cache`` subcommand parser."""

    def common(parser: argparse.ArgumentParser, *, progress: bool = True, as_json: bool = True) -> None:
        config_option(parser)
        storage_options(parser)
        if progress:
            parser.add_argument("--progress", action="store_true",
                                help="show a progress bar even when stderr is not a terminal")
        if as_json:
            parser.add_argument("--json", action="store_true", help="print the result as JSON")

    stats = commands.add_parser(
        "stats", help="show what the proxy cache holds",
        description="Count the entries and bytes of the proxy cache (by kind: tarballs, packuments) "
                    "and show the GC limits of the configuration.",
    )
    common(stats)
    stats.set_defaults(func=lambda args: _stats(args, load(args)))

    gc = commands.add_parser(
        "gc", help="evict idle tarballs, then least recently used entries over the size cap",
        description="Evict cached tarballs idle longer than the maximum age, then the least recently used "
                    "entries until the cache is under its size cap ([cache] max_age and max_bytes, or the "
                    "flags). Safe while the server runs. The published store is never touched.",
    )
    common(gc)
    gc.add_argument("--dry-run", action="store_true", help="report what would be evicted; delete nothing")
    gc.add_argument("--max-bytes", metavar="SIZE",
                    help="size cap, e.g. 10GiB or 500MB; 'none' for no cap (default: [cache] max_bytes)")
    gc.add_argument("--max-age", metavar="DURATION",
                    help="idle age of tarballs, e.g. 30d, 12h or seconds; 'none' for no limit "
                         "(default: [cache] max_age)")
    gc.set_defaults(func=lambda args: _gc(args, load(args)))

    clear = commands.add_parser(
        "clear", help="delete everything in the proxy cache",
        description="Delete every cached upstream packument and tarball; they are fetched again on demand. "
                    "Safe while the server runs: downloads in flight finish, later requests refill the cache. "
                    "The published store is never touched.",
    )
    common(clear, progress=False)
    clear.set_defaults(func=lambda args: _clear(args, load(args)))


def _layer(config: Config) -> CacheLayer:
    from overlaystore.cache import CacheLayer
    from overlaystore.disk import FileBackend

    from overlaystore.store_marker import claim

    # Only the cache directory: the published store is not even opened. But
    # the directory must be the cache, not a published store given by mistake.
    claim(config.storage.cache, "cache")
    return CacheLayer(FileBackend(config.storage.cache))


def _ago(moment: float | None) -> str:
    if moment is None:
        return "-"
    age = max(0.0, time.time() - moment)
    for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60)):
        if age >= seconds:
            return f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(moment))} ({age / seconds:.0f} {unit} ago)"
    return f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(moment))} ({age:.0f} s ago)"


def _limits(config: Config) -> str:
    from .cache_admin import format_bytes

    c = config.cache
    cap = "none" if c.max_bytes is None else format_bytes(c.max_bytes)
    age = "none" if c.max_age_s is None else _duration_text(c.max_age_s)
    return f"max_bytes {cap}, tarball max_age {age}"


def _duration_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:g} s"


def _stats(args: argparse.Namespace, config: Config) -> int:
    from .cache_admin import format_bytes, kind_of, stats_json

    layer = _layer(config)
    with progress_bars(args, _PHASES) as progress:
        stats = asyncio.run(layer.stats(kind=kind_of, progress=progress))
    if args.json:
        print(json.dumps({"path": str(config.storage.cache), **stats_json(stats)}, indent=2))
        return 0
    root = config.storage.cache
    print(f"proxy cache at {root} (scanned in {stats.seconds:.2f} s)")
    print(f"  entries     {stats.entries} in {stats.packages} packages")
    usage = ""
    if config.cache.max_bytes:
        usage = f" ({100 * stats.bytes / config.cache.max_bytes:.1f}% of the cap)"
    print(f"  bytes       {format_bytes(stats.bytes)}{usage}")
    for kind, k in stats.by_kind.items():
        print(f"  {kind + 's':<11} {k.entries} entries, {format_bytes(k.bytes)}")
    print(f"  oldest use  {_ago(stats.oldest_use)}")
    print(f"  newest use  {_ago(stats.newest_use)}")
    print(f"  gc limits   {_limits(config)}")
    return 0


def _gc(args: argparse.Namespace, config: Config) -> int:
    from .cache_admin import format_bytes, is_tarball, parse_duration, parse_size

    max_bytes = config.cache.max_bytes if args.max_bytes is None else parse_size(args.max_bytes, "--max-bytes")
    max_age = config.cache.max_age_s if args.max_age is None else parse_duration(args.max_age, "--max-age")
    layer = _layer(config)
    with progress_bars(args, _PHASES) as progress:
        report = asyncio.run(
            layer.gc(max_bytes, max_age, dry_run=args.dry_run, expires=is_tarball, progress=progress)
        )
    if args.json:
        print(json.dumps({"path": str(config.storage.cache), "max_bytes": max_bytes, "max_age": max_age,
                          **asdict(report)}, indent=2))
        return 0
    root = config.storage.cache
    cap = "none" if max_bytes is None else format_bytes(max_bytes)
    age = "none" if max_age is None else _duration_text(max_age)
    print(f"cache gc{' (dry run: nothing deleted)' if report.dry_run else ''} of {root} "
          f"(max_bytes {cap}, tarball max_age {age})")
    if max_bytes is None and max_age is None:
        print("  no limit set: nothing to collect ([cache] max_bytes / max_age, or --max-bytes / --max-age)")
    after = "after (would be)" if report.dry_run else "after"
    print(f"  {'before':<16} {report.entries_before} entries, {format_bytes(report.bytes_before)}")
    print(f"  {after:<16} {report.entries_after} entries, {format_bytes(report.bytes_after)}")
    verb = "would evict" if report.dry_run else "evicted"
    idle = f" ({report.expired} idle tarballs, {format_bytes(report.bytes_expired)})" if report.expired else ""
    print(f"  {verb:<16} {report.evicted} entries, {format_bytes(report.bytes_freed)}{idle}")
    print(f"  {'took':<16} {report.seconds:.2f} s")
    print(f"published store untouched: {config.storage.published}")
    return 0


def _clear(args: argparse.Namespace, config: Config) -> int:
    from .cache_admin import format_bytes

    root = config.storage.cache
    if not root.exists():
        if args.json:
            print(json.dumps({"path": str(root), "entries": 0, "bytes": 0, "seconds": 0.0}))
        else:
            print(f"the proxy cache at {root} is already empty")
        return 0
    report = asyncio.run(_layer(config).wipe())
    if args.json:
        print(json.dumps({"path": str(root), **asdict(report)}, indent=2))
        return 0
    print(f"cleared the proxy cache at {root}: {report.entries} files, {format_bytes(report.bytes)} "
          f"in {report.seconds:.2f} s")
    print(f"  before  {report.entries} entries, {format_bytes(report.bytes)}")
    print("  after   0 entries, 0 B")
    print(f"published store untouched: {config.storage.published}")
    return 0


__all__ = ["add_commands"]
