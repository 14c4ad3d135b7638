"""``overlaystore import verdaccio``, ``backup`` and ``restore``: migration and
recovery from the command line.

* ``import verdaccio STORAGE`` runs :func:`server.migrate_verdaccio.import_verdaccio`
  into the configured stores (and, with ``--htpasswd``, the configured user
  file); exit status 1 if anything was left behind (a conflict, a version
  that could not be verified).
* ``backup FILE`` snapshots the published store and the user and token files
  (:func:`overlaystore.backup.create_backup`); safe while a server runs.
* ``restore FILE`` restores one into an empty published store (and absent
  user and token files unless ``--skip-auth``); a server running on it serves
  the packages without a restart.

Progress bars (tqdm, on stderr) appear when stderr is a terminal or with
``--progress``; reports go to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overlaystore.errors import InvalidInput

from .progress import progress_bars

if TYPE_CHECKING:
    from overlaystore.backup import ExtraFile

    from .config import AuthConfig, Config

Loader = Callable[[argparse.Namespace], "Config"]
_LABELS = {"packages": ("packages", "packages"), "backup": ("backup", "packages"),
           "restore": ("restore", "files"), "verify": ("verify", "files")}


def add_commands(
    commands: Any,
    config_option: Callable[[argparse.ArgumentParser], None],
    storage_options: Callable[..., None],
    load: Loader,
) -> None:
    """Add ``import verdaccio``, ``backup`` and ``restore`` to the top-level subcommands."""

    def progress_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--progress", action="store_true",
                            help="show a progress bar even when stderr is not a terminal")

    imports = commands.add_parser(
        "import", help="import packages from another registry's storage",
        description="Import packages from another registry's storage.",
    )
    sources = imports.add_subparsers(dest="import_source", metavar="SOURCE", required=True)
    verdaccio = sources.add_parser(
        "verdaccio", help="split a Verdaccio storage into the published store and the proxy cache",
        description="Split a Verdaccio storage directory: versions published there go to the published "
                    "store (tarballs verified, publish times, dist-tags, deprecations, maintainers kept); "
                    "versions Verdaccio cached from its uplinks go to the proxy cache (or nowhere with "
                    "--drop-cache). The source is only read. Running it again changes nothing. "
                    "Safe while the server runs.",
    )
    verdaccio.add_argument("storage", metavar="STORAGE_DIR", type=Path,
                           help="Verdaccio's storage directory (the one holding .verdaccio-db.json)")
    verdaccio.add_argument("--htpasswd", metavar="FILE", type=Path,
                           help="Verdaccio's htpasswd file: its users are merged into overlaystore's")
    verdaccio.add_argument("--drop-cache", action="store_true",
                           help="do not copy what Verdaccio cached from its uplinks")
    verdaccio.add_argument("--dry-run", action="store_true", help="report what would go where; write nothing")
    verdaccio.add_argument("--json", action="store_true", help="print the report as JSON")
    progress_option(verdaccio)
    config_option(verdaccio)
    storage_options(verdaccio)
    verdaccio.set_defaults(func=lambda args: _import_verdaccio(args, load(args)))

    backup = commands.add_parser(
        "backup", help="write a consistent snapshot of the published store and the user/token files",
        description="Write a consistent snapshot of the published store and the user and token files to "
                    "FILE (tar.gz with a manifest of sha256 digests). Safe while the server runs: every "
                    "package is read under its lock. The proxy cache is not included (it is disposable).",
    )
    backup.add_argument("file", metavar="FILE", type=Path, help="the archive to create (never overwritten)")
    progress_option(backup)
    config_option(backup)
    storage_options(backup, cache=False)
    backup.set_defaults(func=lambda args: _backup(args, load(args)))

    restore = commands.add_parser(
        "restore", help="restore a backup into an empty published store",
        description="Verify FILE against its manifest, then restore it into the published store, which "
                    "must be empty (and the user and token files, which must be absent or empty). "
                    "A server running on the store serves the restored packages without a restart. "
                    "The proxy cache is not touched.",
    )
    restore.add_argument("file", metavar="FILE", type=Path, help="an archive made by 'overlaystore backup'")
    restore.add_argument("--skip-auth", action="store_true",
                         help="restore the published store only, not the user and token files")
    restore.add_argument("--verify-only", action="store_true",
                         help="check the archive against its manifest; restore nothing")
    progress_option(restore)
    config_option(restore)
    storage_options(restore, cache=False)
    restore.set_defaults(func=lambda args: _restore(args, load(args)))


def auth_extras(auth: AuthConfig) -> list[ExtraFile]:
    """The user and token files as backup extras, read and replaced under
    the same cross-process lock the server's account code takes."""
    from overlaystore.backup import ExtraFile

    from .authfiles import SharedFile

    def extra(name: str, path: Path) -> ExtraFile:
        shared = SharedFile(path)

        def read() -> bytes | None:
            if not path.exists():
                return None  # do not create the directory and lock file of an absent file
            with shared.locked():
                return shared.read()

        def write(data: bytes) -> None:
            with shared.locked():
                shared.replace(data)

        return ExtraFile(name, read, write)

    return [extra("auth/htpasswd", auth.htpasswd), extra("auth/tokens.json", auth.tokens)]


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _import_verdaccio(args: argparse.Namespace, config: Config) -> int:
    from .migrate_verdaccio import import_verdaccio

    with progress_bars(args, _LABELS) as progress:
        report = asyncio.run(import_verdaccio(
            args.storage,
            published_root=config.storage.published,
            cache_root=config.storage.cache,
            users_file=config.auth.htpasswd,
            htpasswd=args.htpasswd,
            policy=config.policy,
            drop_cache=args.drop_cache,
            dry_run=args.dry_run,
            progress=progress,
        ))
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok, "changed": report.changed}, indent=2))
    else:
        sys.stdout.write(report.render())
    return 0 if report.ok else 1


