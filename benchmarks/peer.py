"""A registry under test, and the process plumbing every peer shares.

A peer is one server the side-by-side run measures (overlaystore, Verdaccio,
nginx serving pre-rendered bytes). Each is installed into its own git-ignored
folder under ``benchmarks/.work``, listens on a free port of 127.0.0.1 and is
driven through this one interface, so the scenarios never special-case a peer.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

WORK_ROOT = Path(__file__).resolve().parent / ".work"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class PeerUnavailable(Exception):
    """The peer cannot be installed or started here; the message says why."""


@dataclass(frozen=True)
class Credentials:
    """What a publishing client sends: ``Authorization: Bearer <token>``."""

    user: str
    token: str


class Peer(ABC):
    """One registry in the comparison. Subclasses fill in the life cycle."""

    name: str
    #: a proxy has an upstream cache that :meth:`clear_cache` empties
    is_proxy: bool = True
    can_publish: bool = True
    #: ``npm ci`` can install the corpus from it
    installs: bool = True

    #: seconds :meth:`stop` gives the server to exit before killing it
    stop_timeout_s: float = 10.0

    def __init__(self, work: Path | None = None) -> None:
        self.work = (work or WORK_ROOT) / self.name
        self.port = free_port()
        #: the server process :meth:`start` runs
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @abstractmethod
    def setup(self, upstream_url: str) -> None:
        """Install (once) and configure against ``upstream_url``; raise
        :class:`PeerUnavailable` when that cannot be done here."""

    @abstractmethod
    def start(self) -> None:
        """Start the server and return once it answers HTTP."""

    def stop(self) -> None:
        """Stop the server and wait for its processes to exit."""
        if self._process is not None:
            stop_process(self._process, timeout_s=self.stop_timeout_s)
            self._process = None

    def pids(self) -> list[int]:
        """Every process of the running server (supervisor and workers)."""
        if self._process is None or self._process.poll() is not None:
            return []
        return process_tree(self._process.pid)

    def clear_cache(self) -> None:
        """Empty the upstream cache so the next install is a cold one."""
        raise NotImplementedError(f"{self.name} has no upstream cache")

    def credentials(self) -> Credentials:
        """A user able to publish, created through the registry's own API."""
        raise NotImplementedError(f"{self.name} does not accept publishes")


#: The password of every user the harness creates.
BENCH_PASSWORD = "bench-password"


def adduser(base_url: str, user: str, *, login: bool = False) -> str:
    """``npm adduser`` (``PUT /-/user/org.couchdb.user:<user>``) against
    ``base_url``; returns the token. ``login`` sends the user's Basic
    credentials too, which registries that answer 409 for an existing user
    take as a login."""
    body = {"_id": f"org.couchdb.user:{user}", "name": user, "password": BENCH_PASSWORD, "type": "user",
            "roles": [], "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")}
    headers = {"Content-Type": "application/json"}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{BENCH_PASSWORD}".encode()).decode()
    url = f"{base_url}/-/user/org.couchdb.user:{user}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT", headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    token = answer.get("token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token:
        raise PeerUnavailable(f"{url}: the adduser answer has no token: {answer!r}")
    return token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, *, timeout_s: float = 60.0, process: subprocess.Popen[bytes] | None = None) -> float:
    """Poll ``url`` until it answers any HTTP status; return the seconds waited.

    Raises :class:`PeerUnavailable` if ``process`` exits first or time runs out.
    """
    start = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return time.monotonic() - start
        except urllib.error.HTTPError:
            return time.monotonic() - start
        except OSError:
            pass
        if process is not None and process.poll() is not None:
            raise PeerUnavailable(f"{url}: the server exited with status {process.returncode}")
        if time.monotonic() - start > timeout_s:
            raise PeerUnavailable(f"{url}: no answer within {timeout_s:.0f} s")
        time.sleep(0.02)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time consumed so far by ``pids`` (exited ones count 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _CLOCK_TICKS


def memory_kib(pids: list[int], field: str) -> int:
    """Sum of a /proc/<pid>/status field (``VmRSS`` now, ``VmHWM`` peak) in KiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def stop_process(process: subprocess.Popen[bytes], *, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it lingers; always reaps the process."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
