"""The Verdaccio peer: Verdaccio 6.8.0, installed with npm into ``.work``.

Verdaccio is the registry overlaystore is most often compared with (and
migrated from), so it runs configured the way its own documentation sets up a
caching proxy with local publishing: one uplink, every package proxied,
anyone reads, logged-in users publish, htpasswd users.

Invariants:

* The install happens once (``install/``, from the npm registry npm is
  configured with) and is reused while its version is the pinned one.
* Every file of the peer (install, config, storage, htpasswd, log) lives in
  ``benchmarks/.work/verdaccio``; nothing outside it is written.
* :meth:`clear_cache` removes what Verdaccio cached from the uplink and keeps
  what was published to it, its user file and its ``.verdaccio-db.json``
  (the list of published packages and the secret that signs the tokens
  already handed out), so credentials survive a cache clear.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from benchmarks.peer import Credentials, Peer, PeerUnavailable, adduser, wait_for_http

VERSION = "6.8.0"
#: verdaccio-audit (a dependency of 6.8.0) asks for node-fetch by the dist-tag
#: "cjs", which the registry no longer carries, so the install fails without
#: this; 2.7.0 is the CommonJS release its require() expects, and runs on Node 20.
_OVERRIDES = {"node-fetch": "2.7.0"}
#: overlaystore's default packument freshness ([upstream].max_age = 300 s,
#: server/config.py): both proxies revalidate equally often.
_UPLINK_MAXAGE = "5m"
_INSTALL_TIMEOUT_S = 900.0


class VerdaccioPeer(Peer):
    """Verdaccio 6.8.0 as a caching proxy with publishing (see the module docstring)."""

    name = "verdaccio"

    def __init__(self, work: Path | None = None) -> None:
        super().__init__(work)
        self.install_dir = self.work / "install"
        self.storage = self.work / "storage"
        self.htpasswd = self.work / "htpasswd"
        self.config_file = self.work / "config.yaml"
        self.log_file = self.work / "verdaccio.log"
        self._credentials: dict[str, Credentials] = {}

    @property
    def main_script(self) -> Path:
        """Verdaccio's command-line entry point inside the install."""
        return self.install_dir / "node_modules" / "verdaccio" / "bin" / "verdaccio"

    # ------------------------------------------------------------ set-up

    def setup(self, upstream_url: str) -> None:
        for tool in ("node", "npm"):
            if shutil.which(tool) is None:
                raise PeerUnavailable(f"verdaccio: {tool} is not installed")
        self.work.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        if self.installed_version() != VERSION:
            self._install()
        self.config_file.write_text(self._config(upstream_url.rstrip("/")))

    def installed_version(self) -> str | None:
        """The Verdaccio version in ``install/``, or None when there is none."""
        try:
            manifest = json.loads((self.install_dir / "node_modules" / "verdaccio" / "package.json").read_text())
        except (OSError, ValueError):
            return None
        version = manifest.get("version")
        return version if isinstance(version, str) and self.main_script.is_file() else None

    def _install(self) -> None:
        self.install_dir.mkdir(parents=True, exist_ok=True)
        manifest = {
            "name": "overlaystore-bench-verdaccio",
            "private": True,
            "dependencies": {"verdaccio": VERSION},
            "overrides": _OVERRIDES,
        }
        (self.install_dir / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
        log = self.work / "install.log"
        # No --registry: npm's own configuration names where packages come from.
        command = ["npm", "install", "--no-audit", "--no-fund", "--omit=dev", "--loglevel=warn"]
        try:
            with log.open("wb") as out:
                done = subprocess.run(command, cwd=self.install_dir, stdout=out, stderr=subprocess.STDOUT,
                                      timeout=_INSTALL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise PeerUnavailable(f"verdaccio: npm install did not finish in {exc.timeout:.0f} s (log: {log})") from exc
        if done.returncode != 0 or self.installed_version() != VERSION:
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
            raise PeerUnavailable(f"verdaccio: npm install failed (status {done.returncode}): {tail} (log: {log})")

    def _config(self, upstream_url: str) -> str:
        # JSON strings are valid YAML double-quoted scalars: paths and URLs
        # need no further escaping.
        def q(value: object) -> str:
            return json.dumps(str(value))

        return f"""\
# Written by benchmarks/verdaccio_peer.py; rewritten by every setup().
storage: {q(self.storage)}
auth:
  htpasswd:
    file: {q(self.htpasswd)}
    # max_users unset: registration is unlimited (the plugin's default).
uplinks:
  upstream:
    url: {q(upstream_url + "/")}
    maxage: {_UPLINK_MAXAGE}
    timeout: 30s
    # The benchmark's upstream is local and always up; never mark it offline.
    max_fails: 1000000
packages:
  "@*/*":
    access: $all
    publish: $authenticated
    proxy: upstream
  "**":
    access: $all
    publish: $authenticated
    proxy: upstream
# JWT API tokens: with the default (legacy AES) tokens every authenticated
# request re-verifies the password with bcryptjs (pure JS, ~0.1 s), so the
# publish scenario would time a password hash, not the registry. overlaystore
# checks a stored token hash, which is what a JWT signature check compares with.
security:
  api:
    jwt:
      sign:
        expiresIn: 7d
web:
  enable: false
log:
  type: stdout
  format: pretty
  level: warn
max_body_size: 100mb
"""

    # ------------------------------------------------------------ life cycle

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("verdaccio is already running")
        if not self.config_file.is_file():
            raise RuntimeError("verdaccio: setup() must run before start()")
        command = ["node", str(self.main_script), "--config", str(self.config_file),
                   "--listen", f"127.0.0.1:{self.port}"]
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(command, cwd=self.work, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
        try:
            wait_for_http(f"{self.base_url}/-/ping", process=self._process)
        except PeerUnavailable as exc:
            self.stop()
            raise PeerUnavailable(f"verdaccio: {exc} (log: {self.log_file})") from exc

    def clear_cache(self) -> None:
        running = self._process is not None
        self.stop()
        published = self._published_names()
        for package in self._package_dirs():
            name = package.relative_to(self.storage).as_posix()
            if name not in published:
                shutil.rmtree(package)
                if package.parent != self.storage and not any(package.parent.iterdir()):
                    package.parent.rmdir()  # the scope's last cached package
        if running:
            self.start()

    def _published_names(self) -> set[str]:
        # The storage's database lists the packages published here ("list");
        # the rest of the storage is what the uplink supplied.
        try:
            db = json.loads((self.storage / ".verdaccio-db.json").read_text())
        except (OSError, ValueError):
            return set()
        names = db.get("list", [])
        return {name for name in names if isinstance(name, str)}

    def _package_dirs(self) -> list[Path]:
        found: list[Path] = []
        if not self.storage.is_dir():
            return found
        for entry in self.storage.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if entry.name.startswith("@"):
                found.extend(sub for sub in entry.iterdir() if sub.is_dir())
            else:
                found.append(entry)
        return found

    # ------------------------------------------------------------ publishing

    def credentials(self, user: str = "bench") -> Credentials:
        """A token for ``user`` (created on first use) from Verdaccio's adduser endpoint."""
        if user not in self._credentials:
            self._credentials[user] = Credentials(user=user, token=self._adduser(user))
        return self._credentials[user]

    def _adduser(self, user: str) -> str:
        try:
            return adduser(self.base_url, user)
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise
        # 409: the user exists (an earlier run, a new peer object). Verdaccio
        # treats the same PUT as a login when it carries that user's Basic
        # credentials (npm's own fallback sends them too).
        return adduser(self.base_url, user, login=True)


__all__ = ["VERSION", "VerdaccioPeer"]
