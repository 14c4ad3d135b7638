"""The real npm CLI through overlaystore to an upstream that needs a login:
the server sends its configured credentials upstream, npm needs none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import Cli, Server, ThreadedUpstream

pytestmark = pytest.mark.e2e

TOKEN = "e2e-upstream-token"


def test_npm_installs_through_an_upstream_that_needs_a_token(tmp_path: Path) -> None:
    upstream = ThreadedUpstream()
    upstream.fake.add_package("left-pad", ["1.0.0", "1.1.0"])
    upstream.fake.add_package("is-odd-fake", {"1.0.0": {"dependencies": {"is-number-fake": "^2.0.0"}}})
    upstream.fake.add_package("is-number-fake", ["2.0.0"])
    upstream.fake.required_authorization = f"Bearer {TOKEN}"
    server = Server(tmp_path / "registry", upstream.fake.url, env={"OVERLAYSTORE_UPSTREAM_TOKEN": TOKEN})
    server.root.mkdir()
    server.start()
    try:
        cli = Cli(tmp_path / "home", server.url)
        cli.home.mkdir()
        cli.npmrc.write_text(f"registry={server.url}/\n")  # no token: reads are anonymous here
        project = tmp_path / "app"
        project.mkdir()
        (project / "package.json").write_text(json.dumps(
            {"name": "app", "version": "0.0.0", "private": True,
             "dependencies": {"left-pad": "1.1.0", "is-odd-fake": "^1.0.0"}}))
        cli.npm("install", cwd=project)
        installed = json.loads((project / "node_modules" / "is-number-fake" / "package.json").read_text())
        assert installed["version"] == "2.0.0"
        log = server.log_path.read_text()
    finally:
        server.stop()
        upstream.close()
    fetched = {r.path for r in upstream.fake.requests}
    assert {"/left-pad", "/is-odd-fake", "/is-number-fake", "/left-pad/-/left-pad-1.1.0.tgz"} <= fetched
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in upstream.fake.requests)
    assert TOKEN not in log
