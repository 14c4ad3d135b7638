"""The supervisor's watchers (server/worker_watch.py): what they see under
either store root becomes a bump of the workers' change counters; a reset
bumps them all; stopping leaves no thread and no watch child behind.
tests/e2e/test_workers.py checks the whole process tree."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from overlaystore.changes import ChangeCounters
from server.config import WatchConfig
from server.worker_watch import WorkerWatch
from tests.helpers.processes import children_running

from .conftest import make_config


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the timeout"
        time.sleep(0.02)


def watch_children() -> list[int]:
    """Our own processes running the watch child script."""
    return children_running(os.getpid(), b"watch_child")


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[WorkerWatch, ChangeCounters, Path, Path]]:
    config = make_config(tmp_path, None)
    config = replace(config, server=replace(config.server, workers=2), watch=WatchConfig(enabled=True))
    published, cache = config.storage.published, config.storage.cache
    published.mkdir(parents=True)
    cache.mkdir(parents=True)
    watch = WorkerWatch(config)
    with ChangeCounters.for_store(published) as counters:
        watch.start()
        try:
            yield watch, counters, published, cache
        finally:
            watch.stop()


def test_changes_under_either_root_bump_the_counters(stores: tuple[WorkerWatch, ChangeCounters, Path, Path]) -> None:
    _watch, counters, published, cache = stores
    eventually(lambda: len(watch_children()) == 2)  # one per root, whatever the number of workers
    time.sleep(0.5)  # the watches exist (their first reset has bumped every slot)
    for root, name in ((cache, "cached-pkg"), (published, "@acme/published-pkg")):
        before = counters.read(name)
        (root / name).mkdir(parents=True)
        (root / name / "packument.json").write_text("{}")
        eventually(lambda name=name, before=before: counters.read(name) > before)  # type: ignore[misc]


def test_a_vanished_root_bumps_every_counter(stores: tuple[WorkerWatch, ChangeCounters, Path, Path]) -> None:
    _watch, counters, _published, cache = stores
    eventually(lambda: len(watch_children()) == 2)
    time.sleep(0.5)
    before = [counters.read_slot(slot) for slot in range(counters.slots)]
    shutil.rmtree(cache)  # `overlaystore cache clear` by hand
    eventually(lambda: all(counters.read_slot(s) > before[s] for s in range(counters.slots)))


def test_stopping_leaves_nothing_running(stores: tuple[WorkerWatch, ChangeCounters, Path, Path]) -> None:
    watch = stores[0]
    eventually(lambda: len(watch_children()) == 2)
    watch.stop()
    assert not any(t.name == "worker watch" for t in threading.enumerate())
    eventually(lambda: not watch_children())
