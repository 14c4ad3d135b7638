"""The real npm CLI keeps installing cached packages when the upstream is gone.

The server's cache is filled through a healthy upstream (the packuments and
tarballs a first install fetches). Then, each time with an empty npm cache
(so npm must fetch everything from the server):

1. the server restarted with ``--offline``: the install succeeds and the
   upstream receives no request at all; a package never cached fails with a
   clear error instead of hanging;
2. the server online with ``max_age = 0`` (every packument is due for
   revalidation) and the fake upstream stopped: the install succeeds from
   stale-if-error copies.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli, ThreadedUpstream

from .harness import DEFAULT_CONFIG, ServerProcess, SuiteRun

pytestmark = pytest.mark.e2e

SUITE = "offline_install"
SUITE_TITLE = "npm install with the upstream gone (real npm, real server process)"

DEPS = {"left-pad": "^1.0.0", "is-odd-fake": "1.0.0"}
#: What the install resolves to (is-number-fake comes in as a dependency).
EXPECTED = {"left-pad": "1.3.0", "is-odd-fake": "1.0.0", "is-number-fake": "2.1.0"}


@pytest.fixture(scope="module")
def threaded(threaded_upstream: ThreadedUpstream) -> ThreadedUpstream:
    fake = threaded_upstream.fake
    fake.add_package("left-pad", ["1.0.0", "1.1.0", "1.3.0"])
    fake.add_package("is-odd-fake", {"1.0.0": {"dependencies": {"is-number-fake": "^2.0.0"}}})
    fake.add_package("is-number-fake", ["2.0.0", "2.1.0"])
    fake.add_package("never-cached", ["1.0.0"])
    return threaded_upstream


def install(tmp_path: Path, server: ServerProcess, label: str, deps: dict[str, str] = DEPS) -> Path:
    """``npm install`` in a fresh project with a fresh npm cache; the project."""
    home = tmp_path / f"home-{label}"
    home.mkdir()
    cli = Cli(home, server.url)
    cli.npmrc.write_text(f"registry={server.url}/\n")
    project = tmp_path / f"app-{label}"
    project.mkdir()
    (project / "package.json").write_text(json.dumps({"name": "app", "version": "0.0.0", "private": True,
                                                      "dependencies": deps}))
    cli.npm("install", "--no-audit", cwd=project, timeout=120)
    return project


def installed(project: Path) -> dict[str, str]:
    out = {}
    for name in EXPECTED:
        manifest = project / "node_modules" / name / "package.json"
        out[name] = json.loads(manifest.read_text())["version"]
    return out


def test_npm_install_of_cached_packages_survives_the_upstream(
    tmp_path: Path, threaded: ThreadedUpstream, record: SuiteRun
) -> None:
    upstream = threaded.fake
    storage = tmp_path / "registry"
    online = ServerProcess(storage, upstream.url, config=DEFAULT_CONFIG)
    online.start()
    try:
        # Warm the cache with what the install needs (as a first install would).
        for name, version in EXPECTED.items():
            for path in (f"/{name}", f"/{name}/-/{name}-{version}.tgz"):
                with urllib.request.urlopen(online.url + path, timeout=30) as resp:
                    assert resp.status == 200
    finally:
        online.stop()

    # 1. Offline mode: the same storage, no upstream contact at all.
    upstream.clear_log()
    offline = ServerProcess(storage, upstream.url, config=DEFAULT_CONFIG, extra_args=("--offline",))
    offline.start()
    try:
        project = install(tmp_path, offline, "offline")
        assert installed(project) == EXPECTED
        # A package never cached: a prompt, clear answer (npm shows it as E404).
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{offline.url}/never-cached", timeout=10)
        assert missing.value.code == 404 and "error" in json.loads(missing.value.read())
    finally:
        offline.stop()
    assert upstream.requests == [], [r.path for r in upstream.requests]

    # 2. Online, everything due for revalidation, and the upstream is down.
    stale_config = DEFAULT_CONFIG + "\n[upstream]\nmax_age = 0\nretries = 0\ntimeout = 2\n"
    online = ServerProcess(storage, upstream.url, config=stale_config)
    online.start()
    threaded.call(upstream.stop())
    try:
        project = install(tmp_path, online, "upstream-down")
        assert installed(project) == EXPECTED
        log = online.log_tail(400)
        assert "stale-if-error" in log
    finally:
        online.stop()
        threaded.call(upstream.start())
    record.count(faults=2)
    record.detail("npm install, server --offline", "ok", "3 packages from the cache; 0 upstream requests")
    record.detail("a package never cached, --offline", 404, "npm-style {\"error\"} body, no upstream request")
    record.detail("npm install, upstream stopped, max_age=0", "ok", "stale-if-error for every packument")

