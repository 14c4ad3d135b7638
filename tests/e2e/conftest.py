"""End-to-end fixtures: the real server process, the fake upstream in a
background thread, and the real npm / pnpm / yarn 1 / yarn 4 CLIs with isolated
config and caches. Everything listens on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fakes.upstream import FakeUpstream

ROOT = Path(__file__).resolve().parents[2]
PNPM = ROOT / ".tools" / "node_modules" / ".bin" / "pnpm"
YARN = ROOT / ".tools" / "node_modules" / ".bin" / "yarn"  # yarn 1 (classic)
YARN4 = ROOT / ".tools" / "yarn4" / "node_modules" / ".bin" / "yarn"  # yarn 4 (berry)

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadedUpstream:
    """A FakeUpstream running on its own event loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.fake = FakeUpstream()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.call(self.fake.start())

    def call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self.call(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    threaded = ThreadedUpstream()
    fake = threaded.fake
    fake.add_package("left-pad", ["1.0.0", "1.1.0", "1.3.0"])
    fake.add_package("is-odd-fake", {"1.0.0": {"dependencies": {"is-number-fake": "^2.0.0"}}})
    fake.add_package("is-number-fake", ["2.0.0", "2.1.0"])
    fake.add_package("@types-fake/node", ["20.0.0"])
    yield fake
    threaded.close()


@dataclass
class Server:
    """The registry as a real process (``overlaystore serve``)."""

    root: Path
    upstream_url: str
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None
    #: added to the server's environment (``OVERLAYSTORE_*`` settings)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    #: Seconds the server may take to become ready.
    start_timeout: float = 20.0

    def extra_args(self) -> list[str]:
        """Flags added to ``overlaystore serve`` (subclasses)."""
        return []

    def ready(self) -> bool:
        """Whether the started process answers requests."""
        try:
            with urllib.request.urlopen(f"{self.url}/-/ping", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "server", "serve", *self.extra_args(),
            "--listen", f"127.0.0.1:{self.port}",
            "--published-storage", str(self.root / "published"),
            "--cache-storage", str(self.root / "cache"),
            "--upstream", self.upstream_url,
        ]
        env = {**os.environ, "OVERLAYSTORE_CONFIG": "", "PYTHONUNBUFFERED": "1", **self.env}
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()}")
            if self.ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("registry")
    srv = Server(root, upstream.url)
    srv.start()
    yield srv
    srv.stop()


@dataclass
class Cli:
    """npm / pnpm / yarn 1 / yarn 4 with a private userconfig and cache, pointed at the server."""

    home: Path
    registry: str

    @property
    def npmrc(self) -> Path:
        return self.home / ".npmrc"

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_config_")}
        return {
            **keep,
            "HOME": str(self.home),
            "npm_config_userconfig": str(self.npmrc),
            "npm_config_cache": str(self.home / "npm-cache"),
            "npm_config_registry": self.registry + "/",
            "npm_config_update_notifier": "false",
            "npm_config_fund": "false",
            "npm_config_loglevel": "warn",
            "npm_config_fetch_retries": "0",
            "PNPM_HOME": str(self.home / "pnpm-home"),
            "YARN_CACHE_FOLDER": str(self.home / "yarn-cache"),
            "XDG_DATA_HOME": str(self.home / "xdg-data"),
            "XDG_CACHE_HOME": str(self.home / "xdg-cache"),
            "XDG_CONFIG_HOME": str(self.home / "xdg-config"),
            "XDG_STATE_HOME": str(self.home / "xdg-state"),
        }

    def run(self, tool: str, *args: str, cwd: Path | None = None, input: str | None = None,
            check: bool = True, timeout: float = 180,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        exe = {"pnpm": str(PNPM), "yarn": str(YARN), "yarn4": str(YARN4)}.get(tool) or shutil.which(tool) or tool
        proc = subprocess.run(
            [exe, *args], cwd=cwd or self.home, env={**self.env(), **(env or {})}, input=input,
            capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def npm(self, *args: str, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
        return self.run("npm", *args, **kw)

    def pnpm(self, *args: str, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
        return self.run("pnpm", *args, **kw)

    def yarn(self, *args: str, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
        # yarn 1 reads the registry and token from ~/.npmrc; its own rc only
        # keeps it from asking the internet whether it is up to date.
        (self.home / ".yarnrc").write_text("disable-self-update-check true\n")
        return self.run("yarn", "--non-interactive", "--no-progress", *args, **kw)

    def yarn4(self, *args: str, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
        # yarn 4 reads no .npmrc: the registry and the token (the one npm
        # logged in with) come from its environment settings, as in CI.
        token = "".join(line.split("_authToken=", 1)[1] for line in self.npmrc.read_text().splitlines()
                        if "_authToken=" in line)
        settings = {
            "YARN_NPM_REGISTRY_SERVER": self.registry,
            "YARN_UNSAFE_HTTP_WHITELIST": "127.0.0.1",
            "YARN_NPM_AUTH_TOKEN": token,
            "YARN_ENABLE_TELEMETRY": "0",
            "YARN_ENABLE_GLOBAL_CACHE": "0",
            "YARN_CACHE_FOLDER": str(self.home / "yarn4-cache"),
            "YARN_GLOBAL_FOLDER": str(self.home / "yarn4-global"),
            "YARN_NODE_LINKER": "node-modules",
            "YARN_ENABLE_IMMUTABLE_INSTALLS": "0",  # else on under CI=true, and a first install fails
            "YARN_ENABLE_PROGRESS_BARS": "0",
            "YARN_ENABLE_COLORS": "0",
        }
        return self.run("yarn4", *args, env=settings, **kw)


@pytest.fixture
def cli(tmp_path: Path, server: Server) -> Cli:
    home = tmp_path / "home"
    home.mkdir()
    c = Cli(home, server.url)
    c.npmrc.write_text(f"registry={server.url}/\n")
    return c