def _backup(args: argparse.Namespace, config: Config) -> int:
    from overlaystore.backup import create_backup
    from overlaystore.disk import FileBackend
    from overlaystore.published import PublishedLayer

    root = config.storage.published.resolve()
    target = args.file.resolve()
    if root == target or root in target.parents:
        raise InvalidInput(f"the backup file {target} must not be inside the published store {root}")
    with progress_bars(args, _LABELS) as progress:
        # No recovery: a backup must not change the live store.
        report = asyncio.run(create_backup(PublishedLayer(FileBackend(root)), args.file,
                                           extras=auth_extras(config.auth), progress=progress))
    print(f"backed up {report.packages} package(s), {report.files} file(s), {_size(report.bytes)} "
          f"to {report.path} in {report.seconds:.2f} s"
          + (f" (with {', '.join(report.extras)})" if report.extras else " (no user or token files found)"))
    if report.orphans:
        print(f"left out {report.orphans} tarball(s) of publishes in flight (no version file yet)")
    if report.ignored:
        print(f"left out directories that are not packages: {', '.join(report.ignored)}")
    return 0


def _restore(args: argparse.Namespace, config: Config) -> int:
    from overlaystore.backup import restore_backup, verify_backup
    from overlaystore.disk import FileBackend
    from overlaystore.published import PublishedLayer
    from overlaystore.store_marker import claim

    with progress_bars(args, _LABELS) as progress:
        if args.verify_only:
            manifest = verify_backup(args.file, progress=progress)
            size = sum(f.size for f in manifest.files)
            print(f"{args.file} is intact: {manifest.packages} package(s), {len(manifest.files)} file(s), "
                  f"{_size(size)}, created {manifest.created}")
            return 0
        extras = [] if args.skip_auth else auth_extras(config.auth)
        claim(config.storage.published, "published")  # not the cache by mistake
        report = asyncio.run(restore_backup(args.file, PublishedLayer(FileBackend(config.storage.published)),
                                            extras=extras, progress=progress))
    print(f"restored {report.packages} package(s), {report.files} file(s), {_size(report.bytes)} "
          f"from {report.path} (made {report.created}) into {config.storage.published} in {report.seconds:.2f} s"
          + (f"; also {', '.join(report.extras)}" if report.extras else ""))
    return 0


__all__ = ["add_commands", "auth_extras"]
