"""The ``overlaystore`` command line: serve, manage users, check config, manage the cache.

Every command builds its configuration the same way (see
:mod:`server.config_file`): defaults < ``--config FILE`` (or
``$OVERLAYSTORE_CONFIG``) < ``OVERLAYSTORE_*`` variables < flags. Flags are
applied once, here, as overrides; nothing below reads ``sys.argv`` or the
environment again.

Exit status: 0 on success, 1 for an error the message explains (a bad config
value, an unknown user, ...), 2 for a usage error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from typing import TYPE_CHECKING

from overlaystore.errors import OverlayStoreError

from . import cache_cli, recovery_cli
from .config import Config
from .config_file import OVERRIDE_KEYS, ConfigError, config_to_toml, load_config

if TYPE_CHECKING:
    from .auth import Authenticator

# The server stack (aiohttp) and the storage engine are imported by the
# commands that use them, so that --help and config check start quickly.

_EPILOG = """\
configuration precedence (lowest first): built-in defaults, the TOML file
(--config or $OVERLAYSTORE_CONFIG), OVERLAYSTORE_* environment variables
(LISTEN, PUBLIC_URL, PUBLISHED_STORAGE, CACHE_STORAGE, UPSTREAM, OFFLINE,
LOG_LEVEL), then command-line flags.
"""


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", metavar="FILE", type=Path,
        help="TOML configuration file (default: $OVERLAYSTORE_CONFIG, else none)",
    )


def _storage_options(parser: argparse.ArgumentParser, *, cache: bool = True) -> None:
    parser.add_argument(
        "--published-storage", metavar="DIR",
        help="directory of the published store: the source of truth, back it up "
             "(default: storage/published)",
    )
    if cache:
        parser.add_argument(
            "--cache-storage", metavar="DIR",
            help="directory of the proxy cache: disposable (default: storage/cache)",
        )


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default: 127.0.0.1:4873)")
    parser.add_argument(
        "--workers", metavar="N", type=int,
        help="worker processes sharing the port (default: 1); a publish acknowledged by one "
             "is visible to the next request on any other",
    )
    parser.add_argument(
        "--upstream", metavar="URL",
        help="registry to proxy; 'none' for no upstream (default: the registry your npm configuration names)",
    )
    parser.add_argument(
        "--public-url", metavar="URL",
        help="base URL clients reach this server at, used in tarball links "
             "(default: derived from each request's Host / X-Forwarded-* headers)",
    )
    parser.add_argument(
        "--offline", action="store_true", default=None,
        help="never contact the upstream; serve what the cache holds",
    )
    parser.add_argument(
        "--log-level", metavar="LEVEL", type=str.lower, choices=("debug", "info", "warning", "error", "critical"),
        help="debug, info, warning, error or critical (default: info)",
    )
    parser.add_argument(
        "--log-format", metavar="FORMAT", type=str.lower, choices=("text", "json"),
        help="text (default) or json: one JSON object a line, for log pipelines",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overlaystore",
        description="An npm registry that keeps published packages and the upstream cache in separate stores.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the registry", description="Run the registry until interrupted (SIGINT/SIGTERM).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_option(serve)
    _server_options(serve)
    _storage_options(serve)
    serve.set_defaults(func=_serve)

    user = commands.add_parser(
        "user", help="manage registry users (htpasswd)",
        description="Manage the users who can log in with npm login / npm adduser. "
                    "Changes take effect in running servers at once.",
    )
    user_commands = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    for action, helptext in (
        ("add", "create a user"),
        ("passwd", "set a user's password (existing tokens stay valid)"),
        ("remove", "delete a user and revoke all of their tokens"),
        ("list", "list user names"),
    ):
        sub = user_commands.add_parser(action, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        if action != "list":
            sub.add_argument("name", metavar="NAME", help="user name")
        if action in ("add", "passwd"):
            sub.add_argument(
                "--password-stdin", action="store_true",
                help="read the password from the first line of standard input instead of prompting",
            )
        if action == "add":
            sub.add_argument("--email", metavar="EMAIL", help="the user's email address (shown by npm owner ls)")
        _config_option(sub)
        _storage_options(sub, cache=False)
        sub.set_defaults(func=_USER_ACTIONS[action])

    config = commands.add_parser(
        "config", help="inspect the configuration", description="Inspect the configuration.",
    )
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_commands.add_parser(
        "check", help="validate the configuration",
        description="Validate the configuration (file, environment and flags, as 'serve' would see them). "
                    "Exits non-zero with a message naming the offending key.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("--print", action="store_true", dest="print_config",
                       help="print the effective configuration as TOML")
    check.add_argument("--probe", action="store_true",
                       help="also ask the upstream GET /-/ping, with the configured credentials and proxy, "
                            "and exit 1 unless it answers (as readiness does: ok, unauthorized, down)")
    _config_option(check)
    _server_options(check)
    _storage_options(check)
    check.set_defaults(func=_config_check)

    cache = commands.add_parser("cache", help="manage the proxy cache: stats, gc, clear",
                                description="Manage the proxy cache: stats, gc, clear.")
    cache_commands = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    cache_cli.add_commands(cache_commands, _config_option, _storage_options, _load)
    recovery_cli.add_commands(commands, _config_option, _storage_options, _load)  # import, backup, restore
    return parser


def _load(args: argparse.Namespace, *, discover_upstream: bool = False) -> Config:
    overrides = {key: getattr(args, key) for key in OVERRIDE_KEYS if getattr(args, key, None) is not None}
    return load_config(args.config, env=os.environ, overrides=overrides, discover_upstream=discover_upstream)


# ------------------------------------------------------------------ commands


def _serve(args: argparse.Namespace) -> int:
    config = _load(args, discover_upstream=True)
    if config.server.workers > 1:
        from .workers import serve_workers

        return serve_workers(config)
    from .app import run

    run(config)
    return 0


def _read_password(args: argparse.Namespace, *, confirm: bool) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        password = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Repeat password: ") != password:
            raise OverlayStoreError("the passwords do not match")
    if not password:
        raise OverlayStoreError("the password must not be empty")
    return password


def _authenticator(args: argparse.Namespace) -> Authenticator:
    from .auth import Authenticator

    return Authenticator(_load(args).auth)


def _user_add(args: argparse.Namespace) -> int:
    auth = _authenticator(args)
    password = _read_password(args, confirm=True)
    asyncio.run(auth.add_user(args.name, password, args.email))
    print(f"user {args.name} added")
    return 0


def _user_passwd(args: argparse.Namespace) -> int:
    auth = _authenticator(args)
    if not auth.user_exists(args.name):
        raise OverlayStoreError(f"no user named {args.name}")
    auth.set_password(args.name, _read_password(args, confirm=True))
    print(f"password of {args.name} changed")
    return 0


def _user_remove(args: argparse.Namespace) -> int:
    _authenticator(args).remove_user(args.name)
    print(f"user {args.name} removed; their tokens are revoked")
    return 0


def _user_list(args: argparse.Namespace) -> int:
    for name in _authenticator(args).user_names():
        print(name)
    return 0


_USER_ACTIONS = {"add": _user_add, "passwd": _user_passwd, "remove": _user_remove, "list": _user_list}


def _config_check(args: argparse.Namespace) -> int:
    config = _load(args, discover_upstream=True)
    if args.print_config:
        sys.stdout.write(config_to_toml(config))
        return 0
    source = args.config or os.environ.get("OVERLAYSTORE_CONFIG") or "no config file"
    server = config.server
    print(f"configuration OK ({source})")
    print(f"  listen     {server.host}:{server.port}")
    print(f"  published  {config.storage.published}")
    print(f"  cache      {config.storage.cache}")
    upstream = config.upstream
    notes = [note for note, on in (("offline", upstream.offline), ("with credentials", upstream.authorization)) if on]
    detail = f" ({', '.join(notes)})" if notes else ""
    print(f"  upstream   {upstream.url or 'none'}{detail}")
    print(f"  users      {config.auth.htpasswd}")
    if not args.probe or upstream.url is None or upstream.offline:
        return 0
    state = asyncio.run(_probe_upstream(config))
    print(f"  probe      GET {upstream.url}/-/ping: {state}")
    return 0 if state == "ok" else 1


async def _probe_upstream(config: Config) -> str:
    from .health import UPSTREAM_TIMEOUT_S, upstream_state
    from .upstream import UpstreamClient

    async with UpstreamClient(config.upstream) as client:
        return upstream_state(await client.ping(UPSTREAM_TIMEOUT_S * 2))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        status: int = args.func(args)
        return status
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OverlayStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
