"""Atomic writes, temp naming, crash recovery and OSError translation."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from overlaystore import atomic
from overlaystore.errors import StorageError, StorageFull


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_name_encodes_pid_and_base() -> None:
    name = atomic.temp_name("widget-1.0.0.tgz")
    assert name.startswith(f".tmp.{os.getpid()}.")
    assert name.endswith(".widget-1.0.0.tgz")
    assert atomic.parse_temp_name(name) == os.getpid()
    assert atomic.temp_name("x") != atomic.temp_name("x")


@pytest.mark.parametrize("name", ["widget.tgz", ".tmp.", ".tmp.abc.x", ".tmpx.1.2.x", ".locks"])
def test_parse_temp_name_rejects_others(name: str) -> None:
    assert atomic.parse_temp_name(name) is None


def test_trash_name() -> None:
    assert atomic.parse_temp_name(atomic.trash_name()) == os.getpid()


def test_write_file_creates(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file"
    atomic.write_file(target, b"data", replace=False)
    assert target.read_bytes() == b"data"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file"]


def test_write_file_no_replace_keeps_original(tmp_path: Path) -> None:
    target = tmp_path / "file"
    atomic.write_file(target, b"first", replace=False)
    with pytest.raises(FileExistsError):
        atomic.write_file(target, b"second", replace=False)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_write_file_replace(tmp_path: Path) -> None:
    target = tmp_path / "file"
    atomic.write_file(target, b"first", replace=True)
    atomic.write_file(target, b"second", replace=True)
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_replace_swaps_inode_so_open_readers_keep_old_bytes(tmp_path: Path) -> None:
    target = tmp_path / "file"
    atomic.write_file(target, b"old" * 1000, replace=True)
    with open(target, "rb") as reader:
        atomic.write_file(target, b"new", replace=True)
        assert reader.read() == b"old" * 1000
    assert target.read_bytes() == b"new"


def test_atomic_file_invisible_until_commit(tmp_path: Path) -> None:
    target = tmp_path / "file"
    handle = atomic.AtomicFile(target)
    handle.write(b"abc")
    assert not target.exists()
    temps = list(tmp_path.iterdir())
    assert len(temps) == 1 and temps[0].name.startswith(f".tmp.{os.getpid()}.")
    handle.commit(replace=False)
    assert target.read_bytes() == b"abc"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_atomic_file_abort(tmp_path: Path) -> None:
    handle = atomic.AtomicFile(tmp_path / "file")
    handle.write(b"abc")
    handle.abort()
    assert list(tmp_path.iterdir()) == []


def test_commit_recreates_vanished_directory(tmp_path: Path) -> None:
    target = tmp_path / "d" / "file"
    handle = atomic.AtomicFile(target)
    handle.write(b"x" * 100_000)
    shutil.rmtree(tmp_path / "d")
    handle.commit(replace=True)
    assert target.read_bytes() == b"x" * 100_000
    assert [p.name for p in target.parent.iterdir()] == ["file"]


def test_commit_failure_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    handle = atomic.AtomicFile(tmp_path / "file")
    handle.write(b"abc")
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        handle.commit(replace=True)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_recover_removes_dead_writers_temps(tmp_path: Path) -> None:
    (tmp_path / "p" / "versions").mkdir(parents=True)
    dead = tmp_path / "p" / "versions" / f".tmp.{dead_pid()}.abc.1.0.0.json"
    mine = tmp_path / "p" / f".tmp.{os.getpid()}.abc.p-1.0.0.tgz"
    junk = tmp_path / "p" / ".tmp.notapid.x"
    keep = tmp_path / "p" / "p-1.0.0.tgz"
    for path in (dead, mine, junk, keep):
        path.write_bytes(b"x")
    report = atomic.recover(tmp_path)
    assert report.temp_files == 2
    assert not dead.exists() and not junk.exists()
    assert mine.exists() and keep.exists()  # a live writer's temp file is in use


def test_recover_removes_old_temps_of_live_pids(tmp_path: Path) -> None:
    old = tmp_path / f".tmp.{os.getpid()}.abc.file"
    old.write_bytes(b"x")
    stamp = time.time() - 2 * atomic.STALE_AFTER
    os.utime(old, (stamp, stamp))
    assert atomic.recover(tmp_path).temp_files == 1
    assert not old.exists()


def test_recover_removes_trash(tmp_path: Path) -> None:
    trash = tmp_path / f".trash.{dead_pid()}.abc"
    (trash / "p").mkdir(parents=True)
    (trash / "p" / "f").write_bytes(b"x")
    live = tmp_path / atomic.trash_name()
    live.mkdir()
    report = atomic.recover(tmp_path)
    assert report.trash_dirs == 1
    assert not trash.exists() and live.exists()


def test_recover_missing_root(tmp_path: Path) -> None:
    assert atomic.recover(tmp_path / "nope") == atomic.RecoveryReport()


def test_pid_alive() -> None:
    assert atomic.pid_alive(os.getpid())
    assert not atomic.pid_alive(dead_pid())
    assert not atomic.pid_alive(0)


def test_zombie_counts_as_dead() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        # Not reaped yet: a zombie once it exits.
        while Path(f"/proc/{proc.pid}/stat").exists() and atomic.pid_alive(proc.pid):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not atomic.pid_alive(proc.pid)
    finally:
        proc.wait()


def test_translate() -> None:
    full = atomic.translate(OSError(errno.ENOSPC, "No space left"), "writing x")
    assert isinstance(full, StorageFull)
    quota = atomic.translate(OSError(errno.EDQUOT, "Quota"), "writing x")
    assert isinstance(quota, StorageFull)
    other = atomic.translate(OSError(errno.EACCES, "Permission denied"), "writing x")
    assert type(other) is StorageError
    assert "writing x" in str(other) and "Permission denied" in str(other)
