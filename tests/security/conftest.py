"""Fixtures for the hostile-input and security suites.

The registry helpers come from ``tests/server/conftest.py`` (one app per test
function on tmp storage, driven through aiohttp's test client). Hypothesis
runs all examples of a test against that one app: the suites assert on
"nothing new was written" (file-tree snapshots) rather than resetting state.

With ``OVERLAYSTORE_RECORD_RESULTS=1`` the session writes what it tried
(inputs and statuses per endpoint, slow-client and schemathesis figures, the
outcome of every test here) to ``tests/reliability/results/security.json``
through the reliability harness (one entry per profile, ``default`` or
``slow``; ``python -m tests.reliability.report`` puts it in docs/reliability.md).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import TCPConnector
from aiohttp.test_utils import TestClient

from server.access_log import AccessLogger
from server.app import make_app
from server.config import Config
from tests.helpers.hit_path_server import HitPathTestServer
from tests.npmdata import publish_body
from tests.reliability.harness import RECORD_ENV, SuiteRun, write_results
from tests.server.conftest import Registry, make_config
from tests.server.conftest import pytest_asyncio_loop_factories  # noqa: F401 - the serving loop here too

from .helpers import Tally

SUITE = "security"
SUITE_TITLE = "Hostile input and security"
PASSWORD = "correct horse"


class Results:
    """What this session tried in one profile (``default`` or ``slow``);
    written through the reliability harness when recording is on."""

    def __init__(self, profile: str) -> None:
        self.profile = profile
        self.tally = Tally()
        self.sections: dict[str, Any] = {}
        self.rows: list[tuple[str, Any, str]] = []
        self.outcomes: dict[str, str] = {}

    def record(self, section: str, data: Any) -> None:
        """A named block of figures (slow clients, schemathesis, ...)."""
        self.sections[section] = data

    def detail(self, what: str, value: Any, note: str = "") -> None:
        self.rows.append((what, value, note))

    def suite_run(self) -> SuiteRun:
        run = SuiteRun(SUITE, SUITE_TITLE, self.profile)
        endpoints = self.tally.as_json()
        run.count(inputs=sum(e["inputs"] for e in endpoints.values()),
                  server_errors=sum(e["server_errors"] for e in endpoints.values()))
        run.set(endpoints=endpoints, **self.sections)
        # One table row per route (the breakdown by input family stays in "endpoints").
        per_route: dict[str, Counter[str]] = {}
        for label, figures in endpoints.items():
            per_route.setdefault(label.split(" (")[0], Counter()).update(figures["statuses"])
        for route, statuses in sorted(per_route.items()):
            note = ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()))
            run.detail(f"generated inputs: {route}", sum(statuses.values()), note)
        for what, value, note in self.rows:
            run.detail(what, value, note)
        run.outcomes.update(self.outcomes)
        return run


_RUNS: dict[str, Results] = {}


def _profile(node: pytest.Item) -> str:
    return "slow" if node.get_closest_marker("slow") else "default"


def _results_for(profile: str) -> Results:
    if profile not in _RUNS:
        _RUNS[profile] = Results(profile)
    return _RUNS[profile]


@pytest.fixture
def security_results(request: pytest.FixtureRequest) -> Results:
    return _results_for(_profile(request.node))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _results_for(_profile(item)).outcomes[item.nodeid.split("tests/security/", 1)[-1]] = report.outcome


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get(RECORD_ENV) == "1":
        write_results(r.suite_run() for r in _RUNS.values() if r.outcomes)


# ----------------------------------------------------------------- registries


class Actors:
    """A registry with the usual cast: ``alice`` (maintainer of ``foo``),
    ``bob`` (a logged-in stranger) and a read-only token of alice's."""

    def __init__(self, reg: Registry, readonly: str) -> None:
        self.reg = reg
        self.readonly = readonly

    @property
    def client(self) -> TestClient:
        return self.reg.client

    @property
    def config(self) -> Config:
        return self.reg.config

    def auth(self, who: str) -> dict[str, str]:
        if who == "anonymous":
            return {}
        if who == "readonly":
            return {"Authorization": f"Bearer {self.readonly}"}
        return self.reg.auth(who)


async def make_actors(reg: Registry, *, publish: tuple[str, ...] = ("foo",)) -> Actors:
    await reg.adduser("alice", PASSWORD)
    await reg.adduser("bob", PASSWORD)
    resp = await reg.client.post(
        "/-/npm/v1/tokens", json={"password": PASSWORD, "readonly": True}, headers=reg.auth("alice")
    )
    assert resp.status == 201, await resp.text()
    readonly = (await resp.json())["token"]
    for name in publish:
        for version in ("1.0.0", "1.1.0"):
            resp = await reg.client.put(f"/{name.replace('/', '%2f')}", json=publish_body(name, version),
                                        headers=reg.auth("alice"))
            assert resp.status == 201, await resp.text()
    return Actors(reg, readonly)


@pytest.fixture
async def registry_with(aiohttp_client: Any, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Like ``registry_factory``, but ``auth={...}`` changes single AuthConfig
    fields and ``access_log=True`` serves with the server's AccessLogger on
    the ``overlaystore.access`` logger (as ``server.serving.serve`` does)."""
    count = 0

    async def factory(upstream_url: str | None = None, *, auth: dict[str, Any] | None = None,
                      access_log: bool = False, **sections: Any) -> Registry:
        nonlocal count
        count += 1
        config = make_config(tmp_path / f"s{count}", upstream_url, **sections)
        if auth:
            config = replace(config, auth=replace(config.auth, **auth))
        config = replace(config, server=replace(config.server, access_log=access_log))
        server = HitPathTestServer(make_app(config))
        if access_log:
            await server.start_server(access_log_class=AccessLogger,
                                      access_log=logging.getLogger("overlaystore.access"))
        # A connection per request, so that hits are the hit path's (see tests/server/conftest.py).
        client = await aiohttp_client(server, connector=TCPConnector(force_close=True))
        return Registry(client, config)

    return factory


@pytest.fixture
async def fuzz_registry(registry_with: Any) -> Registry:
    """No upstream; login limits high enough that fuzzing is not all 429s."""
    return await registry_with(auth={"login_attempts_per_minute": 1_000_000})  # type: ignore[no-any-return]
