"""Which registry the local npm configuration names.

Used as the default upstream when none is configured, so that overlaystore
proxies whatever the machine's npm already uses (a corporate mirror, say)
without the operator repeating it. The lookup follows npm's own precedence:

1. ``npm_config_registry`` in the environment (npm reads these
   case-insensitively);
2. ``registry=`` in the project ``./.npmrc``, the user config
   (``npm_config_userconfig`` or ``~/.npmrc``), the global config
   (``npm_config_globalconfig``, or ``<prefix>/etc/npmrc`` with the prefix
   from ``npm_config_prefix``, ``$PREFIX`` or two levels above ``node``);
3. ``npm config get registry``, run with a timeout (npm's built-in default).

Everything is read from the ``env`` mapping passed in (``HOME``, ``PATH``
included), never from ``os.environ``, so the lookup is hermetic in tests.
Nothing here raises: a failure is logged as a warning and means "no
upstream".
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("overlaystore.config")

_NPM_TIMEOUT_S = 10.0


def _env_lookup(env: Mapping[str, str], name: str) -> str | None:
    """npm reads ``npm_config_*`` case-insensitively."""
    for key, value in env.items():
        if key.lower() == name and value.strip():
            return value.strip()
    return None


def npm_registry(env: Mapping[str, str], *, cwd: Path) -> tuple[str, str] | None:
    """The registry URL npm would use, and where it was found; None if npm
    names none (or is not installed)."""
    from_env = _env_lookup(env, "npm_config_registry")
    if from_env:
        return from_env, "npm_config_registry"
    for npmrc in _npmrc_files(env, cwd):
        url = _registry_in_npmrc(npmrc, env)
        if url:
            return url, str(npmrc)
    return _ask_npm(env, cwd)


def _npmrc_files(env: Mapping[str, str], cwd: Path) -> list[Path]:
    files = [cwd / ".npmrc"]
    user = _env_lookup(env, "npm_config_userconfig")
    if user:
        files.append(Path(user).expanduser())
    elif env.get("HOME"):
        files.append(Path(env["HOME"]) / ".npmrc")
    global_rc = _env_lookup(env, "npm_config_globalconfig")
    if global_rc:
        files.append(Path(global_rc))
    else:
        # npm's global prefix: $PREFIX, else two levels above the node binary.
        prefix = _env_lookup(env, "npm_config_prefix") or env.get("PREFIX")
        if not prefix and env.get("PATH"):
            node = shutil.which("node", path=env["PATH"])
            if node:
                prefix = str(Path(node).resolve().parent.parent)
        if prefix:
            files.append(Path(prefix) / "etc" / "npmrc")
    return files


_ENV_REF = re.compile(r"\$\{([^}?]+)(\?)?\}")


def _registry_in_npmrc(path: Path, env: Mapping[str, str]) -> str | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            break  # ini sections: top-level keys come first
        if not line or line[0] in ";#" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        if key.strip() != "registry":
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        value = _ENV_REF.sub(lambda m: env.get(m[1], ""), value)
        return value or None
    return None


def _ask_npm(env: Mapping[str, str], cwd: Path) -> tuple[str, str] | None:
    npm = shutil.which("npm", path=env["PATH"]) if env.get("PATH") else None
    if npm is None:
        log.warning("no upstream registry is configured and npm is not installed to name one: "
                    "serving published packages only (set [upstream].url or OVERLAYSTORE_UPSTREAM)")
        return None
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [npm, "config", "get", "registry"], env=dict(env), cwd=cwd, capture_output=True,
            text=True, timeout=_NPM_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not ask npm for its registry (%s): running without an upstream", exc)
        return None
    value = done.stdout.strip().splitlines()[-1].strip() if done.stdout.strip() else ""
    if done.returncode != 0 or not value or value in ("undefined", "null"):
        log.warning("npm names no registry (exit %s): running without an upstream", done.returncode)
        return None
    return value, "npm config get registry"


__all__ = ["npm_registry"]
