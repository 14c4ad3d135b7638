"""Fixtures for the reliability suites (faults, crashes, disk, concurrency, load).

* ``registry_factory`` (from tests/server/conftest.py): the app in-process,
  driven through aiohttp's test client, on tmp storage.
* ``threaded_upstream``: a FakeUpstream on its own loop in a thread, for tests
  that drive a real server process (the process cannot reach a fake running
  on the test's own loop while the test blocks).
* ``record``: the figures of the test's suite. Each test module names its
  suite (``SUITE``, ``SUITE_TITLE``); with ``OVERLAYSTORE_RECORD_RESULTS=1``
  the session writes them to ``tests/reliability/results/<suite>.json``,
  which ``python -m tests.reliability.report`` turns into docs/reliability.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import ThreadedUpstream
from tests.server.conftest import Registry, RegistryFactory, registry_factory  # noqa: F401 - re-exported, fixture

from .harness import RECORD_ENV, SuiteRun, write_results

_RUNS: dict[tuple[str, str], SuiteRun] = {}


def _run_for(item: pytest.Item) -> SuiteRun | None:
    module = getattr(item, "module", None)
    suite = getattr(module, "SUITE", None)
    if suite is None:
        return None
    profile = "slow" if item.get_closest_marker("slow") else "default"
    key = (suite, profile)
    if key not in _RUNS:
        _RUNS[key] = SuiteRun(suite, getattr(module, "SUITE_TITLE", suite), profile)
    return _RUNS[key]


@pytest.fixture
def record(request: pytest.FixtureRequest) -> SuiteRun:
    run = _run_for(request.node)
    assert run is not None, "the test module must define SUITE"
    return run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        run = _run_for(item)
        if run is not None:
            run.outcomes[item.nodeid.rsplit("/", 1)[-1]] = report.outcome


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get(RECORD_ENV) == "1":
        write_results(run for run in _RUNS.values() if run.outcomes)


@pytest.fixture(scope="module")
def threaded_upstream() -> Iterator[ThreadedUpstream]:
    """``.fake`` is the FakeUpstream; ``.call(fake.stop())`` runs a coroutine on its loop."""
    threaded = ThreadedUpstream()
    try:
        yield threaded
    finally:
        threaded.close()
