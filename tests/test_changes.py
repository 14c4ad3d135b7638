"""Tests for overlaystore.changes.ChangeCounters: bumps and reads, bumps from
several processes and threads never lost, the file recreated when it is
deleted, truncated or the wrong size, and the store root never created."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import xxhash

from overlaystore.changes import (
    CHANGES_DIR,
    CHANGES_FILE,
    DEFAULT_SLOTS,
    SLOT_BYTES,
    ChangeCounters,
    counters_path,
    slot_of,
)

ROOT = Path(__file__).resolve().parents[1]


def names_in_distinct_slots(count: int) -> list[str]:
    found: dict[int, str] = {}
    i = 0
    while len(found) < count:
        found.setdefault(slot_of(f"pkg-{i}"), f"pkg-{i}")
        i += 1
    return list(found.values())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    published = tmp_path / "published"
    published.mkdir()
    return published


def test_bump_and_read(root: Path) -> None:
    a, b = names_in_distinct_slots(2)
    with ChangeCounters.for_store(root) as counters:
        assert counters.path == root / CHANGES_DIR / CHANGES_FILE == counters_path(root)
        assert counters.path.stat().st_size == DEFAULT_SLOTS * SLOT_BYTES
        assert counters.read(a) == counters.read(b) == 0
        assert counters.bump(a) == 1
        assert counters.bump(a) == 2
        assert counters.read(a) == 2 and counters.read(b) == 0
        assert counters.read_slot(counters.slot(a)) == 2


def test_slots_are_a_stable_hash(root: Path) -> None:
    # Every process (and every Python run: no hash() randomization) must agree.
    assert slot_of("left-pad") == xxhash.xxh3_64_intdigest(b"left-pad") % DEFAULT_SLOTS
    assert slot_of("@acme/widget", 64) == xxhash.xxh3_64_intdigest(b"@acme/widget") % 64
    with ChangeCounters.for_store(root) as counters:
        assert counters.slot("left-pad") == slot_of("left-pad")
    with pytest.raises(ValueError, match="power of two"):
        ChangeCounters(root / "x", slots=1000)


def test_instances_share_the_counters(root: Path) -> None:
    with ChangeCounters.for_store(root) as one, ChangeCounters.for_store(root) as two:
        one.bump("left-pad")
        assert two.read("left-pad") == 1
        two.bump("left-pad")
        assert one.read("left-pad") == 2
    # The file outlives the processes that used it.
    with ChangeCounters.for_store(root) as again:
        assert again.read("left-pad") == 2


BUMPER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    from overlaystore.changes import ChangeCounters
    counters = ChangeCounters(sys.argv[2])
    start = sys.argv[3]
    print("ready", flush=True)
    while not os.path.exists(start):
        time.sleep(0.001)
    for _ in range(int(sys.argv[4])):
        counters.bump("left-pad")
    counters.close()
    """
)


def test_bump_all_moves_every_slot_seen_by_every_instance(root: Path) -> None:
    a, b = names_in_distinct_slots(2)
    with ChangeCounters.for_store(root, slots=16) as writer, ChangeCounters.for_store(root, slots=16) as reader:
        writer.bump(a)
        before = [reader.read_slot(slot) for slot in range(16)]
        writer.bump_all()
        assert [reader.read_slot(slot) for slot in range(16)] == [v + 1 for v in before]
        assert writer.bump(b) == before[writer.slot(b)] + 2  # bumps go on from there


