"""The overlaystore peer: the real ``overlaystore serve`` in a subprocess.

It runs exactly what an operator runs: the console script of the project's
virtualenv, a TOML file in ``benchmarks/.work/overlaystore``, and the
operator interfaces for everything else (npm adduser for users, the admin
cache API to clear the cache). Nothing is imported from ``server/``: the
benchmark measures the installed command, start-up included.

Configuration (overlaystore.toml): published and cache stores under
``storage/``, log level ``warning`` and no access log (Verdaccio logs at
``warn`` only, too), open registration (npm adduser creates users), one
administrator (:data:`ADMIN`) for the cache API; everything else, upstream
freshness included, is the embedded default. Address, worker count and
upstream are flags, as they change from run to run.

Invariants:

* :meth:`start` returns once every worker answers, not just the first.
* :meth:`clear_cache` returns once every worker has dropped its composed
  packuments: the next request of each package goes upstream.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

from benchmarks.peer import Credentials, Peer, PeerUnavailable, adduser, wait_for_http

REPO = Path(__file__).resolve().parent.parent
#: The administrator whose token clears the cache (``[auth] admins``).
ADMIN = "bench-admin"
#: Response header naming the worker that answered (server/workers.py);
#: absent with a single worker.
_WORKER_HEADER = "X-Overlaystore-Worker"
#: Seconds to reach every worker: the kernel spreads new connections at
#: random over the workers' SO_REUSEPORT sockets, and one still starting
#: has no socket yet.
_WORKERS_TIMEOUT_S = 60.0


class OverlaystorePeer(Peer):
    """overlaystore as a caching proxy with publishing (see the module docstring)."""

    name = "overlaystore"
    stop_timeout_s = 30.0  # in-flight requests get to finish

    def __init__(self, work: Path | None = None, *, workers: int = 1, repo: Path = REPO) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        super().__init__(work)
        self.workers = workers
        self.executable = repo / ".venv" / "bin" / "overlaystore"
        self.config_file = self.work / "overlaystore.toml"
        self.log_file = self.work / "overlaystore.log"
        self._upstream_url: str | None = None
        self._credentials: dict[str, Credentials] = {}

    @property
    def published_dir(self) -> Path:
        """The published store (durable; survives :meth:`clear_cache`)."""
        return self.work / "storage" / "published"

    @property
    def cache_dir(self) -> Path:
        """The proxy cache: fill it before :meth:`start` for a start-up with a warm cache."""
        return self.work / "storage" / "cache"

    # ------------------------------------------------------------ set-up

    def setup(self, upstream_url: str) -> None:
        if not self.executable.is_file():
            raise PeerUnavailable(f"overlaystore: {self.executable} is missing (run ./dev once to create .venv)")
        self.work.mkdir(parents=True, exist_ok=True)
        self._upstream_url = upstream_url.rstrip("/")
        self.config_file.write_text(self._config())
        check = subprocess.run([str(self.executable), "config", "check", "--config", str(self.config_file),
                                "--upstream", self._upstream_url], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise PeerUnavailable(f"overlaystore: {self.config_file}: {check.stderr.strip()}")

    def _config(self) -> str:
        def q(value: object) -> str:
            return json.dumps(str(value))  # a JSON string is a TOML basic string

        return f"""\
# Written by benchmarks/overlaystore_peer.py; rewritten by every setup().
# --listen, --workers and --upstream are given on the command line.
log_level = "warning"
access_log = false

[storage]
published = {q(self.published_dir)}
cache = {q(self.cache_dir)}

[auth]
registration = true
admins = [{q(ADMIN)}]
"""

    # ------------------------------------------------------------ life cycle

    def command(self) -> list[str]:
        """The ``overlaystore serve`` command line :meth:`start` runs."""
        if self._upstream_url is None:
            raise RuntimeError("overlaystore: setup() must run before start()")
        return [str(self.executable), "serve", "--config", str(self.config_file),
                "--listen", f"127.0.0.1:{self.port}", "--workers", str(self.workers),
                "--upstream", self._upstream_url]

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("overlaystore is already running")
        command = self.command()
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(command, cwd=self.work, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
        try:
            wait_for_http(f"{self.base_url}/-/ping", process=self._process)
            self._each_worker("GET", "/-/ping", {})
        except PeerUnavailable as exc:
            self.stop()
            raise PeerUnavailable(f"overlaystore: {exc} (log: {self.log_file})") from exc

    def clear_cache(self) -> None:
        """``POST /-/overlaystore/cache/clear`` as the administrator, on every
        worker: each drops its own composed packuments at once (the first one
        also empties the cache directory; the others find it empty)."""
        token = self.credentials(ADMIN).token
        self._each_worker("POST", "/-/overlaystore/cache/clear", {"Authorization": f"Bearer {token}"})

    def _each_worker(self, method: str, path: str, headers: dict[str, str]) -> None:
        """Send the request on new connections until every worker has answered it."""
        answered: set[str] = set()
        deadline = time.monotonic() + _WORKERS_TIMEOUT_S
        while time.monotonic() < deadline:
            request = urllib.request.Request(self.base_url + path, method=method, headers=headers)
            with urllib.request.urlopen(request, timeout=60) as response:
                answered.add(response.headers.get(_WORKER_HEADER, "1"))
            if len(answered) == self.workers:
                return
            time.sleep(0.005)
        raise PeerUnavailable(f"overlaystore: {method} {path} reached workers {sorted(answered)} "
                              f"of {self.workers} in {_WORKERS_TIMEOUT_S:.0f} s")

    # ------------------------------------------------------------ publishing

    def credentials(self, user: str = "bench") -> Credentials:
        """A token for ``user`` from npm adduser (registration is open: the
        first call creates the user, later ones log in; both answer 201)."""
        if user not in self._credentials:
            self._credentials[user] = Credentials(user=user, token=adduser(self.base_url, user))
        return self._credentials[user]


__all__ = ["ADMIN", "OverlaystorePeer"]
