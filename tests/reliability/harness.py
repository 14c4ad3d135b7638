"""What the reliability suites share: the registry as a real process, a
pre-imported launcher for crash loops, an HTTP helper, and the results file
each suite writes for ``python -m tests.reliability.report``.

Everything listens on 127.0.0.1. Every wait here is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: Set to 1 to make the suites write their figures to RESULTS_DIR.
RECORD_ENV = "OVERLAYSTORE_RECORD_RESULTS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hidden_leftovers(*roots: Path) -> list[Path]:
    """Temp files and trash directories (``.tmp.*``, ``.trash.*``) under ``roots``."""
    out: list[Path] = []
    for root in roots:
        if root.exists():
            out.extend(p for p in root.rglob("*") if p.name.startswith((".tmp.", ".trash.")))
    return out


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS`` of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentile(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ------------------------------------------------------------------ results


@dataclass
class SuiteRun:
    """The figures one suite gathers in one pytest session and one profile
    (``default`` or ``slow``). Tests add to it through the ``record`` fixture;
    the session writes it to ``results/<suite>.json`` (see the report module
    for the format)."""

    suite: str
    title: str
    profile: str
    counters: dict[str, int] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    details: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)
    #: Where the suite's tests live (shown in docs/reliability.md).
    source: str = "tests/reliability"

    def count(self, **amounts: int) -> None:
        """Add to summary counters: ``requests``, ``faults``, ``crashes``,
        ``lost``, ``server_errors`` (or any other name)."""
        for key, amount in amounts.items():
            self.counters[key] = self.counters.get(key, 0) + int(amount)

    def set(self, **values: Any) -> None:
        """Set summary values that are not sums (latencies, memory)."""
        self.values.update(values)

    def detail(self, what: str, value: Any, note: str = "") -> None:
        """One row of the suite's own table in docs/reliability.md."""
        self.details.append({"what": what, "value": value, "note": note})

    def as_json(self) -> dict[str, Any]:
        return {
            "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
            **self.counters,
            **self.values,
            "tests_passed": sum(1 for o in self.outcomes.values() if o == "passed"),
            "tests_failed": sum(1 for o in self.outcomes.values() if o == "failed"),
            "tests": dict(sorted(self.outcomes.items())),
            "details": self.details,
        }


def write_results(runs: Iterable[SuiteRun]) -> list[Path]:
    """Merge ``runs`` into ``results/<suite>.json`` (one entry per profile;
    the other profiles already there are kept)."""
    written = []
    for run in runs:
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / f"{run.suite}.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = {}
        profiles = doc.get("runs") if isinstance(doc.get("runs"), dict) else {}
        profiles[run.profile] = run.as_json()
        doc = {"suite": run.suite, "title": run.title, "source": run.source, "runs": profiles}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(path)
        written.append(path)
    return written


# -------------------------------------------------------------- the server


DEFAULT_CONFIG = """\
[auth]
bcrypt_rounds = 4
"""


class Zygote:
    """``tests/reliability/zygote.py`` as a child process (see its docstring)."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.zygote"], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self._ask_raw()  # {"ready": pid}

    def _ask_raw(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the zygote launcher died")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._ask_raw()

    def spawn(self, argv: list[str], env: Mapping[str, str], cwd: Path, log: Path) -> int:
        return int(self._ask({"op": "spawn", "argv": argv, "env": dict(env), "cwd": str(cwd), "log": str(log)})["pid"])

    def reap(self, pid: int) -> int:
        return int(self._ask({"op": "reap", "pid": pid})["status"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class ServerProcess:
    """``overlaystore serve`` as a real process on 127.0.0.1 (exec'd, or forked
    from a :class:`Zygote` when one is given)."""

    root: Path
    upstream_url: str | None
    config: str = DEFAULT_CONFIG
    extra_args: tuple[str, ...] = ()
    published: Path | None = None
    cache: Path | None = None
    zygote: Zygote | None = None
    port: int = field(default_factory=free_port)
    pid: int | None = None
    _proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.published = self.published or self.root / "published"
        self.cache = self.cache or self.root / "cache"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def argv(self) -> list[str]:
        """The ``overlaystore`` arguments. Writes ``root/config.toml``: ``config``
        with the user files put under ``root/auth`` (unless it names them)."""
        text = self.config
        if "htpasswd" not in text:
            auth = self.root / "auth"
            paths = f'htpasswd = "{auth / "htpasswd"}"\ntokens = "{auth / "tokens.json"}"\n'
            text = text.replace("[auth]\n", "[auth]\n" + paths, 1) if "[auth]\n" in text else f"{text}\n[auth]\n{paths}"
        config = self.root / "config.toml"
        config.write_text(text)
        return [
            "serve", "--config", str(config),
            "--listen", f"127.0.0.1:{self.port}",
            "--upstream", self.upstream_url or "none",
            "--published-storage", str(self.published),
            "--cache-storage", str(self.cache),
            *self.extra_args,
        ]

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("OVERLAYSTORE_", "npm_config_"))}
        return {**keep, "PYTHONUNBUFFERED": "1"}

    def start(self, timeout: float = 20.0) -> None:
        assert self.pid is None, "already running"
        argv = self.argv()
        if self.zygote is not None:
            self.pid = self.zygote.spawn(argv, self.env(), self.root, self.log_path)
        else:
            log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "server", *argv], cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                env=self.env(),
            )
            log.close()
            self.pid = self._proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                self.pid = None
                raise RuntimeError(f"server exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ping", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.01)
        self.kill()
        raise RuntimeError(f"server did not start: {self.log_tail()}")

    def alive(self) -> bool:
        if self.pid is None:
            return False
        if self._proc is not None:
            return self._proc.poll() is None
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return False
        return state not in ("Z", "X")

    def kill(self) -> None:
        """SIGKILL, and wait until the process is gone (reaped)."""
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reap()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (graceful), SIGKILL after ``timeout``."""
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if self._proc is not None:
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        else:
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.alive():
                os.kill(self.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        elif self.zygote is not None and self.pid is not None:
            self.zygote.reap(self.pid)
        self.pid = None

    def rss_kib(self) -> int:
        assert self.pid is not None
        return rss_kib(self.pid)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def adduser(base_url: str, name: str, password: str = "correct horse battery") -> str:
    """Create ``name`` over HTTP (``npm adduser``) and return its token."""
    body = json.dumps({
        "_id": f"org.couchdb.user:{name}", "name": name, "password": password,
        "email": f"{name}@example.com", "type": "user", "roles": [],
    }).encode()
    request = urllib.request.Request(
        f"{base_url}/-/user/org.couchdb.user:{name}", data=body, method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return str(json.loads(resp.read())["token"])


__all__ = [
    "DEFAULT_CONFIG",
    "RECORD_ENV",
    "RESULTS_DIR",
    "ServerProcess",
    "Zygote",
    "adduser",
    "free_port",
    "hidden_leftovers",
    "SuiteRun",
    "percentile",
    "write_results",
    "rss_kib",
]