def test_bumps_from_two_processes_are_never_lost(root: Path, tmp_path: Path) -> None:
    path = counters_path(root)
    ChangeCounters(path).close()
    start = tmp_path / "start"
    procs = [
        subprocess.Popen([sys.executable, "-c", BUMPER, str(ROOT), str(path), str(start), "1000"],
                         stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    start.touch()  # both start bumping at once
    for proc in procs:
        assert proc.wait(timeout=60) == 0
        assert proc.stdout is not None
        proc.stdout.close()
    with ChangeCounters(path) as counters:
        assert counters.read("left-pad") == 2000


def test_bumps_from_threads_and_instances_are_never_lost(root: Path) -> None:
    counters = [ChangeCounters.for_store(root) for _ in range(2)]
    barrier = threading.Barrier(4)

    def bump(c: ChangeCounters) -> None:
        barrier.wait()
        for _ in range(500):
            c.bump("left-pad")

    threads = [threading.Thread(target=bump, args=(counters[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counters[0].read("left-pad") == counters[1].read("left-pad") == 2000
    for c in counters:
        c.close()


def test_deleted_file_is_recreated(root: Path) -> None:
    resets: list[str] = []
    with ChangeCounters.for_store(root) as reader, ChangeCounters.for_store(root) as writer:
        reader.on_reset(lambda: resets.append("reader"))
        writer.bump("left-pad")
        assert not reader.check()  # nothing changed: one stat
        shutil.rmtree(root / CHANGES_DIR)
        # A writer checks before bumping: it recreates the file and bumps that.
        assert writer.bump("left-pad") == 1
        assert writer.path.stat().st_size == DEFAULT_SLOTS * SLOT_BYTES
        # The reader notices on its next check, and voids what it validated.
        assert reader.check()
        assert resets == ["reader"]
        assert reader.read("left-pad") == 1
        writer.bump("left-pad")
        assert reader.read("left-pad") == 2


@pytest.mark.parametrize("size", [0, 100, DEFAULT_SLOTS * SLOT_BYTES * 2])
def test_file_of_the_wrong_size_is_replaced(root: Path, size: int) -> None:
    path = counters_path(root)
    path.parent.mkdir()
    path.write_bytes(b"\xff" * size)
    with ChangeCounters(path) as counters:
        assert path.stat().st_size == DEFAULT_SLOTS * SLOT_BYTES
        assert counters.read("left-pad") == 0
        assert counters.bump("left-pad") == 1


def test_truncated_while_open_is_replaced(root: Path) -> None:
    with ChangeCounters.for_store(root) as counters:
        counters.bump("left-pad")
        inode = counters.path.stat().st_ino
        os.truncate(counters.path, 100)  # an operator's mistake; the mapping is not read after it
        assert counters.check()
        assert counters.path.stat().st_size == DEFAULT_SLOTS * SLOT_BYTES
        assert counters.path.stat().st_ino != inode
        assert counters.read("left-pad") == 0


def test_a_vanished_store_root_is_not_recreated(root: Path) -> None:
    with ChangeCounters.for_store(root) as counters:
        counters.bump("left-pad")
        shutil.rmtree(root)
        assert not counters.check()  # keeps its mapping, creates nothing
        assert not root.exists()
        counters.bump("left-pad")  # still works (on the orphaned file), still creates nothing
        assert not root.exists()
        root.mkdir()  # a restored root moved into place
        assert counters.check()
        assert counters.read("left-pad") == 0


async def test_keep_checked_notices_a_replaced_file(root: Path) -> None:
    resets: list[float] = []
    with ChangeCounters.for_store(root) as counters:
        counters.on_reset(lambda: resets.append(time.monotonic()))
        task = asyncio.create_task(counters.keep_checked(0.01))
        try:
            counters.path.unlink()
            for _ in range(200):
                if resets:
                    break
                await asyncio.sleep(0.01)
            assert resets and counters.path.exists()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_read_is_cheap(root: Path) -> None:
    with ChangeCounters.for_store(root) as counters:
        slot = counters.slot("left-pad")
        read = counters.read_slot
        samples = []
        for _ in range(2000):
            start = time.perf_counter_ns()
            read(slot)
            samples.append(time.perf_counter_ns() - start)
        samples.sort()
        # ~0.1 us measured; generous so CI noise cannot flake.
        assert samples[len(samples) // 2] < 10_000
